// Every INVALID_ARGUMENT case of the API names its field.
#include "service/validation.h"

#include <string>

#include "gtest/gtest.h"
#include "service/errors.h"

namespace irqbypass {
namespace {

v1::Producer GoodProducer() {
  v1::Producer p;
  p.set_token("t1");
  p.set_node("node-1");
  p.set_device("0000:3b:00.1");
  p.set_vector(3);
  return p;
}

v1::Consumer GoodConsumer() {
  v1::Consumer c;
  c.set_token("t1");
  c.set_node("node-1");
  c.set_vm("vm-a");
  c.set_gsi(24);
  return c;
}

void ExpectInvalidField(const absl::Status& s, const std::string& field) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(GetErrorContext(s).field, field) << s;
  EXPECT_NE(s.message().find(field), absl::string_view::npos) << s;
}

TEST(ValidationTest, GoodProducer_Accepted) {
  auto r = ProducerFromProto(GoodProducer());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->device, "0000:3b:00.1");
  EXPECT_EQ(r->irq_index, v1::IRQ_INDEX_MSIX);
}

TEST(ValidationTest, Producer_EmptyToken_NamesToken) {
  auto p = GoodProducer();
  p.clear_token();
  ExpectInvalidField(ProducerFromProto(p).status(), "producer.token");
}

TEST(ValidationTest, Producer_OversizedToken_NamesToken) {
  auto p = GoodProducer();
  p.set_token(std::string(kMaxTokenBytes + 1, 'x'));
  ExpectInvalidField(ProducerFromProto(p).status(), "producer.token");
}

TEST(ValidationTest, Producer_TokenWithSpace_NamesToken) {
  auto p = GoodProducer();
  p.set_token("a b");
  ExpectInvalidField(ProducerFromProto(p).status(), "producer.token");
}

TEST(ValidationTest, Producer_MissingNode_NamesNode) {
  auto p = GoodProducer();
  p.clear_node();
  ExpectInvalidField(ProducerFromProto(p).status(), "producer.node");
}

TEST(ValidationTest, Producer_BadNodeCharacters_NamesNode) {
  auto p = GoodProducer();
  p.set_node("node/1");
  ExpectInvalidField(ProducerFromProto(p).status(), "producer.node");
}

TEST(ValidationTest, Producer_OversizedNode_NamesNode) {
  auto p = GoodProducer();
  p.set_node(std::string(kMaxNodeBytes + 1, 'n'));
  ExpectInvalidField(ProducerFromProto(p).status(), "producer.node");
}

TEST(ValidationTest, Producer_MissingDevice_NamesDevice) {
  auto p = GoodProducer();
  p.clear_device();
  ExpectInvalidField(ProducerFromProto(p).status(), "producer.device");
}

TEST(ValidationTest, Producer_MalformedDevice_NamesDevice) {
  for (const char* bad : {"3b:00.1", "0000:3b:00.8", "0000:3b:20.0",
                          "0000-3b-00.1", "zzzz:3b:00.1"}) {
    auto p = GoodProducer();
    p.set_device(bad);
    ExpectInvalidField(ProducerFromProto(p).status(), "producer.device");
  }
}

TEST(ValidationTest, Producer_UpperCaseDevice_Normalised) {
  auto p = GoodProducer();
  p.set_device("0000:3B:00.1");
  auto r = ProducerFromProto(p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->device, "0000:3b:00.1");
}

TEST(ValidationTest, Producer_VectorOutOfRangeForIndex_NamesVector) {
  auto p = GoodProducer();
  p.set_index(v1::IRQ_INDEX_INTX);
  p.set_vector(1);
  ExpectInvalidField(ProducerFromProto(p).status(), "producer.vector");
  p.set_index(v1::IRQ_INDEX_MSI);
  p.set_vector(kMaxMsiVector + 1);
  ExpectInvalidField(ProducerFromProto(p).status(), "producer.vector");
  p.set_index(v1::IRQ_INDEX_MSIX);
  p.set_vector(kMaxMsixVector + 1);
  ExpectInvalidField(ProducerFromProto(p).status(), "producer.vector");
}

TEST(ValidationTest, Producer_UnknownIndex_NamesIndex) {
  auto p = GoodProducer();
  p.set_index(static_cast<v1::IrqIndex>(42));
  ExpectInvalidField(ProducerFromProto(p).status(), "producer.index");
}

TEST(ValidationTest, GoodConsumer_Accepted) {
  EXPECT_TRUE(ConsumerFromProto(GoodConsumer()).ok());
}

TEST(ValidationTest, Consumer_EmptyToken_NamesToken) {
  auto c = GoodConsumer();
  c.clear_token();
  ExpectInvalidField(ConsumerFromProto(c).status(), "consumer.token");
}

TEST(ValidationTest, Consumer_MissingNode_NamesNode) {
  auto c = GoodConsumer();
  c.clear_node();
  ExpectInvalidField(ConsumerFromProto(c).status(), "consumer.node");
}

TEST(ValidationTest, Consumer_MissingVm_NamesVm) {
  auto c = GoodConsumer();
  c.clear_vm();
  ExpectInvalidField(ConsumerFromProto(c).status(), "consumer.vm");
}

TEST(ValidationTest, Consumer_OversizedVm_NamesVm) {
  auto c = GoodConsumer();
  c.set_vm(std::string(kMaxVmBytes + 1, 'v'));
  ExpectInvalidField(ConsumerFromProto(c).status(), "consumer.vm");
}

TEST(ValidationTest, Consumer_GsiAboveKvmLimit_NamesGsi) {
  auto c = GoodConsumer();
  c.set_gsi(kMaxGsi + 1);
  ExpectInvalidField(ConsumerFromProto(c).status(), "consumer.gsi");
}

TEST(ValidationTest, RegistrationId_RoundTrips) {
  const std::string id = FormatRegistrationId('p', 0xabcdef0123456789ull);
  EXPECT_EQ(id, "p-abcdef0123456789");
  auto parsed = ParseRegistrationId("registration_id", 'p', id);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, 0xabcdef0123456789ull);
}

TEST(ValidationTest, RegistrationId_EmptyMeansAny) {
  auto parsed = ParseRegistrationId("registration_id", 'c', "");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, 0u);
}

TEST(ValidationTest, RegistrationId_Malformed_NamesField) {
  for (const char* bad : {"x", "c-abcdef0123456789", "p-abc",
                          "p-zzzzzzzzzzzzzzzz", "p-0000000000000000"}) {
    ExpectInvalidField(
        ParseRegistrationId("registration_id", 'p', bad).status(),
        "registration_id");
  }
}

}  // namespace
}  // namespace irqbypass
