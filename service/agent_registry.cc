#include "service/agent_registry.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/errno_name.h"
#include "common/log.h"
#include "protocol/agent_protocol.h"
#include "service/errors.h"
#include "service/validation.h"

namespace irqbypass {

// One agent's stream. Commands get ids; acks complete the waiting caller.
// Callers never write to the stream themselves: they queue, and the session
// keeps one write in flight on the stream's reactor, taking everything queued
// meanwhile as the next write (packed into CommandBatch messages when the
// agent reads them), so a slow or stuck agent cannot block an RPC beyond its
// ack deadline and no thread waits on the stream.
class AgentRegistry::AgentSession {
 public:
  struct Pending {
    uint64_t id = 0;
    CondVar done_cv;
    bool done = false;       // guarded by the session's mu_
    bool closed = false;     // the session ended before the ack
    bool timed_out = false;  // (a continuation's) deadline passed first
    v1::CommandAck ack;
    // A continuation (ConnectAsync, DisconnectAsync): run once, with no
    // lock held, when the ack comes, the session ends or the deadline
    // passes (Expire). Null: a thread waits (Wait).
    absl::AnyInvocable<void() &&> then;
  };

  // `epoch`: the leader epoch every command carries.
  // `batches`: the agent reads CommandBatch messages.
  // `reactor` and `context`: the stream's, used until Detach.
  AgentSession(std::string node, uint64_t epoch, bool batches,
               SessionReactor* reactor, grpc::CallbackServerContext* context)
      : node_(std::move(node)),
        epoch_(epoch),
        batches_(batches),
        reactor_(reactor),
        context_(context) {}

  const std::string& node() const { return node_; }

  // Queues `command` with a fresh id and returns the slot its ack will
  // complete (also completed, as closed, if the session ends). Null when the
  // session is closed.
  std::shared_ptr<Pending> Send(v1::Command command) {
    auto pending = std::make_shared<Pending>();
    return Enqueue(std::move(command), pending) ? pending : nullptr;
  }

  // Queues `command` without waiting for its ack.
  void Post(v1::Command command) { Enqueue(std::move(command), nullptr); }

  // Waits for the ack until `deadline`. Returns false on timeout (the slot
  // is dropped; a late ack is ignored).
  bool Wait(Pending& pending, std::chrono::steady_clock::time_point deadline) {
    MutexLock lock(&mu_);
    while (!pending.done) {
      if (!pending.done_cv.WaitUntil(&mu_, deadline) && !pending.done) {
        pending_.erase(pending.id);
        return false;
      }
    }
    return true;
  }

  void Complete(v1::CommandAck&& ack) {
    absl::AnyInvocable<void() &&> then;
    {
      MutexLock lock(&mu_);
      auto it = pending_.find(ack.id());
      if (it == pending_.end()) return;  // timed out earlier, or not awaited
      it->second->ack = std::move(ack);
      it->second->done = true;
      it->second->done_cv.SignalAll();
      then = std::move(it->second->then);
      pending_.erase(it);
    }
    if (then) std::move(then)();
  }

  // A continuation's deadline passed: unless its ack came first, it is
  // dropped (a late ack is ignored) and runs as timed out.
  void Expire(uint64_t id) {
    absl::AnyInvocable<void() &&> then;
    {
      MutexLock lock(&mu_);
      auto it = pending_.find(id);
      if (it == pending_.end() || !it->second->then) return;
      it->second->timed_out = true;
      it->second->done = true;
      then = std::move(it->second->then);
      pending_.erase(it);
    }
    std::move(then)();
  }

  // Starts the stream's writes with `hello` (the manager's hello), ahead
  // of every command queued since the session was admitted.
  void Open(v1::ManagerMessage hello) {
    MutexLock lock(&mu_);
    if (closed_) return;
    // Once per session, before anything else is written.
    outbox_.insert(outbox_.begin(), std::move(hello));
    open_ = true;
    MaybeWriteLocked();
  }

  // Fails every waiting command and refuses new ones; queued messages are
  // dropped (a write in flight completes).
  void Close() {
    std::vector<absl::AnyInvocable<void() &&>> continuations;
    {
      MutexLock lock(&mu_);
      closed_ = true;
      outbox_.clear();
      for (auto& [id, pending] : pending_) {
        pending->closed = true;
        pending->done = true;
        pending->done_cv.SignalAll();
        if (pending->then) continuations.push_back(std::move(pending->then));
      }
      pending_.clear();
    }
    for (auto& then : continuations) std::move(then)();
  }

  // Ends the stream from the manager's side (the agent sees CANCELLED; the
  // reads end, and with them the session).
  void Cancel() {
    MutexLock lock(&mu_);
    if (context_ != nullptr) context_->TryCancel();
  }

  bool closed() const {
    MutexLock lock(&mu_);
    return closed_;
  }

  // Commands sent and awaiting their ack.
  size_t InFlight() const {
    MutexLock lock(&mu_);
    return pending_.size();
  }

  // Queues `command`; its ack will complete `pending` (null: none awaited).
  // Everything but the id is built before the lock is taken. False when
  // the session is closed.
  bool Enqueue(v1::Command command, const std::shared_ptr<Pending>& pending) {
    v1::ManagerMessage msg;
    *msg.mutable_command() = std::move(command);
    msg.mutable_command()->set_epoch(epoch_);
    MutexLock lock(&mu_);
    if (closed_) return false;
    const uint64_t id = next_id_++;
    msg.mutable_command()->set_id(id);
    if (pending != nullptr) {
      pending->id = id;
      pending_.emplace(id, pending);
    }
    outbox_.push_back(std::move(msg));
    MaybeWriteLocked();
    return true;
  }

