// RemoteVm: a KVM VM that its VMM process holds, as an IrqfdTarget
// (irqfd_target.h). KVM serves VM ioctls only to the VM's creator, so the
// agent cannot run KVM_IRQFD on it; instead RemoteVm sends the token's
// eventfd and the GSI to the VMM over the VMM's handoff connection
// ("IRQFD 1 <id> <vm> <gsi> assign|deassign", handoff.h) and the VMM runs
// KVM_IRQFD itself and answers with the errno. GSI routing is the VMM's.
//
// VmmChannel is that connection's request/reply half: requests carry an id,
// the handoff server's reader thread hands each IRQFD-REPLY to Deliver(),
// which wakes the waiting caller. One channel per connection, shared by the
// RemoteVms the VMM serves on it.
//
// Failures (ErrnoOf):
//   ETIMEDOUT  no reply within the timeout (HandoffServerOptions); for an
//              assign, a deassign is sent after it, so a late assign does
//              not stay behind in the VM
//   ENOTCONN   the connection closed (the VMM is gone), before or while
//              waiting; EAGAIN if the VMM stopped reading its socket
//   other      the VMM's errno for its KVM_IRQFD, exactly (EINVAL for a VM
//              without irqchip, EBUSY, ...)
//
// Thread-safety: thread-safe. No lock is held while waiting for a reply, so
// Retire() and Close() never wait for a request in flight. Lock order: a
// RemoteVm's mu_ before its VmmChannel's mu_ (the channel never calls out).
#ifndef IRQBYPASS_AGENT_HANDOFF_REMOTE_VM_H_
#define IRQBYPASS_AGENT_HANDOFF_REMOTE_VM_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/handoff/handoff.h"
#include "agent/kvm/fd.h"
#include "agent/kvm/irqfd_target.h"
#include "common/mutex.h"

namespace irqbypass {
namespace agent {

class VmmChannel {
 public:
  // `socket`: the VMM's handoff connection; shared with the server's reader
  // thread, so it stays open while a RemoteVm may still send on it.
  // `peer`: how messages name the VMM ("connection 3 pid 1234").
  VmmChannel(std::shared_ptr<const Fd> socket, std::string peer);
  VmmChannel(const VmmChannel&) = delete;
  VmmChannel& operator=(const VmmChannel&) = delete;

  // Sends IRQFD for (vm, gsi) with `eventfd` and waits up to `timeout` for
  // the reply: OK for errno 0, the VMM's errno otherwise (see above).
  absl::Status Call(absl::string_view vm, uint32_t gsi, bool deassign,
                    int eventfd, absl::Duration timeout);
  // Sends IRQFD without waiting; its reply is dropped. For deassigns the
  // agent cannot wait for (retiring, cleaning up after a timeout). False if
  // it could not be sent: a VMM that is gone took its VM, and the irqfds,
  // with it.
  bool Post(absl::string_view vm, uint32_t gsi, bool deassign, int eventfd);

  // The reader thread: the VMM's answer. Replies to no waiting request
  // (late, or to a Post) are dropped.
  void Deliver(const IrqfdReply& reply);
  // The connection closed, or the server stopped reading it (the agent is
  // stopping): waiting and later Calls fail ENOTCONN. Post() still sends
  // while the VMM is connected, so retiring a VM at shutdown still reaches
  // the VMM.
  void Close();
  bool closed() const;

  const std::string& peer() const { return peer_; }

 private:
  struct Pending {
    bool done = false;
    absl::Status status;
  };

  uint64_t NextIdLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return next_id_++;
  }

  const std::shared_ptr<const Fd> socket_;
  const std::string peer_;

  mutable Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  // The callers waiting, by request id; each Pending lives on its caller's
  // stack until the caller removed it.
  absl::flat_hash_map<uint64_t, Pending*> pending_ ABSL_GUARDED_BY(mu_);
};

class RemoteVm final : public IrqfdTarget {
 public:
  // VM `name`, served by the VMM at the other end of `channel`; each
  // request waits at most `timeout`.
  RemoteVm(std::string name, std::shared_ptr<VmmChannel> channel,
           absl::Duration timeout);
  RemoteVm(const RemoteVm&) = delete;
  RemoteVm& operator=(const RemoteVm&) = delete;
  ~RemoteVm() override;

  const std::string& name() const override { return name_; }
  const char* held_by() const override { return "vmm"; }

  absl::Status AssignIrqfd(std::shared_ptr<const Fd> eventfd,
                           uint32_t gsi) override;
  // OK, forgetting the irqfd, once the channel is closed: the VM went with
  // its VMM and the kernel released the irqfd with it.
  absl::Status DeassignIrqfd(int eventfd, uint32_t gsi) override;
  // Marks the VM gone and drops the eventfds; if the VMM is still
  // connected (the name was handed over again, or the agent is stopping),
  // posts a deassign for each irqfd without waiting; returns how many were
  // posted (0 when the VMM is gone). Never blocks on the VMM.
  int Retire() override;

  bool retired() const override;
  int irqfd_count() const override;
  bool HoldsIrqfd(int eventfd, uint32_t gsi) const override;

  const VmmChannel& channel() const { return *channel_; }

 private:
  struct Irqfd {
    std::shared_ptr<const Fd> eventfd;
    uint32_t gsi;
  };

  // Prefixes the channel's failure with what was asked.
  absl::Status Describe(const absl::Status& status, bool deassign,
                        uint32_t gsi) const;

  const std::string name_;
  const std::shared_ptr<VmmChannel> channel_;
  const absl::Duration timeout_;

  mutable Mutex mu_;
  bool retired_ ABSL_GUARDED_BY(mu_) = false;
  // Keyed by eventfd number (unique while the eventfd is held open here).
  absl::flat_hash_map<int, Irqfd> irqfds_ ABSL_GUARDED_BY(mu_);
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_HANDOFF_REMOTE_VM_H_
