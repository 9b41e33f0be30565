// Client: the C++ library orchestrators link to call irqbypassd, the fleet IRQ
// bypass manager (service irqbypass.v1.BypassManager, see
// protos/irqbypass/v1/irqbypass.proto for the semantics of every call).
//
//   absl::StatusOr<std::unique_ptr<irqbypass::client::Client>> client =
//       irqbypass::client::Client::Create("manager.example:50051", {});
//   irqbypass::v1::Producer producer;
//   producer.set_token("t1"); ...
//   absl::StatusOr<irqbypass::client::RegisterResult> result =
//       (*client)->RegisterProducer(producer);
//   if (!result.ok()) {
//     // result.status() has the server's code and message; the
//     // machine-readable reason is in GetErrorDetail(result.status()).
//     std::cerr << irqbypass::client::DescribeError(result.status());
//   }
//
// Errors: every method returns the server's gRPC status as an absl::Status
// with the same code and message, and the server's irqbypass.v1.ErrorDetail
// (if any) attached; read it with GetErrorDetail() from error_detail.h.
// Transport failures arrive as UNAVAILABLE (no server reachable) or
// DEADLINE_EXCEEDED (the per-call deadline passed), without a detail.
//
// Deadlines: every unary call gets ClientOptions::call_timeout from the moment
// it starts; ListAllBindings gives each page its own deadline. WatchBindings
// uses ClientOptions::watch_timeout (unbounded by default).
//
// Thread-safety: a Client is thread-safe; share one instance (and with it one
// gRPC channel) between all threads of a process. WatchBindings blocks its
// calling thread; a WatchCanceller stops it from another thread.
#ifndef IRQBYPASS_CLIENT_IRQBYPASS_CLIENT_H_
#define IRQBYPASS_CLIENT_IRQBYPASS_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/error_detail.h"  // IWYU pragma: export
#include "common/mutex.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"
#include "protos/irqbypass/v1/irqbypass.grpc.pb.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

namespace irqbypass::client {

struct ClientOptions {
  // Deadline of every unary RPC, counted from the start of the call. Must be
  // positive.
  absl::Duration call_timeout = absl::Seconds(10);
  // Deadline of a whole WatchBindings stream. Must be positive; infinite by
  // default because a watch is meant to stay open.
  absl::Duration watch_timeout = absl::InfiniteDuration();
  // Channel credentials; null means insecure (plaintext) credentials.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Retries of mutating calls. Each carries a request id (a fresh random one
  // unless the caller passes its own), and one that fails UNAVAILABLE (no
  // server, a restart or failover, no agent, the store refused), CANCELLED
  // (by a server shutting down) or ABORTED REQUEST_IN_PROGRESS is sent again
  // with the same id, up to
  // `max_attempts` in all, waiting `retry_backoff` (doubling, at most 1 s)
  // between attempts. The server returns the first outcome to a retry of a
  // call that already took effect, so a retry never registers twice.
  // 1: no retries.
  int max_attempts = 4;
  absl::Duration retry_backoff = absl::Milliseconds(100);
  // With several replicas (Create("a:1,b:2,c:3")): how long a call keeps
  // moving between them while each is unreachable or a standby (UNAVAILABLE
  // NOT_LEADER, naming the leader: it goes there next) before it gives up.
  // Covers an election: the leader's lease TTL (5 s by default) plus
  // loading. Other UNAVAILABLE answers come from the leader (e.g. the
  // node's agent has not reconnected to a new leader yet: a few seconds
  // after a failover) and are retried there as max_attempts says.
  absl::Duration failover_timeout = absl::Seconds(15);
};

// A fresh random request id ("r-" and 32 hex digits).
std::string NewRequestId();

// What RegisterProducer / RegisterConsumer return on success.
struct RegisterResult {
  // Identity of this registration; pass it to Unregister* so that only this
  // registration, never a later one under the same token, is removed.
  std::string registration_id;
  // True when the other side held the token and the pair is now connected.
  bool connected = false;
};

// Called for each event of a watch, on the thread that called WatchBindings.
// Return true to keep watching, false to end the watch.
using BindingEventCallback =
    std::function<bool(const irqbypass::v1::BindingEvent& event)>;

// Ends a WatchBindings call from another thread. Attach it by passing it to
// WatchBindings; Cancel() may come before, during or after the watch, and a
// watch started with an already cancelled canceller returns at once. One
// watch at a time per canceller. Thread-safe.
class WatchCanceller {
 public:
  WatchCanceller() = default;
  WatchCanceller(const WatchCanceller&) = delete;
  WatchCanceller& operator=(const WatchCanceller&) = delete;