  // The reactor's OnWriteDone: the next message of the current write, or
  // what was queued meanwhile; on failure the session closes and the
  // stream is cancelled (its reads end too).
  void WriteDone(bool ok) {
    bool finish = false;
    {
      MutexLock lock(&mu_);
      if (ok && !closed_ && ++write_pos_ < writes_.size()) {
        StartWriteLocked();
        return;
      }
      writing_ = false;
      writes_.clear();
      if (ok) MaybeWriteLocked();
      if (ok && writing_) return;
      finish = ShouldFinishLocked();
    }
    if (!ok) {
      Close();
      Cancel();
    }
    if (finish) FinishStream();
  }

  // The reads ended (the stream is over for the agent): the stream is
  // finished once the reconciliation and a write in flight are done.
  void ReadsEnded() {
    bool finish;
    {
      MutexLock lock(&mu_);
      reads_ended_ = true;
      // A write the agent will never read (it half-closed) would hold the
      // stream open until keepalive noticed: end it now.
      if (writing_ && context_ != nullptr) context_->TryCancel();
      finish = ShouldFinishLocked();
    }
    if (finish) FinishStream();
  }

  // The reconciliation of this session's hello ended (on its thread).
  void ReconcileEnded() {
    bool finish;
    {
      MutexLock lock(&mu_);
      reconciling_ = false;
      finish = ShouldFinishLocked();
    }
    if (finish) FinishStream();
  }

  // The reactor's OnDone: the stream and its context are gone.
  void Detach() {
    MutexLock lock(&mu_);
    reactor_ = nullptr;
    context_ = nullptr;
  }

 private:
  // Most commands in one CommandBatch message (about 150 bytes each).
  static constexpr int kMaxCommandsPerMessage = 1024;

  // Starts a write of everything queued, unless one is in flight.
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!open_ || writing_ || closed_ || reactor_ == nullptr ||
        outbox_.empty()) {
      return;
    }
    writes_.swap(outbox_);  // writes_ is empty: no write is in flight
    outbox_.clear();
    if (batches_ && writes_.size() > 1) {
      PackRuns(
          writes_, kMaxCommandsPerMessage,
          [](v1::ManagerMessage& m) {
            return m.has_command() ? m.mutable_command() : nullptr;
          },
          [](v1::ManagerMessage& m) {
            return m.mutable_commands()->mutable_commands();
          });
    }
    write_pos_ = 0;
    writing_ = true;
    StartWriteLocked();
  }

  // Writes writes_[write_pos_]. gRPC never runs OnWriteDone on this stack,
  // so it is safe under mu_.
  void StartWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Whether the stream may be finished now (once: it then is).
  bool ShouldFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finishing_ || !reads_ended_ || reconciling_ || writing_ ||
        reactor_ == nullptr) {
      return false;
    }
    finishing_ = true;
    return true;
  }
  // Finishes the stream (OK: the session simply ended). The reactor lives
  // until its OnDone, which comes after this.
  void FinishStream();

  const std::string node_;
  const uint64_t epoch_;
  const bool batches_;
  mutable Mutex mu_;
  SessionReactor* reactor_ ABSL_GUARDED_BY(mu_);
  grpc::CallbackServerContext* context_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::ManagerMessage> outbox_ ABSL_GUARDED_BY(mu_);
  // The write in flight: writes_[write_pos_], then the rest of writes_.
  std::vector<v1::ManagerMessage> writes_ ABSL_GUARDED_BY(mu_);
  size_t write_pos_ ABSL_GUARDED_BY(mu_) = 0;
  bool open_ ABSL_GUARDED_BY(mu_) = false;  // the hello is queued
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool first_write_ ABSL_GUARDED_BY(mu_) = true;
  bool reads_ended_ ABSL_GUARDED_BY(mu_) = false;
  bool reconciling_ ABSL_GUARDED_BY(mu_) = true;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Pending>> pending_
      ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// One command on its way to an agent: sent (or refused), its ack awaited
// by AwaitAck.
struct AgentRegistry::InFlight : AgentDispatcher::Pending {
  std::shared_ptr<AgentSession> session;
  std::shared_ptr<AgentSession::Pending> pending;  // null: not sent
  std::string token;
  ProducerRecord producer;
  ConsumerRecord consumer;
  std::chrono::steady_clock::time_point started;
  std::chrono::steady_clock::time_point deadline;
  // Sent behind others (reconciliation): the agent runs commands one at a
  // time, so this one's deadline counts from when it is waited for (the
  // previous one's ack), not from when it was queued.
  bool pipelined = false;
  // A connect not sent: the node already had max_backlog commands waiting
  // for its agent (its outcome: RESOURCE_EXHAUSTED).
  bool backlog_full = false;
};

