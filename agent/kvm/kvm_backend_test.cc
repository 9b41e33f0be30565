// KvmBackend on the real /dev/kvm (skipped, with a message, where it cannot
// be opened), with fake VFIO devices (no device is bound to vfio-pci on CI
// machines). Proves what the kernel holds, not just what the agent believes:
//   * EBUSY proof: while a pair is wired, a second KVM_IRQFD assign of the
//     token's eventfd fails EBUSY; after del_producer it succeeds.
//   * LAPIC proof: the device fires its vector, the VM's LAPIC has the
//     routed vector's IRR bit set; after del_producer it stays clear.
//   * PIC proof for a legacy GSI, and a real-mode guest counting interrupts.
//   * thousands of irqfds across several VMs, and no fd leak after teardown.
#include "agent/kvm/kvm_backend.h"

#include <dirent.h>
#include <linux/kvm.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/errno_status.h"
#include "agent/kvm/kvm_irqfd.h"
#include "agent/kvm/kvm_test_vcpu.h"
#include "agent/kvm/testing/kvm_backend_fixture.h"
#include "agent/step_executor.h"
#include "agent/test_fd_count.h"
#include "common/testing/eventually.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "protocol/testing/records.h"

namespace irqbypass {
namespace agent {
namespace {

using ::irqbypass::testing::NodeConsumer;
using ::irqbypass::testing::NodeProducer;

using ::irqbypass::testing::Eventually;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

using ::irqbypass::agent::testing::kFixtureDevice;
constexpr const char* kDevice = kFixtureDevice;

// irqfd injection for irqchip routes runs on a kernel workqueue, so it is
// asynchronous: tests poll for it (Eventually).

class KvmBackendTest : public ::irqbypass::agent::testing::KvmBackendFixture {
 protected:
  void SetUp() override {
    KvmBackendFixture::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_TRUE(backend_->CreateVm("vm-a").ok());
    ASSERT_TRUE(backend_->CreateVm("vm-b").ok());
  }
};

TEST_F(KvmBackendTest, Pair_KernelHoldsIrqfd_SecondAssignEbusy_FreeAfterDel) {
  const v1::Producer p = NodeProducer(kDevice, 3);
  const v1::Consumer c = NodeConsumer("vm-a", 40);
  ASSERT_TRUE(Connect("t1", p, c).ok());
  std::shared_ptr<const Fd> eventfd = backend_->EventfdOf("t1");
  ASSERT_NE(eventfd, nullptr);
  EXPECT_TRUE(device_->HasTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 3));
  EXPECT_THAT(backend_->Inventory(), SizeIs(1));

  const int other_vm = backend_->FindVm("vm-b")->fd();
  EXPECT_EQ(KvmIrqfd(other_vm, eventfd->get(), 50), EBUSY);

