#include "agent/handoff/handoff_server.h"

#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "agent/errno_status.h"
#include "agent/kvm/kvm_vm.h"
#include "agent/kvm/vfio_device.h"
#include "common/errno_name.h"
#include "common/log.h"

namespace irqbypass {
namespace agent {
namespace {

// Waits until `fd` is readable or hung up (true), or `stop` is readable
// (false).
bool WaitReadable(int fd, int stop) {
  pollfd fds[2] = {{fd, POLLIN, 0}, {stop, POLLIN, 0}};
  while (true) {
    const int n = ::poll(fds, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (fds[1].revents != 0) return false;
    if (fds[0].revents != 0) return true;
  }
}

}  // namespace

namespace {

// Checks resolved directory `directory` and every one above it (see
// SafeSocketPath); `strict`: `directory` itself may not be writable by
// group or others even if sticky.
absl::Status CheckDirectoryChain(const std::string& directory, bool strict) {
  const uid_t self = ::geteuid();
  for (std::string d = directory;;) {
    struct stat st;
    if (::lstat(d.c_str(), &st) != 0) {
      return ErrnoError(errno, absl::StrCat("handoff socket directory ", d));
    }
    if (st.st_uid != 0 && st.st_uid != self) {
      return ErrnoErrorWithMessage(
          EPERM, absl::StrFormat("handoff socket directory %s belongs to uid "
                                 "%d, neither root nor this agent's (%d): "
                                 "its owner could replace the socket",
                                 d, st.st_uid, self));
    }
    const bool shared = (st.st_mode & (S_IWGRP | S_IWOTH)) != 0;
    const bool own = strict && d == directory;
    // The socket's own directory: nobody else may write in it, sticky or
    // not (anyone could make the socket there while the agent is down).
    // Above it: a shared directory only with the sticky bit (as /tmp),
    // where nobody can rename another's entry.
    if (shared && (own || (st.st_mode & S_ISVTX) == 0)) {
      return ErrnoErrorWithMessage(
          EPERM, absl::StrFormat("handoff socket directory %s (mode %04o) is "
                                 "writable by group or others%s: they could "
                                 "put another socket in the agent's place",
                                 d, st.st_mode & 07777,
                                 own ? "" : " without the sticky bit"));
    }
    if (d == "/") break;
    const size_t up = d.rfind('/');
    d = up == 0 ? "/" : d.substr(0, up);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> SafeSocketPath(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string name =
      slash == std::string::npos ? path : path.substr(slash + 1);
  const std::string given_directory = slash == std::string::npos ? "."
                                      : slash == 0               ? "/"
                                                   : path.substr(0, slash);
  if (name.empty() || name == "." || name == "..") {
    return ErrnoErrorWithMessage(
        EINVAL, absl::StrCat("handoff socket path \"", path,
                             "\": want a file name at the end"));
  }
  char buffer[PATH_MAX];
  if (::realpath(given_directory.c_str(), buffer) == nullptr) {
    return ErrnoError(
        errno, absl::StrCat("handoff socket directory ", given_directory));
  }
  const std::string directory = buffer;
  if (absl::Status s = CheckDirectoryChain(directory, /*strict=*/true);
      !s.ok()) {
    return s;
  }
  // VMMs connect through the path as configured: each symlink on it must be
  // one only root or the agent's user can change (its owner, and the
  // directory it is in, by the rules for the directories above).
  std::string prefix = given_directory[0] == '/' ? "" : ".";
  for (absl::string_view part :
       absl::StrSplit(given_directory, '/', absl::SkipEmpty())) {
    const std::string parent = prefix.empty() ? "/" : prefix;
    prefix = absl::StrCat(prefix, "/", part);
    struct stat st;
    if (::lstat(prefix.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) continue;
    if (st.st_uid != 0 && st.st_uid != ::geteuid()) {
      return ErrnoErrorWithMessage(
          EPERM, absl::StrFormat("handoff socket path: the symlink %s belongs "
                                 "to uid %d, neither root nor this agent's: "
                                 "its owner could point it elsewhere",
                                 prefix, st.st_uid));
    }
    if (::realpath(parent.c_str(), buffer) == nullptr) {
      return ErrnoError(errno, absl::StrCat("handoff socket path ", parent));
    }
    if (absl::Status s = CheckDirectoryChain(buffer, /*strict=*/false);
        !s.ok()) {
      return ErrnoErrorWithMessage(
          EPERM, absl::StrCat(
                     "handoff socket path: the symlink ", prefix,
                     " is in a directory others could change: ", s.message()));
    }
  }
  return directory == "/" ? "/" + name : directory + "/" + name;
}

absl::StatusOr<absl::flat_hash_set<uid_t>> ParseUidList(
    absl::string_view list) {
  absl::flat_hash_set<uid_t> uids;
  for (absl::string_view part : absl::StrSplit(list, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) continue;
    uint32_t uid = 0;
    if (!absl::SimpleAtoi(part, &uid)) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad id \"", part, "\" (want a number)"));
    }
    uids.insert(static_cast<uid_t>(uid));
  }
  return uids;
}

absl::StatusOr<std::unique_ptr<HandoffServer>> HandoffServer::Start(
    HandoffServerOptions options, KvmBackend& backend) {
  sockaddr_un address;
  std::memset(&address, 0, sizeof(address));
  address.sun_family = AF_UNIX;
  if (options.path.empty() || options.path.size() >= sizeof(address.sun_path)) {
    return ErrnoErrorWithMessage(
        ENAMETOOLONG,
        absl::StrFormat("handoff socket path \"%s\": want 1..%d bytes",
                        options.path, sizeof(address.sun_path) - 1));
  }
  std::memcpy(address.sun_path, options.path.data(), options.path.size());

  // Whoever may write in the socket's directory, or in a directory above
  // it, could put another socket in its place.
  absl::StatusOr<std::string> resolved = SafeSocketPath(options.path);
  if (!resolved.ok()) return resolved.status();
  if (resolved->size() >= sizeof(address.sun_path)) {
    return ErrnoErrorWithMessage(
        ENAMETOOLONG,
        absl::StrFormat("handoff socket path \"%s\" (resolved): want 1..%d "
                        "bytes",
                        *resolved, sizeof(address.sun_path) - 1));
  }
  options.path = *std::move(resolved);
  std::memset(address.sun_path, 0, sizeof(address.sun_path));
  std::memcpy(address.sun_path, options.path.data(), options.path.size());
  struct stat st;
  if (::lstat(options.path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return ErrnoErrorWithMessage(
          EEXIST, absl::StrCat(options.path, " exists and is not a socket"));
    }
    ::unlink(options.path.c_str());  // stale, from an earlier run
  }
  Fd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!listener.valid()) return ErrnoError(errno, "handoff socket()");
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&address),
             sizeof(address)) != 0) {
    return ErrnoError(errno, absl::StrCat("bind ", options.path));
  }
  // Anyone may connect; SO_PEERCRED and the allow-list decide who is served.
  if (::chmod(options.path.c_str(), 0666) != 0 ||
      ::listen(listener.get(), 16) != 0) {
    const int err = errno;
    ::unlink(options.path.c_str());
    return ErrnoError(err, absl::StrCat("listen on ", options.path));
  }
  Fd stop(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop.valid()) {
    const int err = errno;
    ::unlink(options.path.c_str());
    return ErrnoError(err, "eventfd");
  }
  if (options.allowed_uids.empty()) options.allowed_uids.insert(::geteuid());
  std::unique_ptr<HandoffServer> server(new HandoffServer(
      std::move(options), backend, std::move(listener), std::move(stop)));
  server->acceptor_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  return server;
}

