// FakeBypassManager: an in-memory irqbypass.v1.BypassManager for client and
// irqbypassctl tests, plus FakeServer, which serves it on a loopback port the
// OS picks.
//
// Semantics are a simplified model of irqbypassd: one producer and one
// consumer per token, a register that finds the other side "connects" at
// once (same node required), registration ids are checked on unregister, and
// errors carry an ErrorDetail like the real server's. Tests can also:
//  - FailNextCall(status): the next RPC of any kind returns `status` (with its
//    ErrorDetail, encoded as irqbypassd does);
//  - SetHoldUnary(true): unary RPCs wait until the client cancels or its
//    deadline passes (for deadline tests);
//  - SetWatchScript(...): what WatchBindings sends, and whether it then holds
//    the stream open until the client goes away.
// Not a model of agents, rollback or persistence.
//
// Thread-safe: gRPC calls the service from many threads.
#ifndef IRQBYPASS_CLIENT_FAKE_BYPASS_MANAGER_H_
#define IRQBYPASS_CLIENT_FAKE_BYPASS_MANAGER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "grpcpp/server.h"
#include "protos/irqbypass/v1/irqbypass.grpc.pb.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

namespace irqbypass::client::testing {

class FakeBypassManager final : public irqbypass::v1::BypassManager::Service {
 public:
  FakeBypassManager() = default;

  // The next RPC (any method) fails with `status`, once.
  void FailNextCall(absl::Status status);
  // Every RPC returns `status` until called again with nullopt (e.g. a
  // standby replica's NOT_LEADER).
  void FailEveryCall(std::optional<absl::Status> status);
  // While true, unary RPCs block until the call is cancelled.
  void SetHoldUnary(bool hold);
  // WatchBindings sends `events` (ignoring the request), then either returns
  // `end_status` or, if `hold_open`, waits until the client cancels.
  void SetWatchScript(std::vector<irqbypass::v1::BindingEvent> events,
                      bool hold_open, absl::Status end_status = {});
  // Stores `binding` as is (replacing the token's binding).
  void PutBinding(const irqbypass::v1::Binding& binding);

  // Observations.
  int calls() const;
  // The request_id of every mutating call received, in order.
  std::vector<std::string> request_ids() const;
  // Whether the last call arrived with a deadline.
  bool last_call_had_deadline() const;
  // The last ListBindingsRequest / WatchBindingsRequest received.
  irqbypass::v1::ListBindingsRequest last_list_request() const;
  irqbypass::v1::WatchBindingsRequest last_watch_request() const;
  // Number of WatchBindings calls that have ended on the server side.
  int watches_finished() const;
  // Blocks until `count` watches have ended on the server side.
  void AwaitWatchesFinished(int count) const;

  grpc::Status RegisterProducer(
      grpc::ServerContext* context,
      const irqbypass::v1::RegisterProducerRequest* request,
      irqbypass::v1::RegisterProducerResponse* response) override;
  grpc::Status RegisterConsumer(
      grpc::ServerContext* context,
      const irqbypass::v1::RegisterConsumerRequest* request,
      irqbypass::v1::RegisterConsumerResponse* response) override;
  grpc::Status UnregisterProducer(
      grpc::ServerContext* context,
      const irqbypass::v1::UnregisterProducerRequest* request,
      irqbypass::v1::UnregisterProducerResponse* response) override;
  grpc::Status UnregisterConsumer(
      grpc::ServerContext* context,
      const irqbypass::v1::UnregisterConsumerRequest* request,
      irqbypass::v1::UnregisterConsumerResponse* response) override;
  grpc::Status GetBinding(grpc::ServerContext* context,
                          const irqbypass::v1::GetBindingRequest* request,
                          irqbypass::v1::Binding* response) override;
  grpc::Status ListBindings(
      grpc::ServerContext* context,
      const irqbypass::v1::ListBindingsRequest* request,
      irqbypass::v1::ListBindingsResponse* response) override;
  grpc::Status WatchBindings(
      grpc::ServerContext* context,
      const irqbypass::v1::WatchBindingsRequest* request,
      grpc::ServerWriter<irqbypass::v1::BindingEvent>* writer) override;

 private:
  void RecordRequestId(const std::string& id);
  // Common start of every RPC: records the call; returns the injected
  // failure if one is pending, and honours SetHoldUnary for unary calls.
  std::optional<grpc::Status> BeginCall(grpc::ServerContext* context,
                                        bool unary);

  mutable Mutex mu_;
  std::map<std::string, irqbypass::v1::Binding> bindings_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> fail_next_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> fail_every_ ABSL_GUARDED_BY(mu_);
  bool hold_unary_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<irqbypass::v1::BindingEvent> watch_events_ ABSL_GUARDED_BY(mu_);
  bool watch_hold_open_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status watch_end_status_ ABSL_GUARDED_BY(mu_);
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> request_ids_ ABSL_GUARDED_BY(mu_);
  bool last_call_had_deadline_ ABSL_GUARDED_BY(mu_) = false;
  irqbypass::v1::ListBindingsRequest last_list_request_ ABSL_GUARDED_BY(mu_);
  irqbypass::v1::WatchBindingsRequest last_watch_request_ ABSL_GUARDED_BY(mu_);
  int watches_finished_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t revision_ ABSL_GUARDED_BY(mu_) = 0;
};

// Serves a FakeBypassManager on 127.0.0.1 with an OS-chosen port. Shutdown
// (also in the destructor) cancels calls still running.
class FakeServer {
 public:
  static absl::StatusOr<std::unique_ptr<FakeServer>> Start();
  ~FakeServer();

  FakeBypassManager& service() { return service_; }
  int port() const { return port_; }
  // "127.0.0.1:<port>"
  std::string address() const;
  void Shutdown();

 private:
  FakeServer() = default;

  FakeBypassManager service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace irqbypass::client::testing

#endif  // IRQBYPASS_CLIENT_FAKE_BYPASS_MANAGER_H_
