#include "metrics/metrics_server.h"

#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "prometheus/exposer.h"

namespace irqbypass {
namespace metrics {

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& listen) {
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  try {
    // civetweb reports a bind failure by throwing; keep it inside here.
    server->exposer_ = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot serve metrics on ", listen, ": ", e.what()));
  }
  return server;
}

MetricsServer::~MetricsServer() {
  // Stop serving before the collectables go away.
  exposer_.reset();
}

void MetricsServer::Register(
    std::shared_ptr<prometheus::Collectable> collectable) {
  exposer_->RegisterCollectable(collectable);
  owned_.push_back(std::move(collectable));
}

int MetricsServer::port() const {
  auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

}  // namespace metrics
}  // namespace irqbypass