HandoffServer::HandoffServer(HandoffServerOptions options, KvmBackend& backend,
                             Fd listener, Fd stop)
    : options_(std::move(options)),
      backend_(backend),
      listener_(std::move(listener)),
      stop_(std::move(stop)) {}

HandoffServer::~HandoffServer() { Stop(); }

void HandoffServer::Stop() {
  std::vector<std::thread> connections;
  {
    MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    const uint64_t one = 1;
    (void)!::write(stop_.get(), &one, sizeof(one));
  }
  if (acceptor_.joinable()) acceptor_.join();
  {
    MutexLock lock(&mu_);
    connections.swap(connections_);
  }
  for (std::thread& t : connections) t.join();
  ::unlink(options_.path.c_str());
}

bool HandoffServer::InAllowedGroup(int socket, gid_t gid) const {
  if (options_.allowed_gids.empty()) return false;
  if (options_.allowed_gids.contains(gid)) return true;
  // The supplementary groups (Linux 4.13+), as of connect().
  std::vector<gid_t> groups(64);
  while (true) {
    socklen_t length = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(socket, SOL_SOCKET, SO_PEERGROUPS, groups.data(),
                     &length) == 0) {
      groups.resize(length / sizeof(gid_t));
      break;
    }
    if (errno != ERANGE || length <= groups.size() * sizeof(gid_t)) {
      LogWarn("handoff: the peer's supplementary groups cannot be read",
              {{"node", options_.node}, {"error", ErrnoName(errno)}});
      return false;
    }
    groups.resize(length / sizeof(gid_t));
  }
  for (gid_t g : groups) {
    if (options_.allowed_gids.contains(g)) return true;
  }
  return false;
}

