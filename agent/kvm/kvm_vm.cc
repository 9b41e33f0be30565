#include "agent/kvm/kvm_vm.h"

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"
#include "agent/errno_status.h"
#include "agent/kvm/kvm_irqfd.h"
#include "common/log.h"

namespace irqbypass {
namespace agent {
namespace {

static_assert(sizeof(struct kvm_irq_routing_entry) == 48,
              "struct kvm_irq_routing_entry: unexpected layout");
static_assert(sizeof(struct kvm_irqfd) == 32, "struct kvm_irqfd: layout");

constexpr uint32_t kRoutingHeaderSize = 8;  // {__u32 nr; __u32 flags;}
// Where the TSS goes in a VM the agent creates (as QEMU: just below the BIOS,
// 3 pages). Needed on Intel before a vCPU runs real-mode code (tests do).
constexpr unsigned long kTssAddress = 0xfffbd000;
constexpr uint32_t kMsiAddressApic0 = 0xfee00000;
// KVM's default routes: GSI 0..15 on the PIC and the IOAPIC, 16..23 IOAPIC.
constexpr uint32_t kPicPins = 16;
constexpr uint32_t kDefaultRouteCount =
    kPicPins * 2 + (KvmVm::kIrqchipPins - kPicPins);

kvm_irq_routing_entry IrqchipRoute(uint32_t gsi, uint32_t chip, uint32_t pin) {
  kvm_irq_routing_entry e;
  std::memset(&e, 0, sizeof(e));
  e.gsi = gsi;
  e.type = KVM_IRQ_ROUTING_IRQCHIP;
  e.u.irqchip.irqchip = chip;
  e.u.irqchip.pin = pin;
  return e;
}

}  // namespace

unsigned long KvmSetGsiRoutingRequest() {
  return _IOC(_IOC_WRITE, KVMIO, 0x6a, kRoutingHeaderSize);
}

uint8_t KvmVm::MsiVectorForGsi(uint32_t gsi) {
  return static_cast<uint8_t>(0x20 + (gsi - kIrqchipPins) % 0xe0);
}

std::vector<uint8_t> EncodeGsiRouting(
    const absl::btree_set<uint32_t>& msi_gsis) {
  std::vector<kvm_irq_routing_entry> entries;
  entries.reserve(kDefaultRouteCount + msi_gsis.size());
  for (uint32_t gsi = 0; gsi < kPicPins; ++gsi) {
    entries.push_back(IrqchipRoute(
        gsi, gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE,
        gsi % 8));
  }
  for (uint32_t gsi = 0; gsi < KvmVm::kIrqchipPins; ++gsi) {
    entries.push_back(IrqchipRoute(gsi, KVM_IRQCHIP_IOAPIC, gsi));
  }
  for (uint32_t gsi : msi_gsis) {
    kvm_irq_routing_entry e;
    std::memset(&e, 0, sizeof(e));
    e.gsi = gsi;
    e.type = KVM_IRQ_ROUTING_MSI;
    e.u.msi.address_lo = kMsiAddressApic0;
    e.u.msi.address_hi = 0;
    e.u.msi.data = KvmVm::MsiVectorForGsi(gsi);  // fixed, edge, vector
    entries.push_back(e);
  }
  std::vector<uint8_t> buffer(kRoutingHeaderSize +
                              entries.size() * sizeof(kvm_irq_routing_entry));
  const uint32_t header[2] = {static_cast<uint32_t>(entries.size()), 0};
  std::memcpy(buffer.data(), header, sizeof(header));
  std::memcpy(buffer.data() + kRoutingHeaderSize, entries.data(),
              entries.size() * sizeof(kvm_irq_routing_entry));
  return buffer;
}

KvmVm::KvmVm(Fd vm_fd, std::string name, RoutingOwner routing)
    : vm_fd_(std::move(vm_fd)), name_(std::move(name)), routing_(routing) {}

KvmVm::~KvmVm() = default;

absl::StatusOr<std::unique_ptr<KvmVm>> KvmVm::Create(const Fd& kvm_dev,
                                                     std::string name) {
  Fd vm_fd(::ioctl(kvm_dev.get(), KVM_CREATE_VM, 0));
  if (!vm_fd.valid()) {
    return ErrnoError(errno,
                      absl::StrFormat("KVM_CREATE_VM for vm \"%s\"", name));
  }
  if (::ioctl(vm_fd.get(), KVM_SET_TSS_ADDR, kTssAddress) != 0) {
    return ErrnoError(errno,
                      absl::StrFormat("KVM_SET_TSS_ADDR for vm \"%s\"", name));
  }
  if (::ioctl(vm_fd.get(), KVM_CREATE_IRQCHIP, 0) != 0) {
    return ErrnoError(
        errno, absl::StrFormat("KVM_CREATE_IRQCHIP for vm \"%s\"", name));
  }
  std::unique_ptr<KvmVm> vm(
      new KvmVm(std::move(vm_fd), std::move(name), RoutingOwner::kAgent));
  {
    MutexLock lock(&vm->mu_);
    if (absl::Status s = vm->CommitRoutingLocked(); !s.ok()) return s;
  }
  return vm;
}

absl::StatusOr<std::unique_ptr<KvmVm>> KvmVm::Adopt(Fd vm_fd, std::string name,
                                                    RoutingOwner routing) {
  if (!vm_fd.valid()) {
    return ErrnoErrorWithMessage(
        EBADF, absl::StrFormat("vm \"%s\": no file descriptor", name));
  }
  // No KVM ioctl to an fd the kernel does not call a KVM VM (fd_identity.h).
  absl::StatusOr<FdIdentity> identity = IdentifyFd(vm_fd.get());
  if (!identity.ok()) return identity.status();
  if (identity->kind != FdKind::kKvmVm || identity->path_only) {
    return ErrnoErrorWithMessage(
        ENOTTY, absl::StrFormat("vm \"%s\": the fd handed over is %s%s, not "
                                "a KVM VM fd (no ioctl was sent to it)",
                                name, identity->description,
                                identity->path_only ? " opened O_PATH" : ""));
  }
  const int has_irqfd =
      ::ioctl(vm_fd.get(), KVM_CHECK_EXTENSION, KVM_CAP_IRQFD);
  if (has_irqfd < 0 && errno == EIO) {
    // kvm_vm_ioctl(): "if (kvm->mm != current->mm) return -EIO".
    return ErrnoErrorWithMessage(
        EIO, absl::StrFormat("vm \"%s\": KVM refuses VM ioctls from any "
                             "process but the one that created the VM (EIO), "
                             "so this agent cannot assign irqfds on it",
                             name));
  }
  if (has_irqfd < 0) {
    return ErrnoError(
        errno,
        absl::StrFormat("vm \"%s\": KVM_CHECK_EXTENSION on the handed-over fd "
                        "(is it a KVM VM fd?)",
                        name));
  }
  if (has_irqfd == 0) {
    return ErrnoErrorWithMessage(
        ENOTTY, absl::StrFormat("vm \"%s\": KVM without KVM_CAP_IRQFD", name));
  }
  return std::unique_ptr<KvmVm>(
      new KvmVm(std::move(vm_fd), std::move(name), routing));
}

absl::Status KvmVm::CommitRoutingLocked() {
  std::vector<uint8_t> table = EncodeGsiRouting(routed_);
  if (::ioctl(vm_fd_.get(), KvmSetGsiRoutingRequest(), table.data()) != 0) {
    return ErrnoError(
        errno, absl::StrFormat("KVM_SET_GSI_ROUTING (%u routes) "
                               "for vm \"%s\"",
                               kDefaultRouteCount + routed_.size(), name_));
  }
  return absl::OkStatus();
}

absl::Status KvmVm::EnsureRoutedLocked(uint32_t gsi) {
  if (routing_ != RoutingOwner::kAgent || gsi < kIrqchipPins ||
      routed_.contains(gsi)) {
    return absl::OkStatus();
  }
  if (kDefaultRouteCount + routed_.size() >= kMaxGsi) {
    // Full: drop the routes no irqfd uses any more.
    absl::btree_set<uint32_t> in_use;
    for (const auto& [fd, irqfd] : irqfds_) in_use.insert(irqfd.gsi);
    for (auto it = routed_.begin(); it != routed_.end();) {
      it = in_use.contains(*it) ? std::next(it) : routed_.erase(it);
    }
    if (kDefaultRouteCount + routed_.size() >= kMaxGsi) {
      return ErrnoErrorWithMessage(
          ENOSPC,
          absl::StrFormat("vm \"%s\": GSI routing table full (%u "
                          "routes in use) for gsi %u",
                          name_, kDefaultRouteCount + routed_.size(), gsi));
    }
  }
  routed_.insert(gsi);
  absl::Status s = CommitRoutingLocked();
  if (!s.ok()) routed_.erase(gsi);  // the kernel kept the previous table
  return s;
}

absl::Status KvmVm::AssignIrqfd(std::shared_ptr<const Fd> eventfd,
                                uint32_t gsi) {
  if (eventfd == nullptr || !eventfd->valid()) {
    return ErrnoErrorWithMessage(EBADF, "AssignIrqfd: no eventfd");
  }
  if (gsi >= kMaxGsi) {
    return ErrnoErrorWithMessage(
        EINVAL, absl::StrFormat("gsi %u out of range (max %u) for vm \"%s\"",
                                gsi, kMaxGsi - 1, name_));
  }
  MutexLock lock(&mu_);
  if (retired_) {
    return ErrnoErrorWithMessage(
        ENOENT, absl::StrFormat("vm \"%s\" was released by its VMM", name_));
  }
  if (absl::Status s = EnsureRoutedLocked(gsi); !s.ok()) return s;
  if (const int err = KvmIrqfd(vm_fd_.get(), eventfd->get(), gsi); err != 0) {
    return ErrnoError(
        err,
        absl::StrFormat("KVM_IRQFD assign (vm \"%s\" gsi %u)", name_, gsi));
  }
  const int fd = eventfd->get();
  irqfds_[fd] = Irqfd{std::move(eventfd), gsi};
  return absl::OkStatus();
}

absl::Status KvmVm::DeassignIrqfd(int eventfd, uint32_t gsi) {
  MutexLock lock(&mu_);
  auto it = irqfds_.find(eventfd);
  if (it == irqfds_.end() || it->second.gsi != gsi) return absl::OkStatus();
  if (const int err = KvmIrqfd(vm_fd_.get(), eventfd, gsi, /*deassign=*/true);
      err != 0) {
    // Keep the entry: the kernel may still hold it.
    return ErrnoError(
        err,
        absl::StrFormat("KVM_IRQFD deassign (vm \"%s\" gsi %u)", name_, gsi));
  }
  irqfds_.erase(it);
  return absl::OkStatus();
}

int KvmVm::Retire() {
  absl::flat_hash_map<int, Irqfd> irqfds;
  {
    MutexLock lock(&mu_);
    retired_ = true;
    irqfds.swap(irqfds_);
  }
  // Without the lock: each deassign waits for a kernel workqueue flush.
  int deassigned = 0;
  for (const auto& [fd, irqfd] : irqfds) {
    if (const int err =
            KvmIrqfd(vm_fd_.get(), fd, irqfd.gsi, /*deassign=*/true);
        err != 0) {
      LogWarn("KVM_IRQFD deassign failed while retiring vm",
              {{"vm", name_},
               {"gsi", std::to_string(irqfd.gsi)},
               {"error", std::strerror(err)}});
      continue;
    }
    ++deassigned;
  }
  return deassigned;
}

bool KvmVm::retired() const {
  MutexLock lock(&mu_);
  return retired_;
}

int KvmVm::irqfd_count() const {
  MutexLock lock(&mu_);
  return static_cast<int>(irqfds_.size());
}

bool KvmVm::HoldsIrqfd(int eventfd, uint32_t gsi) const {
  MutexLock lock(&mu_);
  auto it = irqfds_.find(eventfd);
  return it != irqfds_.end() && it->second.gsi == gsi;
}

std::vector<uint32_t> KvmVm::RoutedGsis() const {
  MutexLock lock(&mu_);
  return std::vector<uint32_t>(routed_.begin(), routed_.end());
}

}  // namespace agent
}  // namespace irqbypass
