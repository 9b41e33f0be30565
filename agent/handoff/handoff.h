// The handoff protocol: how a VMM process (QEMU, cloud-hypervisor, a test)
// lets the local agent wire interrupts for its VMs and VFIO devices
// (kvm_backend.h). This header is the wire format's specification and its
// encoder/decoder; handoff_server.h is the agent's end, handoff_client.h the
// VMM's (plus the irqbypass-handoff CLI).
//
// Transport: a Unix domain socket of type SOCK_SEQPACKET at the agent's
// --handoff_socket path. One packet = one message, so there is no framing:
// a VMM needs socket(), connect(), sendmsg() with SCM_RIGHTS and recv().
// Every message is ASCII, at most 1024 bytes, words separated by one space,
// no trailing newline.
//
// Greeting (agent -> VMM), one packet as soon as the connection is accepted:
//   OK                         served
//   ERR 13 <message>           refused (uid not allowed); then disconnected
//
// Requests (VMM -> agent), one packet each:
//   SERVE-VM 1 <name>          no fd. "I hold VM <name>; send me its irqfd
//                                requests" (protocol version 1, see below).
//                                This is how a VMM offers its VM: KVM serves
//                                VM ioctls only to the VM's creator process.
//   DEVICE <pci-address>       + exactly 1 fd (SCM_RIGHTS): the VFIO device
//                                (the address in either case; the agent
//                                keeps it in lower case, as sysfs names it)
//                                fd (VFIO_GROUP_GET_DEVICE_FD or
//                                /dev/vfio/devices/vfioN), e.g.
//                                "DEVICE 0000:3b:00.1".
//   VM <name> <routing>        + exactly 1 fd: a KVM VM fd for the agent to
//                                drive itself. Useful only within the agent's
//                                own process (see LIMITATION); <routing> is
//                                "vmm" (the VMM keeps its GSI routing table)
//                                or "agent" (the agent owns it, kvm_vm.h).
//   RELEASE-VM <name>          no fd: stop using that VM (as on disconnect).
//   RELEASE-DEVICE <address>   no fd.
// <name> is 1..128 printable ASCII characters without spaces, as the API's
// Consumer.vm.
//
// Replies (agent -> VMM), one packet per request, in order:
//   OK
//   ERR <errno> <message>      <errno> decimal, e.g. "ERR 22 VM: want 1 fd"
//
// VMM-held VMs (protocol version 1). After "SERVE-VM 1 vm-a" (OK), the agent
// sends irqfd requests for vm-a on the same connection, whenever a binding
// is connected or disconnected:
//   agent -> VMM:  IRQFD 1 <id> <name> <gsi> assign|deassign
//                    + exactly 1 fd: the token's eventfd (the agent keeps its
//                    own; the VMM closes its copy once the ioctl ran)
//   VMM -> agent:  IRQFD-REPLY 1 <id> <errno> [<message>]
//                    <errno> 0 = done; otherwise the errno of KVM_IRQFD
//                    (kept exactly: the manager reports it), e.g.
//                    "IRQFD-REPLY 1 7 22 KVM_IRQFD: Invalid argument"
// <id> is a decimal number > 0, unique per connection, echoed in the reply;
// <gsi> is decimal, < 4096. The VMM runs, in its own process, on its own VM
// fd: KVM_IRQFD {fd = the received eventfd, gsi, flags = 0 or
// KVM_IRQFD_FLAG_DEASSIGN}, closes the received fd, and replies. It keeps no
// state: the kernel matches a deassign by (eventfd, gsi). GSI routing is the
// VMM's business (it owns its routing table, as QEMU does with
// kvm_irqchip_add_msi_route); the agent never touches it.
// A VMM implements this in a few lines: poll its handoff socket, and for
// each IRQFD packet do the ioctl and send the reply; replies to its own
// requests (OK / ERR) arrive in order among the IRQFD packets.
// Versioning: the "1" after SERVE-VM, IRQFD and IRQFD-REPLY is the protocol
// version. An agent refuses a SERVE-VM version it does not speak with
// "ERR 93" (EPROTONOSUPPORT); a VMM answers an IRQFD of an unknown version
// with errno 93. Later versions change the words after the version only.
// Timing: the agent waits for each reply for --handoff_irqfd_timeout
// (default 2 s); a late assign gets a deassign after it (ETIMEDOUT is
// reported). Requests are answered in the order sent; nothing is pipelined
// per (eventfd, gsi).
//
// Rules:
//   * Access: the agent reads the peer's credentials when it accepts
//     (SO_PEERCRED, SO_PEERGROUPS: as of the peer's connect; never its pid,
//     pids are reused) and serves only allow-listed uids
//     (--handoff_allowed_uids, default: the agent's own) or members of
//     allow-listed groups (--handoff_allowed_gids, default none); see the
//     greeting. The socket file itself is mode 0666: that check is the
//     access control. The agent refuses to start unless the socket's
//     directory, resolved, and every directory above it belong to root or
//     the agent's user, the directory is writable by nobody else and those
//     above only if sticky (handoff_server.h SafeSocketPath): otherwise
//     someone else could put a socket of theirs in its place while the
//     agent is down. The other way round, HandoffClient (and
//     irqbypass-handoff) send nothing to a socket whose listener's uid
//     (SO_PEERCRED) is not root, their own or one named (--agent_uids).
//   * Every received fd is checked to be what the request says before the
//     agent sends it any ioctl (agent/kvm/fd_identity.h: by the kernel's
//     own name for it, /proc/self/fd and fdinfo, and the sysfs link of a
//     cdev's device number), and a VFIO device fd to be the device at the
//     PCI address named (vfio_device.h VfioDeviceIrqs::Adopt):
//       ERR 25 (ENOTTY)  the fd is not a VFIO device fd / KVM VM fd (the
//                        reply names what it is: "pipe:[..]", "/dev/null",
//                        an O_PATH fd)
//       ERR 1 (EPERM)    a VFIO device fd of another device than named, or
//                        (a kernel before 6.18, a group-opened fd) one that
//                        cannot be told from an identical device here
//       ERR 19 (ENODEV)  a VFIO device but not PCI; or (before 6.18, a
//                        group-opened fd) no device at that address here
//       ERR 5 (EIO)      what the kernel says could not be read (fdinfo,
//                        the list of PCI devices)
//     Fds are received close-on-exec (MSG_CMSG_CLOEXEC); a message over 1024
//     bytes or with more than 4 fds is refused whole (ERR 90, EMSGSIZE:
//     MSG_TRUNC/MSG_CTRUNC), and every fd that came with a refused request,
//     or with a message that takes none, is closed.
//   * The agent duplicates nothing: the fds it receives are its own
//     references; the VMM keeps using its copies.
//   * Lifetime: what a connection handed over or offered is held while the
//     connection is open. When it closes (the VMM exited or crashed) or the
//     same name is handed over again (by any connection: a replacement), the
//     agent drops the wiring on the old object - for a VMM-held VM whose VMM
//     is gone there is nothing to deassign (the kernel released the irqfds
//     with the VM); the agent releases the device triggers and eventfds of
//     those bindings - and re-reports its wiring to the manager, which then
//     shows the affected bindings as not connected (and connects them again
//     once a VM/device of that name is back).
//   * Extra or missing fds, unknown verbs, bad names: "ERR 22 ..." and the
//     received fds are closed; the connection stays usable.
//
// LIMITATION (kernel): KVM answers EIO to every VM ioctl (KVM_IRQFD
// included) from a process other than the one that created the VM
// (kvm_vm_ioctl checks kvm->mm). A VM fd handed over with "VM" by a separate
// VMM process is therefore refused ("ERR 5 ..."); use SERVE-VM. VFIO device
// fds have no such check and are handed over with DEVICE.
//
// Thread-safety: the functions are pure, or act only on the fd given.
#ifndef IRQBYPASS_AGENT_HANDOFF_HANDOFF_H_
#define IRQBYPASS_AGENT_HANDOFF_HANDOFF_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/kvm/fd.h"

