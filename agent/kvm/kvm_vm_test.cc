// KvmVm on the real /dev/kvm (skipped, with a message, where it cannot be
// opened): irqchip creation, the agent-owned routing table, KVM_IRQFD
// assign/deassign and their errnos, Retire().
#include "agent/kvm/kvm_vm.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "agent/errno_status.h"
#include "agent/kvm/testing/open_kvm.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace irqbypass {
namespace agent {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(GsiRoutingEncodingTest, HeaderIsEightBytes_DefaultsThenMsiRoutes) {
  const std::vector<uint8_t> table = EncodeGsiRouting({40, 24});
  ASSERT_EQ(table.size(), 8 + 42 * sizeof(kvm_irq_routing_entry));
  uint32_t header[2];
  std::memcpy(header, table.data(), sizeof(header));
  EXPECT_EQ(header[0], 42u);  // 16 PIC + 24 IOAPIC defaults + 2 MSI
  EXPECT_EQ(header[1], 0u);
  kvm_irq_routing_entry first, last;
  std::memcpy(&first, table.data() + 8, sizeof(first));
  std::memcpy(&last, table.data() + 8 + 41 * sizeof(last), sizeof(last));
  EXPECT_EQ(first.gsi, 0u);
  EXPECT_EQ(first.type, uint32_t{KVM_IRQ_ROUTING_IRQCHIP});
  EXPECT_EQ(first.u.irqchip.irqchip, uint32_t{KVM_IRQCHIP_PIC_MASTER});
  EXPECT_EQ(last.gsi, 40u);
  EXPECT_EQ(last.type, uint32_t{KVM_IRQ_ROUTING_MSI});
  EXPECT_EQ(last.u.msi.address_lo, 0xfee00000u);
  EXPECT_EQ(last.u.msi.data, KvmVm::MsiVectorForGsi(40));
}

TEST(GsiRoutingEncodingTest, RequestEncodesEightByteHeader) {
  EXPECT_EQ(KvmSetGsiRoutingRequest(), 0x4008ae6aul);
  EXPECT_EQ(_IOC_SIZE(KvmSetGsiRoutingRequest()), 8u);
}

TEST(GsiRoutingEncodingTest, MsiVector_NeverAnExceptionVector) {
  EXPECT_EQ(KvmVm::MsiVectorForGsi(24), 0x20);
  EXPECT_EQ(KvmVm::MsiVectorForGsi(40), 0x30);
  EXPECT_EQ(KvmVm::MsiVectorForGsi(24 + 0xdf), 0xff);
  EXPECT_EQ(KvmVm::MsiVectorForGsi(24 + 0xe0), 0x20);
  for (uint32_t gsi = 24; gsi < KvmVm::kMaxGsi; ++gsi) {
    ASSERT_GE(KvmVm::MsiVectorForGsi(gsi), 0x20) << gsi;
  }
}

class KvmVmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<Fd> kvm = testing::OpenKvmForTest();
    if (!kvm.ok()) {
      GTEST_SKIP() << kvm.status().message() << ": the real-KVM tests need it";
    }
    kvm_ = *std::move(kvm);
  }
  std::unique_ptr<KvmVm> NewVm(const std::string& name) {
    auto vm = KvmVm::Create(kvm_, name);
    EXPECT_TRUE(vm.ok()) << vm.status();
    return vm.ok() ? *std::move(vm) : nullptr;
  }
  static std::shared_ptr<const Fd> NewEventfd() {
    return std::make_shared<Fd>(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  }
  // A raw KVM_IRQFD assign, as another user of the eventfd would do it.
  static int RawAssign(int vm_fd, int eventfd, uint32_t gsi) {
    kvm_irqfd request;
    std::memset(&request, 0, sizeof(request));
    request.fd = eventfd;
    request.gsi = gsi;
    return ::ioctl(vm_fd, KVM_IRQFD, &request) == 0 ? 0 : errno;
  }
  static int RawDeassign(int vm_fd, int eventfd, uint32_t gsi) {
    kvm_irqfd request;
    std::memset(&request, 0, sizeof(request));
    request.fd = eventfd;
    request.gsi = gsi;
    request.flags = KVM_IRQFD_FLAG_DEASSIGN;
    return ::ioctl(vm_fd, KVM_IRQFD, &request) == 0 ? 0 : errno;
  }
  Fd kvm_;
};