// Routes a reconciliation's commands to the session whose hello it is
// reconciling, never to a newer one.
class AgentRegistry::BoundDispatcher : public AgentDispatcher {
 public:
  BoundDispatcher(AgentRegistry& registry,
                  std::shared_ptr<AgentSession> session)
      : registry_(registry), session_(std::move(session)) {}
  absl::Status Connect(absl::string_view token, const ProducerRecord& p,
                       const ConsumerRecord& c) override {
    return registry_.ConnectOn(session_, token, p, c);
  }
  void Disconnect(absl::string_view token, const ProducerRecord& p,
                  const ConsumerRecord& c) override {
    registry_.DisconnectOn(session_, token, p, c);
  }
  // Pipelined: the command is queued now, its ack awaited in End*.
  std::unique_ptr<Pending> BeginConnect(absl::string_view token,
                                        const ProducerRecord& p,
                                        const ConsumerRecord& c) override {
    auto flight = registry_.Start(session_, v1::Command::CONNECT, token, p, c);
    flight->pipelined = true;
    return flight;
  }
  absl::Status EndConnect(std::unique_ptr<Pending> pending) override {
    return registry_.FinishConnect(static_cast<InFlight&>(*pending));
  }
  std::unique_ptr<Pending> BeginDisconnect(absl::string_view token,
                                           const ProducerRecord& p,
                                           const ConsumerRecord& c) override {
    auto flight =
        registry_.Start(session_, v1::Command::DISCONNECT, token, p, c);
    flight->pipelined = true;
    return flight;
  }
  void EndDisconnect(std::unique_ptr<Pending> pending) override {
    registry_.FinishDisconnect(static_cast<InFlight&>(*pending));
  }

 private:
  AgentRegistry& registry_;
  const std::shared_ptr<AgentSession> session_;
};

namespace {

// Latency and outcome of one connect/disconnect round trip; for a connect
// that failed, also the failing step and errno.
void RecordRoundTrip(ServiceMetrics* metrics, AgentCommand command,
                     std::chrono::steady_clock::time_point started,
                     const absl::StatusOr<v1::CommandAck>& ack) {
  if (metrics == nullptr) return;
  const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                         std::chrono::steady_clock::now() - started)
                         .count();
  AgentCommandResult result = AgentCommandResult::kOk;
  if (!ack.ok()) {
    const bool timeout =
        ack.status().code() == absl::StatusCode::kDeadlineExceeded;
    result = timeout ? AgentCommandResult::kTimeout
                     : AgentCommandResult::kUnavailable;
    if (command == AgentCommand::kConnect) {
      metrics->ConnectFailed("dispatch", timeout ? ETIMEDOUT : ENOTCONN);
    }
  } else if (!ack->ok()) {
    result = AgentCommandResult::kFailed;
    if (command == AgentCommand::kConnect) {
      metrics->ConnectFailed(StepName(ack->failed_step()), ack->errno_value());
    }
  }
  metrics->ObserveAgentRoundTrip(command, result, ns);
}

}  // namespace

v1::Command MakeCommand(v1::Command::Kind kind, absl::string_view token,
                        const ProducerRecord& producer,
                        const ConsumerRecord& consumer) {
  v1::Command command;
  command.set_kind(kind);
  command.set_token(std::string(token));
  ProducerToProto(token, producer, command.mutable_producer());
  ConsumerToProto(token, consumer, command.mutable_consumer());
  if (kind == v1::Command::CONNECT) {
    AddConnectSteps(&command);
  } else {
    AddDisconnectSteps(&command);
  }
  return command;
}

absl::Status ConnectAckToStatus(absl::string_view token,
                                const std::string& node,
                                const v1::CommandAck& ack) {
  if (ack.ok()) return absl::OkStatus();
  ErrorContext ctx;
  ctx.token = std::string(token);
  ctx.node = node;
  ctx.step = StepName(ack.failed_step());
  ctx.err = ack.errno_value();
  ctx.agent_message = ack.message();
  return MakeError(
      absl::StatusCode::kFailedPrecondition, ErrorReason::kConnectFailed,
      absl::StrCat("connect step ", ctx.step, " failed on node \"", node,
                   "\": ", ErrnoName(ctx.err), " (", ack.message(), ")"),
      ctx);
}

AgentRegistry::AgentRegistry(Options options) : options_(options) {
  deadline_thread_ = std::thread([this] { DeadlineLoop(); });
}

AgentRegistry::~AgentRegistry() {
  Shutdown();
  std::vector<Reconciler> reconcilers;
  {
    MutexLock lock(&reconcilers_mu_);
    reconcilers.swap(reconcilers_);
  }
  for (Reconciler& r : reconcilers) r.thread.join();
  {
    MutexLock lock(&deadline_mu_);
    deadlines_stop_ = true;
    deadline_cv_.Signal();
  }
  deadline_thread_.join();
}

std::shared_ptr<AgentRegistry::AgentSession> AgentRegistry::Find(
    absl::string_view node) const {
  MutexLock lock(&mu_);
  auto it = sessions_.find(node);
  return it == sessions_.end() ? nullptr : it->second;
}

std::shared_ptr<AgentRegistry::AgentSession> AgentRegistry::FindLatest(
    absl::string_view node) const {
  MutexLock lock(&mu_);
  auto it = latest_.find(node);
  return it == latest_.end() ? nullptr : it->second;
}

std::vector<AgentRegistry::NodeStatus> AgentRegistry::NodeStatuses() const {
  std::vector<NodeStatus> out;
  {
    MutexLock lock(&mu_);
    out.reserve(node_info_.size());
    for (const auto& [node, info] : node_info_) {
      out.push_back(StatusLocked(node, info));
    }
  }
  std::sort(
      out.begin(), out.end(),
      [](const NodeStatus& a, const NodeStatus& b) { return a.node < b.node; });
  return out;
}

std::optional<AgentRegistry::NodeStatus> AgentRegistry::FindNodeStatus(
    absl::string_view node) const {
  MutexLock lock(&mu_);
  auto info = node_info_.find(node);
  if (info == node_info_.end()) return std::nullopt;
  return StatusLocked(info->first, info->second);
}

