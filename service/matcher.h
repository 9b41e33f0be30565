// Matcher: the kernel's irqbypass contract (see README "Contract") over the
// sharded TokenIndex. Register/unregister producers and consumers; when both
// sides of a token exist, connect them through the AgentDispatcher, and
// disconnect when either goes away.
//
// Per token, operations are serialised by the index's TokenLock, held across
// the agent round trip; unrelated tokens proceed in parallel. Inputs are
// assumed validated (validation.h). Thread-safe.
#ifndef IRQBYPASS_SERVICE_MATCHER_H_
#define IRQBYPASS_SERVICE_MATCHER_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "service/agent_dispatcher.h"
#include "service/registration_limits.h"
#include "service/request_log.h"
#include "service/token_index.h"

namespace irqbypass {

struct RegisterResult {
  uint64_t registration_id = 0;
  bool connected = false;
};

// A pair an agent reports as wired (AgentHello).
struct WiredPair {
  std::string token;
  ProducerRecord producer;
  ConsumerRecord consumer;
  bool partial = false;  // only part of it is still wired on the agent
};

struct ReconcileResult {
  int kept = 0;          // wired on the agent as registered here
  int disconnected = 0;  // stale wiring removed from the agent
  int reconnected = 0;   // registered here but missing there: connected
  int failed = 0;        // that connect failed: reported as not connected
  int refused = 0;       // reported wiring of another node, or a duplicate
};

// Who makes a call: the owner a registration records (owners.h), and
// whether it may act on what others registered (an admin; also every
// caller of an irqbypassd run --insecure, and in-process callers that name
// none).
struct Caller {
  uint16_t owner = 0;
  bool admin = true;
};

// A client-chosen request id and the fingerprint of the rest of its request
// (StableFingerprint of the serialized request without the id, mixed with
// the caller's owner: another caller reusing the id is a different
// request), and the caller.
struct CallId {
  std::string id;
  uint64_t fingerprint = 0;
  Caller caller;
};

class Matcher {
 public:
  // None is owned; all must outlive the matcher. Without `requests`,
  // request ids are ignored (every call runs).
  Matcher(TokenIndex& index, AgentDispatcher& dispatcher,
          RequestLog* requests = nullptr)
      : index_(index), dispatcher_(dispatcher), requests_(requests) {}

  // Caps on the sides per node and per owner (null: none; a registration
  // past one is RESOURCE_EXHAUSTED, nothing recorded). Set before serving;
  // must outlive the matcher.
  void SetLimits(RegistrationLimits* limits) { limits_ = limits; }

  // Every mutating call takes an optional CallId (null or empty id: none).
  // A call whose id already made a change returns that change's outcome
  // again without running; ABORTED (kRequestInProgress) while a call with
  // the same id is running; INVALID_ARGUMENT (field request_id) when the id
  // was used for a different request.

  // Contract 1. ALREADY_EXISTS (kTokenBusy) when the token has a producer
  // (read from its committed state, without waiting for an operation in
  // flight on the token, such as an unregister of that producer),
  // (kObjectBusy) when the same node/device/index/vector is registered under
  // another token; ABORTED (kObjectBusy) when it is being registered under
  // another token whose connect is still in flight (retry);
  // FAILED_PRECONDITION (kNodeMismatch) when the consumer is on another
  // node; PERMISSION_DENIED (kNotOwner) when another owner registered the
  // consumer and the caller is no admin; otherwise the connect's error, with
  // nothing recorded. The record's registration_id is assigned here, and
  // its owner (the call's caller; kept otherwise).
  absl::StatusOr<RegisterResult> RegisterProducer(absl::string_view token,
                                                  ProducerRecord producer,
                                                  const CallId* call = nullptr);
  // Contract 2, the mirror image.
  absl::StatusOr<RegisterResult> RegisterConsumer(absl::string_view token,
                                                  ConsumerRecord consumer,
                                                  const CallId* call = nullptr);

  // Contract 3. registration_id 0 means whatever producer holds the token.
  // NOT_FOUND (kNotRegistered) when no producer holds it;
  // FAILED_PRECONDITION (kRegistrationMismatch) when another registration
  // holds it (left untouched); PERMISSION_DENIED (kNotOwner) when another
  // owner registered it and the caller is no admin. Returns whether a
  // disconnect was issued.
  absl::StatusOr<bool> UnregisterProducer(absl::string_view token,
                                          uint64_t registration_id,
                                          const CallId* call = nullptr);
  // Contract 4, the mirror image.
  absl::StatusOr<bool> UnregisterConsumer(absl::string_view token,
                                          uint64_t registration_id,
                                          const CallId* call = nullptr);

