// HandoffServer: the agent's end of the handoff socket (wire format in
// handoff.h). VMMs connect, offer the VMs they hold (SERVE-VM), pass their
// VFIO device fds, and keep the connection open for as long as the agent
// may use them. The server checks each peer's uid and groups (SO_PEERCRED,
// SO_PEERGROUPS) against allow-lists, puts what it receives into the KvmBackend
// (a RemoteVm per SERVE-VM, VfioDeviceIrqs::Adopt, KvmVm::Adopt), and when a
// connection closes releases everything that connection still owns
// (KvmBackend::RemoveVm / RemoveDevice, which tear down the wiring and
// notify the manager).
//
// Threads: one accepting, one per connected VMM (VMMs are few, and a
// teardown of thousands of irqfds, ~100 us each, then blocks only that VMM's
// thread, never the command path). A VMM's thread is the only reader of its
// socket: it answers the VMM's requests and hands the VMM's IRQFD-REPLYs to
// the connection's VmmChannel (remote_vm.h), on which command threads wait.
// Nothing it runs waits for a reply itself (RemoteVm::Retire only posts), so
// it cannot deadlock on its own connection.
//
// Thread-safety: Start() and Stop() from one thread; the rest is internal.
#ifndef IRQBYPASS_AGENT_HANDOFF_HANDOFF_SERVER_H_
#define IRQBYPASS_AGENT_HANDOFF_HANDOFF_SERVER_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/handoff/handoff.h"
#include "agent/handoff/remote_vm.h"
#include "agent/kvm/fd.h"
#include "agent/kvm/fd_identity.h"
#include "agent/kvm/kvm_backend.h"
#include "common/mutex.h"

namespace irqbypass {
namespace agent {

struct HandoffServerOptions {
  // Where to listen. An existing socket file there is replaced (a stale one
  // from an earlier run); any other file is an error (EEXIST).
  std::string path;
  // Peers served: those whose uid is in allowed_uids, or who are in a group
  // in allowed_gids (the effective gid SO_PEERCRED reports, or one of the
  // supplementary groups SO_PEERGROUPS reports, both as of connect()).
  // allowed_uids empty: the agent's own effective uid.
  absl::flat_hash_set<uid_t> allowed_uids;
  absl::flat_hash_set<gid_t> allowed_gids;
  // Where the kernel's views of received fds are (tests: a fake sysfs).
  FdIdentityPaths fd_paths;
  // This host's node name, for logs.
  std::string node;
  // How long the agent waits for a VMM's answer to one irqfd request
  // (SERVE-VM VMs) before failing the step with ETIMEDOUT.
  absl::Duration irqfd_timeout = absl::Seconds(2);
};

class HandoffServer {
 public:
  // Binds and listens, then serves on its own threads. `backend` must
  // outlive the server. Errors carry the errno (socket, bind, listen). The
  // path must pass SafeSocketPath (and the socket is made at the path it
  // returns).
  static absl::StatusOr<std::unique_ptr<HandoffServer>> Start(
      HandoffServerOptions options, KvmBackend& backend);

  HandoffServer(const HandoffServer&) = delete;
  HandoffServer& operator=(const HandoffServer&) = delete;
  ~HandoffServer();  // Stop()

  // Stops accepting and serving every VMM (without releasing what they
  // handed over: the backend still holds it until it is destroyed), joins the
  // threads and removes the socket file. A connection whose VMM serves a VM
  // the backend holds stays open until the backend lets go of that VM (its
  // retirement posts the deassigns to the VMM); the others close now.
  // Idempotent.
  void Stop();

 private:
  HandoffServer(HandoffServerOptions options, KvmBackend& backend, Fd listener,
                Fd stop);

  void AcceptLoop();
  // Whether a peer of effective gid `gid`, or of a supplementary group
  // (SO_PEERGROUPS on `socket`), is in options_.allowed_gids.
  bool InAllowedGroup(int socket, gid_t gid) const;
  void Serve(uint64_t connection, pid_t pid, Fd socket);
  // Handles one request from `connection`; the reply's status.
  absl::Status Handle(uint64_t connection,
                      const std::shared_ptr<VmmChannel>& channel,
                      HandoffPacket packet);
  // Releases what `connection` still owns (it closed).
  void ReleaseOwned(uint64_t connection);

  const HandoffServerOptions options_;
  KvmBackend& backend_;
  const Fd listener_;
  const Fd stop_;  // an eventfd; readable once Stop() was called

  std::thread acceptor_;
  mutable Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_connection_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<std::thread> connections_ ABSL_GUARDED_BY(mu_);
  // Which connection handed over each VM name / device address last.
  absl::flat_hash_map<std::string, uint64_t> vm_owner_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> device_owner_ ABSL_GUARDED_BY(mu_);
};

// Whoever may write in the handoff socket's directory could put a socket of
// theirs in its place, and VMMs would hand their fds to it. So: the path's
// directory, resolved (realpath, no symlink left), and every directory
// above it must belong to root or this process's user; the directory may
// not be writable by group or others at all, those above it only if sticky
// (as /tmp). A symlink on the path as given (VMMs connect through it) must
// belong to root or this user and lie in a directory that passes the rules
// for those above. What is checked can then be changed only by root or
// this user, so nobody else can race the check. The resolved socket path,
// or EPERM naming the directory or symlink and its mode or owner, EINVAL
// for a path without a file name (the errno of realpath/lstat if a
// directory does not exist).
absl::StatusOr<std::string> SafeSocketPath(const std::string& path);

// Parses "0,107,1000" into uids (or gids: the same type); INVALID_ARGUMENT
// naming a bad entry.
absl::StatusOr<absl::flat_hash_set<uid_t>> ParseUidList(absl::string_view list);

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_HANDOFF_HANDOFF_SERVER_H_