AgentRegistry::NodeStatus AgentRegistry::StatusLocked(
    const std::string& node, const NodeInfo& info) const {
  NodeStatus st;
  st.node = node;
  st.info = info;
  auto latest = latest_.find(node);
  st.connected = latest != latest_.end();
  st.reconciled = sessions_.contains(node);
  if (st.connected) st.commands_in_flight = latest->second->InFlight();
  return st;
}

std::vector<std::string> AgentRegistry::ConnectedNodes() const {
  std::vector<std::string> nodes;
  {
    MutexLock lock(&mu_);
    for (const auto& [node, session] : sessions_) nodes.push_back(node);
  }
  std::sort(nodes.begin(), nodes.end());
  return nodes;
}

void AgentRegistry::Shutdown() {
  std::vector<std::shared_ptr<AgentSession>> sessions;
  {
    MutexLock lock(&mu_);
    shutting_down_ = true;
    for (auto& [node, session] : latest_) sessions.push_back(session);
  }
  for (auto& session : sessions) {
    session->Close();
    session->Cancel();
  }
}

namespace {

// Adds the well-formed pairs of `from` to `to`; PERMISSION_DENIED if one
// names another node (an agent reports only its own node's wiring).
grpc::Status AddWired(
    const std::string& node,
    const google::protobuf::RepeatedPtrField<v1::WiredPair>& from,
    std::vector<WiredPair>* to) {
  for (const v1::WiredPair& w : from) {
    if (w.producer().node() != node || w.consumer().node() != node) {
      return grpc::Status(
          grpc::StatusCode::PERMISSION_DENIED,
          absl::StrCat("wired: token \"", w.token(), "\" names node \"",
                       w.producer().node() != node ? w.producer().node()
                                                   : w.consumer().node(),
                       "\"; this session is node \"", node,
                       "\"'s and reports only its wiring"));
    }
    auto p = ProducerFromProto(w.producer());
    auto c = ConsumerFromProto(w.consumer());
    if (!p.ok() || !c.ok() || !ValidateToken("wired.token", w.token()).ok() ||
        w.producer().token() != w.token() ||
        w.consumer().token() != w.token()) {
      LogWarn("agent reported malformed wiring; ignored",
              {{"node", node}, {"token", w.token()}});
      continue;
    }
    to->push_back(
        WiredPair{w.token(), *std::move(p), *std::move(c), w.partial()});
  }
  return grpc::Status::OK;
}

}  // namespace

// What the deadline thread needs to end a session stream: its context
// while the stream lives (cleared in OnDone, under mu), and whether the
// hello came.
struct AgentRegistry::StreamWatch {
  Mutex mu;
  grpc::CallbackServerContext* context ABSL_GUARDED_BY(mu) = nullptr;
  bool hello ABSL_GUARDED_BY(mu) = false;
  std::string node ABSL_GUARDED_BY(mu);
  std::string peer;
};