namespace irqbypass {
namespace agent {

inline constexpr size_t kHandoffMaxMessage = 1024;
inline constexpr size_t kHandoffMaxFds = 4;  // received at most per message
// The version of SERVE-VM / IRQFD / IRQFD-REPLY this code speaks.
inline constexpr uint32_t kHandoffIrqfdVersion = 1;

// A request from the VMM to the agent.
struct HandoffRequest {
  enum class Kind { kVm, kDevice, kReleaseVm, kReleaseDevice, kServeVm };
  Kind kind = Kind::kVm;
  std::string name;                         // VM name or PCI address
  bool agent_routing = false;               // kVm: "agent" routing
  uint32_t version = kHandoffIrqfdVersion;  // kServeVm

  // The text of the request ("VM vm-a vmm").
  std::string Encode() const;
  // Number of fds that must travel with it.
  size_t fds() const { return kind == Kind::kVm || kind == Kind::kDevice; }
};

// Parses a request's text; INVALID_ARGUMENT (errno EINVAL) naming the
// problem otherwise.
absl::StatusOr<HandoffRequest> ParseHandoffRequest(absl::string_view text);

// An irqfd request from the agent to the VMM holding VM `vm` (travels with
// the eventfd).
struct IrqfdRequest {
  uint32_t version = kHandoffIrqfdVersion;
  uint64_t id = 0;
  std::string vm;
  uint32_t gsi = 0;
  bool deassign = false;