  ASSERT_TRUE(backend_->DelProducer("t1", p, c).ok());
  EXPECT_EQ(KvmIrqfd(other_vm, eventfd->get(), 50), 0);
  EXPECT_EQ(KvmIrqfd(other_vm, eventfd->get(), 50, /*deassign=*/true), 0);
  // Half-way through a disconnect, the rest is reported as partial.
  ASSERT_THAT(backend_->Inventory(), SizeIs(1));
  EXPECT_TRUE(backend_->Inventory()[0].partial());
  ASSERT_TRUE(backend_->DelConsumer("t1", p, c).ok());
  EXPECT_THAT(backend_->Inventory(), IsEmpty());
  EXPECT_FALSE(device_->HasTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 3));
  EXPECT_EQ(backend_->EventfdOf("t1"), nullptr);
}

TEST_F(KvmBackendTest, ConnectCommandThroughExecutor_Acked_Wired) {
  v1::Command command;
  command.set_id(1);
  command.set_kind(v1::Command::CONNECT);
  command.set_token("t1");
  *command.mutable_producer() = NodeProducer(kDevice, 0);
  *command.mutable_consumer() = NodeConsumer("vm-a", 24);
  for (auto [kind, always, undo] :
       {std::tuple{v1::STOP_PRODUCER, false, v1::STEP_UNSPECIFIED},
        {v1::STOP_CONSUMER, false, v1::STEP_UNSPECIFIED},
        {v1::ADD_CONSUMER, false, v1::DEL_CONSUMER},
        {v1::ADD_PRODUCER, false, v1::STEP_UNSPECIFIED},
        {v1::START_CONSUMER, true, v1::STEP_UNSPECIFIED},
        {v1::START_PRODUCER, true, v1::STEP_UNSPECIFIED}}) {
    v1::Step* step = command.add_steps();
    step->set_kind(kind);
    step->set_always(always);
    step->set_undo(undo);
  }
  StepExecutor executor(*backend_);
  const v1::CommandAck ack = executor.Execute(command);
  EXPECT_TRUE(ack.ok()) << ack.message();
  EXPECT_TRUE(backend_->FindVm("vm-a")->HoldsIrqfd(
      backend_->EventfdOf("t1")->get(), 24));
}

TEST_F(KvmBackendTest, AddProducer_UnknownVm_Enoent) {
  const StepResult r =
      Connect("t1", NodeProducer(kDevice, 0), NodeConsumer("vm-x", 40));
  EXPECT_EQ(r.errno_value(), ENOENT);
  EXPECT_THAT(r.message(),
              HasSubstr("vm \"vm-x\" not held by agent on node n1"));
  // Rolled back: the vector is released and the token forgotten.
  EXPECT_FALSE(device_->HasTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 0));
  EXPECT_EQ(backend_->EventfdOf("t1"), nullptr);
}

TEST_F(KvmBackendTest, AddConsumer_UnknownDevice_Enoent) {
  const StepResult r = backend_->AddConsumer(
      "t1", NodeProducer("0000:00:00.0", 0), NodeConsumer("vm-a", 40));
  EXPECT_EQ(r.errno_value(), ENOENT);
  EXPECT_THAT(r.message(), HasSubstr("device \"0000:00:00.0\" not held"));
}

TEST_F(KvmBackendTest, AddProducer_GsiOutOfRange_Einval) {
  const StepResult r =
      Connect("t1", NodeProducer(kDevice, 0), NodeConsumer("vm-a", 4096));
  EXPECT_EQ(r.errno_value(), EINVAL);
  EXPECT_THAT(r.message(), HasSubstr("gsi 4096 out of range"));
}

TEST_F(KvmBackendTest, AddConsumer_DeviceRefuses_KernelErrnoPassedUp) {
  // The fake has 2048 MSI-X vectors, as vfio-pci would report; beyond: EINVAL.
  StepResult r = backend_->AddConsumer("t1", NodeProducer(kDevice, 5000),
                                       NodeConsumer("vm-a", 40));
  EXPECT_EQ(r.errno_value(), EINVAL);
  EXPECT_THAT(r.message(), HasSubstr("VFIO_DEVICE_SET_IRQS"));
  device_->FailNextSetIrqs(EIO);
  r = backend_->AddConsumer("t1", NodeProducer(kDevice, 1),
                            NodeConsumer("vm-a", 40));
  EXPECT_EQ(r.errno_value(), EIO);
}

TEST_F(KvmBackendTest, KernelEbusy_EventfdHeldElsewhere_PassedUp) {
  const v1::Producer p = NodeProducer(kDevice, 0);
  const v1::Consumer c = NodeConsumer("vm-a", 40);
  ASSERT_TRUE(backend_->AddConsumer("t1", p, c).ok());
  // Someone else on the host took the token's eventfd as an irqfd.
  const int other_vm = backend_->FindVm("vm-b")->fd();
  const int eventfd = backend_->EventfdOf("t1")->get();
  ASSERT_EQ(KvmIrqfd(other_vm, eventfd, 60), 0);
  const StepResult r = backend_->AddProducer("t1", p, c);
  EXPECT_EQ(r.errno_value(), EBUSY);
  EXPECT_THAT(r.message(), HasSubstr("KVM_IRQFD assign"));
  EXPECT_EQ(KvmIrqfd(other_vm, eventfd, 60, /*deassign=*/true), 0);
  EXPECT_TRUE(backend_->AddProducer("t1", p, c).ok());
}

