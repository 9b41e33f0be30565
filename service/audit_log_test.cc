#include "service/audit_log.h"

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"

namespace irqbypass {
namespace {

TEST(AuditLogTest, Format_EveryFieldInOrder_Escaped) {
  AuditEntry e;
  e.identity = "spiffe://td/irqbypass/orchestrator/o";
  e.role = "orchestrator";
  e.method = "Batch[2].unregister_producer";
  e.token = "t\"1";
  e.node = "n1";
  e.code = absl::StatusCode::kPermissionDenied;
  e.denied = true;
  e.peer = "ipv4:127.0.0.1:5";
  EXPECT_EQ(AuditLog::Format(e, "2026-12-03T12:00:00.000Z"),
            "{\"ts\":\"2026-12-03T12:00:00.000Z\","
            "\"identity\":\"spiffe://td/irqbypass/orchestrator/o\","
            "\"role\":\"orchestrator\","
            "\"method\":\"Batch[2].unregister_producer\","
            "\"token\":\"t\\\"1\",\"node\":\"n1\",\"decision\":\"denied\","
            "\"code\":\"PERMISSION_DENIED\",\"peer\":\"ipv4:127.0.0.1:5\"}\n");
}

TEST(AuditLogTest, Open_AppendsWholeLines_BadPathNamed) {
  const std::string path =
      std::string(std::getenv("TEST_TMPDIR")) + "/audit.jsonl";
  {
    auto log = AuditLog::Open(path);
    ASSERT_TRUE(log.ok()) << log.status();
    AuditEntry e;
    e.method = "RegisterProducer";
    (*log)->Write(e);
    (*log)->Write(e);
  }
  {
    auto again = AuditLog::Open(path);  // appends
    ASSERT_TRUE(again.ok());
    AuditEntry e;
    e.method = "UnregisterProducer";
    (*again)->Write(e);
  }
  std::ifstream in(path);
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    ++lines;
    EXPECT_EQ(line.front(), '{');
    EXPECT_EQ(line.back(), '}');
  }
  EXPECT_EQ(lines, 3);
  auto bad = AuditLog::Open("/nonexistent-dir/audit.jsonl");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(bad.status().message().find("/nonexistent-dir/audit.jsonl"),
            std::string::npos);
}

}  // namespace
}  // namespace irqbypass
