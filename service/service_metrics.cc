#include "service/service_metrics.h"

#include <utility>

#include "common/errno_name.h"

namespace irqbypass {
namespace {

constexpr int kNumGrpcCodes = 17;
constexpr const char* kGrpcCodeNames[kNumGrpcCodes] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

struct MethodName {
  const char* service;
  const char* method;
};
constexpr MethodName kMethods[kNumRpcMethods] = {
    {"irqbypass.v1.BypassManager", "RegisterProducer"},
    {"irqbypass.v1.BypassManager", "RegisterConsumer"},
    {"irqbypass.v1.BypassManager", "UnregisterProducer"},
    {"irqbypass.v1.BypassManager", "UnregisterConsumer"},
    {"irqbypass.v1.BypassManager", "GetBinding"},
    {"irqbypass.v1.BypassManager", "ListBindings"},
    {"grpc.health.v1.Health", "Check"},
    {"other", "other"},
};

constexpr const char* kCommandNames[] = {"connect", "disconnect"};
constexpr const char* kResultNames[] = {"ok", "failed", "unavailable",
                                        "timeout"};
constexpr int kNumResults = 4;

// Index lock waits: from a token's op lock just released (~100 ns) to a
// token held across a slow agent round trip (seconds).
std::vector<double> LockWaitBounds() { return metrics::DecadeBounds(1e-7, 10); }
// RPCs and agent round trips: 50 us .. 10 s.
std::vector<double> LatencyBounds() { return metrics::DecadeBounds(5e-5, 10); }

}  // namespace

RpcMethod RpcMethodFromPath(absl::string_view path) {
  for (int i = 0; i < kNumRpcMethods - 1; ++i) {
    const absl::string_view service = kMethods[i].service;
    const absl::string_view method = kMethods[i].method;
    if (path.size() == service.size() + method.size() + 2 && path[0] == '/' &&
        path.substr(1, service.size()) == service &&
        path[service.size() + 1] == '/' &&
        path.substr(service.size() + 2) == method) {
      return static_cast<RpcMethod>(i);
    }
  }
  return RpcMethod::kOther;
}

ServiceMetrics::ServiceMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      connect_failures_(
          prometheus::BuildCounter()
              .Name("irqbypass_connect_failures_total")
              .Help("Connects that failed, by the failing step and errno "
                    "(step=\"dispatch\": the agent could not be asked; "
                    "ENOTCONN no agent, ETIMEDOUT no ack).")
              .Register(*registry_)),
      disconnects_deferred_(
          prometheus::BuildCounter()
              .Name("irqbypass_disconnects_deferred_total")
              .Help("Disconnects the agent could not be reached for; "
                    "delivered by reconciliation when it reconnects.")
              .Register(*registry_)
              .Add({})),
      agent_sessions_(prometheus::BuildCounter()
                          .Name("irqbypass_agent_sessions_total")
                          .Help("Agent sessions started (connects and "
                                "reconnects), by node.")
                          .Register(*registry_)) {
  {
    metrics::ShardedHistogram::Options o;
    o.name = "irqbypass_index_lock_wait_seconds";
    o.help =
        "Time each operation waited for its token's op lock (held by another "
        "operation on the same token; 0 when free), by operation.";
    o.label_names = {"op"};
    for (int i = 0; i < kNumLockOps; ++i) {
      o.series_labels.push_back({LockOpName(static_cast<LockOp>(i))});
    }
    o.bounds_seconds = LockWaitBounds();
    lock_wait_ = std::make_shared<metrics::ShardedHistogram>(std::move(o));
  }
  {
    metrics::ShardedHistogram::Options o;
    o.name = "irqbypass_grpc_server_handling_seconds";
    o.help =
        "Latency of unary RPCs, from call start to status sent, by method "
        "and status code.";
    o.label_names = {"grpc_service", "grpc_method", "grpc_code"};
    for (int m = 0; m < kNumRpcMethods; ++m) {
      for (int c = 0; c < kNumGrpcCodes; ++c) {
        o.series_labels.push_back(
            {kMethods[m].service, kMethods[m].method, kGrpcCodeNames[c]});
      }
    }
    o.bounds_seconds = LatencyBounds();
    o.export_empty_series = false;  // 136 combinations; most never happen
    rpc_ = std::make_shared<metrics::ShardedHistogram>(std::move(o));
  }
  {
    metrics::ShardedHistogram::Options o;
    o.name = "irqbypass_agent_round_trip_seconds";
    o.help =
        "Connect and disconnect latency through the node agent (command "
        "sent to ack received), by command and result.";
    o.label_names = {"command", "result"};
    for (const char* command : kCommandNames) {
      for (const char* result : kResultNames) {
        o.series_labels.push_back({command, result});
      }
    }
    o.bounds_seconds = LatencyBounds();
    round_trip_ = std::make_shared<metrics::ShardedHistogram>(std::move(o));
  }
  auto& retried = prometheus::BuildCounter()
                      .Name("irqbypass_agent_commands_retried_total")
                      .Help(
                          "Commands re-sent to an agent by reconciliation "
                          "after it reconnected, by command.")
                      .Register(*registry_);
  for (int i = 0; i < 2; ++i) {
    retried_[i] = &retried.Add({{"command", kCommandNames[i]}});
  }
}

ServiceMetrics::~ServiceMetrics() = default;

void ServiceMetrics::OnLockWait(LockOp op, size_t /*shard*/, int64_t wait_ns) {
  lock_wait_->Observe(static_cast<size_t>(op), wait_ns);
}

void ServiceMetrics::ObserveRpc(RpcMethod method, int code, int64_t ns) {
  if (code < 0 || code >= kNumGrpcCodes) code = 2;  // UNKNOWN
  rpc_->Observe(static_cast<size_t>(method) * kNumGrpcCodes + code, ns);
}

void ServiceMetrics::ObserveAgentRoundTrip(AgentCommand command,
                                           AgentCommandResult result,
                                           int64_t ns) {
  round_trip_->Observe(
      static_cast<size_t>(command) * kNumResults + static_cast<size_t>(result),
      ns);
}

void ServiceMetrics::ConnectFailed(absl::string_view step, int err) {
  connect_failures_
      .Add({{"step", std::string(step)}, {"errno", ErrnoName(err)}})
      .Increment();
}

void ServiceMetrics::DisconnectDeferred() { disconnects_deferred_.Increment(); }

void ServiceMetrics::AgentSessionStarted(const std::string& node) {
  agent_sessions_.Add({{"node", node}}).Increment();
}

void ServiceMetrics::CommandsRetried(AgentCommand command, int n) {
  if (n > 0) retried_[static_cast<int>(command)]->Increment(n);
}

std::vector<std::shared_ptr<prometheus::Collectable>>
ServiceMetrics::Collectables() const {
  return {lock_wait_, rpc_, round_trip_, registry_};
}

}  // namespace irqbypass
