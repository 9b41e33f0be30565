// HandoffClient: the VMM's end of the handoff socket (wire format in
// handoff.h), for VMMs written in C++ and for tests; the irqbypass-handoff
// CLI is built on it. Keep the client alive for as long as the agent may use
// what was offered or handed over: destroying it (or the process exiting)
// closes the connection, and the agent then drops the wiring on those
// objects and tells the manager.
//
// A VMM offers each VM it holds, then serves the agent's irqfd requests for
// it (KVM serves VM ioctls only to the VM's creator, so this process must run
// KVM_IRQFD itself):
//
//   auto client = HandoffClient::Connect("/run/irqbypass/handoff.sock");
//   absl::Status s = (*client)->ServeVm("vm-a", vm_fd);   // our own VM
//   s = (*client)->HandOverDevice("0000:3b:00.1", vfio_device_fd);
//   // Either a thread of its own, until `stop_fd` (an eventfd, a signalfd)
//   // is readable or the agent goes away:
//   s = (*client)->Serve(stop_fd);
//   // or, from the VMM's event loop, whenever socket() is readable:
//   s = (*client)->ServePending();
//
// Serving an irqfd request: KVM_IRQFD {the received eventfd, gsi, assign or
// KVM_IRQFD_FLAG_DEASSIGN} on the VM fd given to ServeVm, then IRQFD-REPLY
// with the ioctl's errno (0 = done). The client keeps no irqfd state (the
// kernel matches a deassign by eventfd and GSI). GSI routing stays the VMM's:
// route the GSIs your bindings use (KVM_SET_GSI_ROUTING) as you would for
// QEMU's irqfds. IRQFD requests that arrive while a request of ours waits
// for its reply are served on the spot, in order.
//
// Errors carry the agent's errno (ErrnoOf), e.g. EACCES for a uid not on the
// agent's allow-list, ENOTTY for an fd that is not a VFIO device.
//
// Thread-safety: not thread-safe: one thread at a time uses a client (its
// requests and its serving share the socket's read side).
#ifndef IRQBYPASS_AGENT_HANDOFF_HANDOFF_CLIENT_H_
#define IRQBYPASS_AGENT_HANDOFF_HANDOFF_CLIENT_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/handoff/handoff.h"
#include "agent/kvm/fd.h"

namespace irqbypass {
namespace agent {

class HandoffClient {
 public:
  // Connects to the agent's socket at `path` and reads its greeting.
  // connect(2)'s errno, or the refusal (EACCES: uid not allowed). Before
  // anything is sent, the process serving the socket must run as root, as
  // this process's user, or as one of `agent_uids` (SO_PEERCRED: whoever
  // listened there): EPERM naming its uid otherwise, since whoever else
  // serves that path is not the agent and would get the fds handed over.
  static absl::StatusOr<std::unique_ptr<HandoffClient>> Connect(
      const std::string& path, const std::vector<uid_t>& agent_uids = {});

  // Offers VM `name`, which this process created and drives through
  // `vm_fd`, to the agent ("SERVE-VM 1 <name>"); from then on the agent's
  // irqfd requests for it are run on a copy of `vm_fd` (the caller keeps its
  // own). Checks first that this process may drive the VM and that it has
  // KVM_CAP_IRQFD: EIO for a VM another process created, ENOTTY/EBADF for
  // other fds. The VM should already have its in-kernel irqchip (else each
  // assign is answered EINVAL). EEXIST if this client serves `name` already.
  absl::Status ServeVm(absl::string_view name, int vm_fd);

  // Passes a copy of a VFIO device fd, named by its PCI address.
  absl::Status HandOverDevice(absl::string_view pci_address, int device_fd);
  // Passes a copy of a KVM VM fd for the agent to drive itself; the kernel
  // lets it only if the agent's process created the VM (else EIO; see
  // handoff.h LIMITATION): VMMs use ServeVm. `agent_routing`: let the agent
  // own the VM's GSI routing table.
  absl::Status HandOverVm(absl::string_view name, int vm_fd,
                          bool agent_routing);
  // Stops offering VM `name` / a device (as on disconnect, for that one).
  absl::Status ReleaseVm(absl::string_view name);
  absl::Status ReleaseDevice(absl::string_view pci_address);

  // Serves the agent's irqfd requests until `stop_fd` (>= 0) is readable
  // (OK) or the agent closes the connection (ECONNRESET). stop_fd -1: only
  // the latter. Other errors: the socket's errno.
  absl::Status Serve(int stop_fd = -1);
  // Serves every request already queued, without blocking. OK when none is
  // left; ECONNRESET once the agent closed the connection.
  absl::Status ServePending();

  // Called after each irqfd request was served, with the request and the
  // errno sent back (0 = done); for logs and tests.
  using IrqfdObserver = std::function<void(const IrqfdRequest&, int)>;
  void SetIrqfdObserver(IrqfdObserver observer) {
    observer_ = std::move(observer);
  }

  int socket() const { return socket_.get(); }

 private:
  explicit HandoffClient(Fd socket) : socket_(std::move(socket)) {}
  absl::Status Call(const HandoffRequest& request, int fd);
  // Handles one packet from the agent outside of a Call: an irqfd request
  // (the agent sends nothing else unasked; anything else is dropped).
  absl::Status HandleUnsolicited(HandoffPacket packet);
  // Runs one irqfd request and sends its reply.
  absl::Status ServeIrqfd(const HandoffPacket& packet);

  Fd socket_;
  // The VMs this client serves, by name: copies of their VM fds.
  absl::flat_hash_map<std::string, Fd> served_vms_;
  IrqfdObserver observer_;
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_HANDOFF_HANDOFF_CLIENT_H_
