#include "agent/handoff/remote_vm.h"

#include <cerrno>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "agent/errno_status.h"
#include "common/errno_name.h"
#include "common/log.h"

namespace irqbypass {
namespace agent {
namespace {

absl::Status VmmGone(const std::string& peer) {
  return ErrnoErrorWithMessage(
      ENOTCONN, absl::StrFormat("the VMM (%s) is gone: its handoff connection "
                                "closed",
                                peer));
}

}  // namespace

// ---- VmmChannel ----

VmmChannel::VmmChannel(std::shared_ptr<const Fd> socket, std::string peer)
    : socket_(std::move(socket)), peer_(std::move(peer)) {}

absl::Status VmmChannel::Call(absl::string_view vm, uint32_t gsi, bool deassign,
                              int eventfd, absl::Duration timeout) {
  Pending pending;
  IrqfdRequest request;
  request.vm = std::string(vm);
  request.gsi = gsi;
  request.deassign = deassign;
  {
    MutexLock lock(&mu_);
    if (closed_) return VmmGone(peer_);
    request.id = NextIdLocked();
    pending_[request.id] = &pending;
  }
  const absl::Status sent = SendHandoffPacket(socket_->get(), request.Encode(),
                                              {eventfd}, /*wait=*/false);
  MutexLock lock(&mu_);
  if (!sent.ok()) {
    pending_.erase(request.id);
    const int err = ErrnoOf(sent);
    if (err == EAGAIN) {
      return ErrnoErrorWithMessage(
          EAGAIN, absl::StrFormat("the VMM (%s) is not reading its handoff "
                                  "socket (send buffer full)",
                                  peer_));
    }
    if (err == EPIPE || err == ECONNRESET || err == ENOTCONN) {
      return VmmGone(peer_);
    }
    return sent;
  }
  mu_.AwaitWithTimeout(
      [&pending]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pending.done; },
      timeout);
  pending_.erase(request.id);
  if (pending.done) return pending.status;
  return ErrnoErrorWithMessage(
      ETIMEDOUT,
      absl::StrFormat("the VMM (%s) did not answer request %d "
                      "within %s",
                      peer_, request.id, absl::FormatDuration(timeout)));
}

bool VmmChannel::Post(absl::string_view vm, uint32_t gsi, bool deassign,
                      int eventfd) {
  IrqfdRequest request;
  request.vm = std::string(vm);
  request.gsi = gsi;
  request.deassign = deassign;
  {
    MutexLock lock(&mu_);
    request.id = NextIdLocked();
  }
  return SendHandoffPacket(socket_->get(), request.Encode(), {eventfd},
                           /*wait=*/false)
      .ok();
}

void VmmChannel::Deliver(const IrqfdReply& reply) {
  MutexLock lock(&mu_);
  auto it = pending_.find(reply.id);
  if (it == pending_.end()) return;  // late, or a Post's
  Pending& pending = *it->second;
  pending.done = true;
  if (reply.version != kHandoffIrqfdVersion) {
    pending.status = ErrnoErrorWithMessage(
        EPROTO, absl::StrFormat("the VMM (%s) replied with protocol version "
                                "%d, want %d",
                                peer_, reply.version, kHandoffIrqfdVersion));
  } else if (reply.errno_value != 0) {
    pending.status = ErrnoErrorWithMessage(
        reply.errno_value,
        reply.message.empty() ? ErrnoName(reply.errno_value) : reply.message);
  }
  pending_.erase(it);
}

void VmmChannel::Close() {
  MutexLock lock(&mu_);
  if (closed_) return;
  closed_ = true;
  for (auto& [id, pending] : pending_) {
    pending->done = true;
    pending->status = VmmGone(peer_);
  }
  pending_.clear();
}

bool VmmChannel::closed() const {
  MutexLock lock(&mu_);
  return closed_;
}

// ---- RemoteVm ----

RemoteVm::RemoteVm(std::string name, std::shared_ptr<VmmChannel> channel,
                   absl::Duration timeout)
    : name_(std::move(name)), channel_(std::move(channel)), timeout_(timeout) {}

RemoteVm::~RemoteVm() = default;

absl::Status RemoteVm::Describe(const absl::Status& status, bool deassign,
                                uint32_t gsi) const {
  return ErrnoErrorWithMessage(
      ErrnoOf(status),
      absl::StrFormat("KVM_IRQFD %s by the VMM (vm \"%s\" gsi %u): %s",
                      deassign ? "deassign" : "assign", name_, gsi,
                      status.message()));
}

absl::Status RemoteVm::AssignIrqfd(std::shared_ptr<const Fd> eventfd,
                                   uint32_t gsi) {
  if (eventfd == nullptr || !eventfd->valid()) {
    return ErrnoErrorWithMessage(EBADF, "AssignIrqfd: no eventfd");
  }
  if (gsi >= kMaxGsi) {
    return ErrnoErrorWithMessage(
        EINVAL, absl::StrFormat("gsi %u out of range (max %u) for vm \"%s\"",
                                gsi, kMaxGsi - 1, name_));
  }
  {
    MutexLock lock(&mu_);
    if (retired_) {
      return ErrnoErrorWithMessage(
          ENOENT, absl::StrFormat("vm \"%s\" was released by its VMM", name_));
    }
  }
  // No lock while waiting: Retire() must never wait for the VMM.
  const absl::Status s =
      channel_->Call(name_, gsi, /*deassign=*/false, eventfd->get(), timeout_);
  if (!s.ok()) {
    if (ErrnoOf(s) == ETIMEDOUT) {
      // It may still run it: the deassign queued behind undoes it.
      (void)channel_->Post(name_, gsi, /*deassign=*/true, eventfd->get());
    }
    return Describe(s, /*deassign=*/false, gsi);
  }
  MutexLock lock(&mu_);
  if (retired_) {
    (void)channel_->Post(name_, gsi, /*deassign=*/true, eventfd->get());
    return ErrnoErrorWithMessage(
        ENOENT,
        absl::StrFormat("vm \"%s\" was released while being wired", name_));
  }
  const int fd = eventfd->get();
  irqfds_[fd] = Irqfd{std::move(eventfd), gsi};
  return absl::OkStatus();
}

absl::Status RemoteVm::DeassignIrqfd(int eventfd, uint32_t gsi) {
  std::shared_ptr<const Fd> held;
  {
    MutexLock lock(&mu_);
    auto it = irqfds_.find(eventfd);
    if (it == irqfds_.end() || it->second.gsi != gsi) return absl::OkStatus();
    held = it->second.eventfd;
  }
  absl::Status s =
      channel_->Call(name_, gsi, /*deassign=*/true, held->get(), timeout_);
  if (!s.ok() && ErrnoOf(s) == ENOTCONN) {
    LogInfo(
        "irqfd deassign skipped: VMM gone (the kernel released it with "
        "the VM)",
        {{"vm", name_}, {"gsi", std::to_string(gsi)}});
    s = absl::OkStatus();
  }
  if (!s.ok()) return Describe(s, /*deassign=*/true, gsi);
  MutexLock lock(&mu_);
  auto it = irqfds_.find(eventfd);
  if (it != irqfds_.end() && it->second.eventfd == held) irqfds_.erase(it);
  return absl::OkStatus();
}

int RemoteVm::Retire() {
  absl::flat_hash_map<int, Irqfd> irqfds;
  {
    MutexLock lock(&mu_);
    retired_ = true;
    irqfds.swap(irqfds_);
  }
  // A VMM that is gone took the VM and its irqfds with it: the sends fail.
  int posted = 0;
  for (const auto& [fd, irqfd] : irqfds) {
    posted += channel_->Post(name_, irqfd.gsi, /*deassign=*/true, fd);
  }
  return posted;
}

bool RemoteVm::retired() const {
  MutexLock lock(&mu_);
  return retired_;
}

int RemoteVm::irqfd_count() const {
  MutexLock lock(&mu_);
  return static_cast<int>(irqfds_.size());
}

bool RemoteVm::HoldsIrqfd(int eventfd, uint32_t gsi) const {
  MutexLock lock(&mu_);
  auto it = irqfds_.find(eventfd);
  return it != irqfds_.end() && it->second.gsi == gsi;
}

}  // namespace agent
}  // namespace irqbypass
