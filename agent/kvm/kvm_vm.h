// KvmVm: one KVM virtual machine the agent holds, by its VM file descriptor,
// and the KVM half of the wiring: KVM_IRQFD assign/deassign of an eventfd to
// a GSI, and (when the agent owns it) the VM's GSI routing table. The local
// IrqfdTarget (irqfd_target.h); RemoteVm is the one for VMs a VMM holds.
//
// Where a VM comes from:
//   * Create(): the agent creates it on /dev/kvm (--kvm_create_vms, tests):
//     KVM_CREATE_VM, KVM_SET_TSS_ADDR, KVM_CREATE_IRQCHIP (an irqfd needs an
//     in-kernel irqchip: assigning one before fails with EINVAL). The agent
//     owns the routing table (RoutingOwner::kAgent).
//   * Adopt(): a VM fd handed over (handoff.h). The VMM normally owns the
//     routing table (RoutingOwner::kVmm): it has routed the consumer's GSI
//     (as QEMU does with kvm_irqchip_add_msi_route) and the agent only assigns
//     irqfds. A VMM may instead leave routing to the agent (kAgent).
//     KVM serves VM ioctls only to the process that created the VM
//     (kvm_vm_ioctl: kvm->mm != current->mm -> EIO), so this works only for
//     VMs created in the agent's own process; a VM fd from another process
//     is refused with EIO. A separate VMM registers its VM instead
//     (handoff.h "SERVE-VM", remote_vm.h) and runs KVM_IRQFD itself.
//
// The routing table, when the agent owns it. KVM_SET_GSI_ROUTING replaces the
// whole table (at most KVM_MAX_IRQ_ROUTES = 4096 entries), so the agent keeps
// the table and re-commits it whole, as QEMU does:
//   * GSI 0..23 keep KVM's default irqchip routes (GSI 0..15: PIC pin and
//     IOAPIC pin; 16..23: IOAPIC pin) - 40 entries;
//   * every GSI >= 24 that an irqfd uses is routed as an MSI to APIC 0
//     (address 0xfee00000: physical destination 0, fixed delivery, edge) with
//     vector MsiVectorForGsi(gsi) = 0x20 + (gsi - 24) % 0xe0, i.e. 0x20..0xff,
//     never an exception vector. A demo VM has no guest OS to ask, so the
//     vector is a pure function of the GSI; tests read it back in the LAPIC.
//   * Routes are added on first use and kept after the irqfd is deassigned
//     (re-using the GSI costs nothing); unused routes are dropped only when the
//     table is full. One commit costs 0.2..3 ms (it waits for an SRCU grace
//     period), so this keeps commits to one per distinct GSI.
//
// Costs seen on kernel 6.18: assign ~1..4 us, deassign ~100..600 us (it
// flushes a kernel workqueue); Retire() of thousands takes a while and is
// meant to run off the command path.
//
// Thread-safety: thread-safe. One mutex per VM, held across this VM's ioctls
// (so operations on one VM are serialised, other VMs are not affected) but
// not across Retire()'s deassigns.
#ifndef IRQBYPASS_AGENT_KVM_KVM_VM_H_
#define IRQBYPASS_AGENT_KVM_KVM_VM_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agent/kvm/fd.h"
#include "agent/kvm/fd_identity.h"
#include "agent/kvm/irqfd_target.h"
#include "common/mutex.h"

namespace irqbypass {
namespace agent {

enum class RoutingOwner {
  kAgent,  // the agent installs a route for every GSI >= 24 it wires
  kVmm,    // the VMM routes its GSIs; the agent never touches the table
};

class KvmVm final : public IrqfdTarget {
 public:
  // GSIs below this are the irqchip's pins; their routes are KVM's defaults.
  static constexpr uint32_t kIrqchipPins = 24;

  // Creates a VM on `kvm_dev` (an open /dev/kvm) with an in-kernel irqchip
  // and commits the agent's routing table (defaults only). Errors carry the
  // failing ioctl's errno (ErrnoOf): e.g. ENODEV/EINVAL from KVM_CREATE_VM.
  static absl::StatusOr<std::unique_ptr<KvmVm>> Create(const Fd& kvm_dev,
                                                       std::string name);

  // Adopts a VM fd. Checks that the kernel calls `vm_fd` a KVM VM
  // (fd_identity.h; ENOTTY naming what it is otherwise, before any ioctl on
  // it) and that this process may drive it (KVM_CHECK_EXTENSION(
  // KVM_CAP_IRQFD) on it succeeds): EIO for a VM created by another process.
  // The VM must already have its in-kernel irqchip (else KVM_IRQFD fails EINVAL
  // later). With kAgent the first wiring replaces the VMM's routing table with
  // the agent's.
  static absl::StatusOr<std::unique_ptr<KvmVm>> Adopt(Fd vm_fd,
                                                      std::string name,
                                                      RoutingOwner routing);

