// End-to-end on the real /dev/kvm: irqbypassd and irqbypass-agent
// --backend=kvm (a VM the agent creates, a fake VFIO device: no device is
// bound to vfio-pci on CI machines) on loopback, driven through the client
// library. Proves from outside the agent that the kernel holds the irqfd: the
// test takes a copy of the agent's eventfd for the token (pidfd_getfd; the
// agent logs its number) and asks the kernel to assign it to a VM of its
// own: EBUSY while the pair is wired, accepted after unregister.
// A VMM process serving its own VM (irqbypass-handoff --serve_vm): the
// binding connects through the VMM's KVM_IRQFD, goes not-connected when the
// VMM dies and connects again when a VMM serves the VM again.
// Skips, saying why, where /dev/kvm cannot be opened.
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <regex>
#include <string>

#include "agent/errno_status.h"
#include "agent/handoff/handoff_client.h"
#include "agent/kvm/fd.h"
#include "agent/kvm/kvm_irqfd.h"
#include "agent/kvm/testing/open_kvm.h"
#include "client/error_detail.h"
#include "client/irqbypass_client.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace irqbypass::testing {
namespace {

using client::GetErrorDetail;

constexpr char kDevice[] = "0000:3b:00.1";

// The eventfd number from the agent's `irqfd assigned` line for `token`.
int LoggedEventfd(const std::string& log, const std::string& token) {
  const std::regex line("msg=\"irqfd assigned\" token=" + token +
                        " [^\n]* eventfd=([0-9]+)");
  std::smatch match;
  if (!std::regex_search(log, match, line)) return -1;
  return std::atoi(match[1].str().c_str());
}

class KvmEndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    OpenKvmOrSkip();
    if (IsSkipped()) return;
    ASSERT_TRUE(cluster_.StartManager());
    // Cluster starts agents with --backend=sim; a later flag wins.
    ASSERT_TRUE(cluster_.StartAgent(
        "n1", {"--backend=kvm", "--kvm_create_vms=vm-a",
               std::string("--kvm_fake_devices=") + kDevice}))
        << cluster_.agent("n1").Log();
  }
  client::Client& api() { return cluster_.client(); }
  void OpenKvmOrSkip() {
    absl::StatusOr<agent::Fd> kvm = agent::testing::OpenKvmForTest();
    if (!kvm.ok()) {
      GTEST_SKIP() << kvm.status().message()
                   << ": the kvm end-to-end tests need it";
    }
    kvm_ = *std::move(kvm);
  }

  agent::Fd kvm_;
  Cluster cluster_;
};

TEST_F(KvmEndToEndTest, Paired_KernelHoldsIrqfd_UnregisterReleasesIt) {
  auto c = api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-a", 40));
  ASSERT_TRUE(c.ok()) << c.status();
  auto p = api().RegisterProducer(MakeProducer("t1", "n1", kDevice, 3));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->connected);

  // Take the agent's eventfd for t1.
  const int agent_eventfd = LoggedEventfd(cluster_.agent("n1").Log(), "t1");
  ASSERT_GE(agent_eventfd, 0) << cluster_.agent("n1").Log();
  const pid_t agent = cluster_.agent("n1").pid();
  ASSERT_GT(agent, 0);
  agent::Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, agent, 0)));
  ASSERT_TRUE(pidfd.valid()) << std::strerror(errno);
  agent::Fd eventfd(static_cast<int>(
      ::syscall(SYS_pidfd_getfd, pidfd.get(), agent_eventfd, 0)));
  ASSERT_TRUE(eventfd.valid()) << std::strerror(errno);
  ASSERT_EQ(std::string(std::filesystem::read_symlink(
                "/proc/self/fd/" + std::to_string(eventfd.get()))),
            "anon_inode:[eventfd]");

  // A VM of our own; the kernel refuses the eventfd while the agent's irqfd
  // holds it.
  agent::Fd vm(::ioctl(kvm_.get(), KVM_CREATE_VM, 0));
  ASSERT_TRUE(vm.valid());
  ASSERT_EQ(::ioctl(vm.get(), KVM_CREATE_IRQCHIP, 0), 0);
  EXPECT_EQ(agent::KvmIrqfd(vm.get(), eventfd.get(), 5), EBUSY);

  auto d = api().UnregisterProducer("t1", p->registration_id);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(*d);
  // Acked means deassigned: the kernel lets us have it now.
  EXPECT_EQ(agent::KvmIrqfd(vm.get(), eventfd.get(), 5), 0);
  EXPECT_EQ(agent::KvmIrqfd(vm.get(), eventfd.get(), 5, /*deassign=*/true), 0);
  EXPECT_NE(
      cluster_.agent("n1").Log().find("msg=\"irqfd deassigned\" token=t1 "),
      std::string::npos);
}