// The Session stream on gRPC's callback API: reads the hello and its
// inventory, admits the session, starts its reconciliation (on a thread of
// its own, since Matcher::Reconcile waits), then reads acks until the agent
// or the manager ends the stream. Deletes itself in OnDone.
class AgentRegistry::SessionReactor final
    : public grpc::ServerBidiReactor<v1::AgentMessage, v1::ManagerMessage> {
 public:
  SessionReactor(AgentRegistry& registry, grpc::CallbackServerContext* context)
      : registry_(registry), context_(context) {
    if (const Authorizer* authz = registry_.options_.authorizer) {
      absl::StatusOr<security::Identity> id =
          authz->Check(*context, Access::kAgent, "Session");
      if (!id.ok()) {
        Finish(grpc::Status(static_cast<grpc::StatusCode>(id.status().code()),
                            std::string(id.status().message())));
        return;
      }
      if (!authz->insecure()) identity_ = *std::move(id);
    }
    if (registry_.options_.leadership != nullptr) {
      if (absl::Status s = registry_.options_.leadership->Check(); !s.ok()) {
        Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            std::string(s.message())));
        return;
      }
      epoch_ = registry_.options_.leadership->epoch();
    }
    watch_ = std::make_shared<StreamWatch>();
    watch_->peer = context->peer();
    {
      MutexLock lock(&watch_->mu);
      watch_->context = context;
    }
    if (registry_.options_.hello_timeout > absl::ZeroDuration()) {
      Deadline d;
      d.at = std::chrono::steady_clock::now() +
             absl::ToChronoNanoseconds(registry_.options_.hello_timeout);
      d.stream = watch_;
      d.hello = true;
      registry_.AddDeadline(std::move(d));
    }
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    switch (phase_) {
      case Phase::kHello:
        if (!ok) return Finish(grpc::Status::OK);
        hello_at_ = absl::Now();  // reconciliation starts here
        hello_ = std::move(in_);
        {
          MutexLock lock(&watch_->mu);
          watch_->hello = true;
          watch_->node = hello_.hello().node();
        }
        if (grpc::Status s = ReadHello(); !s.ok()) return Finish(s);
        if (!hello_.hello().wired_follows()) return Admit();
        phase_ = Phase::kInventory;
        StartRead(&in_);
        return;
      case Phase::kInventory:
        if (!ok) {
          return Finish(grpc::Status(grpc::StatusCode::CANCELLED,
                                     "stream ended inside the hello's "
                                     "inventory"));
        }
        if (grpc::Status s = ReadWiredMore(); !s.ok()) return Finish(s);
        if (in_.wired_more().last()) return Admit();
        StartRead(&in_);
        return;
      case Phase::kAcks:
        if (!ok) return ReadsEnded();
        if (in_.has_ack()) {
          session_->Complete(std::move(*in_.mutable_ack()));
        } else if (in_.has_acks()) {
          for (v1::CommandAck& ack : *in_.mutable_acks()->mutable_acks()) {
            session_->Complete(std::move(ack));
          }
        } else {
          LogWarn("unexpected message from agent; ignored",
                  {{"node", session_->node()}});
        }
        StartRead(&in_);
        return;
    }
  }

  void OnWriteDone(bool ok) override { session_->WriteDone(ok); }

  void OnDone() override {
    if (watch_ != nullptr) {
      MutexLock lock(&watch_->mu);
      watch_->context = nullptr;  // the deadline thread leaves it alone now
    }
    if (session_ != nullptr) session_->Detach();
    delete this;
  }

 private:
  enum class Phase { kHello, kInventory, kAcks };

  grpc::Status ReadHello() {
    if (!hello_.has_hello()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "hello: the first message of a session must be "
                          "AgentHello");
    }
    const v1::AgentHello& hello = hello_.hello();
    if (auto s = ValidateNode("hello.node", hello.node()); !s.ok()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          std::string(s.message()));
    }
    if (identity_.has_value() && hello.node() != identity_->name) {
      grpc::Status denied(
          grpc::StatusCode::PERMISSION_DENIED,
          absl::StrCat("hello.node \"", hello.node(),
                       "\": this agent's certificate (\"", identity_->uri,
                       "\") is for node \"", identity_->name, "\""));
      registry_.options_.authorizer->NoteDenied(
          "Session", absl::PermissionDeniedError(denied.error_message()),
          context_->peer(), &*identity_);
      return denied;
    }
    wired_.reserve(hello.wired_size());
    return AddWired(hello.node(), hello.wired(), &wired_);
  }

  grpc::Status ReadWiredMore() {
    if (!in_.has_wired_more()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "wired_more: AgentHello.wired_follows is set, so "
                          "WiredMore messages must follow it, up to the one "
                          "with last = true");
    }
    const size_t most = registry_.options_.max_wired_per_hello;
    if (wired_.size() + in_.wired_more().wired_size() > most) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          absl::StrCat("wired: an agent may report at most ",
                                       most, " wired pairs"));
    }
    return AddWired(hello_.hello().node(), in_.wired_more().wired(), &wired_);
  }

  void Admit() {
    const v1::AgentHello& hello = hello_.hello();
    // Set before the session is visible: from then on its writes (and so
    // OnWriteDone) may start on other threads.
    session_ = std::make_shared<AgentSession>(
        hello.node(), epoch_, hello.accepts_command_batches(), this, context_);
    if (grpc::Status s =
            registry_.Admit(session_, hello, context_->peer(), wired_.size());
        !s.ok()) {
      session_.reset();  // never visible, never written to
      return Finish(s);
    }
    phase_ = Phase::kAcks;
    v1::ManagerMessage hello_ack;
    hello_ack.mutable_hello()->set_epoch(epoch_);
    hello_ack.mutable_hello()->set_accepts_ack_batches(true);
    session_->Open(std::move(hello_ack));
    // Its commands' acks arrive through the reads started below.
    registry_.StartReconcile(session_, std::move(wired_), hello_at_);
    if (registry_.options_.max_session_age > absl::ZeroDuration()) {
      Deadline d;
      d.at = std::chrono::steady_clock::now() +
             absl::ToChronoNanoseconds(registry_.options_.max_session_age);
      d.stream = watch_;
      registry_.AddDeadline(std::move(d));
    }
    StartRead(&in_);
  }

  void ReadsEnded() {
    session_->Close();  // wakes waiters, including the reconciler's
    registry_.Forget(session_);
    LogInfo("agent disconnected", {{"node", session_->node()}});
    session_->ReadsEnded();
  }

  AgentRegistry& registry_;
  grpc::CallbackServerContext* const context_;
  uint64_t epoch_ = 0;
  Phase phase_ = Phase::kHello;
  // The caller's certificate identity (none with --insecure).
  std::optional<security::Identity> identity_;
  // For the hello and age deadlines (null if finished in the constructor).
  std::shared_ptr<StreamWatch> watch_;
  v1::AgentMessage in_;
  v1::AgentMessage hello_;
  absl::Time hello_at_;
  std::vector<WiredPair> wired_;
  std::shared_ptr<AgentSession> session_;  // set once admitted
};

void AgentRegistry::AgentSession::StartWriteLocked() {
  grpc::WriteOptions options;
  // Hold a message back only if another follows in this write, and never
  // the stream's first (it carries the initial metadata).
  if (!first_write_ && write_pos_ + 1 < writes_.size()) {
    options.set_buffer_hint();
  }
  first_write_ = false;
  reactor_->StartWrite(&writes_[write_pos_], options);
}

void AgentRegistry::AgentSession::FinishStream() {
  // reactor_ stays set until OnDone, which only follows this Finish.
  SessionReactor* reactor;
  {
    MutexLock lock(&mu_);
    reactor = reactor_;
  }
  reactor->Finish(grpc::Status::OK);
}

grpc::ServerBidiReactor<v1::AgentMessage, v1::ManagerMessage>*
AgentRegistry::Session(grpc::CallbackServerContext* context) {
  return new SessionReactor(*this, context);
}