  KvmVm(const KvmVm&) = delete;
  KvmVm& operator=(const KvmVm&) = delete;
  ~KvmVm() override;  // closes the VM fd; drops this fd's reference only

  const std::string& name() const override { return name_; }
  const char* held_by() const override { return "agent"; }
  RoutingOwner routing_owner() const { return routing_; }
  // The VM fd, for tests and diagnostics (vCPUs, KVM_GET_IRQCHIP). Owned by
  // this object: do not close it.
  int fd() const { return vm_fd_.get(); }

  // Makes a write to `eventfd` raise `gsi`: routes the GSI first if the agent
  // owns routing, then KVM_IRQFD assign. Keeps a reference to the eventfd
  // until deassigned. Errors (ErrnoOf):
  //   EINVAL  gsi >= kMaxGsi (agent check); or the kernel's, e.g. no irqchip
  //   EBUSY   the kernel's: this eventfd already backs an irqfd (anywhere on
  //           the host)
  //   ENOSPC  the routing table is full of routes in use
  //   ENOENT  the VM was retired (its VMM went away)
  //   anything else KVM_SET_GSI_ROUTING or KVM_IRQFD returns.
  absl::Status AssignIrqfd(std::shared_ptr<const Fd> eventfd,
                           uint32_t gsi) override;

  // KVM_IRQFD_FLAG_DEASSIGN for (eventfd, gsi) if this object assigned it;
  // OK and no ioctl otherwise (as the kernel: deassigning what is not
  // assigned is a no-op). The route is kept (see above).
  absl::Status DeassignIrqfd(int eventfd, uint32_t gsi) override;

  // Marks the VM gone (later AssignIrqfd fails ENOENT) and deassigns every
  // irqfd it holds. Blocking (~100 us per irqfd); call it on a thread that
  // does not serve commands. Returns how many were deassigned; errors are
  // logged. Idempotent.
  int Retire() override;

  bool retired() const override;
  int irqfd_count() const override;
  bool HoldsIrqfd(int eventfd, uint32_t gsi) const override;
  // GSIs >= 24 with an agent-installed route.
  std::vector<uint32_t> RoutedGsis() const;

  // The MSI vector the agent routes `gsi` (>= 24) to.
  static uint8_t MsiVectorForGsi(uint32_t gsi);

 private:
  struct Irqfd {
    std::shared_ptr<const Fd> eventfd;
    uint32_t gsi;
  };

  KvmVm(Fd vm_fd, std::string name, RoutingOwner routing);

  // Adds a route for `gsi` (>= 24) if missing and commits the table.
  absl::Status EnsureRoutedLocked(uint32_t gsi)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CommitRoutingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Fd vm_fd_;
  const std::string name_;
  const RoutingOwner routing_;

  mutable Mutex mu_;
  bool retired_ ABSL_GUARDED_BY(mu_) = false;
  // Keyed by eventfd number (unique while the eventfd is held open here).
  absl::flat_hash_map<int, Irqfd> irqfds_ ABSL_GUARDED_BY(mu_);
  // GSIs >= 24 routed as MSIs (kAgent only).
  absl::btree_set<uint32_t> routed_ ABSL_GUARDED_BY(mu_);
};

// The KVM_SET_GSI_ROUTING payload for `msi_gsis` (each >= 24) plus KVM's
// default irqchip routes for GSI 0..23: the 8-byte header {nr, flags} then
// nr struct kvm_irq_routing_entry. Built by hand, not through struct
// kvm_irq_routing: in C++, the Debian 12 <linux/kvm.h> (6.1) declares its
// flexible array with __DECLARE_FLEX_ARRAY, whose empty struct has size 1 in
// C++, so sizeof(struct kvm_irq_routing) is 16 instead of 8, the entries sit
// at offset 16, and the header's KVM_SET_GSI_ROUTING encodes size 16: the
// kernel rejects it with ENOTTY. Exposed for tests.
std::vector<uint8_t> EncodeGsiRouting(
    const absl::btree_set<uint32_t>& msi_gsis);

// KVM_SET_GSI_ROUTING as the kernel defines it (_IOW(KVMIO, 0x6a, 8 bytes)).
unsigned long KvmSetGsiRoutingRequest();

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_KVM_KVM_VM_H_
