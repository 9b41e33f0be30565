// MetricsEndpoint: irqbypassd's Prometheus /metrics (metrics::MetricsServer,
// prometheus-cpp's Exposer). It serves ServiceMetrics (latency histograms and
// event counters, service_metrics.h) and the state gauges, which are computed
// at scrape time from the index and the agent registry so the registration
// path pays nothing for them:
//   irqbypass_producers, irqbypass_consumers, irqbypass_connected_pairs,
//   irqbypass_agents_connected, irqbypass_agent_connected{node} (1 per node
//   with a live session).
// Thread-safe.
#ifndef IRQBYPASS_SERVICE_METRICS_ENDPOINT_H_
#define IRQBYPASS_SERVICE_METRICS_ENDPOINT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "metrics/metrics_server.h"
#include "service/agent_registry.h"
#include "service/rocksdb_store.h"
#include "service/service_metrics.h"
#include "service/token_index.h"

namespace irqbypass {

class MetricsEndpoint {
 public:
  // `index`, `registry`, `metrics` and `store` (null: none) must outlive
  // the endpoint. INVALID_ARGUMENT when `listen` cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Create(
      const std::string& listen, const TokenIndex& index,
      const AgentRegistry& registry, const ServiceMetrics& metrics,
      const RocksDbStore* store = nullptr);
  ~MetricsEndpoint();

  // The bound port (for --metrics_listen=HOST:0).
  int port() const;

 private:
  MetricsEndpoint() = default;
  std::unique_ptr<metrics::MetricsServer> server_;
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_METRICS_ENDPOINT_H_
