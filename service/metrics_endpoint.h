// MetricsEndpoint: serves Prometheus text exposition on /metrics
// (prometheus-cpp's Exposer). For now it exports the state gauges, computed
// at scrape time from the index and the agent registry so the registration
// path pays nothing; latency histograms come with the observability work.
// Thread-safe.
#ifndef IRQBYPASS_SERVICE_METRICS_ENDPOINT_H_
#define IRQBYPASS_SERVICE_METRICS_ENDPOINT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "service/agent_registry.h"
#include "service/token_index.h"

namespace prometheus {
class Exposer;
}  // namespace prometheus

namespace irqbypass {

class MetricsEndpoint {
 public:
  // INVALID_ARGUMENT when `listen` cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Create(
      const std::string& listen, const TokenIndex& index,
      const AgentRegistry& registry);
  ~MetricsEndpoint();

  int port() const;

 private:
  MetricsEndpoint() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<void> collectable_;
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_METRICS_ENDPOINT_H_
