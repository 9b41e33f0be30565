// irqbypass-handoff: hands a VMM's KVM VM fd and VFIO device fds to the
// local irqbypass agent over its handoff socket (handoff.h), then holds the
// connection until SIGTERM/SIGINT: exiting is how a VMM says it went away.
//
//   # a VMM that exec()s this with its fds inherited as 3 and 4:
//   irqbypass-handoff --socket=/run/irqbypass/handoff.sock \
//       --vm=vm-a --vm_fd=3 --device=0000:3b:00.1 --device_fd=4
//   # a stand-in VMM for demos: create a VM (with its irqchip) and hand it over
//   irqbypass-handoff --socket=/run/irqbypass/handoff.sock --create_vm=vm-b
//
// Prints "ready" on stdout once everything is handed over. Exit codes: 0 on
// a signal after success, 1 if the agent refused something (the message has
// its errno), 2 for bad flags.
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "agent/errno_status.h"
#include "agent/fd.h"
#include "agent/handoff_client.h"
#include "common/errno_name.h"

ABSL_FLAG(std::string, socket, "", "The agent's handoff socket (required).");
ABSL_FLAG(std::string, vm, "", "Name of the VM whose fd is --vm_fd.");
ABSL_FLAG(int, vm_fd, -1, "An inherited KVM VM fd to hand over as --vm.");
ABSL_FLAG(std::string, routing, "vmm",
          "Who owns the VM's GSI routing table: vmm or agent.");
ABSL_FLAG(std::string, create_vm, "",
          "Create a VM on /dev/kvm (with an in-kernel irqchip) under this "
          "name and hand it over with agent routing (demos, tests).");
ABSL_FLAG(std::string, device, "", "PCI address of the device --device_fd.");
ABSL_FLAG(int, device_fd, -1, "An inherited VFIO device fd.");

namespace irqbypass {
namespace agent {
namespace {

int Fail(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "irqbypass-handoff: %s: %s (%s)\n", what.c_str(),
               std::string(status.message()).c_str(),
               ErrnoName(ErrnoOf(status)).c_str());
  return 1;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "hand VM and VFIO device fds to the irqbypass agent.\n"
      "  irqbypass-handoff --socket=PATH [--vm=NAME --vm_fd=N] "
      "[--device=BDF --device_fd=N] [--create_vm=NAME]");
  absl::ParseCommandLine(argc, argv);
  const std::string path = absl::GetFlag(FLAGS_socket);
  const std::string routing = absl::GetFlag(FLAGS_routing);
  if (path.empty() || (routing != "vmm" && routing != "agent") ||
      absl::GetFlag(FLAGS_vm).empty() != (absl::GetFlag(FLAGS_vm_fd) < 0) ||
      absl::GetFlag(FLAGS_device).empty() !=
          (absl::GetFlag(FLAGS_device_fd) < 0)) {
    std::fprintf(stderr,
                 "irqbypass-handoff: want --socket, and --vm with --vm_fd, "
                 "--device with --device_fd, --routing=vmm|agent (see "
                 "--help)\n");
    return 2;
  }
  // Block the signals we wait for before anything else.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto client = HandoffClient::Connect(path);
  if (!client.ok()) return Fail("connect", client.status());

  Fd created_vm;
  if (const std::string name = absl::GetFlag(FLAGS_create_vm); !name.empty()) {
    Fd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!kvm.valid()) return Fail("open /dev/kvm", ErrnoError(errno, "open"));
    created_vm = Fd(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
    if (!created_vm.valid() ||
        ::ioctl(created_vm.get(), KVM_CREATE_IRQCHIP, 0) != 0) {
      return Fail("create vm", ErrnoError(errno, "KVM_CREATE_VM/IRQCHIP"));
    }
    if (absl::Status s = (*client)->HandOverVm(name, created_vm.get(), true);
        !s.ok()) {
      return Fail("vm " + name, s);
    }
  }
  if (const std::string name = absl::GetFlag(FLAGS_vm); !name.empty()) {
    if (absl::Status s = (*client)->HandOverVm(name, absl::GetFlag(FLAGS_vm_fd),
                                               routing == "agent");
        !s.ok()) {
      return Fail("vm " + name, s);
    }
  }
  if (const std::string address = absl::GetFlag(FLAGS_device);
      !address.empty()) {
    if (absl::Status s =
            (*client)->HandOverDevice(address, absl::GetFlag(FLAGS_device_fd));
        !s.ok()) {
      return Fail("device " + address, s);
    }
  }
  std::printf("ready\n");
  std::fflush(stdout);
  int signal_number = 0;
  while (sigwait(&signals, &signal_number) != 0) {
  }
  return 0;  // closing the connection releases everything handed over
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass

int main(int argc, char** argv) { return irqbypass::agent::Main(argc, argv); }
