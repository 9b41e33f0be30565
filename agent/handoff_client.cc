#include "agent/handoff_client.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "agent/errno_status.h"

namespace irqbypass {
namespace agent {

absl::StatusOr<std::unique_ptr<HandoffClient>> HandoffClient::Connect(
    const std::string& path) {
  sockaddr_un address;
  std::memset(&address, 0, sizeof(address));
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(address.sun_path)) {
    return ErrnoErrorWithMessage(
        ENAMETOOLONG, absl::StrCat("bad socket path \"", path, "\""));
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  Fd socket(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!socket.valid()) return ErrnoError(errno, "socket()");
  if (::connect(socket.get(), reinterpret_cast<sockaddr*>(&address),
                sizeof(address)) != 0) {
    return ErrnoError(errno, absl::StrCat("connect ", path));
  }
  // The greeting: OK, or the refusal (EACCES).
  absl::StatusOr<HandoffPacket> greeting = ReceiveHandoffPacket(socket.get());
  if (!greeting.ok()) return greeting.status();
  if (absl::Status s = ParseHandoffReply(greeting->text); !s.ok()) return s;
  return std::unique_ptr<HandoffClient>(new HandoffClient(std::move(socket)));
}

absl::Status HandoffClient::Call(const HandoffRequest& request, int fd) {
  std::vector<int> fds;
  if (fd >= 0) fds.push_back(fd);
  if (absl::Status s = SendHandoffPacket(socket_.get(), request.Encode(), fds);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<HandoffPacket> reply = ReceiveHandoffPacket(socket_.get());
  if (!reply.ok()) return reply.status();
  return ParseHandoffReply(reply->text);
}

absl::Status HandoffClient::HandOverVm(absl::string_view name, int vm_fd,
                                       bool agent_routing) {
  HandoffRequest request;
  request.kind = HandoffRequest::Kind::kVm;
  request.name = std::string(name);
  request.agent_routing = agent_routing;
  return Call(request, vm_fd);
}

absl::Status HandoffClient::HandOverDevice(absl::string_view pci_address,
                                           int device_fd) {
  HandoffRequest request;
  request.kind = HandoffRequest::Kind::kDevice;
  request.name = std::string(pci_address);
  return Call(request, device_fd);
}

absl::Status HandoffClient::ReleaseVm(absl::string_view name) {
  HandoffRequest request;
  request.kind = HandoffRequest::Kind::kReleaseVm;
  request.name = std::string(name);
  return Call(request, -1);
}

absl::Status HandoffClient::ReleaseDevice(absl::string_view pci_address) {
  HandoffRequest request;
  request.kind = HandoffRequest::Kind::kReleaseDevice;
  request.name = std::string(pci_address);
  return Call(request, -1);
}

}  // namespace agent
}  // namespace irqbypass
