// bare_server: the same gRPC service (irqbypass.v1.BypassManager) with empty
// handlers, built with irqbypassd's server options (sync server, same channel
// arguments). The end-to-end benchmark drives it beside irqbypassd: the
// ratio of the two is what irqbypass costs over gRPC itself.
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "protos/irqbypass/v1/irqbypass.grpc.pb.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0", "HOST:PORT");
ABSL_FLAG(std::string, port_file, "", "Write the bound port here");

namespace irqbypass::bench {
namespace {

class EmptyBypassManager final : public v1::BypassManager::Service {
  grpc::Status RegisterProducer(grpc::ServerContext*,
                                const v1::RegisterProducerRequest*,
                                v1::RegisterProducerResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status RegisterConsumer(grpc::ServerContext*,
                                const v1::RegisterConsumerRequest*,
                                v1::RegisterConsumerResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status UnregisterProducer(grpc::ServerContext*,
                                  const v1::UnregisterProducerRequest*,
                                  v1::UnregisterProducerResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status UnregisterConsumer(grpc::ServerContext*,
                                  const v1::UnregisterConsumerRequest*,
                                  v1::UnregisterConsumerResponse*) override {
    return grpc::Status::OK;
  }
};

int Main() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  EmptyBypassManager service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen),
                           grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  // As irqbypassd (service/main.cc).
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.SetSyncServerOption(
      grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 64);
  auto server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "bare_server: cannot listen\n");
    return 2;
  }
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    std::ofstream(port_file + ".tmp") << port << "\n";
    std::rename((port_file + ".tmp").c_str(), port_file.c_str());
  }
  int sig = 0;
  sigwait(&signals, &sig);
  server->Shutdown();
  return 0;
}

}  // namespace
}  // namespace irqbypass::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  // gRPC locks absl::Mutex on every call; the system Abseil is built with
  // deadlock detection on, which costs a lock-graph update per acquisition.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return irqbypass::bench::Main();
}
