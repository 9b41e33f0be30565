// VMM-held VMs on the real /dev/kvm (skipped, with a message, where it
// cannot be opened): the agent's KvmBackend and HandoffServer in this test,
// and a VMM - a thread of the test, with the handoff_client library and its
// own VM (KVM_CREATE_VM + KVM_CREATE_IRQCHIP) - that offers the VM with
// SERVE-VM and runs the agent's irqfd requests. The VMM thread is in this
// process, so the test may issue VM ioctls on the VMM's VM to prove what the
// kernel holds:
//   * EBUSY proof: while the pair is wired, KVM_IRQFD of a dup of the token's
//     eventfd on the VMM's VM fails EBUSY; after del_producer it succeeds.
//   * Delivery: the fake device fires, the VMM VM's PIC has the IRR bit.
//   * The VMM's errno (EINVAL: no irqchip), ETIMEDOUT, ENOTCONN; the VMM
//     disconnecting drops the wiring and notifies; no fd leaks.
#include "agent/handoff/remote_vm.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <linux/vfio.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/errno_status.h"
#include "agent/handoff/handoff.h"
#include "agent/handoff/handoff_client.h"
#include "agent/handoff/handoff_server.h"
#include "agent/kvm/fd.h"
#include "agent/kvm/kvm_backend.h"
#include "agent/kvm/kvm_irqfd.h"
#include "agent/kvm/testing/kvm_backend_fixture.h"
#include "agent/kvm/testing/open_kvm.h"
#include "agent/test_fd_count.h"
#include "common/mutex.h"
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

constexpr const char* kDevice = ::irqbypass::agent::testing::kFixtureDevice;

bool PicIrr(int vm_fd, uint32_t irq) {
  kvm_irqchip chip;
  std::memset(&chip, 0, sizeof(chip));
  chip.chip_id = KVM_IRQCHIP_PIC_MASTER;
  if (::ioctl(vm_fd, KVM_GET_IRQCHIP, &chip) != 0) return false;
  return ((chip.chip.pic.irr >> irq) & 1) != 0;
}

// A VMM: its own VM, and a thread serving the agent's irqfd requests with
// the handoff_client library until Disconnect().
class TestVmm {
 public:
  ~TestVmm() { Disconnect(); }

