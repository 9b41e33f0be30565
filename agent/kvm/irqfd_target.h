// IrqfdTarget: the VM side of the kvm backend's wiring - one KVM VM, by
// name, on which the backend assigns and deassigns irqfds (eventfd -> GSI).
// KvmBackend's add_producer / del_producer call it; it does not know which
// process issues the KVM_IRQFD ioctl. Two implementations:
//   * KvmVm (kvm_vm.h): a VM this agent process created (--kvm_create_vms)
//     or that was created in it; the agent runs KVM_IRQFD on the VM fd.
//   * RemoteVm (remote_vm.h): a VM its VMM holds. KVM serves VM ioctls only
//     to the process that created the VM, so the agent sends the eventfd to
//     the VMM over the handoff socket and the VMM runs KVM_IRQFD itself
//     (handoff.h, "VMM-held VMs").
//
// Errors carry the exact errno (errno_status.h), whichever process ran the
// ioctl: the manager reports it unchanged.
//
// Thread-safety: implementations are thread-safe.
#ifndef IRQBYPASS_AGENT_KVM_IRQFD_TARGET_H_
#define IRQBYPASS_AGENT_KVM_IRQFD_TARGET_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "agent/kvm/fd.h"

namespace irqbypass {
namespace agent {

class IrqfdTarget {
 public:
  // KVM accepts GSIs below KVM_MAX_IRQ_ROUTES; KVM_IRQFD itself does not
  // check (it would accept 5000 and never deliver), so every target does.
  static constexpr uint32_t kMaxGsi = 4096;

  virtual ~IrqfdTarget() = default;

  // The VM's name (the API's Consumer.vm).
  virtual const std::string& name() const = 0;

  // Makes a write to `eventfd` raise `gsi` (KVM_IRQFD assign). Keeps a
  // reference to the eventfd until deassigned or retired. Errors (ErrnoOf):
  //   EINVAL     gsi >= kMaxGsi (checked before any ioctl); or the kernel's,
  //              e.g. the VM has no in-kernel irqchip
  //   EBUSY      the kernel's: this eventfd already backs an irqfd
  //   ENOENT     the target was retired (its VMM went away)
  //   ENOTCONN   (RemoteVm) the VMM's connection is gone
  //   ETIMEDOUT  (RemoteVm) the VMM did not answer in time; the agent then
  //              asks it to deassign, in case it assigns late
  //   anything else the ioctl returned.
  virtual absl::Status AssignIrqfd(std::shared_ptr<const Fd> eventfd,
                                   uint32_t gsi) = 0;

  // KVM_IRQFD_FLAG_DEASSIGN for (eventfd, gsi) if this target assigned it;
  // OK and nothing else otherwise (as the kernel: deassigning what is not
  // assigned is a no-op). On an error the irqfd stays recorded (the kernel
  // may still hold it).
  virtual absl::Status DeassignIrqfd(int eventfd, uint32_t gsi) = 0;

  // Marks the target gone (later AssignIrqfd fails ENOENT) and lets go of
  // every irqfd it holds, deassigning where that is still possible. May
  // block (KvmVm: ~100 us per irqfd); call it off the command path. Returns
  // how many irqfds were deassigned (or asked to be). Idempotent.
  virtual int Retire() = 0;

  virtual bool retired() const = 0;
  virtual int irqfd_count() const = 0;
  virtual bool HoldsIrqfd(int eventfd, uint32_t gsi) const = 0;
  // Who issues this VM's ioctls, for logs: "agent" or "vmm".
  virtual const char* held_by() const = 0;
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_KVM_IRQFD_TARGET_H_
