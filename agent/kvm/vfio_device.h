// VfioIrqs: the VFIO half of the wiring - one device's interrupts, driven by
// VFIO_DEVICE_SET_IRQS. Small interface, two implementations:
//   * VfioDeviceIrqs: the real thing, on a VFIO device fd a VMM handed over
//     (handoff.h). The agent never opens devices itself.
//   * FakeVfioIrqs: an in-memory device that records every call and models
//     what vfio-pci accepts. For tests, and for hosts without a device bound
//     to vfio-pci (agent flag --kvm_fake_devices): the KVM side stays real.
//
// The calls the backend makes (kvm_backend.h has the step mapping):
//   trigger   {DATA_EVENTFD | ACTION_TRIGGER, index, start=vector, count=1,
//              data=s32 eventfd}: the vector signals the eventfd
//   release   the same with data=-1: the vector signals nothing
//   mask      {DATA_NONE | ACTION_MASK, index, start=vector, count=1}
//   unmask    {DATA_NONE | ACTION_UNMASK, ...}
// vfio-pci can mask only INTx (MSI/MSI-X: the kernel answers ENOTTY/EINVAL),
// so callers check VFIO_IRQ_INFO_MASKABLE first.
//
// Thread-safety: implementations are thread-safe.
#ifndef IRQBYPASS_AGENT_KVM_VFIO_DEVICE_H_
#define IRQBYPASS_AGENT_KVM_VFIO_DEVICE_H_

#include <linux/vfio.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/kvm/fd.h"
#include "agent/kvm/fd_identity.h"
#include "common/mutex.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

namespace irqbypass {
namespace agent {

// One VFIO_DEVICE_SET_IRQS request, before encoding.
struct VfioIrqSet {
  uint32_t flags = 0;  // VFIO_IRQ_SET_DATA_* | VFIO_IRQ_SET_ACTION_*
  uint32_t index = 0;  // VFIO_PCI_*_IRQ_INDEX
  uint32_t start = 0;  // first vector
  uint32_t count = 0;
  // DATA_EVENTFD: one s32 per vector (-1 releases that vector).
  std::vector<int32_t> eventfds;

  friend bool operator==(const VfioIrqSet& a, const VfioIrqSet& b) {
    return a.flags == b.flags && a.index == b.index && a.start == b.start &&
           a.count == b.count && a.eventfds == b.eventfds;
  }
};

// What VFIO_DEVICE_GET_IRQ_INFO reports for one index.
struct VfioIrqInfo {
  uint32_t flags = 0;  // VFIO_IRQ_INFO_*
  uint32_t count = 0;  // vectors in this index (0: the device has none)
};

// The requests the backend sends (see the header comment).
VfioIrqSet VfioTrigger(uint32_t index, uint32_t vector, int eventfd);
VfioIrqSet VfioRelease(uint32_t index, uint32_t vector);
VfioIrqSet VfioMask(uint32_t index, uint32_t vector);
VfioIrqSet VfioUnmask(uint32_t index, uint32_t vector);

// The bytes of struct vfio_irq_set for `set`: {argsz, flags, index, start,
// count} then the data (argsz = 20 + 4 * eventfds.size()). Exposed for tests.
std::vector<uint8_t> EncodeVfioIrqSet(const VfioIrqSet& set);

// Whether `address` is a PCI address in the kernel's full form
// "DDDD:BB:DD.F" (hex domain, bus, device < 0x20, function < 8), as sysfs
// and vfio-pci name devices.
bool IsPciAddress(absl::string_view address);

// What kind of PCI device a device is: vendor and device id, revision,
// class, subsystem vendor and id.
struct PciIdentity {
  uint32_t vendor = 0, device = 0, revision = 0, class_code = 0;
  uint32_t subsystem_vendor = 0, subsystem_device = 0;
  friend bool operator==(const PciIdentity& a, const PciIdentity& b) {
    return a.vendor == b.vendor && a.device == b.device &&
           a.revision == b.revision && a.class_code == b.class_code &&
           a.subsystem_vendor == b.subsystem_vendor &&
           a.subsystem_device == b.subsystem_device;
  }
};
// From a config space header (at least 0x30 bytes, as VFIO's config region
// shows it); nullopt if shorter.
std::optional<PciIdentity> PciIdentityOfConfig(absl::string_view config);
// From a sysfs device directory's vendor, device, revision, class,
// subsystem_vendor and subsystem_device files ("0x8086"); the errno of a
// file that cannot be read (ENOENT: no such device), EIO for one that is
// not hexadecimal. (Not its config file: an SR-IOV virtual function's raw
// vendor and device registers read 0xffff.)
absl::StatusOr<PciIdentity> PciIdentityOfSysfs(const std::string& device_dir);
// The other devices in `sys`/bus/pci/devices with `identity` (not
// `address` itself, in either case); devices that vanish meanwhile are
// skipped; EIO if the list or a device cannot be read.
absl::StatusOr<std::vector<std::string>> PciDevicesLike(
    const std::string& sys, const std::string& address,
    const PciIdentity& identity);

// VFIO_PCI_{INTX,MSI,MSIX}_IRQ_INDEX for the API's index (UNSPECIFIED is
// MSIX, as irqbypass.proto says).
uint32_t VfioIndexOf(v1::IrqIndex index);
// "intx", "msi", "msix", or "index<n>".
std::string VfioIndexName(uint32_t vfio_index);

class VfioIrqs {
 public:
  virtual ~VfioIrqs() = default;

