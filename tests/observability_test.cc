// Observability end-to-end: the real irqbypassd and irqbypass-agent on
// loopback with /metrics on; the expositions pass `promtool check metrics`
// (Debian's prometheus package) and carry the documented series; the gRPC
// health service and server reflection answer; default-level logs have no
// line per RPC; every metric the dashboard and alert rules use exists.
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "google/protobuf/descriptor.pb.h"
#include "gtest/gtest.h"
#include "protos/grpc/reflection/v1alpha/reflection.pb.h"
#include "tests/cluster.h"
#include "tests/metrics_support.h"

namespace irqbypass::testing {
namespace {

constexpr char kPromtool[] = "/usr/bin/promtool";

// Writes `exposition` to a file and runs `promtool check metrics` on it.
CommandResult Promtool(const std::string& dir, const std::string& exposition) {
  const std::string path = dir + "/exposition.txt";
  std::ofstream(path) << exposition;
  return RunCommand(
      "/bin/sh", {"-c", std::string(kPromtool) + " check metrics < " + path});
}

bool Has(const std::string& text, const std::string& line) {
  return text.find(line) != std::string::npos;
}

class ObservabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(access(kPromtool, X_OK), 0)
        << kPromtool << " missing: run scripts/install-deps.sh (prometheus)";
    ASSERT_TRUE(cluster_.StartManager({"--metrics_listen=127.0.0.1:0"}));
    ASSERT_TRUE(cluster_.StartAgent(
        "n1", {"--metrics_listen=127.0.0.1:0", "--sim_vms=vm-a"}));
    manager_metrics_ = LoggedPort(cluster_.manager().Log(), "metrics_port");
    agent_metrics_ = LoggedPort(cluster_.agent("n1").Log(), "metrics_port");
    ASSERT_GT(manager_metrics_, 0) << cluster_.manager().Log();
    ASSERT_GT(agent_metrics_, 0) << cluster_.agent("n1").Log();
  }

