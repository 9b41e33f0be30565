#include "client/apply_file.h"

#include "gtest/gtest.h"

namespace irqbypass::ctl {
namespace {

TEST(ApplyFileTest, YamlList_EveryKindOfItemInOrder) {
  auto items = ParseApplyFile(R"(
- register_producer:
    producer: {token: q0, node: n1, device: "0000:3b:00.1", vector: 3, index: msi}
    request_id: r-1
- registerConsumer:
    consumer: {token: q0, node: n1, vm: vm1, gsi: 24}
- unregister_producer: {token: q0, registration_id: p-00000000000000ff}
- unregister_consumer: {token: q0}
)");
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 4u);
  const v1::Producer& p = (*items)[0].register_producer().producer();
  EXPECT_EQ(p.token(), "q0");
  EXPECT_EQ(p.device(), "0000:3b:00.1");
  EXPECT_EQ(p.vector(), 3u);
  EXPECT_EQ(p.index(), v1::IRQ_INDEX_MSI);
  EXPECT_EQ((*items)[0].register_producer().request_id(), "r-1");
  EXPECT_EQ((*items)[1].register_consumer().consumer().gsi(), 24u);
  EXPECT_EQ((*items)[2].unregister_producer().registration_id(),
            "p-00000000000000ff");
  EXPECT_EQ((*items)[3].op_case(), v1::BatchItem::kUnregisterConsumer);
}

TEST(ApplyFileTest, JsonBatchRequest_Accepted) {
  auto items = ParseApplyFile(R"({"items": [
    {"registerConsumer": {"consumer": {"token": "t", "node": "n1",
                                       "vm": "vm1", "gsi": 7}}}]})");
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 1u);
  EXPECT_EQ((*items)[0].register_consumer().consumer().gsi(), 7u);
}

TEST(ApplyFileTest, UnknownField_ErrorNamesTheItemAndLine) {
  auto items = ParseApplyFile(R"(- unregister_producer: {token: a}
- register_producer:
    producer: {token: b, node: n1, devise: "0000:3b:00.1"}
)");
  ASSERT_FALSE(items.ok());
  EXPECT_EQ(items.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(items.status().message().find("items[1] (line 2)"),
            std::string::npos)
      << items.status();
  EXPECT_NE(items.status().message().find("devise"), std::string::npos)
      << items.status();
}

TEST(ApplyFileTest, NotAList_Or_NoOp_Or_Empty_Or_BadYaml_Refused) {
  for (const char* text :
       {"register_producer: {}", "- {}", "[]", "- [1, 2]", "- a: [",
        "items: []\nother: 1", "- bogus: {token: x}"}) {
    auto items = ParseApplyFile(text);
    EXPECT_FALSE(items.ok()) << text;
    EXPECT_EQ(items.status().code(), absl::StatusCode::kInvalidArgument)
        << text;
  }
}

TEST(ApplyFileTest, ResultText_OkAndError) {
  v1::BatchItem item;
  item.mutable_register_consumer()->mutable_consumer()->set_token("t9");
  v1::BatchResult ok;
  ok.mutable_register_consumer()->set_registration_id("c-1");
  ok.mutable_register_consumer()->set_connected(true);
  EXPECT_EQ(FormatBatchResultText(2, item, ok),
            "items[2] register_consumer t9: registered c-1, connected\n");
  v1::BatchResult failed;
  failed.mutable_status()->set_code(6);
  failed.mutable_status()->set_message("already");
  EXPECT_EQ(FormatBatchResultText(0, item, failed),
            "items[0] register_consumer t9: error ALREADY_EXISTS: already\n");
}

}  // namespace
}  // namespace irqbypass::ctl
