#include "service/matcher.h"

#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
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

template <typename Side>
absl::StatusOr<RegisterResult> Register(TokenIndex& index,
                                        AgentDispatcher& dispatcher,
                                        absl::string_view token,
                                        typename Side::Record record,
                                        RequestRecord* request) {
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
  index.Read(token, [&](const BindingState& seen) {
    if (Side::Mine(seen).has_value()) taken = AlreadyHas<Side>(token, seen);
  });
  if (!taken.ok()) return taken;
  TokenIndex::TokenLock lock = index.Lock(token, Side::kRegisterOp);
  const BindingState& current = lock.state();

  if (Side::Mine(current).has_value()) return AlreadyHas<Side>(token, current);
  const auto& other = Side::Theirs(current);
  if (other.has_value() && other->node != record.node) {
    ErrorContext ctx;
    ctx.token = std::string(token);
    ctx.node = record.node;
    return MakeError(
        absl::StatusCode::kFailedPrecondition, ErrorReason::kNodeMismatch,
        absl::StrCat(Side::kName, " is on node \"", record.node, "\" but the ",
                     Side::kOtherName, " of token \"", token,
                     "\" is on node \"", other->node,
                     "\"; both sides must be on one node"),
        ctx);
  }
  const std::string object_key = Side::ObjectKey(record);
  // While a connect decides this registration, its claim is tentative: a
  // competing registration of the same object is told to retry, not that
  // the object is taken (the connect may still fail and free it).
  TokenIndex::TokenLock::Claim claim;
  if (auto holder = lock.ClaimObject(object_key, other.has_value(), &claim)) {
    ErrorContext ctx;
    ctx.token = std::string(token);
    ctx.node = record.node;
    ctx.other_token = holder->token;
    if (holder->tentative) {
      return MakeError(
          absl::StatusCode::kAborted, ErrorReason::kObjectBusy,
          absl::StrCat("the same ", Side::kName,
                       " is being registered under token \"", holder->token,
                       "\" (its connect is in progress); retry"),
          ctx);
    }
    return MakeError(absl::StatusCode::kAlreadyExists, ErrorReason::kObjectBusy,
                     absl::StrCat("the same ", Side::kName,
                                  " is already registered under token \"",
                                  holder->token, "\""),
                     ctx);
  }

  record.registration_id = NewRegistrationId();
  RegisterResult result;
  result.registration_id = record.registration_id;

  if (other.has_value()) {
    absl::Status connected = Side::Connect(dispatcher, token, record, *other);
    if (!connected.ok()) {
      // Contract: the new side is not recorded; the other stays untouched.
      lock.ReleaseObject(claim);
      LogWarn("connect failed", {{"token", std::string(token)},
                                 {"node", record.node},
                                 {"side", Side::kName},
                                 {"error", connected.ToString()}});
      return connected;
    }
    result.connected = true;
  }

  BindingState next = current;
  Side::Mine(next) = record;
  next.connected = result.connected;
  if (request != nullptr) {
    request->registration_id = result.registration_id;
    request->connected = result.connected;
  }
  absl::Status stored = lock.Stage(std::move(next), request);
  if (!stored.ok()) {
    // Not durable, so not made: undo the wiring (the other side stays as it
    // was, as after a failed connect).
    if (result.connected) Side::Disconnect(dispatcher, token, record, *other);
    lock.ReleaseObject(claim);
    LogWarn("registration not stored; rolled back",
            {{"token", std::string(token)},
             {"node", record.node},
             {"side", Side::kName},
             {"error", stored.ToString()}});
    return stored;
  }
  if (result.connected) lock.ConfirmObject(claim);
  lock.Publish();
  return result;
}

