// VFIO_DEVICE_SET_IRQS encoding (struct layout, argsz, flags) and the fake
// device's kernel-like validation. No VFIO device exists on CI machines; the
// real VfioDeviceIrqs is checked only for refusing a non-VFIO fd.
#include "agent/kvm/vfio_device.h"

#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "agent/errno_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace irqbypass {
namespace agent {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct Decoded {
  uint32_t argsz, flags, index, start, count;
  std::vector<int32_t> data;
};

Decoded Decode(const std::vector<uint8_t>& bytes) {
  Decoded d;
  uint32_t header[5];
  std::memcpy(header, bytes.data(), sizeof(header));
  d.argsz = header[0];
  d.flags = header[1];
  d.index = header[2];
  d.start = header[3];
  d.count = header[4];
  for (size_t off = 20; off + 4 <= bytes.size(); off += 4) {
    int32_t v;
    std::memcpy(&v, bytes.data() + off, 4);
    d.data.push_back(v);
  }
  return d;
}

TEST(VfioEncodingTest, Trigger_ArgszFlagsIndexStartCountAndEventfd) {
  const std::vector<uint8_t> bytes =
      EncodeVfioIrqSet(VfioTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 7, 42));
  ASSERT_EQ(bytes.size(), 24u);
  const Decoded d = Decode(bytes);
  EXPECT_EQ(d.argsz, 24u);
  EXPECT_EQ(d.flags, 0x24u);  // DATA_EVENTFD (1<<2) | ACTION_TRIGGER (1<<5)
  EXPECT_EQ(d.flags,
            uint32_t{VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER});
  EXPECT_EQ(d.index, 2u);  // VFIO_PCI_MSIX_IRQ_INDEX
  EXPECT_EQ(d.start, 7u);
  EXPECT_EQ(d.count, 1u);
  EXPECT_THAT(d.data, ElementsAre(42));
}

TEST(VfioEncodingTest, Release_SameRequestWithFdMinusOne) {
  const Decoded d =
      Decode(EncodeVfioIrqSet(VfioRelease(VFIO_PCI_MSI_IRQ_INDEX, 3)));
  EXPECT_EQ(d.argsz, 24u);
  EXPECT_EQ(d.flags,
            uint32_t{VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER});
  EXPECT_EQ(d.index, 1u);
  EXPECT_EQ(d.start, 3u);
  EXPECT_EQ(d.count, 1u);
  EXPECT_THAT(d.data, ElementsAre(-1));
}

TEST(VfioEncodingTest, MaskAndUnmask_DataNone_NoPayload) {
  const Decoded mask =
      Decode(EncodeVfioIrqSet(VfioMask(VFIO_PCI_INTX_IRQ_INDEX, 0)));
  EXPECT_EQ(mask.argsz, 20u);
  EXPECT_EQ(mask.flags, 0x9u);  // DATA_NONE (1<<0) | ACTION_MASK (1<<3)
  EXPECT_EQ(mask.index, 0u);
  EXPECT_EQ(mask.count, 1u);
  EXPECT_TRUE(mask.data.empty());
  const Decoded unmask =
      Decode(EncodeVfioIrqSet(VfioUnmask(VFIO_PCI_INTX_IRQ_INDEX, 0)));
  EXPECT_EQ(unmask.flags, 0x11u);  // DATA_NONE | ACTION_UNMASK (1<<4)
}

TEST(VfioEncodingTest, IndexMapping_UnspecifiedIsMsix) {
  EXPECT_EQ(VfioIndexOf(v1::IRQ_INDEX_UNSPECIFIED), VFIO_PCI_MSIX_IRQ_INDEX);
  EXPECT_EQ(VfioIndexOf(v1::IRQ_INDEX_MSIX), VFIO_PCI_MSIX_IRQ_INDEX);
  EXPECT_EQ(VfioIndexOf(v1::IRQ_INDEX_MSI), VFIO_PCI_MSI_IRQ_INDEX);
  EXPECT_EQ(VfioIndexOf(v1::IRQ_INDEX_INTX), VFIO_PCI_INTX_IRQ_INDEX);
}

