// A real Prometheus server (Debian's /usr/bin/prometheus) on loopback, with
// a generated config (scrape_interval 1s) and the project's alert rules,
// scrapes the real irqbypassd and irqbypass-agent while registrations run;
// PromQL over its HTTP API must see the lock-wait histogram's count rise and
// the agent's command counter, and the rules must be loaded.
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "tests/cluster.h"
#include "tests/metrics_support.h"

namespace irqbypass::testing {
namespace {

constexpr char kPrometheus[] = "/usr/bin/prometheus";

class PrometheusScrapeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(access(kPrometheus, X_OK), 0)
        << kPrometheus << " missing: run scripts/install-deps.sh (prometheus)";
    ASSERT_TRUE(cluster_.StartManager({"--metrics_listen=127.0.0.1:0"}));
    ASSERT_TRUE(cluster_.StartAgent("n1", {"--metrics_listen=127.0.0.1:0"}));
    const int manager = LoggedPort(cluster_.manager().Log(), "metrics_port");
    const int agent = LoggedPort(cluster_.agent("n1").Log(), "metrics_port");
    ASSERT_GT(manager, 0);
    ASSERT_GT(agent, 0);

    const std::string dir = cluster_.dir();
    const std::string config = dir + "/prometheus.yml";
    std::ofstream(config) << "global:\n"
                             "  scrape_interval: 1s\n"
                             "  scrape_timeout: 1s\n"
                             "  evaluation_interval: 1s\n"
                             "rule_files:\n"
                             "  - "
                          << BinaryPath(
                                 "deploy/prometheus/irqbypass-alerts.yml")
                          << "\n"
                             "scrape_configs:\n"
                             "  - job_name: irqbypassd\n"
                             "    static_configs:\n"
                             "      - targets: ['127.0.0.1:"
                          << manager
                          << "']\n"
                             "  - job_name: irqbypass-agent\n"
                             "    static_configs:\n"
                             "      - targets: ['127.0.0.1:"
                          << agent << "']\n";
    // Prometheus cannot report a port it picked; take one that is free now
    // (retry once if another process grabbed it meanwhile).
    for (int attempt = 0; attempt < 3; ++attempt) {
      port_ = FreeLoopbackPort();
      prometheus_ = std::make_unique<Process>();
      ASSERT_TRUE(prometheus_->Start(
          kPrometheus,
          {"--config.file=" + config,
           "--storage.tsdb.path=" + dir + "/tsdb" + std::to_string(attempt),
           "--web.listen-address=127.0.0.1:" + std::to_string(port_),
           "--log.level=warn"},
          dir + "/prometheus.log"));
      if (Eventually([&] { return HttpGet(port_, "/-/ready").has_value(); },
                     absl::Seconds(30))) {
        return;
      }
      prometheus_->Signal(SIGKILL);
      prometheus_->Wait();
    }
    FAIL() << "prometheus did not become ready:\n"
           << ReadFile(dir + "/prometheus.log");
  }

  void TearDown() override {
    stop_ = true;
    if (load_.joinable()) load_.join();
    if (prometheus_ != nullptr) {
      prometheus_->Signal(SIGTERM);
      prometheus_->Wait(std::chrono::seconds(20));
    }
  }

  // Registers, pairs and unregisters tokens until TearDown.
  void StartLoad() {
    load_ = std::thread([this] {
      auto& api = cluster_.client();
      for (int i = 0; !stop_; ++i) {
        const std::string token = "load-" + std::to_string(i % 50);
        (void)api.RegisterConsumer(MakeConsumer(token, "n1", "vm-a", i % 50));
        (void)api.RegisterProducer(
            MakeProducer(token, "n1", "0000:3b:00.1", i % 50));
        (void)api.UnregisterProducer(token);
        (void)api.UnregisterConsumer(token);
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }

  // Waits (up to `timeout`) for `promql` to return a value above `above`.
  std::optional<double> WaitAbove(const std::string& promql, double above,
                                  std::chrono::seconds timeout) {
    std::optional<double> last;
    Eventually(
        [&] {
          last = QueryPrometheus(port_, promql);
          return last.has_value() && *last > above;
        },
        absl::FromChrono(timeout));
    return last;
  }

  Cluster cluster_;
  int port_ = 0;
  std::unique_ptr<Process> prometheus_;
  std::thread load_;
  std::atomic<bool> stop_{false};
};

TEST_F(PrometheusScrapeTest, UnderLoad_PromQLSeesLockWaitCountRise) {
  StartLoad();
  const std::string lock_waits =
      "sum(irqbypass_index_lock_wait_seconds_count{job=\"irqbypassd\","
      "op=~\"register_.*\"})";
  const auto first = WaitAbove(lock_waits, 0, std::chrono::seconds(60));
  ASSERT_TRUE(first.has_value() && *first > 0)
      << "no lock-wait samples; prometheus log:\n"
      << ReadFile(cluster_.dir() + "/prometheus.log");
  const auto later = WaitAbove(lock_waits, *first, std::chrono::seconds(30));
  ASSERT_TRUE(later.has_value());
  EXPECT_GT(*later, *first) << "the count did not rise between scrapes";

  EXPECT_EQ(QueryPrometheus(port_, "up{job=\"irqbypassd\"}"), 1.0);
  EXPECT_EQ(QueryPrometheus(port_, "up{job=\"irqbypass-agent\"}"), 1.0);
  const auto agent_commands = WaitAbove(
      "sum(irqbypass_agent_commands_total{job=\"irqbypass-agent\","
      "command=\"connect\",result=\"ok\"})",
      0, std::chrono::seconds(30));
  EXPECT_TRUE(agent_commands.has_value() && *agent_commands > 0);
  const auto rpc_rate = WaitAbove(
      "sum(rate(irqbypass_grpc_server_handling_seconds_count{grpc_method="
      "\"RegisterProducer\",grpc_code=\"OK\"}[10s]))",
      0, std::chrono::seconds(30));
  EXPECT_TRUE(rpc_rate.has_value() && *rpc_rate > 0);
  // A quantile over the sharded histogram's buckets is a number.
  const auto p99 =
      QueryPrometheus(port_,
                      "histogram_quantile(0.99, sum by (le) (rate("
                      "irqbypass_index_lock_wait_seconds_bucket[10s])))");
  EXPECT_TRUE(p99.has_value());
  EXPECT_EQ(QueryPrometheus(port_, "irqbypass_agents_connected"), 1.0);

  // The alert rules loaded and evaluate.
  const auto rules = HttpGet(port_, "/api/v1/rules");
  ASSERT_TRUE(rules.has_value());
  EXPECT_NE(rules->find("IrqbypassIndexLockWaitHigh"), std::string::npos);
  EXPECT_EQ(rules->find("\"health\":\"err\""), std::string::npos) << *rules;
}

}  // namespace
}  // namespace irqbypass::testing