void HandoffServer::AcceptLoop() {
  while (WaitReadable(listener_.get(), stop_.get())) {
    Fd socket(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!socket.valid()) continue;  // the peer gave up, or EMFILE: retry
    ucred peer;
    socklen_t length = sizeof(peer);
    if (::getsockopt(socket.get(), SOL_SOCKET, SO_PEERCRED, &peer, &length) !=
        0) {
      continue;
    }
    if (!options_.allowed_uids.contains(peer.uid) &&
        !InAllowedGroup(socket.get(), peer.gid)) {
      LogWarn("handoff refused: uid and groups not allowed",
              {{"node", options_.node},
               {"uid", absl::StrCat(peer.uid)},
               {"gid", absl::StrCat(peer.gid)},
               {"pid", absl::StrCat(peer.pid)}});
      (void)SendHandoffPacket(
          socket.get(),
          EncodeHandoffReply(ErrnoErrorWithMessage(
              EACCES, absl::StrCat(
                          "uid ", peer.uid, " gid ", peer.gid,
                          " is not allowed to hand over to this agent "
                          "(--handoff_allowed_uids, --handoff_allowed_gids)"))),
          {});
      continue;
    }
    if (!SendHandoffPacket(socket.get(), EncodeHandoffReply(absl::OkStatus()),
                           {})
             .ok()) {
      continue;
    }
    MutexLock lock(&mu_);
    if (stopped_) return;
    const uint64_t id = next_connection_++;
    LogInfo("vmm connected", {{"node", options_.node},
                              {"connection", absl::StrCat(id)},
                              {"uid", absl::StrCat(peer.uid)},
                              {"pid", absl::StrCat(peer.pid)}});
    connections_.emplace_back(
        [this, id, pid = peer.pid, s = std::move(socket)]() mutable {
          Serve(id, pid, std::move(s));
        });
  }
}

void HandoffServer::Serve(uint64_t connection, pid_t pid, Fd socket_fd) {
  // Shared with the channel: RemoteVms on it may still post deassigns after
  // this thread returned (the agent stopping).
  const auto socket = std::make_shared<const Fd>(std::move(socket_fd));
  const auto channel = std::make_shared<VmmChannel>(
      socket, absl::StrCat("connection ", connection, " pid ", pid));
  while (WaitReadable(socket->get(), stop_.get())) {
    absl::StatusOr<HandoffPacket> packet = ReceiveHandoffPacket(socket->get());
    if (!packet.ok() && ErrnoOf(packet.status()) != EMSGSIZE) break;
    if (packet.ok() && IsIrqfdReply(packet->text)) {
      // An answer to one of our IRQFD requests: no reply to it.
      absl::StatusOr<IrqfdReply> reply = ParseIrqfdReply(packet->text);
      if (reply.ok()) {
        channel->Deliver(*reply);
      } else {
        LogWarn("bad IRQFD-REPLY from vmm",
                {{"node", options_.node},
                 {"connection", absl::StrCat(connection)},
                 {"error", std::string(reply.status().message())}});
      }
      continue;
    }
    const absl::Status result =
        packet.ok() ? Handle(connection, channel, *std::move(packet))
                    : packet.status();
    if (!SendHandoffPacket(socket->get(), EncodeHandoffReply(result), {})
             .ok()) {
      break;
    }
  }
  channel->Close();  // waiting requests fail now (ENOTCONN)
  {
    MutexLock lock(&mu_);
    if (stopped_) return;  // shutting down: the backend releases everything
  }
  LogInfo("vmm disconnected",
          {{"node", options_.node}, {"connection", absl::StrCat(connection)}});
  ReleaseOwned(connection);
}