  // Creates the VM (with an irqchip unless told otherwise), connects to
  // `path`, offers the VM as `name` and starts serving.
  absl::Status Start(const std::string& path, const std::string& name,
                     bool irqchip = true) {
    Fd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    vm_ = Fd(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
    if (!vm_.valid()) return ErrnoError(errno, "KVM_CREATE_VM");
    if (irqchip && ::ioctl(vm_.get(), KVM_CREATE_IRQCHIP, 0) != 0) {
      return ErrnoError(errno, "KVM_CREATE_IRQCHIP");
    }
    stop_ = Fd(::eventfd(0, EFD_CLOEXEC));
    auto client = HandoffClient::Connect(path);
    if (!client.ok()) return client.status();
    client_ = *std::move(client);
    client_->SetIrqfdObserver([this](const IrqfdRequest& r, int err) {
      MutexLock lock(&mu_);
      (r.deassign ? deassigns_ : assigns_)++;
      last_errno_ = err;
    });
    if (absl::Status s = client_->ServeVm(name, vm_.get()); !s.ok()) return s;
    thread_ = std::thread([this] { served_ = client_->Serve(stop_.get()); });
    return absl::OkStatus();
  }
  // Stops serving (the client is then this thread's again).
  void StopServing() {
    if (!thread_.joinable()) return;
    const uint64_t one = 1;
    ASSERT_EQ(::write(stop_.get(), &one, sizeof(one)), 8);
    thread_.join();
  }
  // The VMM goes away: its connection closes. Its VM stays open until
  // CloseVm() (a real VMM's goes with it).
  void Disconnect() {
    StopServing();
    client_.reset();
  }
  void CloseVm() { vm_.reset(); }

  int vm_fd() const { return vm_.get(); }
  HandoffClient& client() { return *client_; }
  int assigns() const {
    MutexLock lock(&mu_);
    return assigns_;
  }
  int deassigns() const {
    MutexLock lock(&mu_);
    return deassigns_;
  }
  int last_errno() const {
    MutexLock lock(&mu_);
    return last_errno_;
  }

 private:
  Fd vm_;
  Fd stop_;
  std::unique_ptr<HandoffClient> client_;
  std::thread thread_;
  absl::Status served_;
  mutable Mutex mu_;
  int assigns_ ABSL_GUARDED_BY(mu_) = 0;
  int deassigns_ ABSL_GUARDED_BY(mu_) = 0;
  int last_errno_ ABSL_GUARDED_BY(mu_) = -1;
};

class RemoteVmTest : public ::irqbypass::agent::testing::KvmBackendFixture {
 protected:
  void SetUp() override {
    KvmBackendFixture::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    char dir[] = "/tmp/irqbypass-remote-XXXXXX";  // sun_path: 107 bytes
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/handoff.sock";
    StartServer(absl::Seconds(2));
  }
  void TearDown() override {
    vmm_.reset();
    server_.reset();
    if (!dir_.empty()) ::rmdir(dir_.c_str());
    KvmBackendFixture::TearDown();
  }
  void StartServer(absl::Duration irqfd_timeout) {
    server_.reset();
    HandoffServerOptions options;
    options.path = path_;
    options.node = "n1";
    options.irqfd_timeout = irqfd_timeout;
    auto server = HandoffServer::Start(options, *backend_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  std::unique_ptr<HandoffServer> server_;
  std::unique_ptr<TestVmm> vmm_ = std::make_unique<TestVmm>();
  std::string dir_;
  std::string path_;
};

TEST_F(RemoteVmTest, ServeVm_AddProducer_VmmAssigns_KernelHoldsIt_DelFrees) {
  ASSERT_TRUE(vmm_->Start(path_, "vm-v").ok());
  std::shared_ptr<IrqfdTarget> vm = backend_->FindIrqfdTarget("vm-v");
  ASSERT_NE(vm, nullptr);
  EXPECT_STREQ(vm->held_by(), "vmm");
  EXPECT_EQ(backend_->FindVm("vm-v"), nullptr);  // not a VM the agent drives

  const v1::Producer p = NodeProducer(kDevice, 3);
  const v1::Consumer c = NodeConsumer("vm-v", 40);
  const StepResult r = Connect("t1", p, c);
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(vmm_->assigns(), 1);
  EXPECT_EQ(vmm_->last_errno(), 0);
  EXPECT_THAT(backend_->Inventory(), SizeIs(1));
  EXPECT_TRUE(device_->HasTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 3));
  Fd eventfd = DupEventfd("t1");
  ASSERT_TRUE(eventfd.valid());
  EXPECT_TRUE(vm->HoldsIrqfd(backend_->EventfdOf("t1")->get(), 40));

  // The kernel holds the VMM's irqfd: the same eventfd again on the VMM's VM
  // (issued from the VMM's process: this one) is refused.
  EXPECT_EQ(KvmIrqfd(vmm_->vm_fd(), eventfd.get(), 41), EBUSY);

  ASSERT_TRUE(backend_->DelProducer("t1", p, c).ok());
  EXPECT_EQ(vmm_->deassigns(), 1);
  EXPECT_EQ(vm->irqfd_count(), 0);
  EXPECT_EQ(KvmIrqfd(vmm_->vm_fd(), eventfd.get(), 41), 0);
  EXPECT_EQ(KvmIrqfd(vmm_->vm_fd(), eventfd.get(), 41, /*deassign=*/true), 0);
  ASSERT_TRUE(backend_->DelConsumer("t1", p, c).ok());
  EXPECT_EQ(backend_->EventfdOf("t1"), nullptr);
}

TEST_F(RemoteVmTest, DeviceFires_VmmVmPicIrrSet_NotAfterDel) {
  ASSERT_TRUE(vmm_->Start(path_, "vm-v").ok());
  const uint32_t gsi = 5;  // PIC master pin 5 in KVM's default routing
  const v1::Producer p = NodeProducer(kDevice, 7);
  const v1::Consumer c = NodeConsumer("vm-v", gsi);
  ASSERT_TRUE(Connect("t1", p, c).ok());
  ASSERT_FALSE(PicIrr(vmm_->vm_fd(), gsi));
  ASSERT_TRUE(device_->Fire(VFIO_PCI_MSIX_IRQ_INDEX, 7).ok());
  EXPECT_TRUE(Eventually([&] { return PicIrr(vmm_->vm_fd(), gsi); }));
  // Clear the latched edge; once deassigned nothing sets it again.
  kvm_irqchip chip;
  std::memset(&chip, 0, sizeof(chip));
  chip.chip_id = KVM_IRQCHIP_PIC_MASTER;
  ASSERT_EQ(::ioctl(vmm_->vm_fd(), KVM_GET_IRQCHIP, &chip), 0);
  chip.chip.pic.irr &= ~(1u << gsi);
  ASSERT_EQ(::ioctl(vmm_->vm_fd(), KVM_SET_IRQCHIP, &chip), 0);
  ASSERT_TRUE(backend_->DelProducer("t1", p, c).ok());
  ASSERT_TRUE(device_->Fire(VFIO_PCI_MSIX_IRQ_INDEX, 7).ok());
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(PicIrr(vmm_->vm_fd(), gsi));
}

TEST_F(RemoteVmTest, VmWithoutIrqchip_AddProducer_VmmErrnoEinval_RolledBack) {
  ASSERT_TRUE(vmm_->Start(path_, "vm-v", /*irqchip=*/false).ok());
  const v1::Producer p = NodeProducer(kDevice, 3);
  const StepResult r = Connect("t1", p, NodeConsumer("vm-v", 40));
  EXPECT_EQ(r.errno_value(), EINVAL) << r.message();
  EXPECT_THAT(r.message(), HasSubstr("KVM_IRQFD assign by the VMM"));
  EXPECT_THAT(r.message(), HasSubstr("vm \"vm-v\" gsi 40"));
  EXPECT_EQ(vmm_->last_errno(), EINVAL);
  EXPECT_THAT(backend_->Inventory(), IsEmpty());
  EXPECT_EQ(backend_->EventfdOf("t1"), nullptr);
  EXPECT_EQ(backend_->FindIrqfdTarget("vm-v")->irqfd_count(), 0);
}

TEST_F(RemoteVmTest, GsiOutOfRange_EinvalWithoutAskingTheVmm) {
  ASSERT_TRUE(vmm_->Start(path_, "vm-v").ok());
  const StepResult r =
      Connect("t1", NodeProducer(kDevice, 3), NodeConsumer("vm-v", 4096));
  EXPECT_EQ(r.errno_value(), EINVAL);
  EXPECT_EQ(vmm_->assigns(), 0);
}

TEST_F(RemoteVmTest, VmmDisconnects_WiringDropped_Notified_ReconnectsWhenBack) {
  ASSERT_TRUE(vmm_->Start(path_, "vm-v").ok());
  const v1::Producer p = NodeProducer(kDevice, 3);
  const v1::Consumer c = NodeConsumer("vm-v", 40);
  ASSERT_TRUE(Connect("t1", p, c).ok());
  const int changes_before = changes_;

  vmm_->Disconnect();  // the VMM exits (its VM is closed below)

  ASSERT_TRUE(
      Eventually([&] { return backend_->FindIrqfdTarget("vm-v") == nullptr; }));
  ASSERT_TRUE(Eventually([&] { return changes_ > changes_before; }));
  EXPECT_THAT(backend_->Inventory(), IsEmpty());
  // Both sides dropped: the trigger released, the eventfd closed.
  EXPECT_FALSE(device_->HasTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 3));
  EXPECT_EQ(backend_->EventfdOf("t1"), nullptr);
  EXPECT_EQ(vmm_->deassigns(), 0);  // nobody left to ask
  vmm_->CloseVm();
  // The manager's reconcile re-sends the connect: the VM is gone.
  EXPECT_EQ(Connect("t1", p, c).errno_value(), ENOENT);