  // Idempotent; does not wait for the watch to return.
  void Cancel();
  bool IsCancelled() const;

 private:
  friend class Client;

  // Returns false (and does not attach) if already cancelled.
  bool Attach(grpc::ClientContext* context);
  void Detach();

  mutable Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

class Client {
 public:
  // Creates a client for `target` ("host:port" or any gRPC target URI), or
  // for several replicas of one manager (--store=etcd), comma-separated
  // "host:port,host:port": every call goes to the one that led last and
  // fails over as ClientOptions::failover_timeout says. The
  // channel connects lazily: an unreachable server shows up as UNAVAILABLE on
  // the first call, not here. Returns INVALID_ARGUMENT for an empty target or
  // a non-positive timeout.
  static absl::StatusOr<std::unique_ptr<Client>> Create(
      const std::string& target, ClientOptions options = {});

  // Like Create, over an existing channel (e.g. an in-process channel, or one
  // with custom arguments). `channel` must not be null.
  static absl::StatusOr<std::unique_ptr<Client>> CreateWithChannel(
      std::shared_ptr<grpc::ChannelInterface> channel,
      ClientOptions options = {});

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Records a producer; connects it to the consumer holding the same token,
  // if any, and then succeeds only if the connect succeeded (otherwise nothing
  // is recorded). Errors: INVALID_ARGUMENT, ALREADY_EXISTS (TOKEN_BUSY,
  // OBJECT_BUSY), FAILED_PRECONDITION (CONNECT_FAILED, NODE_MISMATCH),
  // UNAVAILABLE, DEADLINE_EXCEEDED.
  // `request_id`: see ClientOptions (empty: a fresh one).
  absl::StatusOr<RegisterResult> RegisterProducer(
      const irqbypass::v1::Producer& producer,
      const std::string& request_id = "") const;

  // Mirror image of RegisterProducer.
  absl::StatusOr<RegisterResult> RegisterConsumer(
      const irqbypass::v1::Consumer& consumer,
      const std::string& request_id = "") const;

  // Disconnects (if connected) and forgets the producer holding `token`. With
  // a non-empty `registration_id` only that registration is removed; a
  // mismatch fails with FAILED_PRECONDITION (REGISTRATION_MISMATCH) and
  // changes nothing. Returns whether a disconnect was issued. Errors:
  // INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION.
  absl::StatusOr<bool> UnregisterProducer(
      const std::string& token, const std::string& registration_id = "",
      const std::string& request_id = "") const;

  // Mirror image of UnregisterProducer.
  absl::StatusOr<bool> UnregisterConsumer(
      const std::string& token, const std::string& registration_id = "",
      const std::string& request_id = "") const;

  // Many registrations and unregistrations in one call (BypassManager.Batch):
  // one result per item, in order, each with its own status. Items without
  // a request_id get a fresh one, so a call retried after a lost answer
  // changes nothing twice (each item answers its first outcome). The call
  // fails as a whole only when it could not run: INVALID_ARGUMENT (no
  // items, or too many), UNAVAILABLE, DEADLINE_EXCEEDED.
  absl::StatusOr<irqbypass::v1::BatchResponse> Batch(
      irqbypass::v1::BatchRequest request) const;

