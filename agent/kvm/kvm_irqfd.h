// KvmIrqfd: one KVM_IRQFD ioctl (assign `eventfd` to `gsi` on the VM, or
// deassign it), returning 0 or the errno. Shared by the agent's own VMs,
// the VMM-side handoff client and the tests that poke the kernel directly.
#ifndef IRQBYPASS_AGENT_KVM_KVM_IRQFD_H_
#define IRQBYPASS_AGENT_KVM_KVM_IRQFD_H_

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

namespace irqbypass::agent {

inline int KvmIrqfd(int vm_fd, int eventfd, uint32_t gsi,
                    bool deassign = false) {
  kvm_irqfd request;
  std::memset(&request, 0, sizeof(request));
  request.fd = static_cast<uint32_t>(eventfd);
  request.gsi = gsi;
  request.flags = deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0;
  return ::ioctl(vm_fd, KVM_IRQFD, &request) == 0 ? 0 : errno;
}

}  // namespace irqbypass::agent

#endif  // IRQBYPASS_AGENT_KVM_KVM_IRQFD_H_
