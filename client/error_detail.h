// Error details of irqbypass.v1 RPCs, carried inside absl::Status.
//
// On errors, irqbypassd puts a serialized irqbypass.v1.RpcStatus (wire-
// compatible with google.rpc.Status) into grpc::Status::error_details(), i.e.
// the grpc-status-details-bin trailer. Its first detail is a
// google.protobuf.Any packing an irqbypass.v1.ErrorDetail with a
// machine-readable reason (CONNECT_FAILED, NODE_MISMATCH, ...).
//
// Inside irqbypass code errors travel as absl::Status; the ErrorDetail rides
// along as a payload under kErrorDetailTypeUrl. This file converts between the
// two forms (FromGrpcStatus for clients, ToGrpcStatus for servers and fakes),
// reads the detail back (GetErrorDetail) and renders errors for humans
// (DescribeError).
//
// Thread-safety: all functions are pure and safe to call from any thread.
#ifndef IRQBYPASS_CLIENT_ERROR_DETAIL_H_
#define IRQBYPASS_CLIENT_ERROR_DETAIL_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

namespace irqbypass::client {

// The absl::Status payload key under which a serialized
// irqbypass.v1.ErrorDetail is attached. It is also the type URL that
// google.protobuf.Any uses when packing an ErrorDetail.
inline constexpr absl::string_view kErrorDetailTypeUrl =
    "type.googleapis.com/irqbypass.v1.ErrorDetail";

// Converts a gRPC status into an absl::Status with the same code and message.
// If error_details() holds an RpcStatus, the first of its details that packs
// an ErrorDetail is attached (see GetErrorDetail). Details that do not parse
// are ignored: the code and message still describe the error. Codes outside
// gRPC's range become UNKNOWN. An OK status maps to absl::OkStatus().
absl::Status FromGrpcStatus(const grpc::Status& status);

// The inverse of FromGrpcStatus, for servers and test fakes: same code and
// message; an attached ErrorDetail is encoded as RpcStatus{code, message,
// details: [Any(ErrorDetail)]} in error_details().
grpc::Status ToGrpcStatus(const absl::Status& status);

// Returns `status` with `detail` attached (replacing any earlier detail).
// An OK status is returned unchanged: absl::Status drops payloads on OK.
absl::Status WithErrorDetail(absl::Status status,
                             const irqbypass::v1::ErrorDetail& detail);

// The ErrorDetail attached to `status`, or nullopt when there is none (OK
// status, an error raised locally such as a client-side deadline, or a server
// that sent no detail).
std::optional<irqbypass::v1::ErrorDetail> GetErrorDetail(
    const absl::Status& status);

// One line for humans, without the status code. A failed connect step reads
//   connect step add_producer failed on node n1: ENOENT (vm "vm-x" not held)
// built from the ErrorDetail; other errors read as the status message, with
// the token holding a busy object appended when the message lacks it.
// Returns "OK" for an OK status.
std::string DescribeError(const absl::Status& status);

}  // namespace irqbypass::client

#endif  // IRQBYPASS_CLIENT_ERROR_DETAIL_H_
