// Test support for the observability tests: plain HTTP GETs on loopback
// (Prometheus /metrics, the Prometheus server's API), ports the binaries
// log, free ports, and raw gRPC calls for services whose protos the tests do
// not compile (health, reflection). Not thread-safe.
#ifndef IRQBYPASS_TESTS_METRICS_SUPPORT_H_
#define IRQBYPASS_TESTS_METRICS_SUPPORT_H_

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "grpcpp/client_context.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/status.h"

namespace irqbypass::testing {

// GET http://127.0.0.1:port<path>; the body on a 200 response, else nullopt.
std::optional<std::string> HttpGet(int port, const std::string& path);

// The last "<key>=N" in `log` (e.g. metrics_port); 0 if none.
int LoggedPort(const std::string& log, const std::string& key);

// A TCP port on 127.0.0.1 that was free a moment ago.
int FreeLoopbackPort();

std::string UrlEncode(const std::string& s);

// The first sample's value of an instant-vector result of Prometheus's
// /api/v1/query; nullopt if the result is empty or the call failed.
std::optional<double> QueryPrometheus(int port, const std::string& promql);

// A raw unary gRPC call (serialized request and response).
struct RawResult {
  grpc::Status status;
  std::string response;
};
// `credentials` null: plaintext.
RawResult RawUnary(
    const std::string& target, const std::string& method,
    const std::string& request,
    std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);

// A raw streaming gRPC call: sends `request`, half-closes, then reads
// responses one at a time.
class RawStream {
 public:
  RawStream(const std::string& target, const std::string& method,
            const std::string& request,
            std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);
  ~RawStream();  // cancels the call
  // The next response; nullopt when the stream ended or `timeout` passed.
  std::optional<std::string> Read(std::chrono::milliseconds timeout);

 private:
  bool Await(void* tag, std::chrono::milliseconds timeout, bool* ok);
  grpc::GenericStub stub_;
  grpc::ClientContext context_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  grpc::ByteBuffer buffer_;
  bool read_pending_ = false;
  bool broken_ = false;
};

// Minimal protobuf wire encoding for those calls.
std::string ProtoStringField(int field, const std::string& value);

}  // namespace irqbypass::testing

#endif  // IRQBYPASS_TESTS_METRICS_SUPPORT_H_