TEST_F(KvmBackendTest, GsiAndVectorOwnedByAnotherToken_Ebusy_SameAgainOk) {
  ASSERT_TRUE(
      Connect("t1", NodeProducer(kDevice, 1), NodeConsumer("vm-a", 40)).ok());
  EXPECT_TRUE(
      Connect("t1", NodeProducer(kDevice, 1), NodeConsumer("vm-a", 40)).ok());
  StepResult r =
      Connect("t2", NodeProducer(kDevice, 2), NodeConsumer("vm-a", 40));
  EXPECT_EQ(r.errno_value(), EBUSY);
  EXPECT_THAT(r.message(), HasSubstr("already bound to token \"t1\""));
  r = backend_->AddConsumer("t3", NodeProducer(kDevice, 1),
                            NodeConsumer("vm-a", 41));
  EXPECT_EQ(r.errno_value(), EBUSY);
}

TEST_F(KvmBackendTest, StopStart_IntxMasked_MsixUntouched) {
  const v1::Producer intx = NodeProducer(kDevice, 0, v1::IRQ_INDEX_INTX);
  const v1::Consumer c = NodeConsumer("vm-a", 5);
  backend_->StopProducer("t1", intx, c);
  EXPECT_TRUE(device_->masked(VFIO_PCI_INTX_IRQ_INDEX, 0));
  backend_->StartProducer("t1", intx, c);
  EXPECT_FALSE(device_->masked(VFIO_PCI_INTX_IRQ_INDEX, 0));
  const size_t calls = device_->calls().size();
  backend_->StopProducer("t1", NodeProducer(kDevice, 0), c);
  backend_->StartProducer("t1", NodeProducer(kDevice, 0), c);
  EXPECT_EQ(device_->calls().size(), calls);  // MSI-X: not maskable
}

TEST_F(KvmBackendTest, Delivery_DeviceFires_LapicIrrSet_NotAfterDel) {
  std::shared_ptr<KvmVm> vm = backend_->FindVm("vm-a");
  auto vcpu = TestVcpu::Create(*vm);
  ASSERT_TRUE(vcpu.ok()) << vcpu.status();
  ASSERT_TRUE((*vcpu)->EnableLapic().ok());
  const uint32_t gsi = 40;
  const uint8_t vector = KvmVm::MsiVectorForGsi(gsi);
  const v1::Producer p = NodeProducer(kDevice, 9);
  const v1::Consumer c = NodeConsumer("vm-a", gsi);
  ASSERT_TRUE(Connect("t1", p, c).ok());
  ASSERT_FALSE(*(*vcpu)->LapicIrr(vector));

  ASSERT_TRUE(device_->Fire(VFIO_PCI_MSIX_IRQ_INDEX, 9).ok());
  EXPECT_TRUE(Eventually([&] { return *(*vcpu)->LapicIrr(vector); }));

  ASSERT_TRUE((*vcpu)->ClearLapicIrr(vector).ok());
  ASSERT_TRUE(backend_->DelProducer("t1", p, c).ok());
  ASSERT_TRUE(device_->Fire(VFIO_PCI_MSIX_IRQ_INDEX, 9).ok());
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(*(*vcpu)->LapicIrr(vector));
}

