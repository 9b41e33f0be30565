// VFIO_DEVICE_SET_IRQS encoding (struct layout, argsz, flags) and the fake
// device's kernel-like validation. No VFIO device exists on CI machines; the
// real VfioDeviceIrqs is checked only for refusing a non-VFIO fd.
#include "agent/kvm/vfio_device.h"

#include <linux/vfio.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <cstring>

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

TEST(VfioDeviceIrqsTest, AdoptNonVfioFd_KernelErrno) {
  Fd not_vfio(::eventfd(0, EFD_CLOEXEC));
  ASSERT_TRUE(not_vfio.valid());
  auto device = VfioDeviceIrqs::Adopt(std::move(not_vfio), "0000:3b:00.1");
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(ErrnoOf(device.status()), ENOTTY) << device.status();
  EXPECT_THAT(std::string(device.status().message()),
              HasSubstr("anon_inode:[eventfd], not a VFIO device fd"));
}

TEST(VfioDeviceIrqsTest, SamePciIdentity_ComparesIdsClassAndSubsystem) {
  std::string a(0x40, '\0');
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<char>(i * 7);
  std::string b = a;
  EXPECT_TRUE(SamePciIdentity(a, b));
  // Command, status, BARs may differ (the device is in use; vfio-pci
  // virtualises the BARs).
  for (size_t offset : {0x04, 0x06, 0x0c, 0x10, 0x24, 0x30}) {
    b = a;
    b[offset] = static_cast<char>(~b[offset]);
    EXPECT_TRUE(SamePciIdentity(a, b)) << offset;
  }
  // Vendor, device, revision, class, subsystem may not.
  for (size_t offset : {0x00, 0x01, 0x02, 0x03, 0x08, 0x09, 0x0a, 0x0b, 0x2c,
                        0x2d, 0x2e, 0x2f}) {
    b = a;
    b[offset] = static_cast<char>(~b[offset]);
    EXPECT_FALSE(SamePciIdentity(a, b)) << offset;
  }
  EXPECT_FALSE(SamePciIdentity(a.substr(0, 0x2f), a));
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass
