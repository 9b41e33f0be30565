#include "service/metrics_endpoint.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace irqbypass {
namespace {

// A family with one unlabelled sample of `type` (gauge or counter).
prometheus::MetricFamily OneSample(const std::string& name,
                                   const std::string& help,
                                   prometheus::MetricType type, double value) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
  return family;
}

prometheus::MetricFamily Gauge(const std::string& name, const std::string& help,
                               double value) {
  return OneSample(name, help, prometheus::MetricType::Gauge, value);
}

prometheus::MetricFamily Counter(const std::string& name,
                                 const std::string& help, double value) {
  return OneSample(name, help, prometheus::MetricType::Counter, value);
}

class StateCollector : public prometheus::Collectable {
 public:
  StateCollector(const TokenIndex& index, const AgentRegistry& registry)
      : index_(index), registry_(registry) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    absl::flat_hash_map<std::string, TokenIndex::Counts> by_node;
    const TokenIndex::Counts counts = index_.CountAll(&by_node);
    std::vector<std::pair<std::string, TokenIndex::Counts>> sorted(
        by_node.begin(), by_node.end());
    std::sort(sorted.begin(), sorted.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    auto per_node_gauge = [&](const char* name, const char* help,
                              size_t TokenIndex::Counts::*field) {
      prometheus::MetricFamily family;
      family.name = name;
      family.help = help;
      family.type = prometheus::MetricType::Gauge;
      for (const auto& [node, node_counts] : sorted) {
        prometheus::ClientMetric metric;
        metric.label.push_back({"node", node});
        metric.gauge.value = static_cast<double>(node_counts.*field);
        family.metric.push_back(std::move(metric));
      }
      return family;
    };
    const std::vector<std::string> nodes = registry_.ConnectedNodes();
    prometheus::MetricFamily per_node;
    per_node.name = "irqbypass_agent_connected";
    per_node.help = "1 for each node whose agent has a live session.";
    per_node.type = prometheus::MetricType::Gauge;
    for (const std::string& node : nodes) {
      prometheus::ClientMetric metric;
      metric.label.push_back({"node", node});
      metric.gauge.value = 1;
      per_node.metric.push_back(std::move(metric));
    }
    return {
        Gauge("irqbypass_producers", "Registered producers.",
              static_cast<double>(counts.producers)),
        Gauge("irqbypass_consumers", "Registered consumers.",
              static_cast<double>(counts.consumers)),
        Gauge("irqbypass_connected_pairs",
              "Tokens whose producer and consumer are connected.",
              static_cast<double>(counts.connected)),
        Gauge("irqbypass_agents_connected", "Node agents with a live session.",
              static_cast<double>(nodes.size())),
        std::move(per_node),
        per_node_gauge("irqbypass_node_producers",
                       "Registered producers on each node.",
                       &TokenIndex::Counts::producers),
        per_node_gauge("irqbypass_node_consumers",
                       "Registered consumers on each node.",
                       &TokenIndex::Counts::consumers),
        per_node_gauge("irqbypass_node_connected_pairs",
                       "Connected pairs on each node.",
                       &TokenIndex::Counts::connected),
    };
  }

 private:
  const TokenIndex& index_;
  const AgentRegistry& registry_;
};

// The embedded store's own statistics (RocksDB's tickers), read at scrape.
class StoreCollector : public prometheus::Collectable {
 public:
  explicit StoreCollector(const RocksDbStore& store) : store_(store) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    const RocksDbStore::Stats stats = store_.GetStats();
    return {
        Counter("irqbypass_store_writes_total",
                "Changes written durably to the embedded store.",
                static_cast<double>(stats.writes)),
        Counter("irqbypass_store_wal_syncs_total",
                "fsyncs of the embedded store's write-ahead log (one per "
                "write group: concurrent writes share one).",
                static_cast<double>(stats.wal_syncs)),
        Counter("irqbypass_store_wal_bytes_total",
                "Bytes appended to the embedded store's write-ahead log.",
                static_cast<double>(stats.wal_bytes)),
    };
  }

 private:
  const RocksDbStore& store_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Create(
    const std::string& listen, const TokenIndex& index,
    const AgentRegistry& registry, const ServiceMetrics& metrics,
    const RocksDbStore* store) {
  auto server = metrics::MetricsServer::Start(listen);
  if (!server.ok()) return server.status();
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint());
  endpoint->server_ = *std::move(server);
  endpoint->server_->Register(
      std::make_shared<StateCollector>(index, registry));
  if (store != nullptr) {
    endpoint->server_->Register(std::make_shared<StoreCollector>(*store));
  }
  for (auto& collectable : metrics.Collectables()) {
    endpoint->server_->Register(std::move(collectable));
  }
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() = default;

int MetricsEndpoint::port() const { return server_->port(); }

}  // namespace irqbypass
