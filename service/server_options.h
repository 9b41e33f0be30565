// The gRPC server settings irqbypassd runs with, in one place, so that the
// benchmark's bare server (bench/bare_server.cc) is built exactly alike.
#ifndef IRQBYPASS_SERVICE_SERVER_OPTIONS_H_
#define IRQBYPASS_SERVICE_SERVER_OPTIONS_H_

#include <string>

#include "grpcpp/server_builder.h"

namespace irqbypass {

// Keepalive for long-lived agent streams.
void ApplyServerOptions(grpc::ServerBuilder& builder);

// For a server with sync handlers (only the benchmark's sync bare server:
// irqbypassd has none): idle threads kept waiting for calls.
inline constexpr int kDefaultGrpcMaxPollers = 64;
void ApplySyncServerOptions(grpc::ServerBuilder& builder, int max_pollers);

// Writes `port` to `path` (a --port_file) so that a reader never sees it
// half-written: to a temporary file first, then renamed.
void WritePortFile(const std::string& path, int port);

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_SERVER_OPTIONS_H_
