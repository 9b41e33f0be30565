#include "service/server_options.h"

#include <cstdio>
#include <fstream>

#include "grpc/grpc.h"

namespace irqbypass {

void ApplyServerOptions(grpc::ServerBuilder& builder) {
  // Agents keep one stream open for days: find dead peers, and let agents
  // ping while idle.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.SetMaxReceiveMessageSize(kMaxRequestBytes);
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                             kHandshakeTimeoutMs);
}

void ApplySyncServerOptions(grpc::ServerBuilder& builder, int max_pollers) {
  // Registrations wait on agent round trips, so many handlers block at
  // once; with gRPC's default of 2 idle pollers the sync server would end
  // and re-create threads for nearly every call.
  builder.SetSyncServerOption(
      grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, max_pollers);
}

void WritePortFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << port << "\n";
  }
  std::rename(tmp.c_str(), path.c_str());
}

}  // namespace irqbypass