TEST_F(KvmBackendTest, Delivery_LegacyGsi_PicIrrSet_NotAfterDel) {
  std::shared_ptr<KvmVm> vm = backend_->FindVm("vm-a");
  const uint32_t gsi = 5;  // PIC master pin 5 (and IOAPIC pin 5)
  const v1::Producer p = NodeProducer(kDevice, 0, v1::IRQ_INDEX_INTX);
  const v1::Consumer c = NodeConsumer("vm-a", gsi);
  ASSERT_TRUE(Connect("t1", p, c).ok());
  ASSERT_FALSE(*PicIrr(*vm, gsi));
  ASSERT_TRUE(device_->Fire(VFIO_PCI_INTX_IRQ_INDEX, 0).ok());
  EXPECT_TRUE(Eventually([&] { return *PicIrr(*vm, gsi); }));
  // The PIC latches an edge in IRR until acknowledged: clear it, then make
  // sure nothing sets it again once the irqfd is gone.
  ASSERT_TRUE(ClearPicIrr(*vm, gsi).ok());
  ASSERT_TRUE(backend_->DelProducer("t1", p, c).ok());
  ASSERT_TRUE(device_->Fire(VFIO_PCI_INTX_IRQ_INDEX, 0).ok());
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(*PicIrr(*vm, gsi));
}

TEST_F(KvmBackendTest, Guest_CountsEachInterrupt_NoneAfterDel) {
  std::shared_ptr<KvmVm> vm = backend_->FindVm("vm-a");
  auto created = TestVcpu::Create(*vm);
  ASSERT_TRUE(created.ok()) << created.status();
  TestVcpu& vcpu = **created;
  const uint32_t gsi = 77;
  const uint8_t vector = KvmVm::MsiVectorForGsi(gsi);
  ASSERT_TRUE(vcpu.StartInterruptCounter(vector).ok());
  absl::StatusOr<uint16_t> port = vcpu.Run(absl::Seconds(5));
  if (!port.ok()) {
    GTEST_SKIP() << "KVM_RUN of a real-mode guest does not work here: "
                 << port.status();
  }
  ASSERT_EQ(*port, TestVcpu::kPortReady);

  const v1::Producer p = NodeProducer(kDevice, 4);
  const v1::Consumer c = NodeConsumer("vm-a", gsi);
  ASSERT_TRUE(Connect("t1", p, c).ok());
  constexpr int kInterrupts = 50;
  for (int i = 1; i <= kInterrupts; ++i) {
    ASSERT_TRUE(device_->Fire(VFIO_PCI_MSIX_IRQ_INDEX, 4).ok());
    port = vcpu.Run(absl::Seconds(5));
    ASSERT_TRUE(port.ok()) << "interrupt " << i << ": " << port.status();
    ASSERT_EQ(*port, TestVcpu::kPortCounted);
    ASSERT_EQ(vcpu.counter(), i);
  }

  ASSERT_TRUE(backend_->DelProducer("t1", p, c).ok());
  ASSERT_TRUE(device_->Fire(VFIO_PCI_MSIX_IRQ_INDEX, 4).ok());
  port = vcpu.Run(absl::Milliseconds(200));
  EXPECT_EQ(port.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(vcpu.counter(), kInterrupts);
}

TEST_F(KvmBackendTest, RemoveVm_TearsDownWiring_NotifiesAndFreesEventfd) {
  int notified = 0;
  backend_->SetChangeCallback([&] { ++notified; });
  const v1::Producer p = NodeProducer(kDevice, 1);
  const v1::Consumer c = NodeConsumer("vm-a", 40);
  ASSERT_TRUE(Connect("t1", p, c).ok());
  std::shared_ptr<const Fd> eventfd = backend_->EventfdOf("t1");
  ASSERT_TRUE(backend_->RemoveVm("vm-a"));
  EXPECT_EQ(notified, 1);
  EXPECT_THAT(backend_->Inventory(), IsEmpty());
  EXPECT_EQ(KvmIrqfd(backend_->FindVm("vm-b")->fd(), eventfd->get(), 50), 0);
  EXPECT_EQ(KvmIrqfd(backend_->FindVm("vm-b")->fd(), eventfd->get(), 50, true),
            0);
  // The manager's reconcile re-sends the connect: the VM is gone.
  EXPECT_EQ(Connect("t1", p, c).errno_value(), ENOENT);
  EXPECT_FALSE(device_->HasTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 1));
}

