// Routes gRPC's own log lines (gpr_log, which otherwise go straight to
// stderr in gRPC's format) into this product's log: one line each,
// msg="grpc" with the file, line and text, at most 10 a second from each
// of gRPC's source lines (a peer that fails handshakes on purpose cannot
// flood the log, nor hide another line); a failed assertion (gRPC then
// aborts) always. A failed handshake is level=warn (it concerns one peer),
// gRPC's other errors level=error; a TLS client
// naming a server (SNI) the certificate does not carry is level=debug:
// clients reach replicas by address, and certificates name identities,
// not hosts. Protobuf's lines (a peer's malformed message, say) the same
// way, at level=warn. Call once, before the first gRPC object.
#ifndef IRQBYPASS_COMMON_GRPC_LOG_H_
#define IRQBYPASS_COMMON_GRPC_LOG_H_

namespace irqbypass {

void RouteGrpcLogs();

}  // namespace irqbypass

#endif  // IRQBYPASS_COMMON_GRPC_LOG_H_