  // One pairing, one connect failing at add_producer (ENOENT), one lookup
  // of an unknown token.
  void RunTraffic() {
    auto& api = cluster_.client();
    ASSERT_TRUE(
        api.RegisterConsumer(MakeConsumer("t1", "n1", "vm-a", 24)).ok());
    ASSERT_TRUE(
        api.RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1")).ok());
    ASSERT_TRUE(
        api.RegisterConsumer(MakeConsumer("t2", "n1", "vm-x", 25)).ok());
    EXPECT_EQ(api.RegisterProducer(MakeProducer("t2", "n1", "0000:3b:00.2"))
                  .status()
                  .code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(api.GetBinding("nope").status().code(),
              absl::StatusCode::kNotFound);
  }

  std::string Scrape(int port) {
    auto body = HttpGet(port, "/metrics");
    EXPECT_TRUE(body.has_value()) << "GET /metrics on port " << port;
    return body.value_or("");
  }

  Cluster cluster_;
  int manager_metrics_ = 0;
  int agent_metrics_ = 0;
};

TEST_F(ObservabilityTest,
       ManagerExposition_PassesPromtool_WithDocumentedSeries) {
  RunTraffic();
  const std::string text = Scrape(manager_metrics_);
  const CommandResult check = Promtool(cluster_.dir(), text);
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  EXPECT_EQ(check.out + check.err, "") << "promtool lint findings";

  EXPECT_TRUE(Has(text, "# TYPE irqbypass_index_lock_wait_seconds histogram"));
  EXPECT_TRUE(Has(text,
                  "irqbypass_index_lock_wait_seconds_bucket{op=\"register_"
                  "producer\",le=\"+Inf\"} "))
      << text;
  EXPECT_TRUE(Has(text,
                  "irqbypass_grpc_server_handling_seconds_count{grpc_service="
                  "\"irqbypass.v1.BypassManager\",grpc_method="
                  "\"RegisterProducer\",grpc_code=\"OK\"} 1\n"))
      << text;
  EXPECT_TRUE(Has(text,
                  "grpc_method=\"RegisterProducer\",grpc_code="
                  "\"FAILED_PRECONDITION\"} 1\n"))
      << text;
  EXPECT_TRUE(
      Has(text, "grpc_method=\"GetBinding\",grpc_code=\"NOT_FOUND\"} 1\n"))
      << text;
  EXPECT_TRUE(Has(text,
                  "irqbypass_agent_round_trip_seconds_count{command="
                  "\"connect\",result=\"ok\"} 1\n"))
      << text;
  EXPECT_TRUE(Has(text,
                  "irqbypass_agent_round_trip_seconds_count{command="
                  "\"connect\",result=\"failed\"} 1\n"))
      << text;
  EXPECT_TRUE(Has(text,
                  "irqbypass_connect_failures_total{errno=\"ENOENT\",step="
                  "\"add_producer\"} 1\n"))
      << text;
  EXPECT_TRUE(Has(text, "irqbypass_agent_sessions_total{node=\"n1\"} 1\n"))
      << text;
  EXPECT_TRUE(Has(text, "irqbypass_agent_connected{node=\"n1\"} 1\n")) << text;
  EXPECT_TRUE(Has(text, "irqbypass_agents_connected 1\n")) << text;
  EXPECT_TRUE(Has(text, "irqbypass_connected_pairs 1\n")) << text;
  EXPECT_TRUE(Has(text, "irqbypass_producers 1\n")) << text;
  EXPECT_TRUE(Has(text, "irqbypass_consumers 2\n")) << text;
  EXPECT_TRUE(Has(text, "irqbypass_node_producers{node=\"n1\"} 1\n")) << text;
  EXPECT_TRUE(Has(text, "irqbypass_node_consumers{node=\"n1\"} 2\n")) << text;
  EXPECT_TRUE(Has(text, "irqbypass_node_connected_pairs{node=\"n1\"} 1\n"))
      << text;
}

TEST_F(ObservabilityTest, AgentExposition_PassesPromtool_WithDocumentedSeries) {
  RunTraffic();
  const std::string text = Scrape(agent_metrics_);
  const CommandResult check = Promtool(cluster_.dir(), text);
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  EXPECT_EQ(check.out + check.err, "") << "promtool lint findings";

  EXPECT_TRUE(Has(text,
                  "irqbypass_agent_commands_total{command=\"connect\",result="
                  "\"ok\"} 1\n"))
      << text;
  EXPECT_TRUE(Has(text,
                  "irqbypass_agent_commands_total{command=\"connect\",result="
                  "\"failed\"} 1\n"))
      << text;
  EXPECT_TRUE(Has(text,
                  "irqbypass_agent_backend_errors_total{errno=\"ENOENT\",step="
                  "\"add_producer\"} 1\n"))
      << text;
  EXPECT_TRUE(Has(text,
                  "irqbypass_agent_backend_step_duration_seconds_count{step="
                  "\"add_consumer\"} 2\n"))
      << text;
  EXPECT_TRUE(Has(text,
                  "irqbypass_agent_command_duration_seconds_count{command="
                  "\"connect\"} 2\n"))
      << text;
  EXPECT_TRUE(Has(text, "irqbypass_agent_manager_sessions_total 1\n")) << text;
  EXPECT_TRUE(Has(text, "irqbypass_agent_manager_connected 1\n")) << text;
}

// Every irqbypass_* metric the Grafana dashboard and the alert rules use is
// one the binaries export.
TEST_F(ObservabilityTest, DashboardAndAlertRules_UseOnlyExportedMetrics) {
  RunTraffic();
  const std::string exported =
      Scrape(manager_metrics_) + Scrape(agent_metrics_);
  const std::regex name_re("irqbypass_[a-z_]+");
  std::set<std::string> used;
  for (const char* file : {"deploy/grafana/irqbypass-dashboard.json",
                           "deploy/prometheus/irqbypass-alerts.yml"}) {
    const std::string text = ReadFile(BinaryPath(file));
    ASSERT_FALSE(text.empty()) << file;
    for (std::sregex_iterator it(text.begin(), text.end(), name_re), end;
         it != end; ++it) {
      used.insert(it->str());
    }
  }
  ASSERT_GT(used.size(), 5u);
  for (const std::string& name : used) {
    if (name == "irqbypass_agent" || name == "irqbypassd") continue;  // jobs
    EXPECT_TRUE(Has(exported, "\n" + name + "{") ||
                Has(exported, "\n" + name + " "))
        << name << " is used by deploy/ but not exported";
  }
}

TEST_F(ObservabilityTest, HealthService_ServingForServerAndEachService) {
  for (const std::string service :
       {"", "irqbypass.v1.BypassManager", "irqbypass.v1.AgentControl"}) {
    RawResult r = RawUnary(cluster_.target(), "/grpc.health.v1.Health/Check",
                           service.empty() ? "" : ProtoStringField(1, service),
                           cluster_.credentials());
    ASSERT_TRUE(r.status.ok()) << service << ": " << r.status.error_message();
    EXPECT_EQ(r.response, std::string("\x08\x01", 2)) << service;  // SERVING
  }
  RawResult unknown =
      RawUnary(cluster_.target(), "/grpc.health.v1.Health/Check",
               ProtoStringField(1, "no.such.Service"), cluster_.credentials());
  EXPECT_EQ(unknown.status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ObservabilityTest, HealthWatch_TurnsNotServingOnSigterm) {
  RawStream watch(cluster_.target(), "/grpc.health.v1.Health/Watch", "",
                  cluster_.credentials());
  auto first = watch.Read(std::chrono::seconds(10));
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(*first, std::string("\x08\x01", 2));  // SERVING
  ASSERT_TRUE(cluster_.manager().Signal(SIGTERM));
  auto next = watch.Read(std::chrono::seconds(10));
  ASSERT_TRUE(next.has_value()) << "no update before the stream ended";
  EXPECT_EQ(*next, std::string("\x08\x02", 2));  // NOT_SERVING
  EXPECT_EQ(cluster_.manager().Wait(), 0);
}

TEST_F(ObservabilityTest, Reflection_ListsTheServices) {
  // ServerReflectionRequest{list_services: ""} (field 7).
  RawStream reflection(cluster_.target(),
                       "/grpc.reflection.v1alpha.ServerReflection/"
                       "ServerReflectionInfo",
                       ProtoStringField(7, ""), cluster_.credentials());
  auto response = reflection.Read(std::chrono::seconds(10));
  ASSERT_TRUE(response.has_value());
  EXPECT_TRUE(Has(*response, "irqbypass.v1.BypassManager"));
  EXPECT_TRUE(Has(*response, "irqbypass.v1.AgentControl"));
  EXPECT_TRUE(Has(*response, "grpc.health.v1.Health"));
}

TEST_F(ObservabilityTest, Reflection_DescribesAServiceAndRefusesUnknownOnes) {
  const std::string method =
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
  // ServerReflectionRequest{file_containing_symbol: ...} (field 4).
  RawStream describe(cluster_.target(), method,
                     ProtoStringField(4, "irqbypass.v1.BypassManager"),
                     cluster_.credentials());
  auto response = describe.Read(std::chrono::seconds(10));
  ASSERT_TRUE(response.has_value());
  grpc::reflection::v1alpha::ServerReflectionResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(*response));
  ASSERT_TRUE(parsed.has_file_descriptor_response())
      << parsed.ShortDebugString();
  const auto& files = parsed.file_descriptor_response().file_descriptor_proto();
  ASSERT_GE(files.size(), 1);
  google::protobuf::FileDescriptorProto file;
  ASSERT_TRUE(file.ParseFromString(files[0]));
  EXPECT_EQ(file.name(), "protos/irqbypass/v1/irqbypass.proto");
  EXPECT_EQ(file.package(), "irqbypass.v1");
  bool has_batch = false;
  for (const auto& service : file.service()) {
    if (service.name() != "BypassManager") continue;
    for (const auto& m : service.method()) has_batch |= m.name() == "Batch";
  }
  EXPECT_TRUE(has_batch) << "BypassManager.Batch not described";
  // Every file it imports comes along (a client can then build the pool).
  for (const std::string& dependency : file.dependency()) {
    bool sent = false;
    for (int i = 1; i < files.size(); ++i) {
      google::protobuf::FileDescriptorProto other;
      ASSERT_TRUE(other.ParseFromString(files[i]));
      sent |= other.name() == dependency;
    }
    EXPECT_TRUE(sent) << dependency << " not sent";
  }

  RawStream unknown(cluster_.target(), method,
                    ProtoStringField(4, "no.such.Service"),
                    cluster_.credentials());
  response = unknown.Read(std::chrono::seconds(10));
  ASSERT_TRUE(response.has_value());
  ASSERT_TRUE(parsed.ParseFromString(*response));
  ASSERT_TRUE(parsed.has_error_response()) << parsed.ShortDebugString();
  EXPECT_EQ(parsed.error_response().error_code(),
            static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_NE(parsed.error_response().error_message().find("no.such.Service"),
            std::string::npos);
}

TEST_F(ObservabilityTest, DefaultLogLevel_NoLinePerRpc) {
  auto& api = cluster_.client();
  const std::string before = cluster_.manager().Log();
  for (int i = 0; i < 20; ++i) {
    const std::string token = "quiet-" + std::to_string(i);
    ASSERT_TRUE(
        api.RegisterConsumer(MakeConsumer(token, "n1", "vm-a", 100 + i)).ok());
    ASSERT_TRUE(
        api.RegisterProducer(MakeProducer(token, "n1", "0000:3b:00.1", i))
            .ok());
    ASSERT_TRUE(api.GetBinding(token).ok());
    ASSERT_TRUE(api.UnregisterProducer(token).ok());
    ASSERT_TRUE(api.UnregisterConsumer(token).ok());
  }
  EXPECT_EQ(cluster_.manager().Log(), before);
}

}  // namespace
}  // namespace irqbypass::testing
