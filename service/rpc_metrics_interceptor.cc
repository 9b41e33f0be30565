#include "service/rpc_metrics_interceptor.h"

#include <chrono>

#include "grpcpp/support/interceptor.h"
#include "grpcpp/support/status.h"

namespace irqbypass {
namespace {

using grpc::experimental::InterceptionHookPoints;

class RpcMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  RpcMetricsInterceptor(ServiceMetrics& metrics, RpcMethod method)
      : metrics_(metrics),
        method_(method),
        start_(std::chrono::steady_clock::now()) {}

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS)) {
      const int code = static_cast<int>(methods->GetSendStatus().error_code());
      const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::steady_clock::now() - start_)
                             .count();
      metrics_.ObserveRpc(method_, code, ns);
    }
    methods->Proceed();
  }

 private:
  ServiceMetrics& metrics_;
  const RpcMethod method_;
  const std::chrono::steady_clock::time_point start_;
};

}  // namespace

grpc::experimental::Interceptor*
RpcMetricsInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  if (info->type() != grpc::experimental::ServerRpcInfo::Type::UNARY) {
    return nullptr;  // streams live for minutes to days: no latency
  }
  const char* path = info->method();
  return new RpcMetricsInterceptor(
      metrics_, path != nullptr ? RpcMethodFromPath(path) : RpcMethod::kOther);
}

}  // namespace irqbypass