void AgentRegistry::StartReconcile(std::shared_ptr<AgentSession> session,
                                   std::vector<WiredPair> wired,
                                   absl::Time hello_at) {
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::thread thread([this, session = std::move(session),
                      wired = std::move(wired), hello_at, done]() mutable {
    ReconcileSession(session, std::move(wired), hello_at);
    session->ReconcileEnded();
    done->store(true, std::memory_order_release);
  });
  MutexLock lock(&reconcilers_mu_);
  // Join the threads of reconciliations that ended (their joins are
  // immediate), so the list holds only running ones.
  auto running = std::partition(
      reconcilers_.begin(), reconcilers_.end(), [](const Reconciler& r) {
        return !r.done->load(std::memory_order_acquire);
      });
  for (auto it = running; it != reconcilers_.end(); ++it) {
    it->thread.join();
  }
  reconcilers_.erase(running, reconcilers_.end());
  reconcilers_.push_back(Reconciler{std::move(thread), std::move(done)});
}

grpc::Status AgentRegistry::Admit(const std::shared_ptr<AgentSession>& session,
                                  const v1::AgentHello& hello,
                                  const std::string& peer, size_t wired) {
  std::shared_ptr<AgentSession> replaced;
  {
    MutexLock lock(&mu_);
    if (shutting_down_) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "manager is shutting down");
    }
    // The node takes no new commands until this session is reconciled.
    replaced = std::exchange(latest_[hello.node()], session);
    sessions_.erase(hello.node());
    NodeInfo& info = node_info_[hello.node()];
    info.backend = hello.backend();
    info.agent_version = hello.agent_version();
    info.peer = peer;
    info.started = absl::Now();
    info.ended = absl::InfinitePast();
  }
  if (options_.metrics != nullptr) {
    options_.metrics->AgentSessionStarted(hello.node());
  }
  if (replaced != nullptr) {
    LogWarn("agent session replaced by a newer one", {{"node", hello.node()}});
    replaced->Close();
    replaced->Cancel();
  }
  LogInfo("agent connected", {{"node", hello.node()},
                              {"backend", hello.backend()},
                              {"wired", absl::StrCat(wired)},
                              {"peer", peer}});
  return grpc::Status::OK;
}

// Two invariants make a reconciliation safe when a newer session replaces
// this one midway:
//  1. every command of this reconciliation goes through this session
//     (BoundDispatcher), never through whatever session the node has now,
//     so it cannot reach the newer agent connection, and it stops at the
//     first token after `current()` turns false (the newer session's own
//     reconciliation handles the rest, from that agent's report);
//  2. the node is opened to commands (sessions_) only by the session that
//     is still the node's latest when its reconciliation ends, under mu_,
//     so a registration never sends to a session whose wiring was not
//     reconciled, and a replaced session never reopens the node.
void AgentRegistry::ReconcileSession(std::shared_ptr<AgentSession> session,
                                     std::vector<WiredPair> wired,
                                     absl::Time hello_at) {
  ReconcileResult r;
  if (matcher_ != nullptr) {
    BoundDispatcher via(*this, session);
    r = matcher_->Reconcile(session->node(), wired, via, [this, &session] {
      return !session->closed() &&
             (options_.leadership == nullptr || options_.leadership->leading());
    });
    if (options_.metrics != nullptr) {
      options_.metrics->CommandsRetried(AgentCommand::kConnect,
                                        r.reconnected + r.failed);
      options_.metrics->CommandsRetried(AgentCommand::kDisconnect,
                                        r.disconnected);
    }
  }
  const absl::Time finished = absl::Now();
  {
    MutexLock lock(&mu_);
    auto it = latest_.find(session->node());
    const bool current = it != latest_.end() && it->second == session;
    if (!shutting_down_ && !session->closed() && current) {
      sessions_[session->node()] = session;
    }
    if (current) {
      NodeInfo& info = node_info_[session->node()];
      info.last_reconcile = r;
      info.last_reconcile_duration = finished - hello_at;
      info.last_reconcile_finished = finished;
    }
  }
  LogInfo("agent reconciled",
          {{"node", session->node()},
           {"kept", absl::StrCat(r.kept)},
           {"disconnected", absl::StrCat(r.disconnected)},
           {"reconnected", absl::StrCat(r.reconnected)},
           {"failed", absl::StrCat(r.failed)},
           {"refused", absl::StrCat(r.refused)},
           {"duration_ms",
            absl::StrCat(absl::ToInt64Milliseconds(finished - hello_at))}});
}

void AgentRegistry::Forget(const std::shared_ptr<AgentSession>& session) {
  MutexLock lock(&mu_);
  auto it = sessions_.find(session->node());
  if (it != sessions_.end() && it->second == session) sessions_.erase(it);
  auto latest = latest_.find(session->node());
  if (latest != latest_.end() && latest->second == session) {
    latest_.erase(latest);
    node_info_[session->node()].ended = absl::Now();
  }
}

std::unique_ptr<AgentRegistry::InFlight> AgentRegistry::NewFlight(
    const std::shared_ptr<AgentSession>& session, absl::string_view token,
    const ProducerRecord& producer, const ConsumerRecord& consumer) {
  auto flight = std::make_unique<InFlight>();
  flight->session = session;
  flight->token = std::string(token);
  flight->producer = producer;
  flight->consumer = consumer;
  flight->started = std::chrono::steady_clock::now();
  flight->deadline =
      flight->started + absl::ToChronoNanoseconds(options_.command_timeout);
  return flight;
}