TEST(PciAddressTest, FullFormOnly) {
  EXPECT_TRUE(IsPciAddress("0000:3b:00.1"));
  EXPECT_TRUE(IsPciAddress("0001:ff:1f.7"));
  EXPECT_FALSE(IsPciAddress("3b:00.1"));
  EXPECT_FALSE(IsPciAddress("0000:3b:20.0"));
  EXPECT_FALSE(IsPciAddress("0000:3b:00.8"));
  EXPECT_FALSE(IsPciAddress("0000:3g:00.0"));
  EXPECT_FALSE(IsPciAddress(""));
}

class FakeVfioTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(eventfd_.valid()); }
  Fd eventfd_{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  FakeVfioIrqs device_{"0000:3b:00.1", /*msix_count=*/64};
};

TEST_F(FakeVfioTest, Trigger_Recorded_FireSignalsTheEventfd) {
  ASSERT_TRUE(
      device_.SetIrqs(VfioTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 5, eventfd_.get()))
          .ok());
  EXPECT_TRUE(device_.HasTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 5));
  ASSERT_TRUE(device_.Fire(VFIO_PCI_MSIX_IRQ_INDEX, 5).ok());
  uint64_t value = 0;
  ASSERT_EQ(::read(eventfd_.get(), &value, sizeof(value)), 8);
  EXPECT_EQ(value, 1u);
  EXPECT_THAT(device_.calls(), ElementsAre(VfioTrigger(VFIO_PCI_MSIX_IRQ_INDEX,
                                                       5, eventfd_.get())));
}

TEST_F(FakeVfioTest, Release_RemovesTrigger) {
  ASSERT_TRUE(
      device_.SetIrqs(VfioTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 5, eventfd_.get()))
          .ok());
  ASSERT_TRUE(device_.SetIrqs(VfioRelease(VFIO_PCI_MSIX_IRQ_INDEX, 5)).ok());
  EXPECT_FALSE(device_.HasTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 5));
  EXPECT_EQ(device_.Fire(VFIO_PCI_MSIX_IRQ_INDEX, 5).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(FakeVfioTest, VectorBeyondCount_Einval) {
  const absl::Status s =
      device_.SetIrqs(VfioTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 64, eventfd_.get()));
  EXPECT_EQ(ErrnoOf(s), EINVAL) << s;
}

TEST_F(FakeVfioTest, MaskMsix_Enotty_MaskIntx_Ok) {
  EXPECT_EQ(ErrnoOf(device_.SetIrqs(VfioMask(VFIO_PCI_MSIX_IRQ_INDEX, 0))),
            ENOTTY);
  ASSERT_TRUE(device_.SetIrqs(VfioMask(VFIO_PCI_INTX_IRQ_INDEX, 0)).ok());
  EXPECT_TRUE(device_.masked(VFIO_PCI_INTX_IRQ_INDEX, 0));
  ASSERT_TRUE(device_.SetIrqs(VfioUnmask(VFIO_PCI_INTX_IRQ_INDEX, 0)).ok());
  EXPECT_FALSE(device_.masked(VFIO_PCI_INTX_IRQ_INDEX, 0));
}

TEST_F(FakeVfioTest, BadFd_Ebadf_FailNext_GivenErrno) {
  EXPECT_EQ(
      ErrnoOf(device_.SetIrqs(VfioTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 1, -7))),
      EBADF);
  device_.FailNextSetIrqs(EIO);
  const absl::Status s =
      device_.SetIrqs(VfioTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 1, eventfd_.get()));
  EXPECT_EQ(ErrnoOf(s), EIO);
  EXPECT_THAT(std::string(s.message()), HasSubstr("VFIO_DEVICE_SET_IRQS"));
  EXPECT_TRUE(
      device_.SetIrqs(VfioTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 1, eventfd_.get()))
          .ok());
}