  // The device's PCI address ("0000:3b:00.1").
  virtual const std::string& address() const = 0;
  // True for FakeVfioIrqs (reported in logs, so nobody mistakes a fake for
  // wiring).
  virtual bool fake() const = 0;

  // VFIO_DEVICE_GET_IRQ_INFO for `index`. Errors carry the errno (ErrnoOf).
  virtual absl::StatusOr<VfioIrqInfo> GetIrqInfo(uint32_t index) = 0;
  // VFIO_DEVICE_SET_IRQS. Errors carry the kernel's errno (ErrnoOf), e.g.
  // EINVAL for a vector beyond the index's count.
  virtual absl::Status SetIrqs(const VfioIrqSet& set) = 0;
};

class VfioDeviceIrqs final : public VfioIrqs {
 public:
  // Takes a VFIO device fd (from VFIO_GROUP_GET_DEVICE_FD or
  // /dev/vfio/devices/vfioN) that a VMM says is device `address`, after
  // checking, in this order (fd_identity.h), that it is:
  //   1. a VFIO device fd by the kernel's name for it, before any ioctl on
  //      it (ENOTTY naming what it is otherwise: "pipe:[..]", "/dev/null",
  //      an O_PATH fd);
  //   2. device `address`, when the kernel names the fd's device (fdinfo
  //      since Linux 6.18, or the cdev's sysfs link): that sysfs path names
  //      `address` (EPERM naming the device it is otherwise);
  //   3. a PCI device: VFIO_DEVICE_GET_INFO answers with VFIO_DEVICE_FLAGS_PCI
  //      (that ioctl's errno, or ENODEV);
  //   4. device `address`, when the kernel does not name it (a kernel before
  //      6.18 and a group-opened fd): the fd's PciIdentity, read through
  //      VFIO's config region, must equal that of `address` in sysfs (EPERM
  //      otherwise; ENODEV if `address` is not on this host), and no other
  //      device on the host may have the same (EPERM naming them: the fd
  //      could be one of those; hand over the cdev instead; the VFs of one
  //      PF are alike, so a group-opened VF fd is refused there). EIO if
  //      what the kernel says cannot be read.
  // verified_by() says which check ran.
  static absl::StatusOr<std::unique_ptr<VfioDeviceIrqs>> Adopt(
      Fd device_fd, std::string address, const FdIdentityPaths& paths = {});

  // How the address was verified: "sysfs path" or "pci identity (unique)".
  const std::string& verified_by() const { return verified_by_; }

  const std::string& address() const override { return address_; }
  bool fake() const override { return false; }
  absl::StatusOr<VfioIrqInfo> GetIrqInfo(uint32_t index) override;
  absl::Status SetIrqs(const VfioIrqSet& set) override;

 private:
  VfioDeviceIrqs(Fd device_fd, std::string address, std::string verified_by)
      : device_fd_(std::move(device_fd)),
        address_(std::move(address)),
        verified_by_(std::move(verified_by)) {}

  const Fd device_fd_;
  const std::string address_;
  const std::string verified_by_;
};

// A fake vfio-pci device: INTx (1 vector, maskable), MSI (32), MSI-X
// (`msix_count`, default 2048), no other index. SetIrqs validates like the
// kernel (EINVAL for bad flags, an index without vectors or a range beyond
// the count; ENOTTY for mask/unmask of MSI/MSI-X; EBADF for a negative fd
// other than -1), records the call, and keeps a duplicate of each trigger
// eventfd so that Fire() can raise the vector the way the device would.
class FakeVfioIrqs final : public VfioIrqs {
 public:
  explicit FakeVfioIrqs(std::string address, uint32_t msix_count = 2048);

  const std::string& address() const override { return address_; }
  bool fake() const override { return true; }
  absl::StatusOr<VfioIrqInfo> GetIrqInfo(uint32_t index) override;
  absl::Status SetIrqs(const VfioIrqSet& set) override;

  // Every SetIrqs call, accepted or not, in order.
  std::vector<VfioIrqSet> calls() const;
  // Whether (index, vector) has a trigger eventfd, and whether it is masked.
  bool HasTrigger(uint32_t index, uint32_t vector) const;
  bool masked(uint32_t index, uint32_t vector) const;
  // Raises (index, vector) as the hardware would: writes 1 to its trigger
  // eventfd. FAILED_PRECONDITION if it has none; the write's errno otherwise.
  absl::Status Fire(uint32_t index, uint32_t vector);
  // Makes the next SetIrqs fail with `errno_value` (tests).
  void FailNextSetIrqs(int errno_value);

 private:
  using Vector = std::pair<uint32_t, uint32_t>;  // (index, vector)

  const std::string address_;
  const uint32_t msix_count_;

  mutable Mutex mu_;
  std::vector<VfioIrqSet> calls_ ABSL_GUARDED_BY(mu_);
  std::map<Vector, Fd> triggers_ ABSL_GUARDED_BY(mu_);
  std::map<Vector, bool> masked_ ABSL_GUARDED_BY(mu_);
  int fail_next_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_KVM_VFIO_DEVICE_H_