  // "IRQFD 1 <id> <vm> <gsi> assign|deassign".
  std::string Encode() const;
};
// The VMM's answer to IrqfdRequest `id`.
struct IrqfdReply {
  uint32_t version = kHandoffIrqfdVersion;
  uint64_t id = 0;
  int errno_value = 0;  // 0: done
  std::string message;  // optional, for errors

  // "IRQFD-REPLY 1 <id> <errno>[ <message>]" (cut to kHandoffMaxMessage).
  std::string Encode() const;
};

// Whether a packet's text is an IRQFD request / an IRQFD-REPLY (by verb),
// to tell them from the other messages on the same connection.
bool IsIrqfdRequest(absl::string_view text);
bool IsIrqfdReply(absl::string_view text);
// Parse them; EINVAL naming the problem otherwise. A version other than
// kHandoffIrqfdVersion parses (the id is still useful) and is the caller's
// to refuse.
absl::StatusOr<IrqfdRequest> ParseIrqfdRequest(absl::string_view text);
absl::StatusOr<IrqfdReply> ParseIrqfdReply(absl::string_view text);

// "OK" / "ERR <errno> <message>" for `status`, and back (the reply's errno is
// kept: ErrnoOf() of the parsed status).
std::string EncodeHandoffReply(const absl::Status& status);
absl::Status ParseHandoffReply(absl::string_view text);

// One received packet.
struct HandoffPacket {
  std::string text;
  std::vector<Fd> fds;
};

// sendmsg() of `text` with `fds` (not closed). The errno otherwise (EPIPE
// once the peer is gone; never SIGPIPE). `wait` false: MSG_DONTWAIT, EAGAIN
// when the socket's buffer is full (a peer that stopped reading). Packets
// are atomic, so several threads may send on one socket.
absl::Status SendHandoffPacket(int socket, absl::string_view text,
                               const std::vector<int>& fds, bool wait = true);
// recvmsg() of one packet (fds close-on-exec). Errno ECONNRESET at end of
// stream; EMSGSIZE for a truncated packet or fd list (the fds that
// did arrive are closed); otherwise recvmsg's errno. `wait` false:
// MSG_DONTWAIT, EAGAIN when no packet is queued.
absl::StatusOr<HandoffPacket> ReceiveHandoffPacket(int socket,
                                                   bool wait = true);

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_HANDOFF_HANDOFF_H_