TEST_F(KvmEndToEndTest, UnknownVm_ConnectFailsAtAddProducer_Enoent) {
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-x", 40)).ok());
  auto p = api().RegisterProducer(MakeProducer("t1", "n1", kDevice, 0));
  ASSERT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition)
      << p.status();
  auto detail = GetErrorDetail(p.status());
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->reason(), v1::ErrorDetail::CONNECT_FAILED);
  EXPECT_EQ(detail->step(), "add_producer");
  EXPECT_EQ(detail->errno_value(), ENOENT);
  EXPECT_NE(detail->agent_message().find("vm \"vm-x\" not held"),
            std::string::npos);
  // Rolled back on the device too: the vector pairs under another token.
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("t2", "n1", "vm-a", 41)).ok());
  auto p2 = api().RegisterProducer(MakeProducer("t2", "n1", kDevice, 0));
  ASSERT_TRUE(p2.ok()) << p2.status();
  EXPECT_TRUE(p2->connected);
}

TEST_F(KvmEndToEndTest, UnknownDevice_ConnectFailsAtAddConsumer_Enoent) {
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-a", 40)).ok());
  auto p = api().RegisterProducer(MakeProducer("t1", "n1", "0000:00:1f.0", 0));
  ASSERT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition);
  auto detail = GetErrorDetail(p.status());
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->step(), "add_consumer");
  EXPECT_EQ(detail->errno_value(), ENOENT);
}

// A VMM hands its VM to the agent over the handoff socket, then goes away.
class KvmHandoffEndToEndTest : public KvmEndToEndTest {
 protected:
  void SetUp() override {
    OpenKvmOrSkip();
    if (IsSkipped()) return;
    char dir[] = "/tmp/irqbypass-e2e-XXXXXX";  // sun_path: 107 bytes at most
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    socket_ = dir_ + "/handoff.sock";
    ASSERT_TRUE(cluster_.StartManager());
    ASSERT_TRUE(cluster_.StartAgent(
        "n1", {"--backend=kvm", std::string("--kvm_fake_devices=") + kDevice,
               "--handoff_socket=" + socket_}))
        << cluster_.agent("n1").Log();
  }
  void TearDown() override {
    if (dir_.empty()) return;  // skipped, or SetUp failed before any of it
    cluster_.agent("n1").Signal(SIGTERM);
    cluster_.agent("n1").Wait();
    ::rmdir(dir_.c_str());
  }
  // A VMM's VM: KVM_CREATE_VM + KVM_CREATE_IRQCHIP.
  int NewVm() {
    const int vm = ::ioctl(kvm_.get(), KVM_CREATE_VM, 0);
    EXPECT_GE(vm, 0);
    EXPECT_EQ(::ioctl(vm, KVM_CREATE_IRQCHIP, 0), 0);
    return vm;
  }

  std::string dir_;
  std::string socket_;
};

TEST_F(KvmHandoffEndToEndTest, VmFromAnotherProcess_RefusedWithKernelEio) {
  // KVM serves VM ioctls only to the VM's creator (kvm->mm): the agent can
  // not drive a VMM's VM, and says so with the kernel's errno.
  agent::Fd vm(NewVm());
  auto vmm = agent::HandoffClient::Connect(socket_);
  ASSERT_TRUE(vmm.ok()) << vmm.status();
  const absl::Status s = (*vmm)->HandOverVm("vm-h", vm.get(), true);
  EXPECT_EQ(agent::ErrnoOf(s), EIO) << s;
  EXPECT_NE(s.message().find("process but the one that created the VM"),
            absl::string_view::npos)
      << s;
  // Nothing was adopted: a consumer on it fails to connect with ENOENT.
  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-h", 40)).ok());
  auto p = api().RegisterProducer(MakeProducer("t1", "n1", kDevice, 2));
  ASSERT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetErrorDetail(p.status())->errno_value(), ENOENT);
}

TEST_F(KvmHandoffEndToEndTest, Cli_ConnectsAndReportsAgentErrno) {
  const CommandResult result =
      RunCommand(BinaryPath("agent/handoff/irqbypass-handoff"),
                 {"--socket=" + socket_, "--create_vm=vm-cli"});
  EXPECT_EQ(result.exit_code, 1) << result.err;
  EXPECT_NE(result.err.find("(EIO)"), std::string::npos) << result.err;
  const CommandResult no_agent =
      RunCommand(BinaryPath("agent/handoff/irqbypass-handoff"),
                 {"--socket=" + dir_ + "/nothing.sock", "--create_vm=vm-cli"});
  EXPECT_EQ(no_agent.exit_code, 1);
  EXPECT_NE(no_agent.err.find("(ENOENT)"), std::string::npos) << no_agent.err;
}

