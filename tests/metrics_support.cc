#include "tests/metrics_support.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/byte_buffer.h"

namespace irqbypass::testing {
namespace {

int ConnectLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const auto& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

void* Tag(int n) { return reinterpret_cast<void*>(static_cast<intptr_t>(n)); }

}  // namespace

std::optional<std::string> HttpGet(int port, const std::string& path) {
  const int fd = ConnectLoopback(port);
  if (fd < 0) return std::nullopt;
  const std::string request = "GET " + path +
                              " HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                              "Accept: text/plain\r\n\r\n";
  if (write(fd, request.data(), request.size()) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return std::nullopt;
  }
  std::string response;
  char buf[16384];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, n);
  close(fd);
  const size_t header_end = response.find("\r\n\r\n");
  const bool ok_status = response.compare(0, 12, "HTTP/1.1 200") == 0 ||
                         response.compare(0, 12, "HTTP/1.0 200") == 0;
  if (header_end == std::string::npos || !ok_status) {
    return std::nullopt;
  }
  return response.substr(header_end + 4);
}

int LoggedPort(const std::string& log, const std::string& key) {
  const std::string needle = " " + key + "=";
  const size_t pos = log.rfind(needle);
  if (pos == std::string::npos) return 0;
  return std::atoi(log.c_str() + pos + needle.size());
}

int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      char hex[4];
      std::snprintf(hex, sizeof(hex), "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

std::optional<double> QueryPrometheus(int port, const std::string& promql) {
  auto body = HttpGet(port, "/api/v1/query?query=" + UrlEncode(promql));
  if (!body.has_value()) return std::nullopt;
  // {"status":"success","data":{"resultType":"vector","result":[{"metric":
  // {...},"value":[1700000000.1,"42"]}]}}
  if (body->find("\"status\":\"success\"") == std::string::npos) {
    return std::nullopt;
  }
  const size_t value = body->find("\"value\":[");
  if (value == std::string::npos) return std::nullopt;
  const size_t quote = body->find('"', body->find(',', value));
  if (quote == std::string::npos) return std::nullopt;
  return std::strtod(body->c_str() + quote + 1, nullptr);
}

RawResult RawUnary(const std::string& target, const std::string& method,
                   const std::string& request,
                   std::shared_ptr<grpc::ChannelCredentials> credentials) {
  RawResult result;
  grpc::GenericStub stub(grpc::CreateChannel(
      target, credentials != nullptr ? credentials
                                     : grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(10));
  grpc::CompletionQueue cq;
  const grpc::ByteBuffer request_buffer = ToBuffer(request);
  auto call = stub.PrepareUnaryCall(&context, method, request_buffer, &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  call->Finish(&response, &result.status, Tag(1));
  void* tag;
  bool ok;
  cq.Next(&tag, &ok);
  result.response = FromBuffer(response);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return result;
}

RawStream::RawStream(const std::string& target, const std::string& method,
                     const std::string& request,
                     std::shared_ptr<grpc::ChannelCredentials> credentials)
    : stub_(grpc::CreateChannel(target,
                                credentials != nullptr
                                    ? credentials
                                    : grpc::InsecureChannelCredentials())) {
  call_ = stub_.PrepareCall(&context_, method, &cq_);
  call_->StartCall(Tag(1));
  bool ok = false;
  if (!Await(Tag(1), std::chrono::seconds(10), &ok) || !ok) {
    broken_ = true;
    return;
  }
  call_->Write(ToBuffer(request), Tag(2));
  if (!Await(Tag(2), std::chrono::seconds(10), &ok) || !ok) {
    broken_ = true;
    return;
  }
  call_->WritesDone(Tag(3));
  if (!Await(Tag(3), std::chrono::seconds(10), &ok) || !ok) broken_ = true;
}

RawStream::~RawStream() {
  context_.TryCancel();
  bool ok;
  if (read_pending_) Await(Tag(4), std::chrono::seconds(10), &ok);
  grpc::Status status;
  call_->Finish(&status, Tag(5));
  cq_.Shutdown();
  void* tag;
  while (cq_.Next(&tag, &ok)) {
  }
}

bool RawStream::Await(void* want, std::chrono::milliseconds timeout, bool* ok) {
  const auto deadline = std::chrono::system_clock::now() + timeout;
  while (true) {
    void* tag = nullptr;
    switch (cq_.AsyncNext(&tag, ok, deadline)) {
      case grpc::CompletionQueue::TIMEOUT:
        return false;
      case grpc::CompletionQueue::SHUTDOWN:
        return false;
      case grpc::CompletionQueue::GOT_EVENT:
        if (tag == want) return true;
        break;  // a stale event
    }
  }
}

std::optional<std::string> RawStream::Read(std::chrono::milliseconds timeout) {
  if (broken_) return std::nullopt;
  if (!read_pending_) {
    call_->Read(&buffer_, Tag(4));
    read_pending_ = true;
  }
  bool ok = false;
  if (!Await(Tag(4), timeout, &ok)) return std::nullopt;  // still pending
  read_pending_ = false;
  if (!ok) {
    broken_ = true;
    return std::nullopt;
  }
  return FromBuffer(buffer_);
}

std::string ProtoStringField(int field, const std::string& value) {
  std::string out;
  out.push_back(static_cast<char>((field << 3) | 2));
  size_t n = value.size();
  do {
    unsigned char byte = n & 0x7F;
    n >>= 7;
    if (n != 0) byte |= 0x80;
    out.push_back(static_cast<char>(byte));
  } while (n != 0);
  return out + value;
}

}  // namespace irqbypass::testing