TEST(VfioDeviceIrqsTest, AdoptNonVfioFd_EnottyWithoutIoctl) {
  Fd not_vfio(::eventfd(0, EFD_CLOEXEC));
  ASSERT_TRUE(not_vfio.valid());
  auto device = VfioDeviceIrqs::Adopt(std::move(not_vfio), "0000:3b:00.1");
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(ErrnoOf(device.status()), ENOTTY) << device.status();
  EXPECT_THAT(std::string(device.status().message()),
              HasSubstr("anon_inode:[eventfd], not a VFIO device fd"));
}

TEST(VfioDeviceIrqsTest, PciIdentityOfConfig_IdsRevisionClassSubsystem) {
  std::string config(0x40, '\0');
  const unsigned char header[] = {0x86, 0x80, 0x3b, 0x15};  // 8086:153b
  std::memcpy(config.data(), header, 4);
  config[0x08] = 0x03;                                            // revision
  config[0x09] = 0x00, config[0x0a] = 0x00, config[0x0b] = 0x02;  // class
  config[0x2c] = 0x28, config[0x2d] = 0x10;                       // 1028
  config[0x2e] = 0x5a, config[0x2f] = 0x06;                       // 065a
  config[0x10] = 0x7f;  // a BAR: not part of the identity
  auto id = PciIdentityOfConfig(config);
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(id->vendor, 0x8086u);
  EXPECT_EQ(id->device, 0x153bu);
  EXPECT_EQ(id->revision, 0x03u);
  EXPECT_EQ(id->class_code, 0x020000u);
  EXPECT_EQ(id->subsystem_vendor, 0x1028u);
  EXPECT_EQ(id->subsystem_device, 0x065au);
  EXPECT_FALSE(PciIdentityOfConfig(config.substr(0, 0x2f)).has_value());
}

// A fake sysfs and /proc: what the kernel would say about a received fd,
// with /dev/null standing in for the fd (so any ioctl that did reach it
// would answer ENOTTY).
class VfioAdoptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/irqbypass-vfio-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    paths_.proc_self = dir_ + "/proc";
    paths_.sys = dir_ + "/sys";
    fd_ = Fd(::open("/dev/null", O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(fd_.valid());
    std::filesystem::create_directories(paths_.proc_self + "/fd");
    std::filesystem::create_directories(paths_.proc_self + "/fdinfo");
    // The kernel's name for a group-opened VFIO device fd.
    std::filesystem::create_symlink(
        "anon_inode:[vfio-device]",
        paths_.proc_self + "/fd/" + std::to_string(fd_.get()));
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Fdinfo(const std::string& extra) {
    std::ofstream(paths_.proc_self + "/fdinfo/" + std::to_string(fd_.get()))
        << "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1057\n"
        << extra;
  }
  // Adopts fd_ (once per test: the fake /proc names its number).
  absl::Status Adopt(const std::string& address) {
    return VfioDeviceIrqs::Adopt(std::move(fd_), address, paths_).status();
  }
  std::string dir_;
  FdIdentityPaths paths_;
  Fd fd_;
};

TEST_F(VfioAdoptTest, KernelNamesAnotherDevice_EpermBeforeAnyIoctl) {
  Fdinfo(
      "vfio-device-syspath: /sys/devices/pci0000:e0/0000:e0:01.1/"
      "0000:e8:00.0\n");
  const absl::Status s = Adopt("0000:3b:00.1");
  // EPERM, not the ENOTTY /dev/null answers any ioctl with.
  EXPECT_EQ(ErrnoOf(s), EPERM) << s;
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("is device \"0000:e8:00.0\""));
}

TEST_F(VfioAdoptTest, KernelNamesThisDevice_ThenVfioDeviceGetInfo) {
  Fdinfo("vfio-device-syspath: /sys/devices/pci0000:e0/0000:e8:00.0\n");
  // Upper case names the same device.
  const absl::Status s = Adopt("0000:E8:00.0");
  EXPECT_EQ(ErrnoOf(s), ENOTTY) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("VFIO_DEVICE_GET_INFO"));
}

TEST_F(VfioAdoptTest, FdinfoUnreadable_Refused) {
  // No fdinfo file at all: not "the kernel does not say".
  const absl::Status s = Adopt("0000:3b:00.1");
  EXPECT_EQ(ErrnoOf(s), EIO) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("cannot be read"));
}

