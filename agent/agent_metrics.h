// AgentMetrics: the node agent's own Prometheus metrics, served on the
// agent's --metrics_listen. Who records what:
//   * AgentSession: commands executed and their latency, manager sessions.
//   * MeteredBackend (metered_backend.h): each backend step's latency (for
//     the kvm backend, the ioctls) and its errors by errno.
// Series:
//   irqbypass_agent_commands_total{command,result}        counter
//   irqbypass_agent_command_duration_seconds{command}     histogram
//   irqbypass_agent_backend_step_duration_seconds{step}   histogram
//   irqbypass_agent_backend_errors_total{step,errno}      counter
//   irqbypass_agent_manager_sessions_total                counter
//   irqbypass_agent_manager_connected                     gauge (0/1)
//   irqbypass_agent_device_plugin_registrations_total{resource}  counter
//   irqbypass_agent_device_plugin_devices{resource,health}       gauge
//   irqbypass_agent_device_plugin_allocated{resource}            gauge
// (resource: one of the --device_plugin_resources, so a fixed set)
// Thread-safe.
#ifndef IRQBYPASS_AGENT_AGENT_METRICS_H_
#define IRQBYPASS_AGENT_AGENT_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "metrics/sharded_histogram.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "protos/irqbypass/v1/agent.pb.h"

namespace irqbypass {
namespace agent {

class AgentMetrics {
 public:
  AgentMetrics();
  AgentMetrics(const AgentMetrics&) = delete;
  AgentMetrics& operator=(const AgentMetrics&) = delete;

  // One command ran to its ack (ok: every step succeeded).
  void CommandExecuted(v1::Command::Kind kind, bool ok, int64_t ns);
  // One backend step call, and its errno (0: success).
  void StepExecuted(v1::StepKind step, int err, int64_t ns);
  // A session with the manager was established / ended.
  void ManagerSessionStarted();
  void ManagerSessionEnded();
  // The device plugin for `resource` registered with the kubelet (the
  // first time and after every kubelet restart).
  void DevicePluginRegistered(const std::string& resource);
  // The plugin's device counts for `resource`.
  void DevicePluginDevices(const std::string& resource, int healthy,
                           int unhealthy);
  // Devices of `resource` that pods hold (pod-resources).
  void DevicePluginAllocated(const std::string& resource, int n);

  // What the /metrics endpoint collects.
  std::vector<std::shared_ptr<prometheus::Collectable>> Collectables() const;

 private:
  std::shared_ptr<metrics::ShardedHistogram> command_duration_;
  std::shared_ptr<metrics::ShardedHistogram> step_duration_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Counter* commands_[2][2];  // [connect|disconnect][ok|failed]
  prometheus::Family<prometheus::Counter>& step_errors_;
  prometheus::Counter& sessions_;
  prometheus::Gauge& connected_;
  prometheus::Family<prometheus::Counter>& plugin_registrations_;
  prometheus::Family<prometheus::Gauge>& plugin_devices_;
  prometheus::Family<prometheus::Gauge>& plugin_allocated_;
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_AGENT_METRICS_H_
