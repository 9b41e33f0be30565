#include "client/ctl_format.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "client/error_detail.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

namespace irqbypass::ctl {
namespace {

using ::irqbypass::v1::Binding;
using ::irqbypass::v1::BindingEvent;
using ::irqbypass::v1::ErrorDetail;
using ::testing::HasSubstr;
using ::testing::Not;

absl::Status WithReason(absl::Status status, ErrorDetail::Reason reason) {
  ErrorDetail detail;
  detail.set_reason(reason);
  return client::WithErrorDetail(std::move(status), detail);
}

Binding FullBinding() {
  Binding b;
  b.set_token("t1");
  b.set_node("n1");
  b.set_connected(true);
  b.set_revision(7);
  b.mutable_producer()->set_token("t1");
  b.mutable_producer()->set_node("n1");
  b.mutable_producer()->set_device("0000:3b:00.1");
  b.mutable_producer()->set_vector(3);
  b.mutable_producer()->set_index(v1::IRQ_INDEX_MSIX);
  b.mutable_consumer()->set_token("t1");
  b.mutable_consumer()->set_node("n1");
  b.mutable_consumer()->set_vm("vm-x");
  b.mutable_consumer()->set_gsi(42);
  b.set_producer_registration_id("p-1");
  b.set_consumer_registration_id("c-2");
  return b;
}

// Parses one line of JSON as a generic object; fails the test if invalid.
google::protobuf::Struct ParseJson(const std::string& line) {
  google::protobuf::Struct out;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(line, &out).ok())
      << line;
  return out;
}

// --- Exit codes ---

TEST(ExitCodeForStatusTest, EachOutcome_HasItsDocumentedCode) {
  EXPECT_EQ(ExitCodeForStatus(absl::OkStatus()), 0);
  EXPECT_EQ(ExitCodeForStatus(absl::InternalError("x")), 1);
  EXPECT_EQ(ExitCodeForStatus(absl::InvalidArgumentError("x")), 2);
  EXPECT_EQ(ExitCodeForStatus(absl::NotFoundError("x")), 3);
  EXPECT_EQ(ExitCodeForStatus(absl::AlreadyExistsError("x")), 4);
  EXPECT_EQ(ExitCodeForStatus(WithReason(absl::FailedPreconditionError("x"),
                                         ErrorDetail::CONNECT_FAILED)),
            5);
  EXPECT_EQ(ExitCodeForStatus(WithReason(absl::FailedPreconditionError("x"),
                                         ErrorDetail::NODE_MISMATCH)),
            6);
  EXPECT_EQ(ExitCodeForStatus(WithReason(absl::FailedPreconditionError("x"),
                                         ErrorDetail::REGISTRATION_MISMATCH)),
            6);
  EXPECT_EQ(ExitCodeForStatus(absl::UnavailableError("x")), 7);
  EXPECT_EQ(ExitCodeForStatus(absl::DeadlineExceededError("x")), 8);
  EXPECT_EQ(ExitCodeForStatus(absl::PermissionDeniedError("x")), 9);
  EXPECT_EQ(ExitCodeForStatus(absl::UnauthenticatedError("x")), 9);
}

TEST(ExitCodeForStatusTest,
     FailedPreconditionWithoutDetail_IsOtherPrecondition) {
  EXPECT_EQ(ExitCodeForStatus(absl::FailedPreconditionError("x")),
            kExitFailedPrecondition);
}

TEST(ExitCodeForStatusTest, UnmappedCodes_AreOtherError) {
  EXPECT_EQ(ExitCodeForStatus(absl::ResourceExhaustedError("x")), kExitError);
  EXPECT_EQ(ExitCodeForStatus(absl::CancelledError("x")), kExitError);
  EXPECT_EQ(ExitCodeForStatus(absl::UnknownError("x")), kExitError);
}

TEST(ExitCodeForStatusTest, ReasonOnOtherCode_DoesNotChangeMapping) {
  EXPECT_EQ(ExitCodeForStatus(WithReason(absl::UnavailableError("x"),
                                         ErrorDetail::CONNECT_FAILED)),
            kExitUnavailable);
}

TEST(ExitCodeHelpTest, ListsEveryCode) {
  const std::string help = ExitCodeHelp();
  for (const char* line : {"  0  ", "  1  ", "  2  ", "  3  ", "  4  ", "  5  ",
                           "  6  ", "  7  ", "  8  "}) {
    EXPECT_THAT(help, HasSubstr(line));
  }
}

// --- Parsing ---

TEST(ParseTest, OutputFormat) {
  EXPECT_EQ(*ParseOutputFormat("text"), OutputFormat::kText);
  EXPECT_EQ(*ParseOutputFormat("json"), OutputFormat::kJson);
  EXPECT_EQ(ParseOutputFormat("yaml").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ParseTest, IrqIndex) {
  EXPECT_EQ(*ParseIrqIndex("msix"), v1::IRQ_INDEX_MSIX);
  EXPECT_EQ(*ParseIrqIndex("MSI"), v1::IRQ_INDEX_MSI);
  EXPECT_EQ(*ParseIrqIndex("intx"), v1::IRQ_INDEX_INTX);
  EXPECT_EQ(ParseIrqIndex("msi-x").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IrqIndexName(v1::IRQ_INDEX_UNSPECIFIED), "msix");
  EXPECT_EQ(IrqIndexName(v1::IRQ_INDEX_INTX), "intx");
}

// --- Text ---

TEST(TextTest, RegisterAndUnregister) {
  EXPECT_EQ(FormatRegisterText("producer", "t1", {"p-1", true}),
            "registered producer token=t1 registration_id=p-1 "
            "connected=true\n");
  EXPECT_EQ(FormatUnregisterText("consumer", "t1", false),
            "unregistered consumer token=t1 disconnected=false\n");
}

TEST(TextTest, Binding_FullBlock) {
  EXPECT_EQ(FormatBindingText(FullBinding()),
            "token:                    t1\n"
            "node:                     n1\n"
            "connected:                true\n"
            "revision:                 7\n"
            "producer:                 device=0000:3b:00.1 index=msix "
            "vector=3\n"
            "producer_registration_id: p-1\n"
            "consumer:                 vm=vm-x gsi=42\n"
            "consumer_registration_id: c-2\n");
}

TEST(TextTest, Binding_MissingConsumer_ReadsNone) {
  Binding b = FullBinding();
  b.clear_consumer();
  b.clear_consumer_registration_id();
  b.set_connected(false);

  const std::string text = FormatBindingText(b);

  EXPECT_THAT(text, HasSubstr("consumer:                 (none)\n"));
  EXPECT_THAT(text, Not(HasSubstr("consumer_registration_id")));
  EXPECT_THAT(text, HasSubstr("connected:                false\n"));
}

TEST(TextTest, Table_AlignsColumnsUnderHeader) {
  Binding second;
  second.set_token("token-two");
  second.set_node("node-2");
  second.set_revision(12);
  second.mutable_consumer()->set_vm("vm-long-name");
  second.mutable_consumer()->set_gsi(5);

  EXPECT_EQ(FormatBindingTable({FullBinding(), second}),
            "TOKEN      NODE    CONNECTED  PRODUCER             CONSUMER"
            "        REVISION\n"
            "t1         n1      true       0000:3b:00.1/msix/3  vm-x/42"
            "         7\n"
            "token-two  node-2  false      -                    vm-long-name/5"
            "  12\n");
}

TEST(TextTest, Table_Empty_IsHeaderOnly) {
  EXPECT_EQ(FormatBindingTable({}),
            "TOKEN  NODE  CONNECTED  PRODUCER  CONSUMER  REVISION\n");
}

TEST(TextTest, Events_OneLineEach) {
  BindingEvent updated;
  updated.set_type(BindingEvent::UPDATED);
  *updated.mutable_binding() = FullBinding();
  EXPECT_EQ(FormatEventText(updated),
            "UPDATED token=t1 node=n1 connected=true revision=7 "
            "producer=0000:3b:00.1/msix/3 consumer=vm-x/42\n");

  BindingEvent removed;
  removed.set_type(BindingEvent::REMOVED);
  removed.mutable_binding()->set_token("t1");
  removed.mutable_binding()->set_revision(8);
  EXPECT_EQ(FormatEventText(removed), "REMOVED token=t1 revision=8\n");

  BindingEvent synced;
  synced.set_type(BindingEvent::SYNCED);
  EXPECT_EQ(FormatEventText(synced), "SYNCED\n");
  synced.set_resume_revision(12);
  EXPECT_EQ(FormatEventText(synced), "SYNCED resume_revision=12\n");

  BindingEvent progress;
  progress.set_type(BindingEvent::PROGRESS);
  progress.set_resume_revision(15);
  EXPECT_EQ(FormatEventText(progress), "PROGRESS resume_revision=15\n");
}

TEST(TextTest, Error_CodeThenDescription) {
  ErrorDetail detail;
  detail.set_reason(ErrorDetail::CONNECT_FAILED);
  detail.set_step("add_producer");
  detail.set_node("n1");
  detail.set_errno_name("ENOENT");
  detail.set_agent_message("vm \"vm-x\" not held");
  const absl::Status status =
      client::WithErrorDetail(absl::FailedPreconditionError("x"), detail);

  EXPECT_EQ(FormatErrorText(status),
            "FAILED_PRECONDITION: connect step add_producer failed on node "
            "n1: ENOENT (vm \"vm-x\" not held)\n");
}

// --- JSON ---

TEST(JsonTest, Binding_OneLineSnakeCaseRoundTrips) {
  const std::string json = FormatJson(FullBinding());

  ASSERT_TRUE(absl::EndsWith(json, "\n"));
  EXPECT_EQ(json.find('\n'), json.size() - 1);
  EXPECT_THAT(json, HasSubstr("\"producer_registration_id\":\"p-1\""));
  EXPECT_THAT(json, HasSubstr("\"index\":\"IRQ_INDEX_MSIX\""));
  Binding back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &back).ok());
  EXPECT_EQ(back.SerializeAsString(), FullBinding().SerializeAsString());
}

TEST(JsonTest, DefaultScalars_ArePrinted) {
  v1::UnregisterProducerResponse response;
  response.set_disconnected(false);
  EXPECT_EQ(FormatJson(response), "{\"disconnected\":false}\n");
}

TEST(JsonTest, ErrorWithDetail) {
  ErrorDetail detail;
  detail.set_reason(ErrorDetail::NODE_MISMATCH);
  detail.set_token("t1");
  const absl::Status status = client::WithErrorDetail(
      absl::FailedPreconditionError("producer on \"n1\",\nconsumer on n2"),
      detail);

  const std::string json = FormatErrorJson(status);

  EXPECT_EQ(json.find('\n'), json.size() - 1);
  const google::protobuf::Struct parsed = ParseJson(json);
  const google::protobuf::Struct& error =
      parsed.fields().at("error").struct_value();
  EXPECT_EQ(error.fields().at("code").string_value(), "FAILED_PRECONDITION");
  EXPECT_EQ(error.fields().at("message").string_value(),
            "producer on \"n1\",\nconsumer on n2");
  const google::protobuf::Struct& json_detail =
      error.fields().at("detail").struct_value();
  EXPECT_EQ(json_detail.fields().at("reason").string_value(), "NODE_MISMATCH");
  EXPECT_EQ(json_detail.fields().at("token").string_value(), "t1");
}

TEST(JsonTest, ErrorWithoutDetail_OmitsDetail) {
  const std::string json =
      FormatErrorJson(absl::UnavailableError("no \\ server\x01"));

  const google::protobuf::Struct parsed = ParseJson(json);
  const google::protobuf::Struct& error =
      parsed.fields().at("error").struct_value();
  EXPECT_EQ(error.fields().at("code").string_value(), "UNAVAILABLE");
  EXPECT_EQ(error.fields().at("message").string_value(), "no \\ server\x01");
  EXPECT_EQ(error.fields().count("detail"), 0u);
}

}  // namespace
}  // namespace irqbypass::ctl
