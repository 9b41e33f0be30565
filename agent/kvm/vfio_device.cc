#include "agent/kvm/vfio_device.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "agent/errno_status.h"

namespace irqbypass {
namespace agent {
namespace {

static_assert(sizeof(struct vfio_irq_set) == 20,
              "struct vfio_irq_set: argsz, flags, index, start, count");
static_assert(offsetof(struct vfio_irq_set, data) == 20,
              "struct vfio_irq_set: data follows count");
static_assert(sizeof(struct vfio_irq_info) == 16, "struct vfio_irq_info");

constexpr uint32_t kDataTypeMask =
    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD;
constexpr uint32_t kActionTypeMask = VFIO_IRQ_SET_ACTION_MASK |
                                     VFIO_IRQ_SET_ACTION_UNMASK |
                                     VFIO_IRQ_SET_ACTION_TRIGGER;

bool ExactlyOneBit(uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

std::string Describe(const std::string& address, const VfioIrqSet& set) {
  return absl::StrFormat(
      "VFIO_DEVICE_SET_IRQS (device \"%s\" %s vector %u "
      "count %u flags 0x%x)",
      address, VfioIndexName(set.index), set.start, set.count, set.flags);
}

}  // namespace

VfioIrqSet VfioTrigger(uint32_t index, uint32_t vector, int eventfd) {
  VfioIrqSet set;
  set.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  set.index = index;
  set.start = vector;
  set.count = 1;
  set.eventfds = {eventfd};
  return set;
}

VfioIrqSet VfioRelease(uint32_t index, uint32_t vector) {
  return VfioTrigger(index, vector, -1);
}

VfioIrqSet VfioMask(uint32_t index, uint32_t vector) {
  VfioIrqSet set;
  set.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK;
  set.index = index;
  set.start = vector;
  set.count = 1;
  return set;
}

VfioIrqSet VfioUnmask(uint32_t index, uint32_t vector) {
  VfioIrqSet set = VfioMask(index, vector);
  set.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK;
  return set;
}

std::vector<uint8_t> EncodeVfioIrqSet(const VfioIrqSet& set) {
  const size_t data_size = set.eventfds.size() * sizeof(int32_t);
  std::vector<uint8_t> buffer(sizeof(struct vfio_irq_set) + data_size);
  struct vfio_irq_set header;
  std::memset(&header, 0, sizeof(header));
  header.argsz = static_cast<uint32_t>(buffer.size());
  header.flags = set.flags;
  header.index = set.index;
  header.start = set.start;
  header.count = set.count;
  std::memcpy(buffer.data(), &header, sizeof(header));
  if (data_size > 0) {
    std::memcpy(buffer.data() + sizeof(header), set.eventfds.data(), data_size);
  }
  return buffer;
}

bool IsPciAddress(absl::string_view address) {
  // 0000:3b:00.1
  if (address.size() != 12 || address[4] != ':' || address[7] != ':' ||
      address[10] != '.') {
    return false;
  }
  for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9, 11}) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(address[i]))) {
      return false;
    }
  }
  const int device_hi = absl::ascii_isdigit(address[8]) ? address[8] - '0' : 10;
  return device_hi <= 1 && address[11] >= '0' && address[11] <= '7';
}

uint32_t VfioIndexOf(v1::IrqIndex index) {
  switch (index) {
    case v1::IRQ_INDEX_INTX:
      return VFIO_PCI_INTX_IRQ_INDEX;
    case v1::IRQ_INDEX_MSI:
      return VFIO_PCI_MSI_IRQ_INDEX;
    case v1::IRQ_INDEX_UNSPECIFIED:
    case v1::IRQ_INDEX_MSIX:
    default:
      return VFIO_PCI_MSIX_IRQ_INDEX;
  }
}

std::string VfioIndexName(uint32_t vfio_index) {
  switch (vfio_index) {
    case VFIO_PCI_INTX_IRQ_INDEX:
      return "intx";
    case VFIO_PCI_MSI_IRQ_INDEX:
      return "msi";
    case VFIO_PCI_MSIX_IRQ_INDEX:
      return "msix";
    default:
      return absl::StrCat("index", vfio_index);
  }
}

// ---- VfioDeviceIrqs ----

std::optional<PciIdentity> PciIdentityOfConfig(absl::string_view config) {
  if (config.size() < 0x30) return std::nullopt;
  auto u8 = [&](size_t at) {
    return static_cast<uint32_t>(static_cast<unsigned char>(config[at]));
  };
  auto u16 = [&](size_t at) { return u8(at) | (u8(at + 1) << 8); };
  PciIdentity id;
  id.vendor = u16(0x00);
  id.device = u16(0x02);
  id.revision = u8(0x08);
  id.class_code = u8(0x09) | (u8(0x0a) << 8) | (u8(0x0b) << 16);
  id.subsystem_vendor = u16(0x2c);
  id.subsystem_device = u16(0x2e);
  return id;
}

