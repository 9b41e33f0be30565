#include "agent/handoff/handoff_client.h"

#include <linux/kvm.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/errno_status.h"
#include "agent/kvm/kvm_irqfd.h"

namespace irqbypass {
namespace agent {
namespace {}  // namespace

absl::StatusOr<std::unique_ptr<HandoffClient>> HandoffClient::Connect(
    const std::string& path, const std::vector<uid_t>& agent_uids) {
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
  // Who serves it, before a word (or an fd) goes out.
  ucred agent;
  socklen_t length = sizeof(agent);
  if (::getsockopt(socket.get(), SOL_SOCKET, SO_PEERCRED, &agent, &length) !=
      0) {
    return ErrnoError(errno, "SO_PEERCRED of the agent's socket");
  }
  if (agent.uid != 0 && agent.uid != ::geteuid() &&
      std::find(agent_uids.begin(), agent_uids.end(), agent.uid) ==
          agent_uids.end()) {
    return ErrnoErrorWithMessage(
        EPERM,
        absl::StrCat("the socket ", path, " is served by uid ", agent.uid,
                     ", neither root nor this process's "
                     "user (",
                     ::geteuid(),
                     "): not the agent; "
                     "nothing was sent"));
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
  // The agent answers in order; irqfd requests may come first.
  while (true) {
    absl::StatusOr<HandoffPacket> packet = ReceiveHandoffPacket(socket_.get());
    if (!packet.ok()) return packet.status();
    if (IsIrqfdRequest(packet->text)) {
      if (absl::Status s = ServeIrqfd(*packet); !s.ok()) return s;
      continue;
    }
    return ParseHandoffReply(packet->text);
  }
}

absl::Status HandoffClient::ServeVm(absl::string_view name, int vm_fd) {
  const std::string vm(name);
  if (served_vms_.contains(vm)) {
    return ErrnoErrorWithMessage(
        EEXIST, absl::StrFormat("vm \"%s\" is served already", vm));
  }
  const int has_irqfd = ::ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_IRQFD);
  if (has_irqfd < 0) {
    return ErrnoError(errno, absl::StrFormat("vm \"%s\": KVM_CHECK_EXTENSION "
                                             "(is it this process's KVM VM "
                                             "fd?)",
                                             vm));
  }
  if (has_irqfd == 0) {
    return ErrnoErrorWithMessage(
        ENOTTY, absl::StrFormat("vm \"%s\": KVM without KVM_CAP_IRQFD", vm));
  }
  Fd copy = Fd::DuplicateOf(vm_fd);
  if (!copy.valid()) return ErrnoError(errno, "dup of the VM fd");
  // Before asking: the agent may send requests before its OK.
  served_vms_.emplace(vm, std::move(copy));
  HandoffRequest request;
  request.kind = HandoffRequest::Kind::kServeVm;
  request.name = vm;
  absl::Status s = Call(request, -1);
  if (!s.ok()) served_vms_.erase(vm);
  return s;
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
  // The agent's deassigns for the VM arrive before its OK: keep serving the
  // VM until then.
  absl::Status s = Call(request, -1);
  if (s.ok()) served_vms_.erase(request.name);
  return s;
}

absl::Status HandoffClient::ReleaseDevice(absl::string_view pci_address) {
  HandoffRequest request;
  request.kind = HandoffRequest::Kind::kReleaseDevice;
  request.name = std::string(pci_address);
  return Call(request, -1);
}

absl::Status HandoffClient::ServeIrqfd(const HandoffPacket& packet) {
  absl::StatusOr<IrqfdRequest> request = ParseIrqfdRequest(packet.text);
  if (!request.ok()) {
    // Without an id there is nothing to answer; the agent times out.
    return absl::OkStatus();
  }
  IrqfdReply reply;
  reply.id = request->id;
  auto vm = served_vms_.find(request->vm);
  if (request->version != kHandoffIrqfdVersion) {
    reply.errno_value = EPROTONOSUPPORT;
    reply.message = absl::StrFormat("IRQFD version %d not supported (want %d)",
                                    request->version, kHandoffIrqfdVersion);
  } else if (packet.fds.size() != 1) {
    reply.errno_value = EINVAL;
    reply.message = absl::StrFormat("IRQFD: want 1 fd (the eventfd), got %d",
                                    packet.fds.size());
  } else if (vm == served_vms_.end()) {
    reply.errno_value = ENOENT;
    reply.message =
        absl::StrFormat("vm \"%s\" is not served by this VMM", request->vm);
  } else {
    reply.errno_value = KvmIrqfd(vm->second.get(), packet.fds[0].get(),
                                 request->gsi, request->deassign);
    if (reply.errno_value != 0) {
      reply.message =
          absl::StrCat("KVM_IRQFD: ", std::strerror(reply.errno_value));
    }
  }
  // packet.fds (our copy of the eventfd) close when the packet goes: the
  // kernel's irqfd holds its own reference.
  if (observer_) observer_(*request, reply.errno_value);
  return SendHandoffPacket(socket_.get(), reply.Encode(), {});
}

absl::Status HandoffClient::HandleUnsolicited(HandoffPacket packet) {
  if (IsIrqfdRequest(packet.text)) return ServeIrqfd(packet);
  return absl::OkStatus();  // nothing else is sent unasked
}

absl::Status HandoffClient::Serve(int stop_fd) {
  pollfd fds[2] = {{socket_.get(), POLLIN, 0}, {stop_fd, POLLIN, 0}};
  const nfds_t count = stop_fd >= 0 ? 2 : 1;
  while (true) {
    const int n = ::poll(fds, count, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError(errno, "poll");
    if (count == 2 && fds[1].revents != 0) return absl::OkStatus();
    if (fds[0].revents == 0) continue;
    absl::StatusOr<HandoffPacket> packet = ReceiveHandoffPacket(socket_.get());
    if (!packet.ok()) return packet.status();
    if (absl::Status s = HandleUnsolicited(*std::move(packet)); !s.ok()) {
      return s;
    }
  }
}

absl::Status HandoffClient::ServePending() {
  while (true) {
    absl::StatusOr<HandoffPacket> packet =
        ReceiveHandoffPacket(socket_.get(), /*wait=*/false);
    if (!packet.ok()) {
      if (ErrnoOf(packet.status()) == EAGAIN) return absl::OkStatus();
      return packet.status();
    }
    if (absl::Status s = HandleUnsolicited(*std::move(packet)); !s.ok()) {
      return s;
    }
  }
}

}  // namespace agent
}  // namespace irqbypass