  // What `token` holds (committed state only). NOT_FOUND when it holds
  // neither side.
  absl::StatusOr<irqbypass::v1::Binding> GetBinding(
      const std::string& token) const;

  // One page of bindings, optionally only those on `node` (empty: all).
  // `page_size` 0 means the server's default (100); `page_token` comes from a
  // previous response's next_page_token (empty for the first page).
  absl::StatusOr<irqbypass::v1::ListBindingsResponse> ListBindings(
      const std::string& node, int32_t page_size = 0,
      const std::string& page_token = "") const;

  // Every node the manager knows (with bindings, or whose agent had a
  // session since it started), sorted by name; and one of them (NOT_FOUND
  // when it knows none by that name).
  absl::StatusOr<std::vector<irqbypass::v1::Node>> ListNodes() const;
  absl::StatusOr<irqbypass::v1::Node> GetNode(const std::string& node) const;

  // Every binding (on `node`, if not empty), following next_page_token until
  // the last page. Not a snapshot: bindings changed while paging may be seen
  // in either state. Returns the first page's error, or INTERNAL if the server
  // hands back the page token it was given (which would loop forever).
  absl::StatusOr<std::vector<irqbypass::v1::Binding>> ListAllBindings(
      const std::string& node, int32_t page_size = 0) const;

  // Streams binding events to `on_event` until one of:
  //  - `on_event` returns false, or `canceller` (if not null) is cancelled:
  //    returns OK;
  //  - the server ends the stream cleanly (e.g. on graceful shutdown): OK;
  //  - the stream fails: the error, e.g. RESOURCE_EXHAUSTED when this
  //    watcher fell too far behind (re-list and watch again), UNAVAILABLE,
  //    or DEADLINE_EXCEEDED after ClientOptions::watch_timeout.
  // Blocks the calling thread; `on_event` runs on it.
  absl::Status WatchBindings(const irqbypass::v1::WatchBindingsRequest& request,
                             const BindingEventCallback& on_event,
                             WatchCanceller* canceller = nullptr) const;

 private:
  Client(
      std::vector<std::shared_ptr<irqbypass::v1::BypassManager::StubInterface>>
          stubs,
      std::vector<std::string> endpoints, ClientOptions options);

  // Runs one unary RPC with the per-call deadline, on the current replica
  // and, with several, on the others while they answer UNAVAILABLE. `rpc`
  // is called as rpc(stub, &context, &response) and returns the
  // grpc::Status.
  template <typename Response, typename Rpc>
  absl::StatusOr<Response> CallUnary(const Rpc& rpc) const;
  static bool FailsOver(const absl::Status& status);
  // CallUnary, retried as ClientOptions says.
  template <typename Response, typename Rpc>
  absl::StatusOr<Response> CallMutating(const Rpc& rpc) const;

  using StubPtr = std::shared_ptr<irqbypass::v1::BypassManager::StubInterface>;
  StubPtr Stub(size_t i) const;
  // Replaces replica i's channel after its connection failed (if `failed`
  // is still the one in use), so the next call dials afresh.
  void Redial(size_t i,
              const irqbypass::v1::BypassManager::StubInterface* failed) const;

  const size_t replicas_;
  mutable Mutex stubs_mu_;
  // Guarded by stubs_mu_ when redial_ is set (several replicas); otherwise
  // never changed after construction.
  mutable std::vector<StubPtr> stubs_;
  // Several replicas: a fresh stub for replica i. Set once at creation.
  std::function<StubPtr(size_t)> redial_;
  const std::vector<std::string> endpoints_;  // as given, one per stub
  const ClientOptions options_;
  mutable std::atomic<size_t> current_{0};  // the replica calls go to
};

}  // namespace irqbypass::client

#endif  // IRQBYPASS_CLIENT_IRQBYPASS_CLIENT_H_