absl::StatusOr<PciIdentity> PciIdentityOfSysfs(const std::string& device_dir) {
  PciIdentity id;
  const std::pair<const char*, uint32_t*> files[] = {
      {"vendor", &id.vendor},
      {"device", &id.device},
      {"revision", &id.revision},
      {"class", &id.class_code},
      {"subsystem_vendor", &id.subsystem_vendor},
      {"subsystem_device", &id.subsystem_device}};
  for (const auto& [file, value] : files) {
    const std::string path = absl::StrCat(device_dir, "/", file);
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return ErrnoError(errno, path);
    char buffer[32];
    const ssize_t n = ::read(fd.get(), buffer, sizeof(buffer) - 1);
    if (n < 0) return ErrnoError(errno, path);
    absl::string_view text =
        absl::StripAsciiWhitespace(absl::string_view(buffer, n));
    absl::ConsumePrefix(&text, "0x");
    if (!absl::SimpleHexAtoi(text, value)) {
      return ErrnoErrorWithMessage(
          EIO, absl::StrCat(path, ": \"", absl::string_view(buffer, n),
                            "\" is not hexadecimal"));
    }
  }
  return id;
}

absl::StatusOr<std::vector<std::string>> PciDevicesLike(
    const std::string& sys, const std::string& address,
    const PciIdentity& identity) {
  const std::string lower = absl::AsciiStrToLower(address);
  const std::string devices = absl::StrCat(sys, "/bus/pci/devices");
  std::vector<std::string> alike;
  std::error_code error;
  std::filesystem::directory_iterator it(devices, error), end;
  for (; !error && it != end; it.increment(error)) {
    const std::string name = it->path().filename().string();
    if (name == lower) continue;
    absl::StatusOr<PciIdentity> other = PciIdentityOfSysfs(it->path());
    if (!other.ok()) {
      if (ErrnoOf(other.status()) == ENOENT) continue;  // unplugged meanwhile
      return ErrnoErrorWithMessage(
          EIO, absl::StrCat("reading ", name, ": ", other.status().message()));
    }
    if (*other == identity) alike.push_back(name);
  }
  if (error) {
    return ErrnoErrorWithMessage(
        EIO, absl::StrCat("listing ", devices, ": ", error.message()));
  }
  return alike;
}