  // The VMM comes back: the connect goes through again.
  auto again = std::make_unique<TestVmm>();
  ASSERT_TRUE(again->Start(path_, "vm-v").ok());
  const StepResult r = Connect("t1", p, c);
  ASSERT_TRUE(r.ok()) << r.message();
  Fd eventfd = DupEventfd("t1");
  EXPECT_EQ(KvmIrqfd(again->vm_fd(), eventfd.get(), 41), EBUSY);
  again.reset();
  ASSERT_TRUE(
      Eventually([&] { return backend_->FindIrqfdTarget("vm-v") == nullptr; }));
}

TEST_F(RemoteVmTest, VmmReleasesVm_AgentsDeassignServedBeforeTheOk) {
  ASSERT_TRUE(vmm_->Start(path_, "vm-v").ok());
  const v1::Producer p = NodeProducer(kDevice, 3);
  ASSERT_TRUE(Connect("t1", p, NodeConsumer("vm-v", 40)).ok());
  Fd eventfd = DupEventfd("t1");
  vmm_->StopServing();

  ASSERT_TRUE(vmm_->client().ReleaseVm("vm-v").ok());

  EXPECT_EQ(vmm_->deassigns(), 1);
  EXPECT_EQ(backend_->FindIrqfdTarget("vm-v"), nullptr);
  EXPECT_FALSE(device_->HasTrigger(VFIO_PCI_MSIX_IRQ_INDEX, 3));
  // Deassigned in the kernel: the eventfd is free on the VMM's VM again.
  EXPECT_EQ(KvmIrqfd(vmm_->vm_fd(), eventfd.get(), 41), 0);
  EXPECT_EQ(KvmIrqfd(vmm_->vm_fd(), eventfd.get(), 41, /*deassign=*/true), 0);
}

TEST_F(RemoteVmTest, AgentStops_BackendLetsGo_DeassignsStillReachTheVmm) {
  ASSERT_TRUE(vmm_->Start(path_, "vm-v").ok());
  ASSERT_TRUE(
      Connect("t1", NodeProducer(kDevice, 3), NodeConsumer("vm-v", 40)).ok());
  Fd eventfd = DupEventfd("t1");

  server_.reset();  // the agent stops: no more serving, wiring still held
  ASSERT_TRUE(backend_->RemoveVm("vm-v"));  // as the backend's destructor

  ASSERT_TRUE(Eventually([&] { return vmm_->deassigns() == 1; }));
  EXPECT_EQ(KvmIrqfd(vmm_->vm_fd(), eventfd.get(), 41), 0);
  EXPECT_EQ(KvmIrqfd(vmm_->vm_fd(), eventfd.get(), 41, /*deassign=*/true), 0);
}

TEST_F(RemoteVmTest, DeassignUnanswered_PairStaysReportedAsPartial) {
  StartServer(absl::Milliseconds(200));
  ASSERT_TRUE(vmm_->Start(path_, "vm-v").ok());
  const v1::Producer p = NodeProducer(kDevice, 3);
  const v1::Consumer c = NodeConsumer("vm-v", 40);
  ASSERT_TRUE(Connect("t1", p, c).ok());
  vmm_->StopServing();  // the VMM stops answering

  // Disconnect: the deassign times out; the trigger is released.
  const StepResult del_producer = backend_->DelProducer("t1", p, c);
  EXPECT_EQ(del_producer.errno_value(), ETIMEDOUT) << del_producer.message();
  ASSERT_TRUE(backend_->DelConsumer("t1", p, c).ok());

  // What is left is reported, marked partial, so the manager disconnects it.
  std::vector<v1::WiredPair> inventory = backend_->Inventory();
  ASSERT_THAT(inventory, SizeIs(1));
  EXPECT_EQ(inventory[0].token(), "t1");
  EXPECT_TRUE(inventory[0].partial());
  EXPECT_EQ(inventory[0].consumer().vm(), "vm-v");
  EXPECT_EQ(inventory[0].producer().device(), p.device());
}

// A VMM that registered and then does not read its socket any more.
class SilentVmm {
 public:
  absl::Status Start(const std::string& path, const std::string& name) {
    auto client = HandoffClient::Connect(path);
    if (!client.ok()) return client.status();
    client_ = *std::move(client);
    HandoffRequest request;
    request.kind = HandoffRequest::Kind::kServeVm;
    request.name = name;
    if (absl::Status s =
            SendHandoffPacket(client_->socket(), request.Encode(), {});
        !s.ok()) {
      return s;
    }
    absl::StatusOr<HandoffPacket> reply = ReceiveHandoffPacket(socket());
    if (!reply.ok()) return reply.status();
    return ParseHandoffReply(reply->text);
  }
  int socket() const { return client_->socket(); }
  void Close() { client_.reset(); }

