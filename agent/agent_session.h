// AgentSession: the node agent's connection to the manager (irqbypassd). It
// keeps one irqbypass.v1.AgentControl/Session stream open: on every (re)connect
// it sends AgentHello {node, backend name, Backend::Inventory(), version}
// (a long inventory in parts: HelloMessages),
// then executes each Command the manager sends with StepExecutor on a pool
// of workers (CommandScheduler: in the order received per token, device
// vector and VM; unrelated commands concurrently), and writes one
// CommandAck (same id) per command, as each finishes.
//
// When the stream fails or ends it reconnects forever with exponential
// backoff (100 ms doubling to 5 s, +/-20% jitter; reset once a session is
// established), so the agent survives manager restarts: the new hello
// re-reports what is wired. A command that has started always runs to the
// end, even if the stream breaks meanwhile; the manager reconciles from the
// next hello.
//
// Uses the gRPC synchronous API: the thread that calls Run() reads, one
// writer thread per session sends the acks, and the scheduler's workers run
// the commands.
//
// Thread-safety: Run() is called once, on one thread; Shutdown() may be
// called from any thread, any number of times.
//
// (Namespace irqbypass::agent: the manager has its own, unrelated session
// type for the other end of this stream.)
#ifndef IRQBYPASS_AGENT_AGENT_SESSION_H_
#define IRQBYPASS_AGENT_AGENT_SESSION_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/time/time.h"
#include "agent/backend.h"
#include "agent/command_scheduler.h"
#include "agent/step_executor.h"
#include "common/mutex.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/status.h"

namespace irqbypass {
namespace agent {

class AgentMetrics;

// Pairs per message of the inventory: AgentHello carries the first
// kWiredPerMessage, WiredMore messages the rest (about 100 bytes a pair, so
// every message stays near 50 KiB however much is wired, and under 1 MiB,
// irqbypassd's message limit, even with every field at its longest: about
// 1.5 KB a pair).
inline constexpr size_t kWiredPerMessage = 500;

// The hello of a session: AgentHello with `wired`, split as above.
std::vector<v1::AgentMessage> HelloMessages(const std::string& node,
                                            const std::string& backend,
                                            const std::string& version,
                                            std::vector<v1::WiredPair> wired,
                                            size_t per_message);

struct AgentSessionOptions {
  // The manager's AgentControl address: "host:port" or any gRPC target; or
  // several replicas' "host:port" comma-separated (common/target_list.h), tried
  // in turn: the session moves to the next one whenever a session ends or
  // cannot start (a standby refuses it), so it finds the leader.
  std::string manager_address = "127.0.0.1:50051";
  // This host's name, as producers and consumers name it (Producer.node).
  std::string node;
  // Reported in AgentHello.agent_version.
  std::string agent_version;
  // Reconnect backoff: the first delay, doubled per failed attempt up to the
  // maximum; each delay is jittered by +/-20%.
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  // HTTP/2 keepalive pings, to notice a manager host that vanished without
  // closing the connection. irqbypassd accepts pings every 5 s or more
  // (a stock gRPC server only every 5 min: raise this for one). Zero
  // disables.
  absl::Duration keepalive_time = absl::Seconds(30);
  // Commands executed and sessions (agent_metrics.h); may be null. Must
  // outlive the session.
  AgentMetrics* metrics = nullptr;
  // Commands executed at once (CommandScheduler): unrelated commands run
  // concurrently; those for one token, device vector or VM in order.
  int command_workers = 8;
  // The channel's credentials (mutual TLS: security/tls.h); null means
  // plaintext (--insecure).
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

// What orders a command against others (CommandScheduler keys): its token,
// its producer's device vector and its consumer's VM.
std::vector<std::string> CommandKeys(const v1::Command& command);

class AgentSession {
 public:
  // `backend` must outlive the session.
  AgentSession(AgentSessionOptions options, Backend& backend);

  AgentSession(const AgentSession&) = delete;
  AgentSession& operator=(const AgentSession&) = delete;

  // Connects, serves, reconnects; returns only after Shutdown(). Call once.
  void Run();

  // Makes Run() return promptly: cancels the open stream (or the connect in
  // progress) and wakes a backoff sleep. A command being executed finishes
  // first. Idempotent.
  void Shutdown();

  // Makes the agent re-report its wiring now: ends the open stream (or the
  // connect in progress, or the backoff sleep) and reconnects at once, so
  // the manager reconciles from a fresh AgentHello. For wiring that changed
  // outside of a command (a VMM went away: kvm_backend.h). A command being
  // executed finishes first; its ack may be lost, and the manager then
  // treats it as failed and reconciles. Thread-safe; idempotent until the
  // reconnect happens.
  void Resync();

  // Number of sessions established so far (a ManagerHello was received).
  // For tests and diagnostics.
  uint64_t sessions_established() const;

  // The newest leader epoch seen from any manager (0: none). Commands and
  // sessions from older epochs are refused. For tests and diagnostics.
  uint64_t highest_epoch() const;

 private:
  struct SessionOutcome {
    bool established;     // the manager sent at least one message
    grpc::Status status;  // how the stream ended
  };

  // One stream: connect, hello, serve commands until the stream ends.
  SessionOutcome RunOneSession();
  // Sleeps `delay`, or less if Shutdown() is called. False on shutdown.
  bool SleepUnlessShutdown(absl::Duration delay);
  absl::Duration Jittered(absl::Duration delay);

  const AgentSessionOptions options_;
  const std::vector<std::string> managers_;
  size_t current_ = 0;  // index into managers_; the Run() thread only
  Backend& backend_;
  StepExecutor executor_;
  CommandScheduler scheduler_;
  absl::BitGen bitgen_;  // Used by the Run() thread only.

  mutable Mutex mu_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool resync_ ABSL_GUARDED_BY(mu_) = false;
  // The context of the stream in progress, so Shutdown() can cancel it.
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
  uint64_t sessions_established_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t highest_epoch_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_AGENT_SESSION_H_
