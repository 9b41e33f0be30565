// AgentRegistry: the manager's side of the AgentControl protocol. It serves
// the agents' long-lived Session streams (one per node; a newer stream for a
// node replaces the older), and implements AgentDispatcher by sending
// Connect/Disconnect commands on the right stream and waiting for the ack
// with a deadline, so that no RPC ever hangs on a dead agent.
//
// When an agent (re)connects, its AgentHello lists what it has wired; the
// registry runs Matcher::Reconcile for that node on a thread of its own,
// with commands bound to that session, which re-sends missing connects and
// removes stale wiring (including disconnects that could not be delivered
// while the agent was away). Only then does the node take commands from
// registrations again (until then they fail UNAVAILABLE).
//
// Thread-safe. Lock order: registry mu_ before a session's mu.
#ifndef IRQBYPASS_SERVICE_AGENT_REGISTRY_H_
#define IRQBYPASS_SERVICE_AGENT_REGISTRY_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "protocol/agent_protocol.h"
#include "protos/irqbypass/v1/agent.grpc.pb.h"
#include "service/agent_dispatcher.h"
#include "service/authorizer.h"
#include "service/leadership.h"
#include "service/matcher.h"
#include "service/service_metrics.h"

namespace irqbypass {

// Served on gRPC's callback API (AgentControl.Session is a bidi reactor):
// no thread waits on a session's stream; a reconciliation runs on a thread
// of its own while it lasts.
class AgentRegistry final : public AgentDispatcher,
                            public v1::AgentControl::WithCallbackMethod_Session<
                                v1::AgentControl::Service> {
 public:
  struct Options {
    // How long a connect or disconnect may wait for the agent's ack.
    absl::Duration command_timeout = absl::Seconds(5);
    // Round-trip latency, connect failures, sessions, retries; may be null.
    // Must outlive the registry.
    ServiceMetrics* metrics = nullptr;
    // Most wired pairs one agent's hello may report.
    size_t max_wired_per_hello = 4'000'000;
    // Null: always serving, epoch 0. Otherwise a standby refuses sessions
    // (UNAVAILABLE naming the leader) and a leader's commands carry its
    // epoch. Must outlive the registry.
    const Leadership* leadership = nullptr;
    // Checks each session's caller: an agent, whose hello names its own
    // node. Null (in-process tests only): none. Must outlive the registry.
    const Authorizer* authorizer = nullptr;
    // A stream whose first message (the hello) has not come this long
    // after it opened is ended (it holds a connection and a reactor).
    absl::Duration hello_timeout = absl::Seconds(10);
    // A session is ended this long after it was admitted (the agent
    // reconnects at once and is reconciled, keeping its wiring), so a
    // rotated or revoked certificate takes effect within this time. Zero:
    // never.
    absl::Duration max_session_age = absl::Hours(1);
    // Most commands one node's session may have waiting for acks; a
    // connect past it is refused RESOURCE_EXHAUSTED (disconnects always
    // go). Zero: no limit.
    size_t max_backlog = 10000;
  };

  explicit AgentRegistry(Options options);
  ~AgentRegistry() override;

  // The matcher used for reconciliation; set once before serving.
  void SetMatcher(Matcher* matcher) { matcher_ = matcher; }

  // AgentControl.
  grpc::ServerBidiReactor<v1::AgentMessage, v1::ManagerMessage>* Session(
      grpc::CallbackServerContext* context) override;

  // AgentDispatcher.
  absl::Status Connect(absl::string_view token, const ProducerRecord& producer,
                       const ConsumerRecord& consumer) override;
  void Disconnect(absl::string_view token, const ProducerRecord& producer,
                  const ConsumerRecord& consumer) override;
  // No thread waits: the continuation runs on the thread that reads the
  // agent's ack, on the one that ends the session, or on the registry's
  // deadline thread (command_timeout after the command was queued).
  void ConnectAsync(absl::string_view token, const ProducerRecord& producer,
                    const ConsumerRecord& consumer, ConnectedFn done) override;
  void DisconnectAsync(absl::string_view token, const ProducerRecord& producer,
                       const ConsumerRecord& consumer,
                       DisconnectedFn done) override;

  // Nodes with a live, reconciled session, sorted.
  std::vector<std::string> ConnectedNodes() const;

  // What the registry knows of a node's agent: its current session, or the
  // last one since this manager started.
  struct NodeInfo {
    std::string backend;
    std::string agent_version;
    std::string peer;
    absl::Time started = absl::InfinitePast();
    absl::Time ended = absl::InfinitePast();  // InfinitePast: still open
    std::optional<ReconcileResult> last_reconcile;
    absl::Duration last_reconcile_duration;
    absl::Time last_reconcile_finished = absl::InfinitePast();
  };
  struct NodeStatus {
    std::string node;
    bool connected = false;   // a session is open
    bool reconciled = false;  // ... and takes commands
    size_t commands_in_flight = 0;
    NodeInfo info;
  };
  // Every node whose agent had a session since this manager started, sorted.
  std::vector<NodeStatus> NodeStatuses() const;
  std::optional<NodeStatus> FindNodeStatus(absl::string_view node) const;

  // Ends every session (agents will reconnect to the next manager) and
  // refuses new ones. Called on shutdown before the server stops.
  void Shutdown();

 private:
  class AgentSession;
  class BoundDispatcher;

  class SessionReactor;

  // A session, step by step: its reactor reads the hello (validated) and
  // its inventory; Admit makes the session the node's latest (the one it
  // replaces ended); its reconciliation runs on its own thread
  // (StartReconcile); the reactor reads acks until the stream ends; then
  // Forget.
  grpc::Status Admit(const std::shared_ptr<AgentSession>& session,
                     const v1::AgentHello& hello, const std::string& peer,
                     size_t wired);
  void ReconcileSession(std::shared_ptr<AgentSession> session,
                        std::vector<WiredPair> wired, absl::Time hello_at);
  // ReconcileSession on a new thread, then the session told it ended.
  void StartReconcile(std::shared_ptr<AgentSession> session,
                      std::vector<WiredPair> wired, absl::Time hello_at);
  void Forget(const std::shared_ptr<AgentSession>& session);
  NodeStatus StatusLocked(const std::string& node, const NodeInfo& info) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The node's session that is open to commands (reconciled), or null.
  std::shared_ptr<AgentSession> Find(absl::string_view node) const;
  // The node's newest session, reconciled or not, or null.
  std::shared_ptr<AgentSession> FindLatest(absl::string_view node) const;
  struct InFlight;
  // A command for the pair on `session` (null: none; its outcome is then
  // UNAVAILABLE) with a deadline from now, not sent yet.
  std::unique_ptr<InFlight> NewFlight(
      const std::shared_ptr<AgentSession>& session, absl::string_view token,
      const ProducerRecord& producer, const ConsumerRecord& consumer);
  // NewFlight, sent, for a thread to wait on (AwaitAck).
  std::unique_ptr<InFlight> Start(const std::shared_ptr<AgentSession>& session,
                                  v1::Command::Kind kind,
                                  absl::string_view token,
                                  const ProducerRecord& producer,
                                  const ConsumerRecord& consumer);
  // NewFlight, sent; `then` runs once with it when its ack comes, the
  // session ends or its deadline passes (or at once if it cannot be sent).
  void StartThen(const std::shared_ptr<AgentSession>& session,
                 v1::Command::Kind kind, absl::string_view token,
                 const ProducerRecord& producer, const ConsumerRecord& consumer,
                 absl::AnyInvocable<void(InFlight&) &&> then);
  // The command's ack, or why there is none; once it is settled.
  absl::StatusOr<v1::CommandAck> AckOf(InFlight& flight);
  // Waits for the command's ack until its deadline, then AckOf.
  absl::StatusOr<v1::CommandAck> AwaitAck(InFlight& flight);
  // What a settled connect means to the matcher (as Connect returns), with
  // its metrics and, after a timeout, the disconnect queued behind it; and
  // the same for a disconnect.
  absl::Status ConnectOutcome(InFlight& flight,
                              absl::StatusOr<v1::CommandAck> ack);
  void DisconnectOutcome(InFlight& flight, absl::StatusOr<v1::CommandAck> ack);
  // Start, AwaitAck, then the outcome.
  absl::Status FinishConnect(InFlight& flight);
  void FinishDisconnect(InFlight& flight);
  // Expires continuations' commands whose ack did not come in time.
  void DeadlineLoop();
  absl::Status ConnectOn(const std::shared_ptr<AgentSession>& session,
                         absl::string_view token,
                         const ProducerRecord& producer,
                         const ConsumerRecord& consumer);
  void DisconnectOn(const std::shared_ptr<AgentSession>& session,
                    absl::string_view token, const ProducerRecord& producer,
                    const ConsumerRecord& consumer);

  const Options options_;
  Matcher* matcher_ = nullptr;
  // Deadlines of continuations' commands (earliest first). Entries stay
  // until their time even when the ack came first (Expire then finds
  // nothing), so there are at most command_timeout x command rate.
  // Or of a stream: `stream` set, the stream is ended then if it is still
  // live (and, for `hello`, has sent no hello).
  struct StreamWatch;
  struct Deadline {
    std::chrono::steady_clock::time_point at;
    std::weak_ptr<AgentSession> session;
    uint64_t id = 0;
    std::weak_ptr<StreamWatch> stream;
    bool hello = false;
    bool operator>(const Deadline& o) const { return at > o.at; }
  };
  void AddDeadline(Deadline deadline) ABSL_LOCKS_EXCLUDED(deadline_mu_);
  static void ExpireStream(const Deadline& deadline);
  Mutex deadline_mu_;
  CondVar deadline_cv_;
  std::priority_queue<Deadline, std::vector<Deadline>, std::greater<Deadline>>
      deadlines_ ABSL_GUARDED_BY(deadline_mu_);
  bool deadlines_stop_ ABSL_GUARDED_BY(deadline_mu_) = false;
  std::thread deadline_thread_;
  // Reconciliations' threads; joined once done (when the next starts, and
  // in the destructor).
  struct Reconciler {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  Mutex reconcilers_mu_;
  std::vector<Reconciler> reconcilers_ ABSL_GUARDED_BY(reconcilers_mu_);
  mutable Mutex mu_;
  // Per node: the newest session (reconciling or open), and the session open
  // to commands (the same one, once it is reconciled).
  absl::flat_hash_map<std::string, std::shared_ptr<AgentSession>> latest_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<AgentSession>> sessions_
      ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  // One entry per node name that ever had a session here (sessions are
  // admitted per node, so this grows with the fleet, not with traffic).
  absl::flat_hash_map<std::string, NodeInfo> node_info_ ABSL_GUARDED_BY(mu_);
};

// A CONNECT or DISCONNECT command for the pair, with its steps (no id yet).
v1::Command MakeCommand(v1::Command::Kind kind, absl::string_view token,
                        const ProducerRecord& producer,
                        const ConsumerRecord& consumer);
// The outcome of a connect as the matcher sees it: OK, or
// FAILED_PRECONDITION (kConnectFailed) with the step, errno and message.
absl::Status ConnectAckToStatus(absl::string_view token,
                                const std::string& node,
                                const v1::CommandAck& ack);

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_AGENT_REGISTRY_H_