 private:
  std::unique_ptr<HandoffClient> client_;
};

TEST_F(RemoteVmTest, VmmNeverReplies_Etimedout_ThenDeassignQueuedBehind) {
  StartServer(absl::Milliseconds(200));
  SilentVmm vmm;
  ASSERT_TRUE(vmm.Start(path_, "vm-v").ok());
  const absl::Time start = absl::Now();
  const StepResult r =
      Connect("t1", NodeProducer(kDevice, 3), NodeConsumer("vm-v", 40));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(r.errno_value(), ETIMEDOUT) << r.message();
  EXPECT_THAT(r.message(), HasSubstr("did not answer"));
  EXPECT_GE(took, absl::Milliseconds(200));
  EXPECT_LT(took, absl::Seconds(2));
  EXPECT_THAT(backend_->Inventory(), IsEmpty());
  EXPECT_EQ(backend_->EventfdOf("t1"), nullptr);
  // What the VMM would find, once it reads: the assign, then its undo.
  auto first = ReceiveHandoffPacket(vmm.socket());
  auto second = ReceiveHandoffPacket(vmm.socket());
  ASSERT_TRUE(first.ok() && second.ok());
  auto assign = ParseIrqfdRequest(first->text);
  auto deassign = ParseIrqfdRequest(second->text);
  ASSERT_TRUE(assign.ok() && deassign.ok()) << first->text << second->text;
  EXPECT_FALSE(assign->deassign);
  EXPECT_TRUE(deassign->deassign);
  EXPECT_EQ(deassign->gsi, 40u);
  EXPECT_EQ(first->fds.size(), 1u);
  EXPECT_EQ(second->fds.size(), 1u);
}

TEST_F(RemoteVmTest, VmmGoesAwayDuringRequest_Enotconn) {
  SilentVmm vmm;
  ASSERT_TRUE(vmm.Start(path_, "vm-v").ok());
  std::thread vmm_thread([&] {
    // Reads the request, then exits without answering.
    (void)ReceiveHandoffPacket(vmm.socket());
    vmm.Close();
  });
  const absl::Time start = absl::Now();
  const StepResult r =
      Connect("t1", NodeProducer(kDevice, 3), NodeConsumer("vm-v", 40));
  vmm_thread.join();
  EXPECT_EQ(r.errno_value(), ENOTCONN) << r.message();
  EXPECT_THAT(r.message(), HasSubstr("is gone"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));  // not the timeout
  ASSERT_TRUE(
      Eventually([&] { return backend_->FindIrqfdTarget("vm-v") == nullptr; }));
}

TEST_F(RemoteVmTest, ServeVm_UnsupportedVersion_Eprotonosupport) {
  auto client = HandoffClient::Connect(path_);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE(
      SendHandoffPacket((*client)->socket(), "SERVE-VM 2 vm-v", {}).ok());
  auto reply = ReceiveHandoffPacket((*client)->socket());
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(ErrnoOf(ParseHandoffReply(reply->text)), EPROTONOSUPPORT)
      << reply->text;
  EXPECT_EQ(backend_->FindIrqfdTarget("vm-v"), nullptr);
}

TEST_F(RemoteVmTest, ServeVm_FdOfNoVm_RefusedLocally) {
  auto client = HandoffClient::Connect(path_);
  ASSERT_TRUE(client.ok());
  Fd not_a_vm(::eventfd(0, EFD_CLOEXEC));
  EXPECT_EQ(ErrnoOf((*client)->ServeVm("vm-v", not_a_vm.get())), ENOTTY);
  EXPECT_EQ(backend_->FindIrqfdTarget("vm-v"), nullptr);
}

TEST_F(RemoteVmTest, ManyPairs_AllServed_DisconnectDropsAll) {
  ASSERT_TRUE(vmm_->Start(path_, "vm-v").ok());
  constexpr int kPairs = 64;
  for (int i = 0; i < kPairs; ++i) {
    const StepResult r =
        Connect("t" + std::to_string(i), NodeProducer(kDevice, i),
                NodeConsumer("vm-v", 24 + i));
    ASSERT_TRUE(r.ok()) << i << ": " << r.message();
  }
  EXPECT_THAT(backend_->Inventory(), SizeIs(kPairs));
  EXPECT_EQ(vmm_->assigns(), kPairs);
  vmm_->Disconnect();
  vmm_->CloseVm();
  ASSERT_TRUE(Eventually([&] { return backend_->Inventory().empty(); }));
  ASSERT_TRUE(
      Eventually([&] { return backend_->FindIrqfdTarget("vm-v") == nullptr; }));
  for (int i = 0; i < kPairs; ++i) {
    EXPECT_EQ(backend_->EventfdOf("t" + std::to_string(i)), nullptr);
  }
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass
