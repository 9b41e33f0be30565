#include "service/metrics_endpoint.h"

#include <exception>
#include <vector>

#include "absl/strings/str_cat.h"
#include "prometheus/collectable.h"
#include "prometheus/exposer.h"
#include "prometheus/metric_family.h"

namespace irqbypass {
namespace {

prometheus::MetricFamily Gauge(const std::string& name, const std::string& help,
                               double value) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = prometheus::MetricType::Gauge;
  prometheus::ClientMetric metric;
  metric.gauge.value = value;
  family.metric.push_back(std::move(metric));
  return family;
}

class StateCollector : public prometheus::Collectable {
 public:
  StateCollector(const TokenIndex& index, const AgentRegistry& registry)
      : index_(index), registry_(registry) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    const TokenIndex::Counts counts = index_.CountAll();
    return {
        Gauge("irqbypass_producers", "Registered producers.",
              static_cast<double>(counts.producers)),
        Gauge("irqbypass_consumers", "Registered consumers.",
              static_cast<double>(counts.consumers)),
        Gauge("irqbypass_connected_pairs",
              "Tokens whose producer and consumer are connected.",
              static_cast<double>(counts.connected)),
        Gauge("irqbypass_agents_connected",
              "Node agents with a live session.",
              static_cast<double>(registry_.ConnectedNodes().size())),
    };
  }

 private:
  const TokenIndex& index_;
  const AgentRegistry& registry_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Create(
    const std::string& listen, const TokenIndex& index,
    const AgentRegistry& registry) {
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint());
  try {
    // civetweb reports a bind failure by throwing; keep it inside here.
    endpoint->exposer_ = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot serve metrics on ", listen, ": ", e.what()));
  }
  auto collector = std::make_shared<StateCollector>(index, registry);
  endpoint->exposer_->RegisterCollectable(collector);
  endpoint->collectable_ = collector;
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() = default;

int MetricsEndpoint::port() const {
  auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

}  // namespace irqbypass
