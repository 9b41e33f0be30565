#include "service/reflection_service.h"

#include <string>
#include <vector>

#include "google/protobuf/descriptor.pb.h"
#include "gtest/gtest.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

namespace irqbypass {
namespace {

namespace rv1 = grpc::reflection::v1alpha;

std::vector<std::string> FileNames(const rv1::ServerReflectionResponse& r) {
  std::vector<std::string> names;
  for (const std::string& bytes :
       r.file_descriptor_response().file_descriptor_proto()) {
    google::protobuf::FileDescriptorProto file;
    EXPECT_TRUE(file.ParseFromString(bytes));
    names.push_back(file.name());
  }
  return names;
}

class ReflectionServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Linked in: its descriptor is in the generated pool.
    ASSERT_NE(v1::Binding::descriptor(), nullptr);
  }
  ReflectionService service_{{"irqbypass.v1.BypassManager"}};
};

TEST_F(ReflectionServiceTest, Symbol_FileFirstThenItsImportsOncePerStream) {
  std::vector<std::string> sent;
  rv1::ServerReflectionRequest request;
  request.set_file_containing_symbol("irqbypass.v1.BypassManager");
  rv1::ServerReflectionResponse first;
  service_.Answer(request, &sent, &first);
  std::vector<std::string> names = FileNames(first);
  ASSERT_EQ(names.size(), 2u) << first.ShortDebugString();
  EXPECT_EQ(names[0], "protos/irqbypass/v1/irqbypass.proto");
  EXPECT_EQ(names[1], "google/protobuf/any.proto");

  // Asked again on the same stream: the file itself again (it is the
  // answer), its imports not.
  rv1::ServerReflectionResponse second;
  request.set_file_containing_symbol("irqbypass.v1.Binding");
  service_.Answer(request, &sent, &second);
  EXPECT_EQ(FileNames(second),
            std::vector<std::string>{"protos/irqbypass/v1/irqbypass.proto"});

  // By name, a file sent before as an import comes back too.
  rv1::ServerReflectionResponse any;
  request.set_file_by_filename("google/protobuf/any.proto");
  service_.Answer(request, &sent, &any);
  EXPECT_EQ(FileNames(any),
            std::vector<std::string>{"google/protobuf/any.proto"});
  EXPECT_EQ(any.original_request().file_by_filename(),
            "google/protobuf/any.proto");
}

TEST_F(ReflectionServiceTest, ListServices_TheNamesGiven) {
  std::vector<std::string> sent;
  rv1::ServerReflectionRequest request;
  request.set_list_services("");
  rv1::ServerReflectionResponse response;
  service_.Answer(request, &sent, &response);
  ASSERT_EQ(response.list_services_response().service_size(), 1);
  EXPECT_EQ(response.list_services_response().service(0).name(),
            "irqbypass.v1.BypassManager");
}

TEST_F(ReflectionServiceTest, UnknownOrEmpty_ErrorResponseNamingIt) {
  std::vector<std::string> sent;
  rv1::ServerReflectionRequest request;
  rv1::ServerReflectionResponse response;
  request.set_file_by_filename("nope.proto");
  service_.Answer(request, &sent, &response);
  EXPECT_EQ(response.error_response().error_code(), 5);  // NOT_FOUND
  EXPECT_NE(response.error_response().error_message().find("nope.proto"),
            std::string::npos);

  response.Clear();
  request.mutable_file_containing_extension()->set_containing_type(
      "irqbypass.v1.Binding");
  request.mutable_file_containing_extension()->set_extension_number(100);
  service_.Answer(request, &sent, &response);
  EXPECT_EQ(response.error_response().error_code(), 5);

  response.Clear();
  request.set_all_extension_numbers_of_type("irqbypass.v1.Binding");
  service_.Answer(request, &sent, &response);
  EXPECT_EQ(response.all_extension_numbers_response().base_type_name(),
            "irqbypass.v1.Binding");
  EXPECT_EQ(response.all_extension_numbers_response().extension_number_size(),
            0);

  response.Clear();
  service_.Answer(rv1::ServerReflectionRequest(), &sent, &response);
  EXPECT_EQ(response.error_response().error_code(), 3);  // INVALID_ARGUMENT
  EXPECT_TRUE(sent.empty());                             // no file was sent
}

}  // namespace
}  // namespace irqbypass