// The fix for the kernel's creator-only VM ioctls: a VMM process (the
// irqbypass-handoff CLI with --serve_vm: its own VM on /dev/kvm, with an
// irqchip) offers VM vm-v, and runs the agent's KVM_IRQFD requests itself.
class KvmServedVmEndToEndTest : public KvmHandoffEndToEndTest {
 protected:
  // Starts a VMM serving vm-v and waits until it is ready and the manager
  // reconciled the agent's re-report (a new VM makes the agent resync; a
  // register in between would find no agent session: UNAVAILABLE).
  bool StartVmm(Process& vmm, const std::string& log_name) {
    const int reconciles = cluster_.Reconciles("n1");
    if (!vmm.Start(BinaryPath("agent/handoff/irqbypass-handoff"),
                   {"--socket=" + socket_, "--serve_vm=vm-v"},
                   cluster_.dir() + "/" + log_name)) {
      return false;
    }
    return Eventually([&] {
             return vmm.Log().find("ready") != std::string::npos ||
                    !vmm.running();
           }) &&
           vmm.Log().find("ready") != std::string::npos &&
           cluster_.WaitReconciles("n1", reconciles + 1);
  }
  bool Connected(const std::string& token) {
    auto binding = api().GetBinding(token);
    return binding.ok() && binding->connected();
  }
};

TEST_F(KvmServedVmEndToEndTest,
       VmmServesVm_Connected_VmmGone_NotConnected_Back) {
  Process vmm;
  ASSERT_TRUE(StartVmm(vmm, "vmm.log")) << vmm.Log();

  ASSERT_TRUE(
      api().RegisterConsumer(MakeConsumer("t1", "n1", "vm-v", 40)).ok());
  auto p = api().RegisterProducer(MakeProducer("t1", "n1", kDevice, 3));
  ASSERT_TRUE(p.ok()) << p.status() << cluster_.agent("n1").Log();
  EXPECT_TRUE(p->connected);
  EXPECT_TRUE(Connected("t1"));
  // The VMM process ran the KVM_IRQFD; the agent logged it as VMM-held.
  EXPECT_NE(vmm.Log().find("irqfd assign vm=vm-v gsi=40 errno=0"),
            std::string::npos)
      << vmm.Log();
  EXPECT_NE(cluster_.agent("n1").Log().find("held_by=vmm"), std::string::npos);

  // The VMM dies: its VM goes with it; the manager learns the pair is down.
  ASSERT_TRUE(vmm.Signal(SIGKILL));
  vmm.Wait();
  EXPECT_TRUE(Eventually([&] { return !Connected("t1"); }))
      << cluster_.agent("n1").Log();
  auto binding = api().GetBinding("t1");
  ASSERT_TRUE(binding.ok());
  EXPECT_TRUE(binding->has_producer() && binding->has_consumer());

  // A VMM serves vm-v again: reconciliation connects the pair again.
  Process again;
  ASSERT_TRUE(StartVmm(again, "vmm2.log")) << again.Log();
  EXPECT_TRUE(Eventually([&] { return Connected("t1"); }))
      << cluster_.agent("n1").Log();
  EXPECT_TRUE(Eventually([&] {
    return again.Log().find("irqfd assign vm=vm-v gsi=40 errno=0") !=
           std::string::npos;
  })) << again.Log();

  // Unregistering deassigns in the VMM; a clean VMM exit is 0.
  auto d = api().UnregisterProducer("t1", p->registration_id);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_NE(again.Log().find("irqfd deassign vm=vm-v gsi=40 errno=0"),
            std::string::npos)
      << again.Log();
  ASSERT_TRUE(again.Signal(SIGTERM));
  EXPECT_EQ(again.Wait(), 0) << again.Log();
}

TEST_F(KvmServedVmEndToEndTest, Cli_ServeVm_NoAgent_Enoent) {
  const CommandResult result =
      RunCommand(BinaryPath("agent/handoff/irqbypass-handoff"),
                 {"--socket=" + dir_ + "/nothing.sock", "--serve_vm=vm-v"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.err.find("(ENOENT)"), std::string::npos) << result.err;
}

}  // namespace
}  // namespace irqbypass::testing