absl::StatusOr<std::unique_ptr<VfioDeviceIrqs>> VfioDeviceIrqs::Adopt(
    Fd device_fd, std::string address, const FdIdentityPaths& paths) {
  absl::StatusOr<FdIdentity> identity = IdentifyFd(device_fd.get(), paths);
  if (!identity.ok()) return identity.status();
  if (identity->kind != FdKind::kVfioDevice || identity->path_only) {
    return ErrnoErrorWithMessage(
        ENOTTY, absl::StrFormat("the fd handed over for device \"%s\" is %s%s, "
                                "not a VFIO device fd (no ioctl was sent to "
                                "it)",
                                address, identity->description,
                                identity->path_only ? " opened O_PATH" : ""));
  }
  if (!identity->sysfs_path.empty()) {
    const std::string named = PciAddressOfSysfsPath(identity->sysfs_path);
    if (!absl::EqualsIgnoreCase(named, address)) {
      return ErrnoErrorWithMessage(
          EPERM, absl::StrFormat("the fd handed over for device \"%s\" is "
                                 "device \"%s\" (%s)",
                                 address, named, identity->sysfs_path));
    }
  }
  struct vfio_device_info info;
  std::memset(&info, 0, sizeof(info));
  info.argsz = sizeof(info);
  if (::ioctl(device_fd.get(), VFIO_DEVICE_GET_INFO, &info) != 0) {
    return ErrnoError(
        errno, absl::StrFormat("VFIO_DEVICE_GET_INFO on the fd handed over "
                               "for device \"%s\"",
                               address));
  }
  if ((info.flags & VFIO_DEVICE_FLAGS_PCI) == 0) {
    return ErrnoErrorWithMessage(
        ENODEV, absl::StrFormat("the fd handed over for device \"%s\" is a "
                                "VFIO device but not a PCI one (flags 0x%x)",
                                address, info.flags));
  }
  if (!identity->sysfs_path.empty()) {
    return std::unique_ptr<VfioDeviceIrqs>(new VfioDeviceIrqs(
        std::move(device_fd), std::move(address), "sysfs path"));
  }
  // A kernel before 6.18 does not name a group-opened device fd: compare
  // what the device says it is (through VFIO, which shows an SR-IOV virtual
  // function's real ids) with what sysfs says `address` is, and refuse if
  // another device on this host says the same (then the fd could be that
  // one).
  if (!IsPciAddress(address)) {
    return ErrnoErrorWithMessage(
        EINVAL, absl::StrFormat("\"%s\" is not a PCI address", address));
  }
  const std::string lower = absl::AsciiStrToLower(address);
  const std::string devices = absl::StrCat(paths.sys, "/bus/pci/devices");
  absl::StatusOr<PciIdentity> host =
      PciIdentityOfSysfs(absl::StrCat(devices, "/", lower));
  if (!host.ok()) {
    if (ErrnoOf(host.status()) == ENOENT) {
      return ErrnoErrorWithMessage(
          ENODEV, absl::StrFormat("device \"%s\" is not on this host (%s)",
                                  address, host.status().message()));
    }
    return host.status();
  }
  struct vfio_region_info region;
  std::memset(&region, 0, sizeof(region));
  region.argsz = sizeof(region);
  region.index = VFIO_PCI_CONFIG_REGION_INDEX;
  if (::ioctl(device_fd.get(), VFIO_DEVICE_GET_REGION_INFO, &region) != 0) {
    return ErrnoError(
        errno, absl::StrFormat("VFIO_DEVICE_GET_REGION_INFO (config) of the "
                               "fd handed over for device \"%s\"",
                               address));
  }
  std::string config(0x30, '\0');
  const ssize_t n = ::pread(device_fd.get(), config.data(), config.size(),
                            static_cast<off_t>(region.offset));
  if (n != static_cast<ssize_t>(config.size())) {
    const int err = n < 0 ? errno : EIO;
    return ErrnoError(err, absl::StrFormat("reading the config space of the "
                                           "fd handed over for device \"%s\"",
                                           address));
  }
  const std::optional<PciIdentity> device = PciIdentityOfConfig(config);
  if (!device.has_value() || !(*device == *host)) {
    return ErrnoErrorWithMessage(
        EPERM, absl::StrFormat("the fd handed over for device \"%s\" is "
                               "another kind of device (its vendor, device, "
                               "revision, class or subsystem id differ from "
                               "%s/%s)",
                               address, devices, lower));
  }
  absl::StatusOr<std::vector<std::string>> like =
      PciDevicesLike(paths.sys, address, *host);
  if (!like.ok()) return like.status();
  const std::vector<std::string>& alike = *like;
  if (!alike.empty()) {
    return ErrnoErrorWithMessage(
        EPERM,
        absl::StrFormat("the fd handed over for device \"%s\" cannot be told "
                        "from %d identical device(s) on this host (%s): this "
                        "kernel does not name a group-opened VFIO device fd "
                        "(Linux 6.18 does); hand over the device's cdev "
                        "(/dev/vfio/devices/vfioN) instead",
                        address, alike.size(), absl::StrJoin(alike, ", ")));
  }
  return std::unique_ptr<VfioDeviceIrqs>(new VfioDeviceIrqs(
      std::move(device_fd), std::move(address), "pci identity (unique)"));
}

absl::StatusOr<VfioIrqInfo> VfioDeviceIrqs::GetIrqInfo(uint32_t index) {
  struct vfio_irq_info info;
  std::memset(&info, 0, sizeof(info));
  info.argsz = sizeof(info);
  info.index = index;
  if (::ioctl(device_fd_.get(), VFIO_DEVICE_GET_IRQ_INFO, &info) != 0) {
    return ErrnoError(errno,
                      absl::StrFormat("VFIO_DEVICE_GET_IRQ_INFO (device \"%s\" "
                                      "%s)",
                                      address_, VfioIndexName(index)));
  }
  return VfioIrqInfo{info.flags, info.count};
}

absl::Status VfioDeviceIrqs::SetIrqs(const VfioIrqSet& set) {
  std::vector<uint8_t> buffer = EncodeVfioIrqSet(set);
  if (::ioctl(device_fd_.get(), VFIO_DEVICE_SET_IRQS, buffer.data()) != 0) {
    return ErrnoError(errno, Describe(address_, set));
  }
  return absl::OkStatus();
}

// ---- FakeVfioIrqs ----

FakeVfioIrqs::FakeVfioIrqs(std::string address, uint32_t msix_count)
    : address_(std::move(address)), msix_count_(msix_count) {}

