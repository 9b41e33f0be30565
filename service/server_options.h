// The gRPC server settings irqbypassd runs with, in one place, so that the
// benchmark's bare server (bench/bare_server.cc) is built exactly alike.
#ifndef IRQBYPASS_SERVICE_SERVER_OPTIONS_H_
#define IRQBYPASS_SERVICE_SERVER_OPTIONS_H_

#include <string>

#include "grpcpp/server_builder.h"

namespace irqbypass {

// The largest message irqbypassd takes (gRPC's default is 4 MiB): a Batch
// of kMaxBatchItems ordinary items, or an agent's inventory message
// (agent_session.h: kWiredPerMessage pairs of the longest fields) fits; a
// larger one is refused RESOURCE_EXHAUSTED by gRPC before it is parsed.
inline constexpr int kMaxRequestBytes = 1 << 20;
// A TLS handshake not done in this long is dropped (gRPC's default: 120 s).
inline constexpr int kHandshakeTimeoutMs = 10'000;

// Keepalive for long-lived agent streams (and its enforcement: a client
// that pings more often than every 5 s is sent GOAWAY), the message size
// and handshake limits above.
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
