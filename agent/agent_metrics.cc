#include "agent/agent_metrics.h"

#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "common/errno_name.h"

namespace irqbypass {
namespace agent {
namespace {

constexpr const char* kCommandNames[] = {"connect", "disconnect"};

int CommandIndex(v1::Command::Kind kind) {
  return kind == v1::Command::DISCONNECT ? 1 : 0;
}

// Series index = StepKind value - 1 (STEP_UNSPECIFIED is never executed).
std::vector<std::vector<std::string>> StepSeries() {
  std::vector<std::vector<std::string>> series;
  for (int k = 1; k <= v1::StepKind_MAX; ++k) {
    series.push_back({v1::StepKind_IsValid(k)
                          ? absl::AsciiStrToLower(
                                v1::StepKind_Name(static_cast<v1::StepKind>(k)))
                          : "unknown"});
  }
  return series;
}

}  // namespace

AgentMetrics::AgentMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      step_errors_(prometheus::BuildCounter()
                       .Name("irqbypass_agent_backend_errors_total")
                       .Help("Backend steps that failed, by step and errno.")
                       .Register(*registry_)),
      sessions_(prometheus::BuildCounter()
                    .Name("irqbypass_agent_manager_sessions_total")
                    .Help("Sessions established with the manager (the first "
                          "and every reconnect).")
                    .Register(*registry_)
                    .Add({})),
      connected_(prometheus::BuildGauge()
                     .Name("irqbypass_agent_manager_connected")
                     .Help("1 while a session with the manager is up.")
                     .Register(*registry_)
                     .Add({})),
      plugin_registrations_(
          prometheus::BuildCounter()
              .Name("irqbypass_agent_device_plugin_registrations_total")
              .Help("Registrations of the device plugin with the kubelet, by "
                    "resource (the first and one after every kubelet "
                    "restart).")
              .Register(*registry_)),
      plugin_devices_(prometheus::BuildGauge()
                          .Name("irqbypass_agent_device_plugin_devices")
                          .Help("Devices (IOMMU groups) the device plugin "
                                "offers, by resource and health.")
                          .Register(*registry_)),
      plugin_allocated_(prometheus::BuildGauge()
                            .Name("irqbypass_agent_device_plugin_allocated")
                            .Help("Devices of the resource that pods hold, "
                                  "from the kubelet's pod-resources API.")
                            .Register(*registry_)) {
  auto& commands = prometheus::BuildCounter()
                       .Name("irqbypass_agent_commands_total")
                       .Help("Commands executed, by command and result.")
                       .Register(*registry_);
  for (int c = 0; c < 2; ++c) {
    commands_[c][0] =
        &commands.Add({{"command", kCommandNames[c]}, {"result", "ok"}});
    commands_[c][1] =
        &commands.Add({{"command", kCommandNames[c]}, {"result", "failed"}});
  }
  {
    metrics::ShardedHistogram::Options o;
    o.name = "irqbypass_agent_command_duration_seconds";
    o.help = "Time to execute a command's steps on this host, by command.";
    o.label_names = {"command"};
    o.series_labels = {{kCommandNames[0]}, {kCommandNames[1]}};
    o.bounds_seconds = metrics::DecadeBounds(1e-6, 10);
    o.cells = 4;  // one command at a time
    command_duration_ =
        std::make_shared<metrics::ShardedHistogram>(std::move(o));
  }
  {
    metrics::ShardedHistogram::Options o;
    o.name = "irqbypass_agent_backend_step_duration_seconds";
    o.help =
        "Latency of each backend step call (the kvm backend's ioctls), by "
        "step.";
    o.label_names = {"step"};
    o.series_labels = StepSeries();
    o.bounds_seconds = metrics::DecadeBounds(1e-7, 10);
    o.cells = 4;
    step_duration_ = std::make_shared<metrics::ShardedHistogram>(std::move(o));
  }
}

void AgentMetrics::CommandExecuted(v1::Command::Kind kind, bool ok,
                                   int64_t ns) {
  const int c = CommandIndex(kind);
  commands_[c][ok ? 0 : 1]->Increment();
  command_duration_->Observe(static_cast<size_t>(c), ns);
}

void AgentMetrics::StepExecuted(v1::StepKind step, int err, int64_t ns) {
  if (step > v1::STEP_UNSPECIFIED) {
    step_duration_->Observe(static_cast<size_t>(step) - 1, ns);
  }
  if (err != 0) {
    const std::string name =
        v1::StepKind_IsValid(step)
            ? absl::AsciiStrToLower(v1::StepKind_Name(step))
            : "unknown";
    step_errors_.Add({{"step", name}, {"errno", ErrnoName(err)}}).Increment();
  }
}

void AgentMetrics::ManagerSessionStarted() {
  sessions_.Increment();
  connected_.Set(1);
}

void AgentMetrics::ManagerSessionEnded() { connected_.Set(0); }

std::vector<std::shared_ptr<prometheus::Collectable>>
AgentMetrics::Collectables() const {
  return {command_duration_, step_duration_, registry_};
}

void AgentMetrics::DevicePluginRegistered(const std::string& resource) {
  plugin_registrations_.Add({{"resource", resource}}).Increment();
}

void AgentMetrics::DevicePluginAllocated(const std::string& resource, int n) {
  plugin_allocated_.Add({{"resource", resource}}).Set(n);
}

void AgentMetrics::DevicePluginDevices(const std::string& resource, int healthy,
                                       int unhealthy) {
  plugin_devices_.Add({{"resource", resource}, {"health", "healthy"}})
      .Set(healthy);
  plugin_devices_.Add({{"resource", resource}, {"health", "unhealthy"}})
      .Set(unhealthy);
}

}  // namespace agent
}  // namespace irqbypass
