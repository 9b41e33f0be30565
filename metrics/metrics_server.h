// MetricsServer: serves Prometheus text exposition on http://LISTEN/metrics
// with prometheus-cpp's Exposer (civetweb), for irqbypassd and the agent.
// Whatever is registered is collected on each scrape. Thread-safe.
#ifndef IRQBYPASS_METRICS_METRICS_SERVER_H_
#define IRQBYPASS_METRICS_METRICS_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"

namespace prometheus {
class Exposer;
}  // namespace prometheus

namespace irqbypass {
namespace metrics {

class MetricsServer {
 public:
  // `listen` is HOST:PORT (port 0: any free port, see port()).
  // INVALID_ARGUMENT when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& listen);
  ~MetricsServer();

  // Adds `collectable` to every later scrape; the server keeps it alive.
  void Register(std::shared_ptr<prometheus::Collectable> collectable);

  // The bound port.
  int port() const;

 private:
  MetricsServer() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::vector<std::shared_ptr<prometheus::Collectable>> owned_;
};

}  // namespace metrics
}  // namespace irqbypass

#endif  // IRQBYPASS_METRICS_METRICS_SERVER_H_