std::unique_ptr<AgentRegistry::InFlight> AgentRegistry::Start(
    const std::shared_ptr<AgentSession>& session, v1::Command::Kind kind,
    absl::string_view token, const ProducerRecord& producer,
    const ConsumerRecord& consumer) {
  auto flight = NewFlight(session, token, producer, consumer);
  if (session != nullptr) {
    flight->pending =
        session->Send(MakeCommand(kind, token, producer, consumer));
  }
  return flight;
}

void AgentRegistry::StartThen(const std::shared_ptr<AgentSession>& session,
                              v1::Command::Kind kind, absl::string_view token,
                              const ProducerRecord& producer,
                              const ConsumerRecord& consumer,
                              absl::AnyInvocable<void(InFlight&) &&> then) {
  std::unique_ptr<InFlight> flight =
      NewFlight(session, token, producer, consumer);
  if (session == nullptr) {
    std::move(then)(*flight);
    return;
  }
  // A connect is refused when the node's agent is that far behind (a
  // disconnect never is: it must reach the agent).
  if (kind == v1::Command::CONNECT && options_.max_backlog > 0 &&
      session->InFlight() >= options_.max_backlog) {
    flight->backlog_full = true;
    std::move(then)(*flight);
    return;
  }
  // The slot owns the flight and the continuation until one of the ack,
  // the session's end or the deadline runs it (which breaks the cycle
  // flight -> slot -> continuation -> flight).
  InFlight* const raw = flight.get();
  // Read before the command is queued: from then on its ack may run (and
  // free) the flight at any moment.
  const auto at = raw->deadline;
  auto pending = std::make_shared<AgentSession::Pending>();
  raw->pending = pending;
  pending->then = [flight = std::move(flight),
                   then = std::move(then)]() mutable {
    std::move(then)(*flight);
  };
  if (!session->Enqueue(MakeCommand(kind, token, producer, consumer),
                        pending)) {
    raw->pending = nullptr;  // not sent: the session went away
    absl::AnyInvocable<void()&&> run = std::move(pending->then);
    std::move(run)();
    return;
  }
  // The id was set by Enqueue, on this thread.
  Deadline deadline;
  deadline.at = at;
  deadline.session = session;
  deadline.id = pending->id;
  AddDeadline(std::move(deadline));
}

void AgentRegistry::AddDeadline(Deadline deadline) {
  MutexLock lock(&deadline_mu_);
  const bool earliest = deadlines_.empty() || deadline.at < deadlines_.top().at;
  deadlines_.push(std::move(deadline));
  if (earliest) deadline_cv_.Signal();
}

void AgentRegistry::ExpireStream(const Deadline& d) {
  std::shared_ptr<StreamWatch> watch = d.stream.lock();
  if (watch == nullptr) return;
  MutexLock lock(&watch->mu);
  if (watch->context == nullptr) return;  // done already
  if (d.hello) {
    if (watch->hello) return;
    LogWarn("agent stream ended: no hello in time", {{"peer", watch->peer}});
  } else {
    LogInfo("agent session ended: at its maximum age (the agent reconnects)",
            {{"node", watch->node}, {"peer", watch->peer}});
  }
  watch->context->TryCancel();
}

void AgentRegistry::DeadlineLoop() {
  std::vector<Deadline> expired;
  while (true) {
    {
      MutexLock lock(&deadline_mu_);
      while (!deadlines_stop_ &&
             (deadlines_.empty() ||
              deadlines_.top().at > std::chrono::steady_clock::now())) {
        if (deadlines_.empty()) {
          deadline_cv_.Wait(&deadline_mu_);
        } else {
          const auto at = deadlines_.top().at;
          deadline_cv_.WaitUntil(&deadline_mu_, at);
        }
      }
      if (deadlines_stop_) return;
      const auto now = std::chrono::steady_clock::now();
      while (!deadlines_.empty() && deadlines_.top().at <= now) {
        expired.push_back(deadlines_.top());
        deadlines_.pop();
      }
    }
    // Most have had their ack long ago: Expire finds nothing then.
    for (Deadline& d : expired) {
      if (!d.stream.expired()) {
        ExpireStream(d);
        continue;
      }
      if (std::shared_ptr<AgentSession> session = d.session.lock()) {
        session->Expire(d.id);
      }
    }
    expired.clear();
  }
}

absl::StatusOr<v1::CommandAck> AgentRegistry::AckOf(InFlight& flight) {
  const std::string& node = flight.producer.node;
  auto error = [&](absl::StatusCode code, ErrorReason reason,
                   absl::string_view message) {
    ErrorContext ctx;
    ctx.token = flight.token;
    ctx.node = node;
    return MakeError(code, reason, message, ctx);
  };
  if (flight.session == nullptr) {
    return error(absl::StatusCode::kUnavailable, ErrorReason::kAgentUnavailable,
                 absl::StrCat("no agent connected (and reconciled) for node \"",
                              node, "\""));
  }
  if (flight.backlog_full) {
    return error(
        absl::StatusCode::kResourceExhausted, ErrorReason::kAgentUnavailable,
        absl::StrCat("node \"", node, "\" has ", options_.max_backlog,
                     " commands waiting for its agent (--agent_backlog); "
                     "nothing was changed; retry later"));
  }
  if (flight.pending == nullptr) {
    return error(absl::StatusCode::kUnavailable, ErrorReason::kAgentUnavailable,
                 absl::StrCat("agent for node \"", node, "\" went away"));
  }
  if (flight.pending->timed_out) {
    return error(absl::StatusCode::kDeadlineExceeded,
                 ErrorReason::kAgentTimeout,
                 absl::StrCat("agent for node \"", node,
                              "\" did not acknowledge within ",
                              absl::FormatDuration(options_.command_timeout)));
  }
  if (flight.pending->closed) {
    return error(absl::StatusCode::kUnavailable, ErrorReason::kAgentUnavailable,
                 absl::StrCat("agent for node \"", node,
                              "\" went away before acknowledging"));
  }
  // Only this caller still holds the slot (it left the pending map).
  return std::move(flight.pending->ack);
}

