// ReflectionService: gRPC server reflection (grpc.reflection.v1alpha) on
// the callback API, so that `grpcurl list` and `grpcurl describe` work
// against irqbypassd without a sync server. It answers from the protobuf
// generated pool (every message and service linked into the binary) and
// lists the services it is given.
//
// Thread-safe; each stream answers its requests one at a time, in order.
#ifndef IRQBYPASS_SERVICE_REFLECTION_SERVICE_H_
#define IRQBYPASS_SERVICE_REFLECTION_SERVICE_H_

#include <string>
#include <vector>

#include "protos/grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace irqbypass {

class ReflectionService final
    : public grpc::reflection::v1alpha::ServerReflection::CallbackService {
 public:
  // `services`: the fully qualified names list_services answers with.
  explicit ReflectionService(std::vector<std::string> services)
      : services_(std::move(services)) {}

  grpc::ServerBidiReactor<grpc::reflection::v1alpha::ServerReflectionRequest,
                          grpc::reflection::v1alpha::ServerReflectionResponse>*
  ServerReflectionInfo(grpc::CallbackServerContext* context) override;

  // The answer to one request. `sent`: the files this stream has sent so
  // far (a file is sent once per stream); updated.
  void Answer(
      const grpc::reflection::v1alpha::ServerReflectionRequest& request,
      std::vector<std::string>* sent,
      grpc::reflection::v1alpha::ServerReflectionResponse* response) const;

 private:
  const std::vector<std::string> services_;
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_REFLECTION_SERVICE_H_
