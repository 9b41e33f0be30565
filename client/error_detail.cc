#include "client/error_detail.h"

#include <string>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/errno_name.h"
#include "google/protobuf/any.pb.h"

namespace irqbypass::client {
namespace {

using ::irqbypass::v1::ErrorDetail;
using ::irqbypass::v1::RpcStatus;

// gRPC and absl share the canonical code numbering 0..16.
constexpr int kMaxCanonicalCode = 16;

absl::StatusCode ToAbslCode(int code) {
  if (code < 0 || code > kMaxCanonicalCode) return absl::StatusCode::kUnknown;
  return static_cast<absl::StatusCode>(code);
}

std::optional<ErrorDetail> DetailFromRpcStatus(const std::string& bytes) {
  if (bytes.empty()) return std::nullopt;
  RpcStatus rpc_status;
  if (!rpc_status.ParseFromString(bytes)) return std::nullopt;
  for (const google::protobuf::Any& any : rpc_status.details()) {
    if (!any.Is<ErrorDetail>()) continue;
    ErrorDetail detail;
    if (any.UnpackTo(&detail)) return detail;
  }
  return std::nullopt;
}

std::string DescribeConnectFailure(const ErrorDetail& detail) {
  std::string errno_name = detail.errno_name();
  if (errno_name.empty() && detail.errno_value() != 0) {
    errno_name = ErrnoName(detail.errno_value());
  }
  std::string out = absl::StrCat("connect step ", detail.step(), " failed");
  if (!detail.node().empty()) absl::StrAppend(&out, " on node ", detail.node());
  if (!errno_name.empty()) absl::StrAppend(&out, ": ", errno_name);
  if (!detail.agent_message().empty()) {
    absl::StrAppend(&out, " (", detail.agent_message(), ")");
  }
  return out;
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status result(ToAbslCode(static_cast<int>(status.error_code())),
                      status.error_message());
  if (std::optional<ErrorDetail> detail =
          DetailFromRpcStatus(status.error_details())) {
    result = WithErrorDetail(std::move(result), *detail);
  }
  return result;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const auto code = static_cast<grpc::StatusCode>(status.code());
  const std::string message(status.message());
  std::optional<ErrorDetail> detail = GetErrorDetail(status);
  if (!detail.has_value()) return grpc::Status(code, message);
  RpcStatus rpc_status;
  rpc_status.set_code(static_cast<int>(status.code()));
  rpc_status.set_message(message);
  rpc_status.add_details()->PackFrom(*detail);
  return grpc::Status(code, message, rpc_status.SerializeAsString());
}

absl::Status WithErrorDetail(absl::Status status, const ErrorDetail& detail) {
  status.SetPayload(kErrorDetailTypeUrl,
                    absl::Cord(detail.SerializeAsString()));
  return status;
}

std::optional<ErrorDetail> GetErrorDetail(const absl::Status& status) {
  absl::optional<absl::Cord> payload = status.GetPayload(kErrorDetailTypeUrl);
  if (!payload.has_value()) return std::nullopt;
  ErrorDetail detail;
  if (!detail.ParseFromString(std::string(*payload))) return std::nullopt;
  return detail;
}

std::string DescribeError(const absl::Status& status) {
  if (status.ok()) return "OK";
  std::string message(status.message());
  if (message.empty()) message = absl::StatusCodeToString(status.code());
  std::optional<ErrorDetail> detail = GetErrorDetail(status);
  if (!detail.has_value()) return message;
  switch (detail->reason()) {
    case ErrorDetail::CONNECT_FAILED:
      if (!detail->step().empty()) return DescribeConnectFailure(*detail);
      break;
    case ErrorDetail::OBJECT_BUSY:
      if (!detail->other_token().empty() &&
          !absl::StrContains(message, detail->other_token())) {
        absl::StrAppend(&message, " (registered under token \"",
                        detail->other_token(), "\")");
      }
      break;
    default:
      break;
  }
  return message;
}

}  // namespace irqbypass::client