TEST_F(KvmVmTest, Assign_KernelHoldsEventfd_UntilDeassigned) {
  auto vm = NewVm("vm-a");
  auto other = NewVm("vm-b");
  ASSERT_TRUE(vm && other);
  auto eventfd = NewEventfd();
  ASSERT_TRUE(vm->AssignIrqfd(eventfd, 40).ok());
  EXPECT_TRUE(vm->HoldsIrqfd(eventfd->get(), 40));
  EXPECT_THAT(vm->RoutedGsis(), ElementsAre(40u));
  // One eventfd backs one irqfd on the whole host.
  EXPECT_EQ(RawAssign(other->fd(), eventfd->get(), 41), EBUSY);

  ASSERT_TRUE(vm->DeassignIrqfd(eventfd->get(), 40).ok());
  EXPECT_EQ(vm->irqfd_count(), 0);
  EXPECT_EQ(RawAssign(other->fd(), eventfd->get(), 41), 0);
  EXPECT_EQ(RawDeassign(other->fd(), eventfd->get(), 41), 0);
  EXPECT_THAT(vm->RoutedGsis(), ElementsAre(40u));  // routes are kept
}

TEST_F(KvmVmTest, SecondAssignOfHeldEventfd_KernelEbusy) {
  auto vm = NewVm("vm-a");
  ASSERT_TRUE(vm);
  auto eventfd = NewEventfd();
  ASSERT_TRUE(vm->AssignIrqfd(eventfd, 30).ok());
  const absl::Status s = vm->AssignIrqfd(eventfd, 31);
  EXPECT_EQ(ErrnoOf(s), EBUSY) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("KVM_IRQFD assign"));
}

TEST_F(KvmVmTest, GsiOutOfRange_Einval_NoIoctl) {
  auto vm = NewVm("vm-a");
  ASSERT_TRUE(vm);
  const absl::Status s = vm->AssignIrqfd(NewEventfd(), KvmVm::kMaxGsi);
  EXPECT_EQ(ErrnoOf(s), EINVAL) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("gsi 4096 out of range"));
}

TEST_F(KvmVmTest, DeassignNotAssigned_OkNoop) {
  auto vm = NewVm("vm-a");
  ASSERT_TRUE(vm);
  auto eventfd = NewEventfd();
  EXPECT_TRUE(vm->DeassignIrqfd(eventfd->get(), 40).ok());
}

TEST_F(KvmVmTest, AdoptedVmWithoutIrqchip_KernelEinval) {
  Fd raw(::ioctl(kvm_.get(), KVM_CREATE_VM, 0));
  ASSERT_TRUE(raw.valid());
  auto vm = KvmVm::Adopt(std::move(raw), "vmm-vm", RoutingOwner::kVmm);
  ASSERT_TRUE(vm.ok()) << vm.status();
  const absl::Status s = (*vm)->AssignIrqfd(NewEventfd(), 5);
  EXPECT_EQ(ErrnoOf(s), EINVAL) << s;
}

TEST_F(KvmVmTest, AdoptNonKvmFd_Enotty) {
  Fd not_kvm(::eventfd(0, EFD_CLOEXEC));
  auto vm = KvmVm::Adopt(std::move(not_kvm), "x", RoutingOwner::kVmm);
  ASSERT_FALSE(vm.ok());
  EXPECT_EQ(ErrnoOf(vm.status()), ENOTTY) << vm.status();
}

TEST_F(KvmVmTest, VmmOwnedRouting_AgentNeverTouchesTable) {
  Fd raw(::ioctl(kvm_.get(), KVM_CREATE_VM, 0));
  ASSERT_TRUE(raw.valid());
  ASSERT_EQ(::ioctl(raw.get(), KVM_CREATE_IRQCHIP, 0), 0);
  auto vm = KvmVm::Adopt(std::move(raw), "vmm-vm", RoutingOwner::kVmm);
  ASSERT_TRUE(vm.ok());
  ASSERT_TRUE((*vm)->AssignIrqfd(NewEventfd(), 100).ok());
  EXPECT_TRUE((*vm)->RoutedGsis().empty());
}

TEST_F(KvmVmTest, Retire_DeassignsAll_LaterAssignEnoent) {
  auto vm = NewVm("vm-a");
  auto other = NewVm("vm-b");
  ASSERT_TRUE(vm && other);
  std::vector<std::shared_ptr<const Fd>> eventfds;
  for (uint32_t gsi = 0; gsi < 30; ++gsi) {
    eventfds.push_back(NewEventfd());
    ASSERT_TRUE(vm->AssignIrqfd(eventfds.back(), gsi).ok()) << gsi;
  }
  EXPECT_EQ(vm->Retire(), 30);
  EXPECT_TRUE(vm->retired());
  EXPECT_EQ(ErrnoOf(vm->AssignIrqfd(NewEventfd(), 3)), ENOENT);
  // The kernel let go of every one of them.
  for (const auto& eventfd : eventfds) {
    ASSERT_EQ(RawAssign(other->fd(), eventfd->get(), 50), 0);
    ASSERT_EQ(RawDeassign(other->fd(), eventfd->get(), 50), 0);
  }
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass
