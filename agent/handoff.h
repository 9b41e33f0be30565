// The handoff protocol: how a VMM process (QEMU, cloud-hypervisor, a test)
// passes its KVM VM fd and VFIO device fds to the local agent, so that the
// agent can wire interrupts for them (kvm_backend.h). This header is the
// wire format's specification and its encoder/decoder; handoff_server.h is
// the agent's end, handoff_client.h the VMM's (plus the irqbypass-handoff
// CLI).
//
// Transport: a Unix domain socket of type SOCK_SEQPACKET at the agent's
// --handoff_socket path. One packet = one message, so there is no framing:
// a VMM needs socket(), connect(), sendmsg() with SCM_RIGHTS and recv().
//
// Greeting (agent -> VMM), one packet as soon as the connection is accepted:
//   OK                         served
//   ERR 13 <message>           refused (uid not allowed); then disconnected
//
// Requests (VMM -> agent), one packet each, ASCII, at most 1024 bytes, words
// separated by one space, no trailing newline:
//   VM <name> <routing>        + exactly 1 fd (SCM_RIGHTS): the KVM VM fd.
//                                <routing> is "vmm" (the VMM keeps its GSI
//                                routing table; the agent only assigns
//                                irqfds) or "agent" (the agent owns the
//                                table, kvm_vm.h). The VM needs its in-kernel
//                                irqchip already.
//   DEVICE <pci-address>       + exactly 1 fd: the VFIO device fd
//                                (VFIO_GROUP_GET_DEVICE_FD or
//                                /dev/vfio/devices/vfioN), e.g.
//                                "DEVICE 0000:3b:00.1".
//   RELEASE-VM <name>          no fd: stop using that VM (as on disconnect).
//   RELEASE-DEVICE <address>   no fd.
// <name> is 1..128 printable ASCII characters without spaces, as the API's
// Consumer.vm.
//
// Replies (agent -> VMM), one packet per request, in order:
//   OK
//   ERR <errno> <message>      <errno> decimal, e.g. "ERR 22 VM: want 1 fd"
//
// Rules:
//   * Access: the agent reads the peer's uid with SO_PEERCRED when it
//     accepts and serves only allow-listed uids (--handoff_allowed_uids,
//     default: the agent's own); see the greeting. The socket file itself
//     is mode 0666: the uid check is the access control.
//   * The agent duplicates nothing: the fds it receives are its own
//     references; the VMM keeps using its copies.
//   * Lifetime: what a connection handed over is held while the connection
//     is open. When it closes (the VMM exited or crashed) or the same name
//     is handed over again (by any connection: a replacement), the agent
//     tears down the wiring on the old object and re-reports its wiring to
//     the manager, which then shows the affected bindings as not connected
//     (and connects them again once a VM/device of that name is back).
//   * Extra or missing fds, unknown verbs, bad names: "ERR 22 ..." and the
//     received fds are closed; the connection stays usable.
//
// LIMITATION (kernel): KVM answers EIO to every VM ioctl (KVM_IRQFD
// included) from a process other than the one that created the VM
// (kvm_vm_ioctl checks kvm->mm). A VM fd handed over by a separate VMM
// process is therefore refused ("ERR 5 ..."): the VM request is useful only
// within one process today. VFIO device fds have no such check and work as
// described. The fix is to invert the consumer side: the agent passes the
// token's eventfd to the VMM, which runs KVM_IRQFD itself; until then, VMs
// come from --kvm_create_vms.
//
// Thread-safety: the functions are pure, or act only on the fd given.
#ifndef IRQBYPASS_AGENT_HANDOFF_H_
#define IRQBYPASS_AGENT_HANDOFF_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/fd.h"

namespace irqbypass {
namespace agent {

inline constexpr size_t kHandoffMaxMessage = 1024;
inline constexpr size_t kHandoffMaxFds = 4;  // received at most per message

struct HandoffRequest {
  enum class Kind { kVm, kDevice, kReleaseVm, kReleaseDevice };
  Kind kind = Kind::kVm;
  std::string name;            // VM name or PCI address
  bool agent_routing = false;  // kVm: "agent" routing

  // The text of the request ("VM vm-a vmm").
  std::string Encode() const;
  // Number of fds that must travel with it.
  size_t fds() const { return kind == Kind::kVm || kind == Kind::kDevice; }
};

// Parses a request's text; INVALID_ARGUMENT (errno EINVAL) naming the
// problem otherwise.
absl::StatusOr<HandoffRequest> ParseHandoffRequest(absl::string_view text);

// "OK" / "ERR <errno> <message>" for `status`, and back (the reply's errno is
// kept: ErrnoOf() of the parsed status).
std::string EncodeHandoffReply(const absl::Status& status);
absl::Status ParseHandoffReply(absl::string_view text);

// One received packet.
struct HandoffPacket {
  std::string text;
  std::vector<Fd> fds;
};

// sendmsg() of `text` with `fds` (not closed). The errno otherwise.
absl::Status SendHandoffPacket(int socket, absl::string_view text,
                               const std::vector<int>& fds);
// recvmsg() of one packet (fds close-on-exec). Errno ECONNRESET at end of
// stream; EMSGSIZE for a truncated packet or fd list (the fds that
// did arrive are closed); otherwise recvmsg's errno.
absl::StatusOr<HandoffPacket> ReceiveHandoffPacket(int socket);

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_HANDOFF_H_