  // Continuation forms of the four calls above, with the same outcomes, for
  // callers that must not block a thread (callback-API RPCs): they return
  // at once, and `done` runs once, on this thread or on whichever settles
  // what the call waits for (the release of the token by the operation
  // before it, the agent's ack, the store's write). No thread waits for the
  // token, the agent or the store; operations on one token still run one
  // at a time, in the order they asked for it (TokenIndex::LockThen), and
  // one queued behind another starts only after the other's `done` ran.
  // `done` must not block, nor call a blocking form. The blocking forms
  // above are these, with the
  // token's lock taken on the calling thread and the outcome waited for.
  using RegisterDone =
      absl::AnyInvocable<void(absl::StatusOr<RegisterResult>) &&>;
  using UnregisterDone = absl::AnyInvocable<void(absl::StatusOr<bool>) &&>;
  void RegisterProducerAsync(absl::string_view token, ProducerRecord producer,
                             const CallId* call, RegisterDone done);
  void RegisterConsumerAsync(absl::string_view token, ConsumerRecord consumer,
                             const CallId* call, RegisterDone done);
  void UnregisterProducerAsync(absl::string_view token,
                               uint64_t registration_id, const CallId* call,
                               UnregisterDone done);
  void UnregisterConsumerAsync(absl::string_view token,
                               uint64_t registration_id, const CallId* call,
                               UnregisterDone done);

  // Brings `node`'s agent in line with the index after it (re)connects:
  // pairs it reports exactly as registered here are kept (no command);
  // pairs that differ are disconnected there (stale wiring, or disconnects
  // it missed); pairs registered here on both sides that it lacks are
  // connected (again). A pair whose connect fails stays registered and is
  // reported as not connected until a later reconcile succeeds. Reported
  // pairs that name another node (or a token twice) are refused: counted,
  // logged, and no token is locked for them.
  //
  // Commands go through `via` (bound to the reporting agent's session),
  // pipelined: up to `window` are in flight at once, each holding its
  // token's lock until acknowledged. Blocks until all are acknowledged.
  // Once `current()` turns false (that session ended or was replaced), the
  // remaining tokens are left to the newer session's reconcile.
  static constexpr size_t kDefaultReconcileWindow = 256;
  ReconcileResult Reconcile(absl::string_view node,
                            const std::vector<WiredPair>& wired,
                            AgentDispatcher& via,
                            const std::function<bool()>& current,
                            size_t window = kDefaultReconcileWindow);

 private:
  template <typename T>
  using Done = absl::AnyInvocable<void(absl::StatusOr<T>) &&>;
  // How an operation ends: its outcome, and the request record it filled
  // (null: none) for the request log.
  template <typename T>
  using OpDone = absl::AnyInvocable<void(absl::StatusOr<T>, RequestRecord*) &&>;
  // Starts an operation: with the record to fill (none without a request
  // id) and how it ends.
  template <typename T>
  using OpStart =
      absl::FunctionRef<void(std::optional<RequestRecord>, OpDone<T>)>;
  // Runs the operation `start` starts under the request id's rules above;
  // `done` gets its outcome (or the request log's answer).
  template <typename T>
  void Once(const CallId* id, RequestKind kind, absl::string_view token,
            OpStart<T> start, Done<T> done);
  // Runs `start` (a continuation form) and waits for its outcome.
  template <typename T>
  static absl::StatusOr<T> Wait(absl::FunctionRef<void(Done<T>)> start);
  template <typename Side>
  void Register(absl::string_view token, typename Side::Record record,
                const CallId* call, bool block, RegisterDone done);
  template <typename Side>
  void Unregister(absl::string_view token, uint64_t registration_id,
                  const CallId* call, bool block, UnregisterDone done);

  TokenIndex& index_;
  AgentDispatcher& dispatcher_;
  RequestLog* const requests_;
  RegistrationLimits* limits_ = nullptr;
};

// A fresh random, non-zero registration id.
uint64_t NewRegistrationId();

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_MATCHER_H_
