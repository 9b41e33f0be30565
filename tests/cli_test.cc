// irqbypassctl against the real irqbypassd and irqbypass-agent: output and
// the distinct exit codes.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace irqbypass::testing {
namespace {

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(cluster_.StartManager());
    ASSERT_TRUE(cluster_.StartAgent("n1", {"--sim_vms=vm-a"}));
  }
  void TearDown() override {
    if (HasFailure()) cluster_.DumpLogs();
  }
  // As an orchestrator (mutual TLS).
  CommandResult Ctl(std::vector<std::string> args) {
    std::vector<std::string> tls = cluster_.TlsFlags(
        cluster_.Certificate(security::Role::kOrchestrator, "ctl"));
    args.insert(args.begin(), tls.begin(), tls.end());
    args.insert(args.begin(), "--server=" + cluster_.target());
    return RunCommand(BinaryPath("client/irqbypassctl"), args);
  }
  Cluster cluster_;
};

TEST_F(CliTest, RegisterBothSides_Connected_ExitZero) {
  auto c = Ctl({"register-consumer", "--token=t1", "--node=n1", "--vm=vm-a",
                "--gsi=24"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.out.find("connected=false"), std::string::npos) << c.out;
  auto p = Ctl({"register-producer", "--token=t1", "--node=n1",
                "--device=0000:3b:00.1", "--vector=2"});
  EXPECT_EQ(p.exit_code, 0) << p.err;
  EXPECT_NE(p.out.find("connected=true"), std::string::npos) << p.out;
  auto g = Ctl({"--output=json", "get", "--token=t1"});
  EXPECT_EQ(g.exit_code, 0) << g.err;
  EXPECT_NE(g.out.find("\"connected\":true"), std::string::npos) << g.out;
  EXPECT_NE(g.out.find("\"device\":\"0000:3b:00.1\""), std::string::npos);
  auto l = Ctl({"list", "--node=n1"});
  EXPECT_EQ(l.exit_code, 0) << l.err;
  EXPECT_NE(l.out.find("t1"), std::string::npos) << l.out;
  auto u = Ctl({"unregister-producer", "--token=t1"});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  EXPECT_NE(u.out.find("disconnected=true"), std::string::npos) << u.out;
}

TEST_F(CliTest, Apply_YamlFile_EachItemReportedExitCodeOfFirstFailure) {
  const std::string path =
      std::string(std::getenv("TEST_TMPDIR")) + "/apply.yaml";
  std::string yaml;
  for (int q = 0; q < 8; ++q) {
    absl::StrAppend(&yaml, "- register_producer:\n    producer: {token: q", q,
                    ", node: n1, device: \"0000:3b:00.1\", vector: ", q,
                    ", index: msix}\n", "- register_consumer:\n",
                    "    consumer: {token: q", q,
                    ", node: n1, vm: vm-a, gsi: ", 40 + q, "}\n");
  }
  // A second consumer for q0 (after the first: items on one token run in
  // order): ALREADY_EXISTS, exit code 4.
  absl::StrAppend(&yaml,
                  "- register_consumer:\n    consumer: {token: q0, node: n2, "
                  "vm: vm-b, gsi: 1}\n");
  {
    std::FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fwrite(yaml.data(), 1, yaml.size(), f);
    std::fclose(f);
  }
  auto applied = Ctl({"apply", "-f", path});
  EXPECT_EQ(applied.exit_code, 4) << applied.out << applied.err;
  // 17 lines, one per item, in order.
  EXPECT_EQ(std::count(applied.out.begin(), applied.out.end(), '\n'), 17)
      << applied.out;
  EXPECT_NE(applied.out.find("items[15] register_consumer q7: registered c-"),
            std::string::npos)
      << applied.out;
  EXPECT_NE(applied.out.find(", connected\n"), std::string::npos);
  EXPECT_NE(applied.out.find("items[16] register_consumer q0: error"),
            std::string::npos)
      << applied.out;
  EXPECT_NE(applied.err.find("1 of 17 items failed; the first: items[16]"),
            std::string::npos)
      << applied.err;
  for (int q = 0; q < 8; ++q) {
    auto g = Ctl({"--output=json", "get", absl::StrCat("--token=q", q)});
    EXPECT_NE(g.out.find("\"connected\":true"), std::string::npos) << g.out;
  }

  // A JSON BatchRequest works the same.
  const std::string down = std::string(std::getenv("TEST_TMPDIR")) + "/d.json";
  {
    std::string json = "{\"items\": [";
    for (int q = 0; q < 8; ++q) {
      absl::StrAppend(&json, q ? "," : "",
                      "{\"unregisterConsumer\": {\"token\": \"q", q, "\"}}");
    }
    json += "]}";
    std::FILE* f = std::fopen(down.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fwrite(json.data(), 1, json.size(), f);
    std::fclose(f);
  }
  auto removed = Ctl({"--output=json", "apply", "-f", down});
  EXPECT_EQ(removed.exit_code, 0) << removed.out << removed.err;
  EXPECT_EQ(std::count(removed.out.begin(), removed.out.end(), '\n'), 8);
  EXPECT_NE(removed.out.find("\"disconnected\":true"), std::string::npos)
      << removed.out;

  auto bad = Ctl({"apply", "-f", path + ".missing"});
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  EXPECT_NE(bad.err.find("cannot open"), std::string::npos) << bad.err;
}

TEST_F(CliTest, Nodes_ListAndOne_TextAndJson) {
  ASSERT_EQ(Ctl({"register-consumer", "--token=t1", "--node=n1", "--vm=vm-a",
                 "--gsi=24"})
                .exit_code,
            0);
  ASSERT_EQ(Ctl({"register-producer", "--token=t1", "--node=n1",
                 "--device=0000:3b:00.1"})
                .exit_code,
            0);
  // A node with bindings and no agent.
  ASSERT_EQ(Ctl({"register-consumer", "--token=t2", "--node=n2", "--vm=vm-b",
                 "--gsi=25"})
                .exit_code,
            0);
  auto nodes = Ctl({"nodes"});
  ASSERT_EQ(nodes.exit_code, 0) << nodes.err;
  // Header, n1, n2 in name order.
  EXPECT_EQ(nodes.out.find("NODE"), 0u) << nodes.out;
  const size_t n1 = nodes.out.find("\nn1 ");
  const size_t n2 = nodes.out.find("\nn2 ");
  ASSERT_NE(n1, std::string::npos) << nodes.out;
  ASSERT_NE(n2, std::string::npos) << nodes.out;
  EXPECT_LT(n1, n2);
  const std::string n1_row =
      nodes.out.substr(n1 + 1, nodes.out.find('\n', n1 + 1) - n1 - 1);
  EXPECT_NE(n1_row.find("connected"), std::string::npos) << n1_row;
  EXPECT_NE(n1_row.find("sim"), std::string::npos) << n1_row;
  const std::string n2_row = nodes.out.substr(n2 + 1);
  EXPECT_NE(n2_row.find("absent"), std::string::npos) << n2_row;

  auto one = Ctl({"node", "n1"});
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_NE(one.out.find("connected_pairs:      1"), std::string::npos)
      << one.out;
  EXPECT_NE(one.out.find("last_reconciliation:  kept=0"), std::string::npos)
      << one.out;
  auto json = Ctl({"--output=json", "node", "--node=n1"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  EXPECT_NE(json.out.find("\"agent_connected\":true"), std::string::npos)
      << json.out;
  EXPECT_NE(json.out.find("\"backend\":\"sim\""), std::string::npos);
  auto all_json = Ctl({"--output=json", "nodes"});
  ASSERT_EQ(all_json.exit_code, 0) << all_json.err;
  EXPECT_NE(all_json.out.find("\"name\":\"n2\""), std::string::npos)
      << all_json.out;
  EXPECT_EQ(Ctl({"node", "nowhere"}).exit_code, 3);  // NOT_FOUND
  EXPECT_EQ(Ctl({"node"}).exit_code, 2);             // usage: no name
}

TEST_F(CliTest, ConnectFailed_Exit5_NamesStepAndErrno) {
  ASSERT_EQ(Ctl({"register-consumer", "--token=t1", "--node=n1", "--vm=vm-x",
                 "--gsi=24"})
                .exit_code,
            0);
  auto p = Ctl({"register-producer", "--token=t1", "--node=n1",
                "--device=0000:3b:00.1", "--vector=0"});
  EXPECT_EQ(p.exit_code, 5) << p.out << p.err;
  EXPECT_NE(p.err.find("add_producer"), std::string::npos) << p.err;
  EXPECT_NE(p.err.find("ENOENT"), std::string::npos) << p.err;
}

TEST_F(CliTest, ConnectFailed_JsonOutput_CarriesDetail) {
  ASSERT_EQ(Ctl({"register-producer", "--token=t1", "--node=n1",
                 "--device=0000:3b:00.1"})
                .exit_code,
            0);
  auto c = Ctl({"--output=json", "register-consumer", "--token=t1", "--node=n1",
                "--vm=vm-x", "--gsi=24"});
  EXPECT_EQ(c.exit_code, 5);
  EXPECT_NE(c.out.find("\"error\""), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("\"errno_name\":\"ENOENT\""), std::string::npos)
      << c.out;
}

TEST_F(CliTest, AlreadyExists_Exit4) {
  ASSERT_EQ(Ctl({"register-consumer", "--token=t1", "--node=n1", "--vm=vm-a",
                 "--gsi=24"})
                .exit_code,
            0);
  auto again = Ctl({"register-consumer", "--token=t1", "--node=n1", "--vm=vm-a",
                    "--gsi=25"});
  EXPECT_EQ(again.exit_code, 4) << again.err;
}

TEST_F(CliTest, NotFound_Exit3) {
  EXPECT_EQ(Ctl({"get", "--token=nothing"}).exit_code, 3);
  EXPECT_EQ(Ctl({"unregister-consumer", "--token=nothing"}).exit_code, 3);
}

TEST_F(CliTest, Invalid_Exit2_FromServerAndFromUsage) {
  auto server_side = Ctl(
      {"register-producer", "--token=t1", "--node=n1", "--device=not-a-bdf"});
  EXPECT_EQ(server_side.exit_code, 2);
  EXPECT_NE(server_side.err.find("producer.device"), std::string::npos)
      << server_side.err;
  auto usage = Ctl({"register-consumer", "--node=n1", "--vm=vm-a"});
  EXPECT_EQ(usage.exit_code, 2);
  EXPECT_NE(usage.err.find("token"), std::string::npos) << usage.err;
}

TEST_F(CliTest, NodeMismatch_Exit6) {
  ASSERT_EQ(Ctl({"register-consumer", "--token=t1", "--node=n1", "--vm=vm-a",
                 "--gsi=24"})
                .exit_code,
            0);
  auto p = Ctl({"register-producer", "--token=t1", "--node=n2",
                "--device=0000:3b:00.1"});
  EXPECT_EQ(p.exit_code, 6) << p.err;
}

TEST_F(CliTest, Unavailable_Exit7_NoAgentAndNoServer) {
  ASSERT_EQ(Ctl({"register-consumer", "--token=t1", "--node=ghost", "--vm=vm-a",
                 "--gsi=24"})
                .exit_code,
            0);
  auto no_agent = Ctl({"register-producer", "--token=t1", "--node=ghost",
                       "--device=0000:3b:00.1"});
  EXPECT_EQ(no_agent.exit_code, 7) << no_agent.err;
  auto no_server = RunCommand(BinaryPath("client/irqbypassctl"),
                              {"--server=127.0.0.1:1", "--insecure",
                               "--timeout=2s", "get", "--token=t1"});
  EXPECT_EQ(no_server.exit_code, 7) << no_server.err;
}

}  // namespace
}  // namespace irqbypass::testing
