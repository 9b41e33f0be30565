// RpcMetricsInterceptorFactory: a gRPC server interceptor that times every
// unary RPC (from call start to status sent) into ServiceMetrics'
// irqbypass_grpc_server_handling_seconds{grpc_service,grpc_method,grpc_code}.
// Streaming RPCs (WatchBindings, agent sessions) are not timed.
//
//   std::vector<std::unique_ptr<
//       grpc::experimental::ServerInterceptorFactoryInterface>> creators;
//   creators.push_back(std::make_unique<RpcMetricsInterceptorFactory>(m));
//   builder.experimental().SetInterceptorCreators(std::move(creators));
//
// Thread-safe. `metrics` must outlive the server.
#ifndef IRQBYPASS_SERVICE_RPC_METRICS_INTERCEPTOR_H_
#define IRQBYPASS_SERVICE_RPC_METRICS_INTERCEPTOR_H_

#include "grpcpp/support/server_interceptor.h"
#include "service/service_metrics.h"

namespace irqbypass {

class RpcMetricsInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcMetricsInterceptorFactory(ServiceMetrics& metrics)
      : metrics_(metrics) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  ServiceMetrics& metrics_;
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_RPC_METRICS_INTERCEPTOR_H_
