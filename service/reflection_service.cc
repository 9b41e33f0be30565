#include "service/reflection_service.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"

namespace irqbypass {

namespace rv1 = grpc::reflection::v1alpha;
using google::protobuf::DescriptorPool;
using google::protobuf::FileDescriptor;

namespace {

// `file` (always: it is the answer), then its imports, depth first, each
// unless this stream has sent it already; serialized.
void AddFile(const FileDescriptor* file, std::vector<std::string>* sent,
             rv1::FileDescriptorResponse* out, bool requested = true) {
  const bool was_sent =
      std::find(sent->begin(), sent->end(), file->name()) != sent->end();
  if (was_sent && !requested) return;
  if (!was_sent) sent->push_back(file->name());
  google::protobuf::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(out->add_file_descriptor_proto());
  for (int i = 0; i < file->dependency_count(); ++i) {
    AddFile(file->dependency(i), sent, out, /*requested=*/false);
  }
}

void NotFound(const std::string& what, rv1::ServerReflectionResponse* out) {
  out->mutable_error_response()->set_error_code(
      static_cast<int>(grpc::StatusCode::NOT_FOUND));
  out->mutable_error_response()->set_error_message(what);
}

// `file` with the dependencies not yet sent on this stream, or NOT_FOUND
// saying `missing` when there is no such file.
void FileOrNotFound(const FileDescriptor* file, const std::string& missing,
                    std::vector<std::string>* sent,
                    rv1::ServerReflectionResponse* out) {
  if (file == nullptr) return NotFound(missing, out);
  AddFile(file, sent, out->mutable_file_descriptor_response());
}

// One stream: read a request, write its answer, read the next.
class InfoReactor final
    : public grpc::ServerBidiReactor<rv1::ServerReflectionRequest,
                                     rv1::ServerReflectionResponse> {
 public:
  explicit InfoReactor(const ReflectionService& service) : service_(service) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return Finish(grpc::Status::OK);  // the client is done
    response_.Clear();
    service_.Answer(request_, &sent_, &response_);
    StartWrite(&response_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status::OK);  // the stream is gone
    StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  const ReflectionService& service_;
  rv1::ServerReflectionRequest request_;
  rv1::ServerReflectionResponse response_;
  std::vector<std::string> sent_;
};

}  // namespace

grpc::ServerBidiReactor<rv1::ServerReflectionRequest,
                        rv1::ServerReflectionResponse>*
ReflectionService::ServerReflectionInfo(grpc::CallbackServerContext*) {
  return new InfoReactor(*this);
}

void ReflectionService::Answer(const rv1::ServerReflectionRequest& request,
                               std::vector<std::string>* sent,
                               rv1::ServerReflectionResponse* response) const {
  const DescriptorPool* pool = DescriptorPool::generated_pool();
  response->set_valid_host(request.host());
  *response->mutable_original_request() = request;
  switch (request.message_request_case()) {
    case rv1::ServerReflectionRequest::kListServices:
      for (const std::string& name : services_) {
        response->mutable_list_services_response()->add_service()->set_name(
            name);
      }
      return;
    case rv1::ServerReflectionRequest::kFileByFilename:
      return FileOrNotFound(pool->FindFileByName(request.file_by_filename()),
                            absl::StrCat("file_by_filename: no file \"",
                                         request.file_by_filename(), "\""),
                            sent, response);
    case rv1::ServerReflectionRequest::kFileContainingSymbol:
      return FileOrNotFound(
          pool->FindFileContainingSymbol(request.file_containing_symbol()),
          absl::StrCat("file_containing_symbol: no symbol \"",
                       request.file_containing_symbol(), "\""),
          sent, response);
    case rv1::ServerReflectionRequest::kFileContainingExtension: {
      const rv1::ExtensionRequest& ext = request.file_containing_extension();
      const auto* type = pool->FindMessageTypeByName(ext.containing_type());
      const auto* field = type == nullptr ? nullptr
                                          : pool->FindExtensionByNumber(
                                                type, ext.extension_number());
      return FileOrNotFound(
          field == nullptr ? nullptr : field->file(),
          absl::StrCat("file_containing_extension: no extension ",
                       ext.extension_number(), " of \"", ext.containing_type(),
                       "\""),
          sent, response);
    }
    case rv1::ServerReflectionRequest::kAllExtensionNumbersOfType: {
      const auto* type =
          pool->FindMessageTypeByName(request.all_extension_numbers_of_type());
      if (type == nullptr) {
        return NotFound(
            absl::StrCat("all_extension_numbers_of_type: no message type \"",
                         request.all_extension_numbers_of_type(), "\""),
            response);
      }
      std::vector<const google::protobuf::FieldDescriptor*> extensions;
      pool->FindAllExtensions(type, &extensions);
      auto* numbers = response->mutable_all_extension_numbers_response();
      numbers->set_base_type_name(type->full_name());
      for (const auto* field : extensions) {
        numbers->add_extension_number(field->number());
      }
      return;
    }
    case rv1::ServerReflectionRequest::MESSAGE_REQUEST_NOT_SET:
      break;
  }
  response->mutable_error_response()->set_error_code(
      static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  response->mutable_error_response()->set_error_message(
      "message_request: none of file_by_filename, file_containing_symbol, "
      "file_containing_extension, all_extension_numbers_of_type, "
      "list_services is set");
}

}  // namespace irqbypass
