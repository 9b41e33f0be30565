#include "client/error_detail.h"

#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "google/protobuf/any.pb.h"
#include "gtest/gtest.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

namespace irqbypass::client {
namespace {

using ::irqbypass::v1::ErrorDetail;
using ::irqbypass::v1::RpcStatus;

ErrorDetail ConnectFailedDetail() {
  ErrorDetail detail;
  detail.set_reason(ErrorDetail::CONNECT_FAILED);
  detail.set_token("t1");
  detail.set_node("n1");
  detail.set_step("add_producer");
  detail.set_errno_value(2);
  detail.set_errno_name("ENOENT");
  detail.set_agent_message("vm \"vm-x\" not held by agent");
  return detail;
}

// Builds the status the way irqbypassd does: RpcStatus{code, message,
// details: [Any(ErrorDetail)]} serialized into error_details().
grpc::Status ServerStatus(grpc::StatusCode code, const std::string& message,
                          const ErrorDetail& detail) {
  RpcStatus rpc_status;
  rpc_status.set_code(code);
  rpc_status.set_message(message);
  rpc_status.add_details()->PackFrom(detail);
  return grpc::Status(code, message, rpc_status.SerializeAsString());
}

TEST(FromGrpcStatusTest, Ok_MapsToOk) {
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(FromGrpcStatusTest, ServerDetail_KeepsCodeMessageAndDetail) {
  const grpc::Status wire =
      ServerStatus(grpc::StatusCode::FAILED_PRECONDITION,
                   "connect step add_producer failed", ConnectFailedDetail());

  const absl::Status status = FromGrpcStatus(wire);

  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(status.message(), "connect step add_producer failed");
  std::optional<ErrorDetail> detail = GetErrorDetail(status);
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->reason(), ErrorDetail::CONNECT_FAILED);
  EXPECT_EQ(detail->step(), "add_producer");
  EXPECT_EQ(detail->errno_value(), 2);
  EXPECT_EQ(detail->errno_name(), "ENOENT");
  EXPECT_EQ(detail->node(), "n1");
  EXPECT_EQ(detail->token(), "t1");
}

TEST(FromGrpcStatusTest, EveryCanonicalCode_KeepsItsNumber) {
  for (int code = 1; code <= 16; ++code) {
    const absl::Status status =
        FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(code), "m"));
    EXPECT_EQ(static_cast<int>(status.code()), code);
    EXPECT_EQ(status.message(), "m");
  }
}

TEST(FromGrpcStatusTest, CodeOutOfRange_IsUnknown) {
  const absl::Status status =
      FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(99), "m"));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnknown);
}

TEST(FromGrpcStatusTest, NoDetails_HasNoErrorDetail) {
  const absl::Status status =
      FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(GetErrorDetail(status).has_value());
}

TEST(FromGrpcStatusTest, GarbageDetails_AreIgnored) {
  const absl::Status status = FromGrpcStatus(
      grpc::Status(grpc::StatusCode::INTERNAL, "boom", "\xff\xff\xff"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(status.message(), "boom");
  EXPECT_FALSE(GetErrorDetail(status).has_value());
}

TEST(FromGrpcStatusTest, ErrorDetailAfterOtherDetail_IsFound) {
  RpcStatus rpc_status;
  rpc_status.set_code(grpc::StatusCode::NOT_FOUND);
  irqbypass::v1::Binding unrelated;
  unrelated.set_token("x");
  rpc_status.add_details()->PackFrom(unrelated);
  ErrorDetail detail;
  detail.set_reason(ErrorDetail::NOT_REGISTERED);
  rpc_status.add_details()->PackFrom(detail);

  const absl::Status status = FromGrpcStatus(grpc::Status(
      grpc::StatusCode::NOT_FOUND, "gone", rpc_status.SerializeAsString()));

  ASSERT_TRUE(GetErrorDetail(status).has_value());
  EXPECT_EQ(GetErrorDetail(status)->reason(), ErrorDetail::NOT_REGISTERED);
}

TEST(ErrorDetailPayloadTest, TypeUrl_IsTheAnyTypeUrl) {
  google::protobuf::Any any;
  any.PackFrom(ErrorDetail());
  EXPECT_EQ(any.type_url(), kErrorDetailTypeUrl);

  const absl::Status status =
      WithErrorDetail(absl::NotFoundError("x"), ConnectFailedDetail());
  EXPECT_TRUE(status.GetPayload(kErrorDetailTypeUrl).has_value());
}

TEST(ErrorDetailPayloadTest, PlainStatus_HasNoDetail) {
  EXPECT_FALSE(GetErrorDetail(absl::NotFoundError("x")).has_value());
  EXPECT_FALSE(GetErrorDetail(absl::OkStatus()).has_value());
}

TEST(ErrorDetailPayloadTest, OkStatus_DropsDetail) {
  EXPECT_FALSE(
      GetErrorDetail(WithErrorDetail(absl::OkStatus(), ConnectFailedDetail()))
          .has_value());
}

TEST(ToGrpcStatusTest, WithDetail_EncodesRpcStatusLikeTheServer) {
  const absl::Status status = WithErrorDetail(
      absl::FailedPreconditionError("step failed"), ConnectFailedDetail());

  const grpc::Status wire = ToGrpcStatus(status);

  EXPECT_EQ(wire.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(wire.error_message(), "step failed");
  RpcStatus rpc_status;
  ASSERT_TRUE(rpc_status.ParseFromString(wire.error_details()));
  EXPECT_EQ(rpc_status.code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(rpc_status.message(), "step failed");
  ASSERT_EQ(rpc_status.details_size(), 1);
  ErrorDetail detail;
  ASSERT_TRUE(rpc_status.details(0).UnpackTo(&detail));
  EXPECT_EQ(detail.step(), "add_producer");
}

TEST(ToGrpcStatusTest, RoundTrip_PreservesEverything) {
  const absl::Status original =
      WithErrorDetail(absl::AlreadyExistsError("busy"), ConnectFailedDetail());

  const absl::Status back = FromGrpcStatus(ToGrpcStatus(original));

  EXPECT_EQ(back.code(), original.code());
  EXPECT_EQ(back.message(), original.message());
  ASSERT_TRUE(GetErrorDetail(back).has_value());
  EXPECT_EQ(GetErrorDetail(back)->SerializeAsString(),
            ConnectFailedDetail().SerializeAsString());
}

TEST(ToGrpcStatusTest, NoDetail_LeavesErrorDetailsEmpty) {
  const grpc::Status wire = ToGrpcStatus(absl::NotFoundError("nope"));
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(wire.error_details().empty());
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

TEST(DescribeErrorTest, ConnectFailed_NamesStepNodeErrnoAndAgentMessage) {
  const absl::Status status = FromGrpcStatus(
      ServerStatus(grpc::StatusCode::FAILED_PRECONDITION,
                   "whatever the server said", ConnectFailedDetail()));

  EXPECT_EQ(DescribeError(status),
            "connect step add_producer failed on node n1: ENOENT "
            "(vm \"vm-x\" not held by agent)");
}

TEST(DescribeErrorTest, ConnectFailedWithoutErrnoName_DerivesItFromValue) {
  ErrorDetail detail = ConnectFailedDetail();
  detail.clear_errno_name();
  detail.clear_agent_message();
  const absl::Status status =
      WithErrorDetail(absl::FailedPreconditionError("x"), detail);

  EXPECT_EQ(DescribeError(status),
            "connect step add_producer failed on node n1: ENOENT");
}

TEST(DescribeErrorTest, ObjectBusy_AppendsOtherToken) {
  ErrorDetail detail;
  detail.set_reason(ErrorDetail::OBJECT_BUSY);
  detail.set_other_token("t9");
  const absl::Status status = WithErrorDetail(
      absl::AlreadyExistsError("device 0000:3b:00.1 vector 3 is registered"),
      detail);

  EXPECT_EQ(DescribeError(status),
            "device 0000:3b:00.1 vector 3 is registered (registered under "
            "token \"t9\")");
}

TEST(DescribeErrorTest, NoDetail_IsTheMessage) {
  EXPECT_EQ(DescribeError(absl::UnavailableError("agent n1 not connected")),
            "agent n1 not connected");
  EXPECT_EQ(DescribeError(absl::OkStatus()), "OK");
  EXPECT_EQ(DescribeError(absl::Status(absl::StatusCode::kNotFound, "")),
            "NOT_FOUND");
}

}  // namespace
}  // namespace irqbypass::client