absl::Status HandoffServer::Handle(uint64_t connection,
                                   const std::shared_ptr<VmmChannel>& channel,
                                   HandoffPacket packet) {
  absl::StatusOr<HandoffRequest> request = ParseHandoffRequest(packet.text);
  if (!request.ok()) return request.status();
  const std::string& name = request->name;
  if (packet.fds.size() != request->fds()) {
    return ErrnoErrorWithMessage(
        EINVAL, absl::StrFormat("%s: want %d fd, got %d", packet.text,
                                request->fds(), packet.fds.size()));
  }
  switch (request->kind) {
    case HandoffRequest::Kind::kServeVm: {
      if (request->version != kHandoffIrqfdVersion) {
        return ErrnoErrorWithMessage(
            EPROTONOSUPPORT,
            absl::StrFormat("SERVE-VM: protocol version %d not supported "
                            "(this agent speaks %d)",
                            request->version, kHandoffIrqfdVersion));
      }
      {
        MutexLock lock(&mu_);
        vm_owner_[name] = connection;
      }
      backend_.AddVm(
          std::make_unique<RemoteVm>(name, channel, options_.irqfd_timeout));
      LogInfo("vmm serves vm", {{"node", options_.node},
                                {"connection", absl::StrCat(connection)},
                                {"vm", name}});
      return absl::OkStatus();
    }
    case HandoffRequest::Kind::kVm: {
      absl::StatusOr<std::unique_ptr<KvmVm>> vm = KvmVm::Adopt(
          std::move(packet.fds[0]), name,
          request->agent_routing ? RoutingOwner::kAgent : RoutingOwner::kVmm);
      if (!vm.ok()) return vm.status();
      {
        MutexLock lock(&mu_);
        vm_owner_[name] = connection;
      }
      backend_.AddVm(*std::move(vm));
      return absl::OkStatus();
    }
    case HandoffRequest::Kind::kDevice: {
      absl::StatusOr<std::unique_ptr<VfioDeviceIrqs>> device =
          VfioDeviceIrqs::Adopt(std::move(packet.fds[0]), name,
                                options_.fd_paths);
      if (!device.ok()) return device.status();
      LogInfo("vmm handed over device",
              {{"node", options_.node},
               {"connection", absl::StrCat(connection)},
               {"device", name},
               {"verified_by", (*device)->verified_by()}});
      {
        MutexLock lock(&mu_);
        device_owner_[name] = connection;
      }
      backend_.AddDevice(*std::move(device));
      return absl::OkStatus();
    }
    case HandoffRequest::Kind::kReleaseVm:
    case HandoffRequest::Kind::kReleaseDevice: {
      const bool is_vm = request->kind == HandoffRequest::Kind::kReleaseVm;
      {
        MutexLock lock(&mu_);
        auto& owners = is_vm ? vm_owner_ : device_owner_;
        auto it = owners.find(name);
        if (it == owners.end() || it->second != connection) {
          return ErrnoErrorWithMessage(
              ENOENT, absl::StrFormat("%s \"%s\" was not handed over on this "
                                      "connection",
                                      is_vm ? "vm" : "device", name));
        }
        owners.erase(it);
      }
      if (is_vm) {
        backend_.RemoveVm(name);
      } else {
        backend_.RemoveDevice(name);
      }
      return absl::OkStatus();
    }
  }
  return ErrnoErrorWithMessage(EINVAL, "unknown request");
}

void HandoffServer::ReleaseOwned(uint64_t connection) {
  std::vector<std::string> vms, devices;
  {
    MutexLock lock(&mu_);
    for (auto it = vm_owner_.begin(); it != vm_owner_.end();) {
      if (it->second == connection) {
        vms.push_back(it->first);
        vm_owner_.erase(it++);
      } else {
        ++it;
      }
    }
    for (auto it = device_owner_.begin(); it != device_owner_.end();) {
      if (it->second == connection) {
        devices.push_back(it->first);
        device_owner_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  for (const std::string& name : vms) backend_.RemoveVm(name);
  for (const std::string& address : devices) backend_.RemoveDevice(address);
}

}  // namespace agent
}  // namespace irqbypass
