// irqbypass-handoff: talks to the local irqbypass agent over its handoff
// socket (handoff.h) on behalf of a VMM, then holds the connection until
// SIGTERM/SIGINT: exiting is how a VMM says it went away.
//
//   # a stand-in VMM for demos and tests: create VM vm-v on /dev/kvm (with
//   # its in-kernel irqchip) in this process, offer it to the agent, and run
//   # the agent's irqfd requests (KVM_IRQFD) on it
//   irqbypass-handoff --socket=/run/irqbypass/handoff.sock --serve_vm=vm-v
//   # hand over a VFIO device fd inherited as fd 4 (from a VMM that exec()s
//   # this):
//   irqbypass-handoff --socket=/run/irqbypass/handoff.sock
//       --device=0000:3b:00.1 --device_fd=4
//
// A VM fd cannot usefully be passed to another process (KVM serves VM
// ioctls only to the VM's creator): --vm/--vm_fd and --create_vm hand one
// over anyway and the agent refuses it with EIO; they remain for that
// demonstration. A real VMM serves its own VMs with the handoff_client
// library (HandoffClient::ServeVm + Serve).
//
// Prints "ready" on stdout once everything is offered / handed over, and one
// line on stderr per irqfd request served ("irqfd assign vm=vm-v gsi=40
// errno=0"). Exit codes: 0 on a signal after success, 1 if the agent refused
// something (the message has its errno) or closed the connection while
// serving, 2 for bad flags.
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "agent/errno_status.h"
#include "agent/handoff/handoff_client.h"
#include "agent/kvm/fd.h"
#include "common/errno_name.h"

ABSL_FLAG(std::string, socket, "", "The agent's handoff socket (required).");
ABSL_FLAG(std::string, vm, "", "Name of the VM whose fd is --vm_fd.");
ABSL_FLAG(int, vm_fd, -1, "An inherited KVM VM fd to hand over as --vm.");
ABSL_FLAG(std::string, routing, "vmm",
          "Who owns the VM's GSI routing table: vmm or agent.");
ABSL_FLAG(std::string, create_vm, "",
          "Create a VM on /dev/kvm (with an in-kernel irqchip) under this "
          "name and hand it over with agent routing (demos, tests).");
ABSL_FLAG(std::string, serve_vm, "",
          "Create a VM on /dev/kvm (with an in-kernel irqchip) in this "
          "process under this name, offer it to the agent (SERVE-VM) and run "
          "the agent's irqfd requests on it until SIGTERM (demos, tests).");
ABSL_FLAG(std::string, agent_uids, "",
          "Comma-separated uids the agent may run as besides root and this "
          "process's own; a socket served by any other uid gets nothing.");
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
      "offer VMs and hand VFIO device fds to the irqbypass agent.\n"
      "  irqbypass-handoff --socket=PATH [--serve_vm=NAME] "
      "[--device=BDF --device_fd=N] [--vm=NAME --vm_fd=N] [--create_vm=NAME]");
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

  std::vector<uid_t> agent_uids;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_agent_uids),
                                               ',', absl::SkipEmpty())) {
    uint32_t uid = 0;
    if (!absl::SimpleAtoi(part, &uid)) {
      std::fprintf(stderr, "irqbypass-handoff: --agent_uids: bad uid \"%s\"\n",
                   std::string(part).c_str());
      return 2;
    }
    agent_uids.push_back(static_cast<uid_t>(uid));
  }
  auto client = HandoffClient::Connect(path, agent_uids);
  if (!client.ok()) return Fail("connect", client.status());
  (*client)->SetIrqfdObserver([](const IrqfdRequest& request, int err) {
    std::fprintf(stderr, "irqbypass-handoff: irqfd %s vm=%s gsi=%u errno=%s\n",
                 request.deassign ? "deassign" : "assign", request.vm.c_str(),
                 request.gsi, err == 0 ? "0" : ErrnoName(err).c_str());
  });

  Fd served_vm;
  const std::string serve_name = absl::GetFlag(FLAGS_serve_vm);
  if (!serve_name.empty()) {
    Fd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!kvm.valid()) return Fail("open /dev/kvm", ErrnoError(errno, "open"));
    served_vm = Fd(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
    if (!served_vm.valid() ||
        ::ioctl(served_vm.get(), KVM_CREATE_IRQCHIP, 0) != 0) {
      return Fail("create vm", ErrnoError(errno, "KVM_CREATE_VM/IRQCHIP"));
    }
    if (absl::Status s = (*client)->ServeVm(serve_name, served_vm.get());
        !s.ok()) {
      return Fail("serve vm " + serve_name, s);
    }
  }

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
  // Serve the agent's irqfd requests (if any VM is served) until a signal.
  Fd stop(::signalfd(-1, &signals, SFD_CLOEXEC));
  if (!stop.valid()) return Fail("signalfd", ErrnoError(errno, "signalfd"));
  if (absl::Status s = (*client)->Serve(stop.get()); !s.ok()) {
    return Fail("serving the agent", s);
  }
  return 0;  // closing the connection releases everything handed over
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass

int main(int argc, char** argv) { return irqbypass::agent::Main(argc, argv); }
