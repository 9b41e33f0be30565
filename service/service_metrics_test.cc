#include "service/service_metrics.h"

#include <cerrno>
#include <string>

#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace irqbypass {
namespace {

std::string Scrape(const ServiceMetrics& metrics) {
  std::vector<prometheus::MetricFamily> families;
  for (const auto& c : metrics.Collectables()) {
    for (auto& f : c->Collect()) families.push_back(std::move(f));
  }
  return prometheus::TextSerializer().Serialize(families);
}

bool Has(const std::string& text, const std::string& line) {
  return text.find(line) != std::string::npos;
}

TEST(ServiceMetricsTest, RpcMethodFromPath_KnownMethodsAndOther) {
  EXPECT_EQ(RpcMethodFromPath("/irqbypass.v1.BypassManager/RegisterProducer"),
            RpcMethod::kRegisterProducer);
  EXPECT_EQ(RpcMethodFromPath("/irqbypass.v1.BypassManager/ListBindings"),
            RpcMethod::kListBindings);
  EXPECT_EQ(RpcMethodFromPath("/grpc.health.v1.Health/Check"),
            RpcMethod::kHealthCheck);
  EXPECT_EQ(RpcMethodFromPath("/irqbypass.v1.BypassManager/GetBindingX"),
            RpcMethod::kOther);
  EXPECT_EQ(RpcMethodFromPath("/x/y"), RpcMethod::kOther);
  EXPECT_EQ(RpcMethodFromPath(""), RpcMethod::kOther);
}

TEST(ServiceMetricsTest, LockWait_ByOp_EveryOpExportedFromTheStart) {
  ServiceMetrics metrics;
  metrics.OnLockWait(LockOp::kRegisterProducer, 3, 150);
  const std::string text = Scrape(metrics);
  EXPECT_TRUE(Has(text,
                  "irqbypass_index_lock_wait_seconds_count{op=\"register_"
                  "producer\"} 1"))
      << text;
  EXPECT_TRUE(
      Has(text, "irqbypass_index_lock_wait_seconds_count{op=\"reconcile\"} 0"))
      << text;
  EXPECT_TRUE(Has(text,
                  "irqbypass_index_lock_wait_seconds_bucket{op=\"register_"
                  "producer\",le=\"2.5e-07\"} 1"))
      << text;
}

TEST(ServiceMetricsTest, Rpc_ByServiceMethodAndCode_OnlyObservedSeries) {
  ServiceMetrics metrics;
  metrics.ObserveRpc(RpcMethod::kGetBinding, 5, 1'000'000);
  const std::string text = Scrape(metrics);
  EXPECT_TRUE(Has(text,
                  "irqbypass_grpc_server_handling_seconds_count{grpc_service="
                  "\"irqbypass.v1.BypassManager\",grpc_method=\"GetBinding\","
                  "grpc_code=\"NOT_FOUND\"} 1"))
      << text;
  EXPECT_FALSE(Has(text, "grpc_code=\"OK\"")) << text;
}

TEST(ServiceMetricsTest, ConnectFailures_ByStepAndErrnoName) {
  ServiceMetrics metrics;
  metrics.ConnectFailed("add_producer", ENOENT);
  metrics.ConnectFailed("add_producer", ENOENT);
  metrics.ConnectFailed("dispatch", ETIMEDOUT);
  metrics.ObserveAgentRoundTrip(AgentCommand::kConnect,
                                AgentCommandResult::kTimeout, 5'000'000'000);
  metrics.AgentSessionStarted("n1");
  metrics.CommandsRetried(AgentCommand::kDisconnect, 3);
  const std::string text = Scrape(metrics);
  EXPECT_TRUE(Has(text,
                  "irqbypass_connect_failures_total{errno=\"ENOENT\",step="
                  "\"add_producer\"} 2"))
      << text;
  EXPECT_TRUE(Has(text,
                  "irqbypass_connect_failures_total{errno=\"ETIMEDOUT\",step="
                  "\"dispatch\"} 1"))
      << text;
  EXPECT_TRUE(Has(text,
                  "irqbypass_agent_round_trip_seconds_count{command="
                  "\"connect\",result=\"timeout\"} 1"))
      << text;
  EXPECT_TRUE(Has(text, "irqbypass_agent_sessions_total{node=\"n1\"} 1"))
      << text;
  EXPECT_TRUE(Has(text,
                  "irqbypass_agent_commands_retried_total{command="
                  "\"disconnect\"} 3"))
      << text;
  EXPECT_TRUE(Has(text, "irqbypass_disconnects_deferred_total 0")) << text;
}

}  // namespace
}  // namespace irqbypass