template <typename Side>
absl::StatusOr<bool> Unregister(TokenIndex& index, AgentDispatcher& dispatcher,
                                absl::string_view token,
                                uint64_t registration_id,
                                RequestRecord* request) {
  TokenIndex::TokenLock lock = index.Lock(token, Side::kUnregisterOp);
  const BindingState& current = lock.state();
  const auto& mine = Side::Mine(current);
  if (!mine.has_value()) {
    ErrorContext ctx;
    ctx.token = std::string(token);
    return MakeError(absl::StatusCode::kNotFound, ErrorReason::kNotRegistered,
                     absl::StrCat("token \"", token, "\" has no ", Side::kName),
                     ctx);
  }
  if (registration_id != 0 && registration_id != mine->registration_id) {
    ErrorContext ctx;
    ctx.token = std::string(token);
    ctx.node = mine->node;
    return MakeError(
        absl::StatusCode::kFailedPrecondition,
        ErrorReason::kRegistrationMismatch,
        absl::StrCat("registration_id does not match the ", Side::kName,
                     " that holds token \"", token, "\"; nothing was changed"),
        ctx);
  }
  // Durable first: if the store refuses, nothing changes (still wired). If
  // the manager dies after this, the agent's wiring is stale when it
  // reconnects and reconciliation removes it.
  const bool disconnected =
      current.connected && Side::Theirs(current).has_value();
  BindingState next = current;
  Side::Mine(next).reset();
  next.connected = false;
  if (request != nullptr) request->disconnected = disconnected;
  absl::Status stored = lock.Stage(std::move(next), request);
  if (!stored.ok()) return stored;
  // `current` stays valid until Publish.
  if (disconnected) {
    Side::Disconnect(dispatcher, token, *mine, *Side::Theirs(current));
  }
  lock.ReleaseObject(Side::ObjectKey(*mine));
  lock.Publish();
  return disconnected;
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
  thread_local std::mt19937_64 gen{std::random_device{}()};
  uint64_t id = 0;
  while (id == 0) id = gen();
  return id;
}

void FromRecord(const RequestRecord& r, RegisterResult* out) {
  out->registration_id = r.registration_id;
  out->connected = r.connected;
}

void FromRecord(const RequestRecord& r, bool* out) { *out = r.disconnected; }

template <typename T>
absl::StatusOr<T> Matcher::Once(
    const CallId* id, RequestKind kind, absl::string_view token,
    const std::function<absl::StatusOr<T>(RequestRecord*)>& call) {
  if (id == nullptr || id->id.empty() || requests_ == nullptr) {
    return call(nullptr);
  }
  RequestRecord first;
  switch (requests_->Start(id->id, kind, id->fingerprint, &first)) {
    case RequestLog::Claim::kNew:
      break;
    case RequestLog::Claim::kDone: {
      T result;
      FromRecord(first, &result);
      return result;
    }
    case RequestLog::Claim::kInProgress: {
      ErrorContext ctx;
      ctx.token = std::string(token);
      return MakeError(absl::StatusCode::kAborted,
                       ErrorReason::kRequestInProgress,
                       absl::StrCat("a call with request_id \"", id->id,
                                    "\" is in progress; retry"),
                       ctx);
    }
    case RequestLog::Claim::kMismatch: {
      ErrorContext ctx;
      ctx.field = "request_id";
      ctx.token = std::string(token);
      return MakeError(absl::StatusCode::kInvalidArgument,
                       ErrorReason::kInvalidField,
                       absl::StrCat("request_id: \"", id->id,
                                    "\" was used for a different request"),
                       ctx);
    }
  }
  RequestRecord record =
      requests_->NewRecord(id->id, kind, id->fingerprint, token);
  absl::StatusOr<T> result = call(&record);
  requests_->Finish(id->id, result.ok() ? &record : nullptr);
  return result;
}

absl::StatusOr<RegisterResult> Matcher::RegisterProducer(
    absl::string_view token, ProducerRecord producer, const CallId* call) {
  return Once<RegisterResult>(
      call, RequestKind::kRegisterProducer, token, [&](RequestRecord* request) {
        return Register<ProducerSide>(index_, dispatcher_, token,
                                      std::move(producer), request);
      });
}

absl::StatusOr<RegisterResult> Matcher::RegisterConsumer(
    absl::string_view token, ConsumerRecord consumer, const CallId* call) {
  return Once<RegisterResult>(
      call, RequestKind::kRegisterConsumer, token, [&](RequestRecord* request) {
        return Register<ConsumerSide>(index_, dispatcher_, token,
                                      std::move(consumer), request);
      });
}

absl::StatusOr<bool> Matcher::UnregisterProducer(absl::string_view token,
                                                 uint64_t registration_id,
                                                 const CallId* call) {
  return Once<bool>(call, RequestKind::kUnregisterProducer, token,
                    [&](RequestRecord* request) {
                      return Unregister<ProducerSide>(
                          index_, dispatcher_, token, registration_id, request);
                    });
}

absl::StatusOr<bool> Matcher::UnregisterConsumer(absl::string_view token,
                                                 uint64_t registration_id,
                                                 const CallId* call) {
  return Once<bool>(call, RequestKind::kUnregisterConsumer, token,
                    [&](RequestRecord* request) {
                      return Unregister<ConsumerSide>(
                          index_, dispatcher_, token, registration_id, request);
                    });
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