absl::StatusOr<VfioIrqInfo> FakeVfioIrqs::GetIrqInfo(uint32_t index) {
  switch (index) {
    case VFIO_PCI_INTX_IRQ_INDEX:
      return VfioIrqInfo{VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE |
                             VFIO_IRQ_INFO_AUTOMASKED,
                         1};
    case VFIO_PCI_MSI_IRQ_INDEX:
      return VfioIrqInfo{VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, 32};
    case VFIO_PCI_MSIX_IRQ_INDEX:
      return VfioIrqInfo{VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
                         msix_count_};
    default:
      return ErrnoErrorWithMessage(
          EINVAL, absl::StrFormat("device \"%s\" (fake): no irq index %u",
                                  address_, index));
  }
}

absl::Status FakeVfioIrqs::SetIrqs(const VfioIrqSet& set) {
  MutexLock lock(&mu_);
  calls_.push_back(set);
  const std::string what = absl::StrCat(Describe(address_, set), " (fake)");
  if (fail_next_ != 0) {
    return ErrnoError(std::exchange(fail_next_, 0), what);
  }
  const uint32_t data = set.flags & kDataTypeMask;
  const uint32_t action = set.flags & kActionTypeMask;
  if ((set.flags & ~(kDataTypeMask | kActionTypeMask)) != 0 ||
      !ExactlyOneBit(data) || !ExactlyOneBit(action)) {
    return ErrnoError(EINVAL, what);
  }
  absl::StatusOr<VfioIrqInfo> info = GetIrqInfo(set.index);
  if (!info.ok() || info->count == 0) return ErrnoError(EINVAL, what);
  if (set.start >= info->count || set.count > info->count - set.start) {
    return ErrnoError(EINVAL, what);
  }
  if (data == VFIO_IRQ_SET_DATA_EVENTFD && set.eventfds.size() != set.count) {
    return ErrnoError(EINVAL, what);
  }
  if (action != VFIO_IRQ_SET_ACTION_TRIGGER) {
    if (!(info->flags & VFIO_IRQ_INFO_MASKABLE))
      return ErrnoError(ENOTTY, what);
    for (uint32_t v = set.start; v < set.start + set.count; ++v) {
      masked_[{set.index, v}] = action == VFIO_IRQ_SET_ACTION_MASK;
    }
    return absl::OkStatus();
  }
  if (data != VFIO_IRQ_SET_DATA_EVENTFD) {
    if (data == VFIO_IRQ_SET_DATA_NONE && set.count == 0) {
      // DATA_NONE, count 0: disable the whole index.
      for (auto it = triggers_.begin(); it != triggers_.end();) {
        it = it->first.first == set.index ? triggers_.erase(it) : std::next(it);
      }
    }
    return absl::OkStatus();
  }
  // Check every fd before changing anything, as the kernel does per vector.
  std::vector<Fd> dups;
  for (int32_t fd : set.eventfds) {
    if (fd < -1) return ErrnoError(EBADF, what);
    Fd dup;
    if (fd != -1) {
      dup = Fd::DuplicateOf(fd);
      if (!dup.valid()) return ErrnoError(errno, what);
    }
    dups.push_back(std::move(dup));
  }
  for (uint32_t i = 0; i < set.count; ++i) {
    const Vector key{set.index, set.start + i};
    if (dups[i].valid()) {
      triggers_[key] = std::move(dups[i]);
    } else {
      triggers_.erase(key);
    }
  }
  return absl::OkStatus();
}

std::vector<VfioIrqSet> FakeVfioIrqs::calls() const {
  MutexLock lock(&mu_);
  return calls_;
}

bool FakeVfioIrqs::HasTrigger(uint32_t index, uint32_t vector) const {
  MutexLock lock(&mu_);
  return triggers_.count({index, vector}) > 0;
}

bool FakeVfioIrqs::masked(uint32_t index, uint32_t vector) const {
  MutexLock lock(&mu_);
  auto it = masked_.find({index, vector});
  return it != masked_.end() && it->second;
}

absl::Status FakeVfioIrqs::Fire(uint32_t index, uint32_t vector) {
  MutexLock lock(&mu_);
  auto it = triggers_.find({index, vector});
  if (it == triggers_.end()) {
    return absl::FailedPreconditionError(
        absl::StrFormat("device \"%s\" (fake) %s vector %u has no trigger",
                        address_, VfioIndexName(index), vector));
  }
  const uint64_t one = 1;
  if (::write(it->second.get(), &one, sizeof(one)) != sizeof(one)) {
    return ErrnoError(errno, "write to the trigger eventfd");
  }
  return absl::OkStatus();
}

void FakeVfioIrqs::FailNextSetIrqs(int errno_value) {
  MutexLock lock(&mu_);
  fail_next_ = errno_value;
}

}  // namespace agent
}  // namespace irqbypass
