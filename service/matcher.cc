#include "service/matcher.h"

#include <cassert>
#include <deque>
#include <memory>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/secure_random.h"
#include "service/errors.h"

namespace irqbypass {
namespace {

// The two sides of a token differ only in which slot they occupy and the
// argument order of the dispatcher calls; the contract is the same mirror
// image, so one implementation serves both.
struct ProducerSide {
  using Record = ProducerRecord;
  using Other = ConsumerRecord;
  static constexpr const char* kName = "producer";
  static constexpr const char* kOtherName = "consumer";
  static constexpr LockOp kRegisterOp = LockOp::kRegisterProducer;
  static constexpr LockOp kUnregisterOp = LockOp::kUnregisterProducer;
  static std::optional<Record>& Mine(BindingState& s) { return s.producer; }
  static const std::optional<Record>& Mine(const BindingState& s) {
    return s.producer;
  }
  static const std::optional<Other>& Theirs(const BindingState& s) {
    return s.consumer;
  }
  static std::string ObjectKey(const Record& r) {
    return TokenIndex::ProducerObjectKey(r);
  }
  static absl::Status Connect(AgentDispatcher& d, absl::string_view token,
                              const Record& mine, const Other& theirs) {
    return d.Connect(token, mine, theirs);
  }
  static void Disconnect(AgentDispatcher& d, absl::string_view token,
                         const Record& mine, const Other& theirs) {
    d.Disconnect(token, mine, theirs);
  }
  static void ConnectAsync(AgentDispatcher& d, absl::string_view token,
                           const Record& mine, const Other& theirs,
                           AgentDispatcher::ConnectedFn done) {
    d.ConnectAsync(token, mine, theirs, std::move(done));
  }
  static void DisconnectAsync(AgentDispatcher& d, absl::string_view token,
                              const Record& mine, const Other& theirs,
                              AgentDispatcher::DisconnectedFn done) {
    d.DisconnectAsync(token, mine, theirs, std::move(done));
  }
};

struct ConsumerSide {
  using Record = ConsumerRecord;
  using Other = ProducerRecord;
  static constexpr const char* kName = "consumer";
  static constexpr const char* kOtherName = "producer";
  static constexpr LockOp kRegisterOp = LockOp::kRegisterConsumer;
  static constexpr LockOp kUnregisterOp = LockOp::kUnregisterConsumer;
  static std::optional<Record>& Mine(BindingState& s) { return s.consumer; }
  static const std::optional<Record>& Mine(const BindingState& s) {
    return s.consumer;
  }
  static const std::optional<Other>& Theirs(const BindingState& s) {
    return s.producer;
  }
  static std::string ObjectKey(const Record& r) {
    return TokenIndex::ConsumerObjectKey(r);
  }
  static absl::Status Connect(AgentDispatcher& d, absl::string_view token,
                              const Record& mine, const Other& theirs) {
    return d.Connect(token, theirs, mine);
  }
  static void Disconnect(AgentDispatcher& d, absl::string_view token,
                         const Record& mine, const Other& theirs) {
    d.Disconnect(token, theirs, mine);
  }
  static void ConnectAsync(AgentDispatcher& d, absl::string_view token,
                           const Record& mine, const Other& theirs,
                           AgentDispatcher::ConnectedFn done) {
    d.ConnectAsync(token, theirs, mine, std::move(done));
  }
  static void DisconnectAsync(AgentDispatcher& d, absl::string_view token,
                              const Record& mine, const Other& theirs,
                              AgentDispatcher::DisconnectedFn done) {
    d.DisconnectAsync(token, theirs, mine, std::move(done));
  }
};

// ALREADY_EXISTS: `state` of `token` already has this side.
template <typename Side>
absl::Status AlreadyHas(absl::string_view token, const BindingState& state) {
  ErrorContext ctx;
  ctx.token = std::string(token);
  ctx.node = Side::Mine(state)->node;
  return MakeError(
      absl::StatusCode::kAlreadyExists, ErrorReason::kTokenBusy,
      absl::StrCat("token \"", token, "\" already has a ", Side::kName), ctx);
}

// An operation on one token, continued in callbacks: it owns the token's
// lock (which must not move while a store write is in flight: it lives
// here, on the heap) from when it gets it until it ends.
template <typename T>
struct Operation {
  using Done = absl::AnyInvocable<void(absl::StatusOr<T>, RequestRecord*) &&>;
  Operation(TokenIndex& index, AgentDispatcher& dispatcher,
            absl::string_view token, std::optional<RequestRecord> request,
            Done done)
      : index(index),
        dispatcher(dispatcher),
        token(token),
        request(std::move(request)),
        done(std::move(done)) {}
  TokenIndex& index;
  AgentDispatcher& dispatcher;
  const std::string token;
  std::optional<RequestRecord> request;  // to fill, with a request id
  Done done;
  Caller caller;
  RegistrationLimits* limits = nullptr;  // null: no limits
  std::optional<TokenIndex::TokenLock> lock;

  RequestRecord* record() { return request ? &*request : nullptr; }
};

// Ends `op`: releases the token, then reports (the reply, the request
// log's record). A continuation queued next on the token starts only after
// that report: the release hands it over behind this, on this thread. (A
// thread waiting in TokenIndex::Lock, as Reconcile does, is woken by the
// release and may start while the report runs.)
template <typename T, typename Op>
void Finish(std::unique_ptr<Op> op, absl::StatusOr<T> outcome) {
  TokenIndex::RunInOrder(
      [op = std::move(op), outcome = std::move(outcome)]() mutable {
        op->lock.reset();
        std::move(op->done)(std::move(outcome), op->record());
      });
}

// Gives `op` its token's lock, then runs step(op): on this thread, waiting
// for the lock (block), or as the lock's continuation.
template <typename Op, typename Step>
void Acquire(std::unique_ptr<Op> op, LockOp lock_op, bool block, Step step) {
  Op* const raw = op.get();
  if (block) {
    raw->lock.emplace(raw->index.Lock(raw->token, lock_op));
    step(std::move(op));
    return;
  }
  raw->index.LockThen(
      raw->token, lock_op,
      [op = std::move(op), step](TokenIndex::TokenLock lock) mutable {
        op->lock.emplace(std::move(lock));
        step(std::move(op));
      });
}

template <typename Side>
struct RegisterOp : Operation<RegisterResult> {
  using Operation::Operation;
  typename Side::Record mine;
  std::optional<typename Side::Other> theirs;  // the side it connects to
  TokenIndex::TokenLock::Claim claim;
  RegisterResult result;
  bool reserved = false;  // a place in `limits`, given back if not made

  void GiveBack() {
    if (reserved && limits != nullptr) limits->Release(mine.owner, mine.node);
    reserved = false;
  }