TEST_F(KvmBackendTest, RemoveDevice_ReleasesTriggers) {
  const v1::Producer p = NodeProducer(kDevice, 1);
  const v1::Consumer c = NodeConsumer("vm-a", 40);
  ASSERT_TRUE(Connect("t1", p, c).ok());
  std::shared_ptr<VfioIrqs> device = backend_->FindDevice(kDevice);
  ASSERT_TRUE(backend_->RemoveDevice(kDevice));
  EXPECT_FALSE(device_->HasTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 1));
  // The VM side is still wired: reported as partial, so that the manager
  // disconnects it (and reports the binding as not connected).
  std::vector<v1::WiredPair> inventory = backend_->Inventory();
  ASSERT_THAT(inventory, SizeIs(1));
  EXPECT_TRUE(inventory[0].partial());
}

TEST_F(KvmBackendTest, ThousandsOfIrqfdsAcrossVms_AllHeld_NoFdLeakAfter) {
  constexpr int kVms = 4;
  constexpr int kPerVm = 1000;
  for (int v = 2; v < kVms; ++v) {
    ASSERT_TRUE(backend_->CreateVm(absl::StrCat("vm-", v)).ok());
  }
  const std::string names[kVms] = {"vm-a", "vm-b", "vm-2", "vm-3"};
  std::string devices[kVms];
  for (int v = 0; v < kVms; ++v) {
    devices[v] = absl::StrCat("0000:5e:00.", v);
    backend_->AddDevice(std::make_unique<FakeVfioIrqs>(devices[v]));
  }
  for (int v = 0; v < kVms; ++v) {
    for (int i = 0; i < kPerVm; ++i) {
      const std::string token = absl::StrCat("t-", v, "-", i);
      ASSERT_TRUE(Connect(token, NodeProducer(devices[v], i),
                          NodeConsumer(names[v], 24 + i))
                      .ok())
          << token;
    }
  }
  EXPECT_THAT(backend_->Inventory(), SizeIs(kVms * kPerVm));
  for (int v = 0; v < kVms; ++v) {
    EXPECT_EQ(backend_->FindVm(names[v])->irqfd_count(), kPerVm);
  }
  // The kernel holds every one: a second assign of any of them is EBUSY.
  Fd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  auto probe = KvmVm::Create(kvm, "probe");
  ASSERT_TRUE(probe.ok());
  for (int i = 0; i < kPerVm; i += 7) {
    const int eventfd = backend_->EventfdOf(absl::StrCat("t-3-", i))->get();
    ASSERT_EQ(KvmIrqfd((*probe)->fd(), eventfd, 30), EBUSY) << i;
  }
  probe->reset();
  kvm.reset();

  // Half of the VMs disconnect token by token, the others go away whole.
  for (int v = 0; v < 2; ++v) {
    for (int i = 0; i < kPerVm; ++i) {
      Disconnect(absl::StrCat("t-", v, "-", i), NodeProducer(devices[v], i),
                 NodeConsumer(names[v], 24 + i));
    }
  }
  ASSERT_TRUE(backend_->RemoveVm("vm-2"));
  ASSERT_TRUE(backend_->RemoveVm("vm-3"));
  for (const std::string& device : devices) {
    ASSERT_TRUE(backend_->RemoveDevice(device));
  }
  EXPECT_THAT(backend_->Inventory(), IsEmpty());
  // Without the backend (and the fixture's /dev/kvm), nothing is left open.
  backend_.reset();
  kvm_.reset();
  EXPECT_EQ(OpenFdCount(), fds_before_);
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass
