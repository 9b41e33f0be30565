#include "agent/handoff/handoff.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/errno_status.h"
#include "agent/kvm/vfio_device.h"

namespace irqbypass {
namespace agent {
namespace {

bool ValidVmName(absl::string_view name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

absl::Status Invalid(absl::string_view message) {
  return ErrnoErrorWithMessage(EINVAL, message);
}

}  // namespace

std::string HandoffRequest::Encode() const {
  switch (kind) {
    case Kind::kVm:
      return absl::StrCat("VM ", name, agent_routing ? " agent" : " vmm");
    case Kind::kDevice:
      return absl::StrCat("DEVICE ", name);
    case Kind::kReleaseVm:
      return absl::StrCat("RELEASE-VM ", name);
    case Kind::kReleaseDevice:
      return absl::StrCat("RELEASE-DEVICE ", name);
    case Kind::kServeVm:
      return absl::StrCat("SERVE-VM ", version, " ", name);
  }
  return "";
}

absl::StatusOr<HandoffRequest> ParseHandoffRequest(absl::string_view text) {
  const std::vector<absl::string_view> words = absl::StrSplit(text, ' ');
  HandoffRequest request;
  const absl::string_view verb = words[0];
  if (verb == "VM") {
    if (words.size() != 3) return Invalid("VM: want \"VM <name> vmm|agent\"");
    request.kind = HandoffRequest::Kind::kVm;
    if (words[2] == "agent") {
      request.agent_routing = true;
    } else if (words[2] != "vmm") {
      return Invalid(
          absl::StrCat("VM: routing \"", words[2], "\": want vmm or agent"));
    }
  } else if (verb == "SERVE-VM") {
    if (words.size() != 3 || !absl::SimpleAtoi(words[1], &request.version) ||
        request.version == 0) {
      return Invalid("SERVE-VM: want \"SERVE-VM <version> <name>\"");
    }
    request.kind = HandoffRequest::Kind::kServeVm;
    request.name = std::string(words[2]);
    if (!ValidVmName(request.name)) {
      return Invalid(
          absl::StrCat("SERVE-VM: bad VM name \"", request.name, "\""));
    }
    return request;
  } else if (verb == "DEVICE" || verb == "RELEASE-VM" ||
             verb == "RELEASE-DEVICE") {
    if (words.size() != 2)
      return Invalid(absl::StrCat(verb, ": want one name"));
    request.kind = verb == "DEVICE" ? HandoffRequest::Kind::kDevice
                   : verb == "RELEASE-VM"
                       ? HandoffRequest::Kind::kReleaseVm
                       : HandoffRequest::Kind::kReleaseDevice;
  } else {
    return Invalid(absl::StrCat("unknown request \"", verb,
                                "\" (want SERVE-VM, DEVICE, VM, RELEASE-VM "
                                "or RELEASE-DEVICE)"));
  }
  request.name = std::string(words[1]);
  const bool is_device = request.kind == HandoffRequest::Kind::kDevice ||
                         request.kind == HandoffRequest::Kind::kReleaseDevice;
  // The kernel's spelling ("0000:3b:00.1"), so one device has one name.
  if (is_device) absl::AsciiStrToLower(&request.name);
  if (is_device ? !IsPciAddress(request.name) : !ValidVmName(request.name)) {
    return Invalid(absl::StrCat(verb, ": bad ",
                                is_device ? "PCI address" : "VM name", " \"",
                                request.name, "\""));
  }
  return request;
}

std::string IrqfdRequest::Encode() const {
  return absl::StrCat("IRQFD ", version, " ", id, " ", vm, " ", gsi,
                      deassign ? " deassign" : " assign");
}

std::string IrqfdReply::Encode() const {
  std::string text =
      absl::StrCat("IRQFD-REPLY ", version, " ", id, " ", errno_value);
  if (!message.empty()) absl::StrAppend(&text, " ", message);
  if (text.size() > kHandoffMaxMessage) text.resize(kHandoffMaxMessage);
  return text;
}

bool IsIrqfdRequest(absl::string_view text) {
  return absl::StartsWith(text, "IRQFD ");
}

bool IsIrqfdReply(absl::string_view text) {
  return absl::StartsWith(text, "IRQFD-REPLY ");
}

absl::StatusOr<IrqfdRequest> ParseIrqfdRequest(absl::string_view text) {
  const std::vector<absl::string_view> words = absl::StrSplit(text, ' ');
  IrqfdRequest request;
  if (words.size() < 3 || words[0] != "IRQFD" ||
      !absl::SimpleAtoi(words[1], &request.version) || request.version == 0 ||
      !absl::SimpleAtoi(words[2], &request.id) || request.id == 0) {
    return Invalid(absl::StrCat("bad IRQFD request \"", text,
                                "\" (want \"IRQFD <version> <id> ...\")"));
  }
  if (request.version != kHandoffIrqfdVersion) return request;
  if (words.size() != 6 || !ValidVmName(words[3]) ||
      !absl::SimpleAtoi(words[4], &request.gsi) ||
      (words[5] != "assign" && words[5] != "deassign")) {
    return Invalid(absl::StrCat("bad IRQFD request \"", text,
                                "\" (want \"IRQFD 1 <id> <vm> <gsi> "
                                "assign|deassign\")"));
  }
  request.vm = std::string(words[3]);
  request.deassign = words[5] == "deassign";
  return request;
}

absl::StatusOr<IrqfdReply> ParseIrqfdReply(absl::string_view text) {
  const std::vector<absl::string_view> words =
      absl::StrSplit(text, absl::MaxSplits(' ', 4));
  IrqfdReply reply;
  if (words.size() < 3 || words[0] != "IRQFD-REPLY" ||
      !absl::SimpleAtoi(words[1], &reply.version) || reply.version == 0 ||
      !absl::SimpleAtoi(words[2], &reply.id) || reply.id == 0) {
    return Invalid(
        absl::StrCat("bad IRQFD-REPLY \"", text,
                     "\" (want \"IRQFD-REPLY <version> <id> ...\")"));
  }
  if (reply.version != kHandoffIrqfdVersion) return reply;
  if (words.size() < 4 || !absl::SimpleAtoi(words[3], &reply.errno_value) ||
      reply.errno_value < 0) {
    return Invalid(absl::StrCat("bad IRQFD-REPLY \"", text,
                                "\" (want \"IRQFD-REPLY 1 <id> <errno> "
                                "[<message>]\")"));
  }
  if (words.size() == 5) reply.message = std::string(words[4]);
  return reply;
}

std::string EncodeHandoffReply(const absl::Status& status) {
  if (status.ok()) return "OK";
  std::string reply =
      absl::StrCat("ERR ", ErrnoOf(status), " ", status.message());
  if (reply.size() > kHandoffMaxMessage) reply.resize(kHandoffMaxMessage);
  return reply;
}

absl::Status ParseHandoffReply(absl::string_view text) {
  if (text == "OK") return absl::OkStatus();
  const std::vector<absl::string_view> parts =
      absl::StrSplit(text, absl::MaxSplits(' ', 2));
  int err = 0;
  if (parts.size() < 2 || parts[0] != "ERR" ||
      !absl::SimpleAtoi(parts[1], &err) || err <= 0) {
    return ErrnoErrorWithMessage(
        EPROTO, absl::StrCat("bad reply from the agent: \"", text, "\""));
  }
  return ErrnoErrorWithMessage(err, parts.size() > 2 ? parts[2] : "");
}

absl::Status SendHandoffPacket(int socket, absl::string_view text,
                               const std::vector<int>& fds, bool wait) {
  if (fds.size() > kHandoffMaxFds) return Invalid("too many fds");
  iovec iov;
  iov.iov_base = const_cast<char*>(text.data());
  iov.iov_len = text.size();
  msghdr msg;
  std::memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kHandoffMaxFds)];
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t sent;
  do {
    sent = ::sendmsg(socket, &msg, MSG_NOSIGNAL | (wait ? 0 : MSG_DONTWAIT));
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) return ErrnoError(errno, "handoff sendmsg");
  return absl::OkStatus();
}

absl::StatusOr<HandoffPacket> ReceiveHandoffPacket(int socket, bool wait) {
  char buffer[kHandoffMaxMessage];
  iovec iov;
  iov.iov_base = buffer;
  iov.iov_len = sizeof(buffer);
  msghdr msg;
  std::memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kHandoffMaxFds)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t received;
  do {
    received =
        ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC | (wait ? 0 : MSG_DONTWAIT));
  } while (received < 0 && errno == EINTR);
  if (received < 0) return ErrnoError(errno, "handoff recvmsg");

  HandoffPacket packet;
  // Own every fd first, so that no error path below leaks one.
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr;
       cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) {
      continue;
    }
    const size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
      packet.fds.emplace_back(fd);
    }
  }
  if (received == 0 && packet.fds.empty()) {
    return ErrnoErrorWithMessage(ECONNRESET, "handoff peer closed");
  }
  if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
    return ErrnoErrorWithMessage(
        EMSGSIZE, absl::StrCat("handoff message over ", kHandoffMaxMessage,
                               " bytes or ", kHandoffMaxFds, " fds"));
  }
  packet.text.assign(buffer, static_cast<size_t>(received));
  return packet;
}

}  // namespace agent
}  // namespace irqbypass