  static void Start(std::unique_ptr<RegisterOp> op, bool block);
  static void Locked(std::unique_ptr<RegisterOp> op);
  static void Connected(std::unique_ptr<RegisterOp> op, absl::Status s);
  static void Stage(std::unique_ptr<RegisterOp> op);
  static void Stored(std::unique_ptr<RegisterOp> op, absl::Status s);
};

template <typename Side>
void RegisterOp<Side>::Start(std::unique_ptr<RegisterOp> op, bool block) {
  // A token whose committed state already has this side is answered from
  // that state, lock-free, without queueing behind an operation that may
  // hold the token: the answer is the one the op lock would give on that
  // state (this side is checked first there too), and it is linearisable
  // (if an operation holds the lock, the call overlaps it and is ordered
  // before its commit). So an unregister of this side still in flight (its
  // disconnect not yet acknowledged) makes a register answer ALREADY_EXISTS
  // rather than wait for it. Many callers retrying a taken token cost no
  // lock hand-overs.
  // (Read, not Get: the common case, a side not yet there, copies nothing.)
  absl::Status taken;
  op->index.Read(op->token, [&](const BindingState& seen) {
    if (Side::Mine(seen).has_value()) taken = AlreadyHas<Side>(op->token, seen);
  });
  if (!taken.ok()) return Finish<RegisterResult>(std::move(op), taken);
  Acquire(std::move(op), Side::kRegisterOp, block,
          [](std::unique_ptr<RegisterOp> op) { Locked(std::move(op)); });
}

template <typename Side>
void RegisterOp<Side>::Locked(std::unique_ptr<RegisterOp> op) {
  TokenIndex::TokenLock& lock = *op->lock;
  const BindingState& current = lock.state();
  const std::string& token = op->token;
  const typename Side::Record& record = op->mine;

  if (Side::Mine(current).has_value()) {
    return Finish<RegisterResult>(std::move(op),
                                  AlreadyHas<Side>(token, current));
  }
  const auto& other = Side::Theirs(current);
  if (other.has_value() && other->node != record.node) {
    ErrorContext ctx;
    ctx.token = token;
    ctx.node = record.node;
    absl::Status error = MakeError(
        absl::StatusCode::kFailedPrecondition, ErrorReason::kNodeMismatch,
        absl::StrCat(Side::kName, " is on node \"", record.node, "\" but the ",
                     Side::kOtherName, " of token \"", token,
                     "\" is on node \"", other->node,
                     "\"; both sides must be on one node"),
        ctx);
    return Finish<RegisterResult>(std::move(op), std::move(error));
  }
  if (other.has_value() && !op->caller.admin && other->owner != 0 &&
      other->owner != op->caller.owner) {
    ErrorContext ctx;
    ctx.token = token;
    ctx.node = record.node;
    // (Not saying who: the caller learns only that it is not its own.)
    absl::Status error =
        MakeError(absl::StatusCode::kPermissionDenied, ErrorReason::kNotOwner,
                  absl::StrCat("the ", Side::kOtherName, " of token \"", token,
                               "\" was registered by another orchestrator; "
                               "only it (or an admin) may pair with it"),
                  ctx);
    return Finish<RegisterResult>(std::move(op), std::move(error));
  }
  const std::string object_key = Side::ObjectKey(record);
  // While a connect decides this registration, its claim is tentative: a
  // competing registration of the same object is told to retry, not that
  // the object is taken (the connect may still fail and free it).
  if (auto holder =
          lock.ClaimObject(object_key, other.has_value(), &op->claim)) {
    ErrorContext ctx;
    ctx.token = token;
    ctx.node = record.node;
    ctx.other_token = holder->token;
    absl::Status error =
        holder->tentative
            ? MakeError(absl::StatusCode::kAborted, ErrorReason::kObjectBusy,
                        absl::StrCat("the same ", Side::kName,
                                     " is being registered under token \"",
                                     holder->token,
                                     "\" (its connect is in progress); retry"),
                        ctx)
            : MakeError(absl::StatusCode::kAlreadyExists,
                        ErrorReason::kObjectBusy,
                        absl::StrCat("the same ", Side::kName,
                                     " is already registered under token \"",
                                     holder->token, "\""),
                        ctx);
    return Finish<RegisterResult>(std::move(op), std::move(error));
  }
  if (op->limits != nullptr) {
    if (absl::Status full = op->limits->Reserve(record.owner, record.node);
        !full.ok()) {
      lock.ReleaseObject(op->claim);
      return Finish<RegisterResult>(std::move(op), std::move(full));
    }
    op->reserved = true;
  }

  op->mine.registration_id = NewRegistrationId();
  op->result.registration_id = op->mine.registration_id;
  if (!other.has_value()) return Stage(std::move(op));
  op->theirs = *other;
  RegisterOp* const raw = op.get();
  Side::ConnectAsync(raw->dispatcher, raw->token, raw->mine, *raw->theirs,
                     [op = std::move(op)](absl::Status s) mutable {
                       Connected(std::move(op), std::move(s));
                     });
}

template <typename Side>
void RegisterOp<Side>::Connected(std::unique_ptr<RegisterOp> op,
                                 absl::Status connected) {
  if (!connected.ok()) {
    // Contract: the new side is not recorded; the other stays untouched.
    op->lock->ReleaseObject(op->claim);
    op->GiveBack();
    LogWarn("connect failed", {{"token", op->token},
                               {"node", op->mine.node},
                               {"side", Side::kName},
                               {"error", connected.ToString()}});
    return Finish<RegisterResult>(std::move(op), std::move(connected));
  }
  op->result.connected = true;
  Stage(std::move(op));
}

template <typename Side>
void RegisterOp<Side>::Stage(std::unique_ptr<RegisterOp> op) {
  BindingState next = op->lock->state();
  Side::Mine(next) = op->mine;
  next.connected = op->result.connected;
  if (RequestRecord* request = op->record()) {
    request->registration_id = op->result.registration_id;
    request->connected = op->result.connected;
  }
  RegisterOp* const raw = op.get();
  raw->lock->StageAsync(std::move(next), raw->record(),
                        [op = std::move(op)](absl::Status s) mutable {
                          Stored(std::move(op), std::move(s));
                        });
}

template <typename Side>
void RegisterOp<Side>::Stored(std::unique_ptr<RegisterOp> op,
                              absl::Status stored) {
  if (stored.ok()) {
    if (op->result.connected) op->lock->ConfirmObject(op->claim);
    op->lock->Publish();
    RegisterResult result = op->result;
    return Finish<RegisterResult>(std::move(op), result);
  }
  // Not durable, so not made: undo the wiring (the other side stays as it
  // was, as after a failed connect).
  auto roll_back = [stored](std::unique_ptr<RegisterOp> op) {
    op->lock->ReleaseObject(op->claim);
    op->GiveBack();
    LogWarn("registration not stored; rolled back",
            {{"token", op->token},
             {"node", op->mine.node},
             {"side", Side::kName},
             {"error", stored.ToString()}});
    Finish<RegisterResult>(std::move(op), stored);
  };
  if (!op->result.connected) return roll_back(std::move(op));
  RegisterOp* const raw = op.get();
  Side::DisconnectAsync(
      raw->dispatcher, raw->token, raw->mine, *raw->theirs,
      [op = std::move(op), roll_back]() mutable { roll_back(std::move(op)); });
}

template <typename Side>
struct UnregisterOp : Operation<bool> {
  using Operation::Operation;
  uint64_t registration_id = 0;
  std::optional<typename Side::Record> mine;
  std::optional<typename Side::Other> theirs;  // set when it disconnects

