// HandoffClient: the VMM's end of the handoff socket (wire format in
// handoff.h), for VMMs written in C++ and for tests; the irqbypass-handoff
// CLI is built on it. Keep the client alive for as long as the agent may use
// what was handed over: destroying it (or the process exiting) closes the
// connection, and the agent then tears down the wiring on those objects.
//
//   auto client = HandoffClient::Connect("/run/irqbypass/handoff.sock");
//   absl::Status s = (*client)->HandOverVm("vm-a", vm_fd,
//   /*agent_routing=*/false); s = (*client)->HandOverDevice("0000:3b:00.1",
//   vfio_device_fd);
//
// Errors carry the agent's errno (ErrnoOf), e.g. EACCES for a uid not on the
// agent's allow-list, ENOTTY for an fd that is not a KVM VM / VFIO device.
//
// Thread-safety: not thread-safe (one request at a time per client).
#ifndef IRQBYPASS_AGENT_HANDOFF_CLIENT_H_
#define IRQBYPASS_AGENT_HANDOFF_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/fd.h"
#include "agent/handoff.h"

namespace irqbypass {
namespace agent {

class HandoffClient {
 public:
  // Connects to the agent's socket at `path` and reads its greeting.
  // connect(2)'s errno, or the refusal (EACCES: uid not allowed).
  static absl::StatusOr<std::unique_ptr<HandoffClient>> Connect(
      const std::string& path);

  // Passes a copy of `vm_fd` (the caller keeps its own). `agent_routing`:
  // let the agent own the VM's GSI routing table.
  absl::Status HandOverVm(absl::string_view name, int vm_fd,
                          bool agent_routing);
  // Passes a copy of a VFIO device fd, named by its PCI address.
  absl::Status HandOverDevice(absl::string_view pci_address, int device_fd);
  absl::Status ReleaseVm(absl::string_view name);
  absl::Status ReleaseDevice(absl::string_view pci_address);

  int socket() const { return socket_.get(); }

 private:
  explicit HandoffClient(Fd socket) : socket_(std::move(socket)) {}
  absl::Status Call(const HandoffRequest& request, int fd);

  Fd socket_;
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_HANDOFF_CLIENT_H_
