// ServiceMetrics: irqbypassd's own metrics, in Prometheus conventions (base
// units, _total counters). The hot-path series — index lock waits, unary RPC
// latency, agent round trips — are ShardedHistograms (per-thread cells merged
// at scrape time, no lock, no allocation); rare events (connect failures,
// agent sessions, retries) are prometheus-cpp counters. State gauges are
// computed at scrape time (metrics_endpoint.h).
//
// Series (see README "Metrics"):
//   irqbypass_index_lock_wait_seconds{op}                       histogram
//   irqbypass_grpc_server_handling_seconds{grpc_service,grpc_method,grpc_code}
//   irqbypass_agent_round_trip_seconds{command,result}          histogram
//   irqbypass_connect_failures_total{step,errno}                counter
//   irqbypass_disconnects_deferred_total                        counter
//   irqbypass_agent_sessions_total{node}                        counter
//   irqbypass_agent_commands_retried_total{command}             counter
//
// Thread-safe; every method may be called from any thread.
#ifndef IRQBYPASS_SERVICE_SERVICE_METRICS_H_
#define IRQBYPASS_SERVICE_SERVICE_METRICS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "metrics/sharded_histogram.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/registry.h"
#include "service/token_index.h"

namespace irqbypass {

// The unary RPCs the latency histogram names; anything else is kOther
// (grpc_service="other", grpc_method="other").
enum class RpcMethod : uint8_t {
  kRegisterProducer = 0,
  kRegisterConsumer,
  kUnregisterProducer,
  kUnregisterConsumer,
  kGetBinding,
  kListBindings,
  kHealthCheck,  // grpc.health.v1.Health/Check (Kubernetes probes)
  kOther,
};
inline constexpr int kNumRpcMethods = 8;
// "/irqbypass.v1.BypassManager/GetBinding" -> kGetBinding.
RpcMethod RpcMethodFromPath(absl::string_view path);

enum class AgentCommand : uint8_t { kConnect = 0, kDisconnect };
enum class AgentCommandResult : uint8_t {
  kOk = 0,       // acknowledged, success
  kFailed,       // acknowledged, a step failed
  kUnavailable,  // no agent, or it went away
  kTimeout,      // no ack before the deadline
};

class ServiceMetrics final : public LockWaitObserver {
 public:
  ServiceMetrics();
  ~ServiceMetrics() override;
  ServiceMetrics(const ServiceMetrics&) = delete;
  ServiceMetrics& operator=(const ServiceMetrics&) = delete;

  // LockWaitObserver: irqbypass_index_lock_wait_seconds{op}.
  void OnLockWait(LockOp op, size_t shard, int64_t wait_ns) override;

  // A unary RPC finished with `code` (a grpc::StatusCode value, 0..16).
  void ObserveRpc(RpcMethod method, int code, int64_t ns);

  // A connect/disconnect round trip to an agent finished.
  void ObserveAgentRoundTrip(AgentCommand command, AgentCommandResult result,
                             int64_t ns);

  // A connect failed. For a step the agent reported: the step name
  // ("add_producer") and errno. When the agent could not be asked:
  // step "dispatch" and ENOTCONN (no agent) or ETIMEDOUT (no ack).
  void ConnectFailed(absl::string_view step, int err);
  void DisconnectDeferred();
  // An agent session for `node` began (first connect and every reconnect).
  void AgentSessionStarted(const std::string& node);
  // Reconciliation re-sent `n` commands of this kind.
  void CommandsRetried(AgentCommand command, int n);

  // What the /metrics endpoint collects.
  std::vector<std::shared_ptr<prometheus::Collectable>> Collectables() const;

 private:
  std::shared_ptr<metrics::ShardedHistogram> lock_wait_;
  std::shared_ptr<metrics::ShardedHistogram> rpc_;
  std::shared_ptr<metrics::ShardedHistogram> round_trip_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& connect_failures_;
  prometheus::Counter& disconnects_deferred_;
  prometheus::Family<prometheus::Counter>& agent_sessions_;
  prometheus::Counter* retried_[2];
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_SERVICE_METRICS_H_