absl::StatusOr<v1::CommandAck> AgentRegistry::AwaitAck(InFlight& flight) {
  if (flight.session != nullptr && flight.pending != nullptr) {
    if (flight.pipelined) {
      flight.deadline =
          std::max(flight.deadline,
                   std::chrono::steady_clock::now() +
                       absl::ToChronoNanoseconds(options_.command_timeout));
    }
    if (!flight.session->Wait(*flight.pending, flight.deadline)) {
      // Dropped from the session's map: only this thread sees it now.
      flight.pending->timed_out = true;
    }
  }
  return AckOf(flight);
}

absl::Status AgentRegistry::ConnectOutcome(InFlight& flight,
                                           absl::StatusOr<v1::CommandAck> ack) {
  RecordRoundTrip(options_.metrics, AgentCommand::kConnect, flight.started,
                  ack);
  if (!ack.ok()) {
    if (ack.status().code() == absl::StatusCode::kDeadlineExceeded) {
      // The agent may still run the connect late: queue a disconnect behind
      // it (the agent runs commands in order) so nothing stays wired.
      flight.session->Post(MakeCommand(v1::Command::DISCONNECT, flight.token,
                                       flight.producer, flight.consumer));
    }
    return ack.status();
  }
  return ConnectAckToStatus(flight.token, flight.producer.node, *ack);
}

void AgentRegistry::DisconnectOutcome(InFlight& flight,
                                      absl::StatusOr<v1::CommandAck> ack) {
  RecordRoundTrip(options_.metrics, AgentCommand::kDisconnect, flight.started,
                  ack);
  if (!ack.ok()) {
    if (options_.metrics != nullptr) options_.metrics->DisconnectDeferred();
    // Delivered by reconciliation when the agent is back: it will report
    // the pair as wired, and the manager no longer holds it.
    LogWarn("disconnect deferred until the agent reconnects",
            {{"token", flight.token},
             {"node", flight.producer.node},
             {"reason", std::string(ack.status().message())}});
    return;
  }
  if (!ack->ok()) {
    LogWarn("agent reported an error during disconnect",
            {{"token", flight.token},
             {"node", flight.producer.node},
             {"step", StepName(ack->failed_step())},
             {"errno", ErrnoName(ack->errno_value())},
             {"message", ack->message()}});
  }
}

absl::Status AgentRegistry::FinishConnect(InFlight& flight) {
  return ConnectOutcome(flight, AwaitAck(flight));
}

void AgentRegistry::FinishDisconnect(InFlight& flight) {
  DisconnectOutcome(flight, AwaitAck(flight));
}

void AgentRegistry::ConnectAsync(absl::string_view token,
                                 const ProducerRecord& producer,
                                 const ConsumerRecord& consumer,
                                 ConnectedFn done) {
  StartThen(Find(producer.node), v1::Command::CONNECT, token, producer,
            consumer, [this, done = std::move(done)](InFlight& flight) mutable {
              std::move(done)(ConnectOutcome(flight, AckOf(flight)));
            });
}

void AgentRegistry::DisconnectAsync(absl::string_view token,
                                    const ProducerRecord& producer,
                                    const ConsumerRecord& consumer,
                                    DisconnectedFn done) {
  // To the newest session, as Disconnect.
  StartThen(FindLatest(producer.node), v1::Command::DISCONNECT, token, producer,
            consumer, [this, done = std::move(done)](InFlight& flight) mutable {
              DisconnectOutcome(flight, AckOf(flight));
              std::move(done)();
            });
}

absl::Status AgentRegistry::Connect(absl::string_view token,
                                    const ProducerRecord& producer,
                                    const ConsumerRecord& consumer) {
  return ConnectOn(Find(producer.node), token, producer, consumer);
}

void AgentRegistry::Disconnect(absl::string_view token,
                               const ProducerRecord& producer,
                               const ConsumerRecord& consumer) {
  // Also to a session still being reconciled: it already took the hello
  // listing this pair, and the token's lock orders this against the
  // reconciliation's own commands for it.
  DisconnectOn(FindLatest(producer.node), token, producer, consumer);
}

absl::Status AgentRegistry::ConnectOn(
    const std::shared_ptr<AgentSession>& session, absl::string_view token,
    const ProducerRecord& producer, const ConsumerRecord& consumer) {
  return FinishConnect(
      *Start(session, v1::Command::CONNECT, token, producer, consumer));
}

void AgentRegistry::DisconnectOn(const std::shared_ptr<AgentSession>& session,
                                 absl::string_view token,
                                 const ProducerRecord& producer,
                                 const ConsumerRecord& consumer) {
  FinishDisconnect(
      *Start(session, v1::Command::DISCONNECT, token, producer, consumer));
}

}  // namespace irqbypass