TEST_F(VfioAdoptTest, KernelDoesNotSay_FallbackStartsWithVfioDeviceGetInfo) {
  Fdinfo("");
  const absl::Status s = Adopt("0000:3b:00.1");
  EXPECT_EQ(ErrnoOf(s), ENOTTY) << s;
}

// A fake sysfs laid out as the kernel does: /sys/bus/pci/devices/ADDR are
// symlinks to the device directories.
TEST(PciDevicesLikeTest, ListsIdenticalOthers) {
  char dir[] = "/tmp/irqbypass-like-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string sys = dir;
  std::filesystem::create_directories(sys + "/bus/pci/devices");
  auto device = [&](const std::string& address, const std::string& id) {
    const std::string d = sys + "/devices/pci0000:00/" + address;
    std::filesystem::create_directories(d);
    for (auto [file, value] : std::vector<std::pair<std::string, std::string>>{
             {"vendor", "0x8086"},
             {"device", id},
             {"revision", "0x01"},
             {"class", "0x020000"},
             {"subsystem_vendor", "0x8086"},
             {"subsystem_device", "0x0000"}}) {
      std::ofstream(d + "/" + file) << value << "\n";
    }
    std::filesystem::create_directory_symlink(
        "../../../devices/pci0000:00/" + address,
        sys + "/bus/pci/devices/" + address);
  };
  device("0000:3b:00.1", "0x1889");  // the one handed over
  device("0000:3b:00.2", "0x1889");  // a sibling VF: identical
  device("0000:3b:00.3", "0x1889");
  device("0000:5e:00.0", "0x1592");  // another kind
  // A device that went away during the scan: its link dangles.
  std::filesystem::create_directory_symlink(
      "../../../devices/pci0000:00/0000:99:00.0",
      sys + "/bus/pci/devices/0000:99:00.0");
  auto self = PciIdentityOfSysfs(sys + "/bus/pci/devices/0000:3b:00.1");
  ASSERT_TRUE(self.ok()) << self.status();
  // Given in upper case, the device itself is still not counted.
  auto like = PciDevicesLike(sys, "0000:3B:00.1", *self);
  ASSERT_TRUE(like.ok()) << like.status();
  std::sort(like->begin(), like->end());
  EXPECT_EQ(*like, (std::vector<std::string>{"0000:3b:00.2", "0000:3b:00.3"}));
  // One that cannot be read as hexadecimal: an error, not a skip.
  std::ofstream(sys + "/devices/pci0000:00/0000:5e:00.0/vendor") << "zz\n";
  EXPECT_EQ(ErrnoOf(PciDevicesLike(sys, "0000:3b:00.1", *self).status()), EIO);
  // No device list at all.
  EXPECT_EQ(
      ErrnoOf(PciDevicesLike(sys + "/none", "0000:3b:00.1", *self).status()),
      EIO);
  std::filesystem::remove_all(dir);
}

TEST(PciIdentityOfSysfsTest, ReadsTheAttributeFiles) {
  char dir[] = "/tmp/irqbypass-pci-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string d = std::string(dir) + "/0000:3b:00.1";
  std::filesystem::create_directories(d);
  for (auto [file, value] : std::vector<std::pair<std::string, std::string>>{
           {"vendor", "0x15b3"},
           {"device", "0x101e"},
           {"revision", "0x00"},
           {"class", "0x020000"},
           {"subsystem_vendor", "0x15b3"},
           {"subsystem_device", "0x0062"}}) {
    std::ofstream(d + "/" + file) << value << "\n";
  }
  auto id = PciIdentityOfSysfs(d);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->vendor, 0x15b3u);
  EXPECT_EQ(id->device, 0x101eu);
  EXPECT_EQ(id->class_code, 0x020000u);
  EXPECT_EQ(id->subsystem_device, 0x0062u);
  std::filesystem::remove(d + "/revision");
  EXPECT_EQ(ErrnoOf(PciIdentityOfSysfs(d).status()), ENOENT);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass
