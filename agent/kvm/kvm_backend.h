// KvmBackend: the agent's `kvm` backend - real wiring of VFIO device vectors
// to KVM VM GSIs, the way QEMU does it: one eventfd per token, given to the
// device as its vector's trigger and to the VM as an irqfd. When both hold the
// same eventfd, the kernel's own bypass manager (virt/lib/irqbypass.c) pairs
// them for posted interrupts where the hardware can.
//
// Contract step -> what runs (kernel UAPI, <linux/kvm.h>, <linux/vfio.h>):
//   stop producer    VFIO_DEVICE_SET_IRQS {DATA_NONE|ACTION_MASK} on the
//                    vector, if VFIO_DEVICE_GET_IRQ_INFO says the index is
//                    MASKABLE (vfio-pci: INTx only); otherwise nothing. As
//                    QEMU masks around the change. Cannot fail (logged).
//   start producer   the same with ACTION_UNMASK.
//   stop/start consumer  nothing: KVM has no per-GSI mask for user space (the
//                    kernel's own irqfd stop/start hooks are empty on x86).
//   add_consumer     (producer takes the consumer) VFIO_DEVICE_SET_IRQS
//                    {DATA_EVENTFD|ACTION_TRIGGER, index, start=vector,
//                    count=1, data=token's eventfd} on the device fd.
//   add_producer     (consumer takes the producer) KVM_IRQFD {fd=token's
//                    eventfd, gsi} on the VM, through the VM's IrqfdTarget
//                    (irqfd_target.h): for a VM the agent created (KvmVm),
//                    on its VM fd, after KVM_SET_GSI_ROUTING with a route
//                    for the GSI when the agent owns the routing (kvm_vm.h);
//                    for a VM its VMM holds (RemoteVm, handoff.h SERVE-VM),
//                    the VMM runs it on request and answers with the errno.
//   del_producer     KVM_IRQFD {.., flags=KVM_IRQFD_FLAG_DEASSIGN}, the same
//                    way.
//   del_consumer     VFIO_DEVICE_SET_IRQS {DATA_EVENTFD|ACTION_TRIGGER, ..,
//                    data=-1}: the vector signals nothing.
// The token's eventfd is created by its first add step and closed when the
// token has neither side.
//
// What is verified, and what is not: a successful add means the kernel
// accepted the ioctl - the pair is *wired*. Whether the kernel also set up a
// posted-interrupt bypass is not reported to user space (if its own bypass
// registration fails, both ioctls still succeed and only a kernel log line
// tells), so this backend never claims "posted". An operator checks it on the
// host: the device vector's line in /proc/interrupts (vfio-msix[N]) stops
// counting while the guest keeps receiving interrupts.
//
// Errors (StepResult errno, passed unchanged to the manager):
//   add_consumer  ENOENT  device not held by this agent (not handed over, not
//                         in --kvm_fake_devices)
//                 EBUSY   the vector is bound to another token, or this token
//                         already drives another vector (agent checks: the
//                         kernel would silently replace the trigger)
//                 EINVAL  ... and any other errno of VFIO_DEVICE_SET_IRQS,
//                         e.g. a vector beyond the index's count
//   add_producer  ENOENT  VM not held by this agent, or released meanwhile
//                 EINVAL  gsi >= 4096 (agent check: KVM_IRQFD would accept it
//                         and never deliver)
//                 EBUSY   (vm, gsi) bound to another token, or the token feeds
//                         another GSI (agent checks); or the kernel's EBUSY
//                         (the eventfd already backs an irqfd on this host)
//                 ENOSPC  the VM's routing table is full
//                 ETIMEDOUT / ENOTCONN  VMM-held VM: the VMM did not answer
//                         in time / is gone (remote_vm.h)
//                 ...     any other errno of KVM_SET_GSI_ROUTING / KVM_IRQFD,
//                         whichever process ran it
//   del_*         the ioctl's errno; the side then stays recorded since the
//                 kernel may still hold it, and Inventory reports the pair as
//                 partial, so the manager disconnects it again.
//
// VMs and devices come and go at run time (handoff.h, --kvm_create_vms,
// --kvm_fake_devices). Removing one tears down every token's wiring on it
// on the caller's thread, never under the backend's lock, then calls the
// change callback so the agent can tell the manager (agent_session.h:
// Resync). Removing a VM drops both sides of the bindings wired to it: the
// irqfds (deassigned where possible: ~100 us each for a KvmVm; nothing to do
// for a VMM-held VM whose VMM is gone) and the device triggers, so their
// eventfds close; the manager's reconciliation connects them again once the
// VM is back. Removing a device drops the producer side only.
//
// Thread-safety: thread-safe. Lock order: the backend's mu_ before a KvmVm's
// or a device's own lock; no ioctl runs under mu_.
#ifndef IRQBYPASS_AGENT_KVM_KVM_BACKEND_H_
#define IRQBYPASS_AGENT_KVM_KVM_BACKEND_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/backend.h"
#include "agent/kvm/fd.h"
#include "agent/kvm/irqfd_target.h"
#include "agent/kvm/kvm_vm.h"
#include "agent/kvm/vfio_device.h"
#include "common/mutex.h"

namespace irqbypass {
namespace agent {

struct KvmBackendOptions {
  // This host's node name; used in error messages.
  std::string node;
  // Where to create VMs (CreateVm).
  std::string kvm_device = "/dev/kvm";
};

class KvmBackend final : public Backend {
 public:
  // Opens `options.kvm_device`. Its errno otherwise (ENOENT: no KVM here;
  // EACCES: not allowed).
  static absl::StatusOr<std::unique_ptr<KvmBackend>> Create(
      KvmBackendOptions options);

  KvmBackend(const KvmBackend&) = delete;
  KvmBackend& operator=(const KvmBackend&) = delete;
  ~KvmBackend() override;

  std::string Name() const override { return "kvm"; }

  void StopProducer(absl::string_view token, const v1::Producer& producer,
                    const v1::Consumer& consumer) override;
  void StopConsumer(absl::string_view token, const v1::Producer& producer,
                    const v1::Consumer& consumer) override {}
  void StartConsumer(absl::string_view token, const v1::Producer& producer,
                     const v1::Consumer& consumer) override {}
  void StartProducer(absl::string_view token, const v1::Producer& producer,
                     const v1::Consumer& consumer) override;

  StepResult AddConsumer(absl::string_view token, const v1::Producer& producer,
                         const v1::Consumer& consumer) override;
  StepResult AddProducer(absl::string_view token, const v1::Producer& producer,
                         const v1::Consumer& consumer) override;
  StepResult DelProducer(absl::string_view token, const v1::Producer& producer,
                         const v1::Consumer& consumer) override;
  StepResult DelConsumer(absl::string_view token, const v1::Producer& producer,
                         const v1::Consumer& consumer) override;

  std::vector<v1::WiredPair> Inventory() const override;
  // True when the consumer's VM is held by its VMM (IRQFD round trips).
  bool MayBlock(const v1::Command& command) const override;

  // ---- What this host holds ----

  // Creates VM `name` on /dev/kvm (KvmVm::Create) and holds it.
  // ALREADY_EXISTS (errno EEXIST) if a VM of that name is held.
  absl::Status CreateVm(const std::string& name);
  // Holds `vm` (a KvmVm, or a RemoteVm its VMM serves) under its name. A VM
  // already held under that name is replaced (its VMM handed over a new
  // one): its wiring is torn down first, as by RemoveVm. Then runs the
  // change callback. Blocking while tearing down.
  void AddVm(std::unique_ptr<IrqfdTarget> vm);
  // Stops holding VM `name`: retires it (deassigning its irqfds where that
  // is possible), releases the device triggers of the tokens wired to it,
  // forgets both sides of those tokens (closing their eventfds), then runs
  // the change callback. Blocking (~100 us per irqfd of a KvmVm); call it
  // off the command path. False if not held.
  bool RemoveVm(const std::string& name);

  // Holds `device` under its address; replaces (and tears down) one held
  // under the same address.
  void AddDevice(std::unique_ptr<VfioIrqs> device);
  // Releases every vector trigger on device `address`, forgets the producer
  // side of those tokens, then runs the change callback. False if not held.
  bool RemoveDevice(const std::string& address);

  // Called (on the thread that removed or replaced a VM or device) after
  // wiring changed outside of a command, so the manager can be told. Set
  // once, before commands run.
  void SetChangeCallback(std::function<void()> callback);

  // ---- Introspection, for tests and diagnostics ----
  // VM `name`, however held; null if not held.
  std::shared_ptr<IrqfdTarget> FindIrqfdTarget(const std::string& name) const;
  // VM `name` if the agent itself drives it (a KvmVm); null otherwise.
  std::shared_ptr<KvmVm> FindVm(const std::string& name) const;
  std::shared_ptr<VfioIrqs> FindDevice(const std::string& address) const;
  // The token's eventfd (null if the token has no wiring). Tests use it to
  // prove what the kernel holds (a second KVM_IRQFD of it fails EBUSY) and to
  // signal it.
  std::shared_ptr<const Fd> EventfdOf(absl::string_view token) const;
  std::vector<std::string> VmNames() const;
  std::vector<std::string> DeviceAddresses() const;

 private:
  // (device address, VFIO index, vector).
  using VectorKey = std::tuple<std::string, uint32_t, uint32_t>;
  // (vm, gsi).
  using GsiKey = std::pair<std::string, uint32_t>;

  struct Wiring {
    std::shared_ptr<const Fd> eventfd;
    // Set once AddConsumer succeeded: `device` triggers the eventfd.
    std::optional<v1::Producer> producer;
    std::shared_ptr<VfioIrqs> device;
    // Set once AddProducer succeeded: the eventfd is an irqfd on `vm`.
    std::optional<v1::Consumer> consumer;
    std::shared_ptr<IrqfdTarget> vm;
    // An add step is in flight for this side (reserved).
    bool producer_pending = false;
    bool consumer_pending = false;
    // The pair as last named by a successful add step, so that a half left
    // by a failed del step can still be reported (Inventory, partial).
    std::optional<v1::Producer> last_producer;
    std::optional<v1::Consumer> last_consumer;
  };

  KvmBackend(KvmBackendOptions options, Fd kvm_dev);

  // The token's wiring, created with a fresh eventfd if missing.
  absl::StatusOr<Wiring*> WiringForAdd(const std::string& token)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseIfEmpty(const std::string& token)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Masks or unmasks the producer's vector where the index is maskable.
  void SetMasked(absl::string_view token, const v1::Producer& producer,
                 bool masked);
  // A device vector trigger to release.
  struct Trigger {
    std::shared_ptr<VfioIrqs> device;
    VectorKey key;
  };
  // Forgets both sides of every token wired to `vm` (held as `name`);
  // returns the device triggers to release. Their vectors stay reserved
  // (vector_owner_ "": being released) until TearDownVm released them, so no
  // add_consumer can set a trigger that the release would then clear.
  std::vector<Trigger> DetachVmLocked(const std::string& name,
                                      const std::shared_ptr<IrqfdTarget>& vm)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets the producer side of every token wired to `device` (held as
  // `address`); returns the (index, vector) pairs to tear down.
  std::vector<std::pair<uint32_t, uint32_t>> DetachDeviceLocked(
      const std::string& address, const std::shared_ptr<VfioIrqs>& device)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Tears down what `vm` / `device` wired (no lock held).
  void TearDownVm(const std::shared_ptr<IrqfdTarget>& vm,
                  const std::vector<Trigger>& triggers);
  void TearDownDevice(const std::shared_ptr<VfioIrqs>& device,
                      std::vector<std::pair<uint32_t, uint32_t>> vectors);
  void NotifyChanged();

  const KvmBackendOptions options_;
  const Fd kvm_dev_;

  mutable Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<IrqfdTarget>> vms_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<VfioIrqs>> devices_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Wiring> tokens_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<VectorKey, std::string> vector_owner_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<GsiKey, std::string> gsi_owner_ ABSL_GUARDED_BY(mu_);
  std::function<void()> on_change_ ABSL_GUARDED_BY(mu_);
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_KVM_KVM_BACKEND_H_