  static void Locked(std::unique_ptr<UnregisterOp> op);
  static void Stored(std::unique_ptr<UnregisterOp> op, absl::Status s);
  static void Disconnected(std::unique_ptr<UnregisterOp> op);
};

template <typename Side>
void UnregisterOp<Side>::Locked(std::unique_ptr<UnregisterOp> op) {
  const BindingState& current = op->lock->state();
  const std::string& token = op->token;
  const auto& mine = Side::Mine(current);
  if (!mine.has_value()) {
    ErrorContext ctx;
    ctx.token = token;
    return Finish<bool>(
        std::move(op),
        MakeError(absl::StatusCode::kNotFound, ErrorReason::kNotRegistered,
                  absl::StrCat("token \"", token, "\" has no ", Side::kName),
                  ctx));
  }
  if (op->registration_id != 0 &&
      op->registration_id != mine->registration_id) {
    ErrorContext ctx;
    ctx.token = token;
    ctx.node = mine->node;
    return Finish<bool>(
        std::move(op),
        MakeError(absl::StatusCode::kFailedPrecondition,
                  ErrorReason::kRegistrationMismatch,
                  absl::StrCat("registration_id does not match the ",
                               Side::kName, " that holds token \"", token,
                               "\"; nothing was changed"),
                  ctx));
  }
  if (!op->caller.admin && mine->owner != 0 &&
      mine->owner != op->caller.owner) {
    ErrorContext ctx;
    ctx.token = token;
    ctx.node = mine->node;
    return Finish<bool>(
        std::move(op),
        MakeError(absl::StatusCode::kPermissionDenied, ErrorReason::kNotOwner,
                  absl::StrCat("the ", Side::kName, " of token \"", token,
                               "\" was registered by another orchestrator; "
                               "only it (or an admin) may unregister it; "
                               "nothing was changed"),
                  ctx));
  }
  // Durable first: if the store refuses, nothing changes (still wired). If
  // the manager dies after this, the agent's wiring is stale when it
  // reconnects and reconciliation removes it.
  op->mine = *mine;
  if (current.connected && Side::Theirs(current).has_value()) {
    op->theirs = *Side::Theirs(current);
  }
  BindingState next = current;
  Side::Mine(next).reset();
  next.connected = false;
  if (RequestRecord* request = op->record()) {
    request->disconnected = op->theirs.has_value();
  }
  UnregisterOp* const raw = op.get();
  raw->lock->StageAsync(std::move(next), raw->record(),
                        [op = std::move(op)](absl::Status s) mutable {
                          Stored(std::move(op), std::move(s));
                        });
}

template <typename Side>
void UnregisterOp<Side>::Stored(std::unique_ptr<UnregisterOp> op,
                                absl::Status stored) {
  if (!stored.ok()) return Finish<bool>(std::move(op), std::move(stored));
  if (!op->theirs.has_value()) return Disconnected(std::move(op));
  UnregisterOp* const raw = op.get();
  Side::DisconnectAsync(
      raw->dispatcher, raw->token, *raw->mine, *raw->theirs,
      [op = std::move(op)]() mutable { Disconnected(std::move(op)); });
}

template <typename Side>
void UnregisterOp<Side>::Disconnected(std::unique_ptr<UnregisterOp> op) {
  op->lock->ReleaseObject(Side::ObjectKey(*op->mine));
  if (op->limits != nullptr)
    op->limits->Release(op->mine->owner, op->mine->node);
  op->lock->Publish();
  const bool disconnected = op->theirs.has_value();
  Finish<bool>(std::move(op), disconnected);
}

bool SameWiring(const BindingState& st, const WiredPair& w) {
  return st.producer.has_value() && st.consumer.has_value() &&
         st.producer->node == w.producer.node &&
         st.producer->device == w.producer.device &&
         st.producer->vector == w.producer.vector &&
         st.producer->irq_index == w.producer.irq_index &&
         st.consumer->node == w.consumer.node &&
         st.consumer->vm == w.consumer.vm && st.consumer->gsi == w.consumer.gsi;
}

// Commits the token's state with `connected` set, unless it says so already.
// False when the store refused (the token keeps its old flag).
bool CommitConnected(TokenIndex::TokenLock& lock, bool connected) {
  if (lock.state().connected == connected) return true;
  BindingState next = lock.state();
  next.connected = connected;
  absl::Status stored = lock.Commit(std::move(next));
  if (!stored.ok()) {
    LogWarn("reconcile: connected flag not stored",
            {{"token", lock.token()}, {"error", stored.ToString()}});
    return false;
  }
  return true;
}

// Reconciliation found the pair wired on the agent but could not record it
// as connected: undo the wiring, so that an unregister (which disconnects
// only connected pairs) never leaves it behind. The next reconcile connects
// it again.
void MarkConnectedOrUnwire(TokenIndex::TokenLock& lock, AgentDispatcher& via) {
  if (CommitConnected(lock, true)) return;
  const BindingState& st = lock.state();
  if (st.producer && st.consumer) {
    via.Disconnect(lock.token(), *st.producer, *st.consumer);
  }
}

}  // namespace

uint64_t NewRegistrationId() {
  // Unguessable: an id is what an unregister must name.
  uint64_t id = 0;
  while (id == 0) id = SecureRandom64();
  return id;
}

void FromRecord(const RequestRecord& r, RegisterResult* out) {
  out->registration_id = r.registration_id;
  out->connected = r.connected;
}

void FromRecord(const RequestRecord& r, bool* out) { *out = r.disconnected; }

template <typename T>
void Matcher::Once(const CallId* id, RequestKind kind, absl::string_view token,
                   OpStart<T> start, Done<T> done) {
  if (id == nullptr || id->id.empty() || requests_ == nullptr) {
    start(std::nullopt, [done = std::move(done)](absl::StatusOr<T> outcome,
                                                 RequestRecord*) mutable {
      std::move(done)(std::move(outcome));
    });
    return;
  }
  RequestRecord first;
  switch (requests_->Start(id->id, kind, id->fingerprint, &first)) {
    case RequestLog::Claim::kNew:
      break;
    case RequestLog::Claim::kDone: {
      T result;
      FromRecord(first, &result);
      std::move(done)(result);
      return;
    }
    case RequestLog::Claim::kInProgress: {
      ErrorContext ctx;
      ctx.token = std::string(token);
      std::move(done)(
          MakeError(absl::StatusCode::kAborted, ErrorReason::kRequestInProgress,
                    absl::StrCat("a call with request_id \"", id->id,
                                 "\" is in progress; retry"),
                    ctx));
      return;
    }
    case RequestLog::Claim::kMismatch: {
      ErrorContext ctx;
      ctx.field = "request_id";
      ctx.token = std::string(token);
      std::move(done)(MakeError(absl::StatusCode::kInvalidArgument,
                                ErrorReason::kInvalidField,
                                absl::StrCat("request_id: \"", id->id,
                                             "\" was used for a different "
                                             "request"),
                                ctx));
      return;
    }
  }
  start(requests_->NewRecord(id->id, kind, id->fingerprint, token),
        [this, id = id->id, done = std::move(done)](
            absl::StatusOr<T> outcome, RequestRecord* record) mutable {
          requests_->Finish(id, outcome.ok() ? record : nullptr);
          std::move(done)(std::move(outcome));
        });
}

template <typename T>
absl::StatusOr<T> Matcher::Wait(absl::FunctionRef<void(Done<T>)> start) {
  // Called from a done or a continuation, the outcome would be queued
  // behind the caller, which would wait for it forever.
  assert(!TokenIndex::InRunInOrder() &&
         "a blocking Matcher call from inside a done or continuation");
  struct Latch {
    Mutex mu;
    CondVar cv;
    std::optional<absl::StatusOr<T>> outcome ABSL_GUARDED_BY(mu);
  } latch;
  start([&latch](absl::StatusOr<T> outcome) {
    MutexLock lock(&latch.mu);
    latch.outcome = std::move(outcome);
    latch.cv.Signal();
  });
  MutexLock lock(&latch.mu);
  while (!latch.outcome.has_value()) latch.cv.Wait(&latch.mu);
  return *std::move(latch.outcome);
}

template <typename Side>
void Matcher::Register(absl::string_view token, typename Side::Record record,
                       const CallId* call, bool block, RegisterDone done) {
  Once<RegisterResult>(
      call,
      Side::kRegisterOp == LockOp::kRegisterProducer
          ? RequestKind::kRegisterProducer
          : RequestKind::kRegisterConsumer,
      token,
      [&](std::optional<RequestRecord> request, OpDone<RegisterResult> finish) {
        auto op = std::make_unique<RegisterOp<Side>>(
            index_, dispatcher_, token, std::move(request), std::move(finish));
        op->mine = std::move(record);
        if (call != nullptr) {
          op->caller = call->caller;
          op->mine.owner = call->caller.owner;
        }
        op->limits = limits_;
        RegisterOp<Side>::Start(std::move(op), block);
      },
      std::move(done));
}

template <typename Side>
void Matcher::Unregister(absl::string_view token, uint64_t registration_id,
                         const CallId* call, bool block, UnregisterDone done) {
  Once<bool>(
      call,
      Side::kUnregisterOp == LockOp::kUnregisterProducer
          ? RequestKind::kUnregisterProducer
          : RequestKind::kUnregisterConsumer,
      token,
      [&](std::optional<RequestRecord> request, OpDone<bool> finish) {
        auto op = std::make_unique<UnregisterOp<Side>>(
            index_, dispatcher_, token, std::move(request), std::move(finish));
        op->registration_id = registration_id;
        if (call != nullptr) op->caller = call->caller;
        op->limits = limits_;
        Acquire(std::move(op), Side::kUnregisterOp, block,
                [](std::unique_ptr<UnregisterOp<Side>> op) {
                  UnregisterOp<Side>::Locked(std::move(op));
                });
      },
      std::move(done));
}

absl::StatusOr<RegisterResult> Matcher::RegisterProducer(
    absl::string_view token, ProducerRecord producer, const CallId* call) {
  return Wait<RegisterResult>([&](RegisterDone done) {
    Register<ProducerSide>(token, std::move(producer), call, /*block=*/true,
                           std::move(done));
  });
}

absl::StatusOr<RegisterResult> Matcher::RegisterConsumer(
    absl::string_view token, ConsumerRecord consumer, const CallId* call) {
  return Wait<RegisterResult>([&](RegisterDone done) {
    Register<ConsumerSide>(token, std::move(consumer), call, /*block=*/true,
                           std::move(done));
  });
}

absl::StatusOr<bool> Matcher::UnregisterProducer(absl::string_view token,
                                                 uint64_t registration_id,
                                                 const CallId* call) {
  return Wait<bool>([&](UnregisterDone done) {
    Unregister<ProducerSide>(token, registration_id, call, /*block=*/true,
                             std::move(done));
  });
}

absl::StatusOr<bool> Matcher::UnregisterConsumer(absl::string_view token,
                                                 uint64_t registration_id,
                                                 const CallId* call) {
  return Wait<bool>([&](UnregisterDone done) {
    Unregister<ConsumerSide>(token, registration_id, call, /*block=*/true,
                             std::move(done));
  });
}

void Matcher::RegisterProducerAsync(absl::string_view token,
                                    ProducerRecord producer, const CallId* call,
                                    RegisterDone done) {
  Register<ProducerSide>(token, std::move(producer), call, /*block=*/false,
                         std::move(done));
}

void Matcher::RegisterConsumerAsync(absl::string_view token,
                                    ConsumerRecord consumer, const CallId* call,
                                    RegisterDone done) {
  Register<ConsumerSide>(token, std::move(consumer), call, /*block=*/false,
                         std::move(done));
}

void Matcher::UnregisterProducerAsync(absl::string_view token,
                                      uint64_t registration_id,
                                      const CallId* call, UnregisterDone done) {
  Unregister<ProducerSide>(token, registration_id, call, /*block=*/false,
                           std::move(done));
}

void Matcher::UnregisterConsumerAsync(absl::string_view token,
                                      uint64_t registration_id,
                                      const CallId* call, UnregisterDone done) {
  Unregister<ConsumerSide>(token, registration_id, call, /*block=*/false,
                           std::move(done));
}

namespace {

// Commands a reconciliation has sent and not yet seen acknowledged, each
// with its token's lock (held until the ack, so the token's state cannot
// move under it). Oldest first: the agent runs commands in order.
struct Outstanding {
  TokenIndex::TokenLock lock;
  std::unique_ptr<AgentDispatcher::Pending> pending;
  bool connect = false;
};

}  // namespace

ReconcileResult Matcher::Reconcile(absl::string_view node,
                                   const std::vector<WiredPair>& wired,
                                   AgentDispatcher& via,
                                   const std::function<bool()>& current,
                                   size_t window) {
  ReconcileResult result;
  if (window == 0) window = 1;
  std::deque<Outstanding> outstanding;
  // Waits for the oldest command and settles its token.
  auto settle_oldest = [&] {
    Outstanding o = std::move(outstanding.front());
    outstanding.pop_front();
    if (!o.connect) {
      via.EndDisconnect(std::move(o.pending));
      return;
    }
    absl::Status s = via.EndConnect(std::move(o.pending));
    if (s.ok()) {
      ++result.reconnected;
      MarkConnectedOrUnwire(o.lock, via);
      return;
    }
    // Interrupted by a newer session: the token is left to its reconcile.
    if (!current()) return;
    ++result.failed;
    LogWarn("reconcile: connect failed; binding reported as not connected",
            {{"token", o.lock.token()},
             {"node", std::string(node)},
             {"error", s.ToString()}});
    CommitConnected(o.lock, false);
  };
  auto send = [&](TokenIndex::TokenLock lock,
                  std::unique_ptr<AgentDispatcher::Pending> pending,
                  bool connect) {
    outstanding.push_back({std::move(lock), std::move(pending), connect});
    if (outstanding.size() >= window) settle_oldest();
  };
  auto drain = [&] {
    while (!outstanding.empty()) settle_oldest();
  };
  // A reconciliation holding tokens never waits for another: if the token
  // is busy it first settles (and releases) everything it holds, so two
  // reconciliations (or a reconciliation and anything else) cannot wait on
  // each other in a cycle.
  auto acquire = [&](const std::string& token) {
    if (auto lock = index_.TryLock(token, LockOp::kReconcile)) {
      return *std::move(lock);
    }
    drain();
    return index_.Lock(token, LockOp::kReconcile);
  };

  // Tokens whose wiring step 1 kept; everything else the agent reported was
  // removed there and, if registered here, counts as missing in step 2.
  absl::flat_hash_set<std::string> kept;
  absl::flat_hash_set<absl::string_view> seen;
  seen.reserve(wired.size());

  // 1. What the agent has: keep it if it is exactly what we hold, otherwise
  //    remove it there.
  for (const WiredPair& w : wired) {
    if (!current()) break;
    // An agent speaks only for its own node: wiring it labels with another
    // node is not its to report, and that node's tokens are not locked or
    // changed on its word. A token reported twice is taken once.
    if (w.producer.node != node || w.consumer.node != node ||
        !seen.insert(w.token).second) {
      ++result.refused;
      LogWarn(
          "reconcile: reported wiring refused (another node's, or "
          "reported twice)",
          {{"token", w.token},
           {"node", std::string(node)},
           {"producer_node", w.producer.node},
           {"consumer_node", w.consumer.node}});
      continue;
    }
    // Nor is a token that another node holds locked on its word (read
    // without a lock: while this node is being reconciled, no connect can
    // move a token onto it). Its wiring there is stale: removed below
    // without the token.
    const std::optional<BindingState> committed = index_.Get(w.token);
    if (committed.has_value() && committed->node() != node) {
      ++result.disconnected;
      LogInfo(
          "reconcile: removing stale wiring of a token now on another "
          "node",
          {{"token", w.token},
           {"node", std::string(node)},
           {"holder_node", committed->node()}});
      via.EndDisconnect(via.BeginDisconnect(w.token, w.producer, w.consumer));
      continue;
    }
    TokenIndex::TokenLock lock = acquire(w.token);
    if (!current()) break;
    const BindingState& st = lock.state();
    if (!w.partial && SameWiring(st, w)) {
      ++result.kept;
      kept.insert(w.token);
      MarkConnectedOrUnwire(lock, via);
      continue;
    }
    ++result.disconnected;
    LogInfo("reconcile: removing stale wiring",
            {{"token", w.token}, {"node", std::string(node)}});
    send(std::move(lock), via.BeginDisconnect(w.token, w.producer, w.consumer),
         false);
  }
  drain();
  if (!current()) return result;

  // 2. Pairs we hold on this node that the agent lacks (lost, or never
  //    connected after an earlier failure): connect them. Collect first;
  //    each token is re-checked under its lock.
  std::vector<std::string> missing;
  index_.ForEachCommitted(
      [&](const std::string& token, const BindingState& st) {
        if (st.producer && st.consumer && st.node() == node &&
            !kept.contains(token)) {
          missing.push_back(token);
        }
      });
  for (const std::string& token : missing) {
    if (!current()) break;
    TokenIndex::TokenLock lock = acquire(token);
    if (!current()) break;
    const BindingState& st = lock.state();
    if (!st.producer || !st.consumer || st.node() != node) {
      continue;  // changed meanwhile
    }
    auto pending = via.BeginConnect(token, *st.producer, *st.consumer);
    send(std::move(lock), std::move(pending), true);
  }
  drain();
  return result;
}

}  // namespace irqbypass
