// The handoff socket: wire format, SO_PEERCRED allow-list, adopting real KVM
// VM fds (on /dev/kvm; those tests skip, saying so, without it), and the
// teardown when the VMM's connection closes.
#include "agent/handoff/handoff.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/kvm.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "agent/errno_status.h"
#include "agent/handoff/handoff_client.h"
#include "agent/handoff/handoff_server.h"
#include "agent/kvm/kvm_backend.h"
#include "agent/kvm/testing/kvm_backend_fixture.h"
#include "agent/kvm/testing/open_kvm.h"
#include "agent/test_fd_count.h"
#include "common/testing/eventually.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace irqbypass {
namespace agent {
namespace {

using ::irqbypass::testing::Eventually;

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

TEST(HandoffWireTest, Requests_RoundTrip) {
  for (const char* text :
       {"VM vm-a vmm", "VM vm-a agent", "DEVICE 0000:3b:00.1",
        "RELEASE-VM vm-a", "RELEASE-DEVICE 0000:3b:00.1", "SERVE-VM 1 vm-a",
        "SERVE-VM 7 vm-a"}) {
    auto request = ParseHandoffRequest(text);
    ASSERT_TRUE(request.ok()) << text << ": " << request.status();
    EXPECT_EQ(request->Encode(), text);
  }
}

TEST(HandoffWireTest, DeviceAddresses_KeptInLowerCase) {
  for (const char* text :
       {"DEVICE 0000:3B:00.1", "RELEASE-DEVICE 0000:3b:00.1"}) {
    auto parsed = ParseHandoffRequest(text);
    ASSERT_TRUE(parsed.ok()) << text;
    EXPECT_EQ(parsed->name, "0000:3b:00.1") << text;
  }
  EXPECT_EQ(ParseHandoffRequest("SERVE-VM 1 VM-A")->name, "VM-A");
}

TEST(SafeSocketPathTest, Shapes) {
  EXPECT_EQ(*SafeSocketPath("/x.sock"), "/x.sock");
  EXPECT_EQ(*SafeSocketPath("//x.sock"), "/x.sock");
  EXPECT_EQ(ErrnoOf(SafeSocketPath("a/b/").status()), EINVAL);
  EXPECT_EQ(ErrnoOf(SafeSocketPath("/tmp/..").status()), EINVAL);
  EXPECT_EQ(ErrnoOf(SafeSocketPath("/no/such/dir/x.sock").status()), ENOENT);
  // Relative: resolved against the working directory.
  char dir[] = "/tmp/irqbypass-ssp-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  char cwd[PATH_MAX];
  ASSERT_NE(::getcwd(cwd, sizeof(cwd)), nullptr);
  ASSERT_EQ(::chdir(dir), 0);
  auto relative = SafeSocketPath("x.sock");
  ASSERT_EQ(::chdir(cwd), 0);
  ASSERT_TRUE(relative.ok()) << relative.status();
  EXPECT_EQ(*relative, std::string(dir) + "/x.sock");
  ::rmdir(dir);
}

TEST(HandoffWireTest, BadRequests_Einval) {
  for (const char* text :
       {"", "VM", "VM vm-a", "VM vm-a maybe", "DEVICE 3b:00.1", "HELLO x",
        "VM  vmm", "RELEASE-VM a b", "SERVE-VM vm-a", "SERVE-VM 0 vm-a",
        "SERVE-VM x vm-a", "SERVE-VM 1 vm a", "SERVE-VM 1"}) {
    auto request = ParseHandoffRequest(text);
    EXPECT_EQ(ErrnoOf(request.status()), EINVAL) << "\"" << text << "\"";
  }
}

TEST(HandoffWireTest, Replies_KeepErrno) {
  EXPECT_EQ(EncodeHandoffReply(absl::OkStatus()), "OK");
  const std::string err =
      EncodeHandoffReply(ErrnoErrorWithMessage(ENOTTY, "not a VM fd"));
  EXPECT_EQ(err, "ERR 25 not a VM fd");
  const absl::Status parsed = ParseHandoffReply(err);
  EXPECT_EQ(ErrnoOf(parsed), ENOTTY);
  EXPECT_EQ(parsed.message(), "not a VM fd");
  EXPECT_EQ(ErrnoOf(ParseHandoffReply("WHAT")), EPROTO);
}

TEST(HandoffWireTest, IrqfdRequest_RoundTrip) {
  IrqfdRequest request;
  request.id = 17;
  request.vm = "vm-v";
  request.gsi = 40;
  request.deassign = true;
  EXPECT_EQ(request.Encode(), "IRQFD 1 17 vm-v 40 deassign");
  EXPECT_TRUE(IsIrqfdRequest(request.Encode()));
  EXPECT_FALSE(IsIrqfdReply(request.Encode()));
  auto parsed = ParseIrqfdRequest("IRQFD 1 18 vm-v 5 assign");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->id, 18u);
  EXPECT_EQ(parsed->vm, "vm-v");
  EXPECT_EQ(parsed->gsi, 5u);
  EXPECT_FALSE(parsed->deassign);
  // Another version parses as far as its id, for the EPROTONOSUPPORT reply.
  parsed = ParseIrqfdRequest("IRQFD 2 19 whatever comes next");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->version, 2u);
  EXPECT_EQ(parsed->id, 19u);
  for (const char* text :
       {"IRQFD", "IRQFD 1", "IRQFD 1 0 vm-v 5 assign",
        "IRQFD 1 x vm-v 5 assign", "IRQFD 1 3 vm-v 5",
        "IRQFD 1 3 vm-v five assign", "IRQFD 1 3 vm-v 5 maybe"}) {
    EXPECT_EQ(ErrnoOf(ParseIrqfdRequest(text).status()), EINVAL) << text;
  }
}

TEST(HandoffWireTest, IrqfdReply_RoundTrip_KeepsErrnoAndMessage) {
  IrqfdReply ok;
  ok.id = 3;
  EXPECT_EQ(ok.Encode(), "IRQFD-REPLY 1 3 0");
  IrqfdReply err;
  err.id = 4;
  err.errno_value = EINVAL;
  err.message = "KVM_IRQFD: Invalid argument";
  EXPECT_EQ(err.Encode(), "IRQFD-REPLY 1 4 22 KVM_IRQFD: Invalid argument");
  EXPECT_TRUE(IsIrqfdReply(err.Encode()));
  auto parsed = ParseIrqfdReply(err.Encode());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->id, 4u);
  EXPECT_EQ(parsed->errno_value, EINVAL);
  EXPECT_EQ(parsed->message, "KVM_IRQFD: Invalid argument");
  for (const char* text : {"IRQFD-REPLY", "IRQFD-REPLY 1 4",
                           "IRQFD-REPLY 1 0 0", "IRQFD-REPLY 1 4 -1"}) {
    EXPECT_EQ(ErrnoOf(ParseIrqfdReply(text).status()), EINVAL) << text;
  }
}

class HandoffServerTest
    : public ::irqbypass::agent::testing::KvmBackendFixture {
 protected:
  void SetUp() override {
    KvmBackendFixture::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    // sun_path holds 107 bytes; TEST_TMPDIR can be longer.
    char dir[] = "/tmp/irqbypass-handoff-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/handoff.sock";
    StartServer({});
  }
  void TearDown() override {
    server_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
    KvmBackendFixture::TearDown();
  }
  void StartServer(absl::flat_hash_set<uid_t> uids, std::string sys = "/sys",
                   absl::flat_hash_set<gid_t> gids = {}) {
    server_.reset();
    HandoffServerOptions options;
    options.path = path_;
    options.node = "n1";
    options.allowed_uids = std::move(uids);
    options.allowed_gids = std::move(gids);
    options.fd_paths.sys = std::move(sys);
    auto server = HandoffServer::Start(options, *backend_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  // A VMM's VM: KVM_CREATE_VM + KVM_CREATE_IRQCHIP.
  Fd NewVmFd() {
    Fd vm(::ioctl(kvm_.get(), KVM_CREATE_VM, 0));
    EXPECT_TRUE(vm.valid());
    EXPECT_EQ(::ioctl(vm.get(), KVM_CREATE_IRQCHIP, 0), 0);
    return vm;
  }
  using KvmBackendFixture::Connect;
  // Connects `token`: the fixture's device at vector `gsi` into `vm`.
  StepResult Connect(const std::string& token, const std::string& vm,
                     uint32_t gsi) {
    return Connect(token,
                   ::irqbypass::testing::NodeProducer(
                       ::irqbypass::agent::testing::kFixtureDevice, gsi),
                   ::irqbypass::testing::NodeConsumer(vm, gsi));
  }

  std::unique_ptr<HandoffServer> server_;
  std::string dir_;
  std::string path_;
};

TEST_F(HandoffServerTest, VmHandedOver_Wired_VmmGoesAway_TornDownAndNotified) {
  auto client = HandoffClient::Connect(path_);
  ASSERT_TRUE(client.ok()) << client.status();
  Fd vm = NewVmFd();
  ASSERT_TRUE((*client)->HandOverVm("vmm-vm", vm.get(), true).ok());
  ASSERT_NE(backend_->FindVm("vmm-vm"), nullptr);
  ASSERT_TRUE(Connect("t1", "vmm-vm", 40).ok());
  std::shared_ptr<const Fd> eventfd = backend_->EventfdOf("t1");
  EXPECT_THAT(backend_->Inventory(), SizeIs(1));
  const int changes_before = changes_;

  client->reset();  // the VMM exits

  ASSERT_TRUE(
      Eventually([&] { return backend_->FindVm("vmm-vm") == nullptr; }));
  ASSERT_TRUE(Eventually([&] { return changes_ > changes_before; }));
  EXPECT_THAT(backend_->Inventory(), IsEmpty());
  // The kernel no longer holds the irqfd: the VMM's VM (still open here)
  // accepts the same eventfd again.
  kvm_irqfd request;
  std::memset(&request, 0, sizeof(request));
  request.fd = eventfd->get();
  request.gsi = 41;
  EXPECT_EQ(::ioctl(vm.get(), KVM_IRQFD, &request), 0) << std::strerror(errno);
}

TEST_F(HandoffServerTest, SameNameHandedOverAgain_OldWiringTornDown) {
  auto first = HandoffClient::Connect(path_);
  auto second = HandoffClient::Connect(path_);
  ASSERT_TRUE(first.ok() && second.ok());
  Fd vm1 = NewVmFd(), vm2 = NewVmFd();
  ASSERT_TRUE((*first)->HandOverVm("vm-a", vm1.get(), true).ok());
  ASSERT_TRUE(Connect("t1", "vm-a", 40).ok());
  ASSERT_TRUE((*second)->HandOverVm("vm-a", vm2.get(), true).ok());
  EXPECT_THAT(backend_->Inventory(), IsEmpty());
  EXPECT_EQ(backend_->FindVm("vm-a")->irqfd_count(), 0);
  // The first VMM leaving does not take the replacement with it.
  first->reset();
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_NE(backend_->FindVm("vm-a"), nullptr);
  EXPECT_TRUE(Connect("t1", "vm-a", 40).ok());
}

TEST_F(HandoffServerTest, Release_ExplicitByOwnerOnly) {
  auto owner = HandoffClient::Connect(path_);
  auto other = HandoffClient::Connect(path_);
  Fd vm = NewVmFd();
  ASSERT_TRUE((*owner)->HandOverVm("vm-a", vm.get(), false).ok());
  EXPECT_EQ(ErrnoOf((*other)->ReleaseVm("vm-a")), ENOENT);
  EXPECT_TRUE((*owner)->ReleaseVm("vm-a").ok());
  EXPECT_EQ(backend_->FindVm("vm-a"), nullptr);
}

TEST_F(HandoffServerTest, WrongFds_AgentErrnoReturned_ConnectionStaysUsable) {
  auto client = HandoffClient::Connect(path_);
  ASSERT_TRUE(client.ok());
  Fd not_a_vm(::eventfd(0, EFD_CLOEXEC));
  absl::Status s = (*client)->HandOverVm("vm-a", not_a_vm.get(), false);
  EXPECT_EQ(ErrnoOf(s), ENOTTY) << s;
  s = (*client)->HandOverDevice("0000:3b:00.2", not_a_vm.get());
  EXPECT_EQ(ErrnoOf(s), ENOTTY) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("not a VFIO device fd"));
  // A VM request without its fd.
  ASSERT_TRUE(SendHandoffPacket((*client)->socket(), "VM vm-a vmm", {}).ok());
  auto reply = ReceiveHandoffPacket((*client)->socket());
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(ErrnoOf(ParseHandoffReply(reply->text)), EINVAL) << reply->text;
  Fd vm = NewVmFd();
  EXPECT_TRUE((*client)->HandOverVm("vm-a", vm.get(), false).ok());
}

TEST_F(HandoffServerTest, UidNotAllowed_Eacces) {
  StartServer({::geteuid() + 4242});
  auto client = HandoffClient::Connect(path_);
  ASSERT_FALSE(client.ok());
  const absl::Status s = client.status();
  EXPECT_EQ(ErrnoOf(s), EACCES) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("not allowed"));
  EXPECT_EQ(backend_->FindVm("vm-a"), nullptr);
}

TEST_F(HandoffServerTest, UidNotAllowedButGidAllowed_Served) {
  StartServer({::geteuid() + 4242}, "/sys", {::getegid()});
  auto client = HandoffClient::Connect(path_);
  ASSERT_TRUE(client.ok()) << client.status();
  Fd vm = NewVmFd();
  EXPECT_TRUE((*client)->HandOverVm("vm-a", vm.get(), false).ok());
}

TEST_F(HandoffServerTest, SocketDirectoryOthersCouldWriteIn_Refused) {
  server_.reset();
  HandoffServerOptions options;
  options.path = path_;
  for (mode_t mode : {0777, 0775, 0770, 01777, 0757}) {
    SCOPED_TRACE(mode);
    ASSERT_EQ(::chmod(dir_.c_str(), mode), 0);
    auto server = HandoffServer::Start(options, *backend_);
    ASSERT_FALSE(server.ok());
    EXPECT_EQ(ErrnoOf(server.status()), EPERM) << server.status();
    EXPECT_THAT(std::string(server.status().message()),
                HasSubstr("writable by group or others"));
  }
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  // Another user's directory (tests run as root, which may chown).
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(dir_.c_str(), 4242, static_cast<gid_t>(-1)), 0);
    auto server = HandoffServer::Start(options, *backend_);
    ASSERT_FALSE(server.ok());
    EXPECT_THAT(std::string(server.status().message()),
                HasSubstr("belongs to uid 4242"));
    ASSERT_EQ(::chown(dir_.c_str(), 0, static_cast<gid_t>(-1)), 0);
  }
  // A directory above that others may write in, without the sticky bit.
  const std::string inner = dir_ + "/inner";
  ASSERT_EQ(::mkdir(inner.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(dir_.c_str(), 0777), 0);
  options.path = inner + "/handoff.sock";
  auto server = HandoffServer::Start(options, *backend_);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(std::string(server.status().message()),
              HasSubstr("without the sticky bit"));
  ASSERT_EQ(::chmod(dir_.c_str(), 01777), 0);  // sticky above: accepted
  server = HandoffServer::Start(options, *backend_);
  ASSERT_TRUE(server.ok()) << server.status();
  server->reset();
  ASSERT_EQ(::chmod(dir_.c_str(), 0700), 0);
  // Through a symlink: the socket is made in the directory it resolves to.
  const std::string link = dir_ + "/link";
  ASSERT_EQ(::symlink(inner.c_str(), link.c_str()), 0);
  options.path = link + "/handoff.sock";
  server = HandoffServer::Start(options, *backend_);
  ASSERT_TRUE(server.ok()) << server.status();
  struct stat st;
  EXPECT_EQ(::lstat((inner + "/handoff.sock").c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  server->reset();
  // A symlink on the path that others could replace: in a directory they
  // may write in, or their own.
  const std::string open_dir = dir_ + "/open";
  ASSERT_EQ(::mkdir(open_dir.c_str(), 0777), 0);
  ASSERT_EQ(::chmod(open_dir.c_str(), 0777), 0);
  const std::string open_link = open_dir + "/link";
  ASSERT_EQ(::symlink(inner.c_str(), open_link.c_str()), 0);
  options.path = open_link + "/handoff.sock";
  server = HandoffServer::Start(options, *backend_);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(std::string(server.status().message()),
              HasSubstr("the symlink " + open_link));
  if (::geteuid() == 0) {
    ASSERT_EQ(::lchown(link.c_str(), 4242, static_cast<gid_t>(-1)), 0);
    options.path = link + "/handoff.sock";
    server = HandoffServer::Start(options, *backend_);
    ASSERT_FALSE(server.ok());
    EXPECT_THAT(std::string(server.status().message()),
                HasSubstr("belongs to uid 4242"));
  }
}

// A socket at the agent's path served by someone else (a process of
// another uid that got there first): the client sends nothing to it.
TEST_F(HandoffServerTest, ClientRefusesASocketServedByAnotherUid) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run as another uid";
  server_.reset();
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);  // uid 4242 may look inside
  const std::string squat_dir = dir_ + "/squat";
  ASSERT_EQ(::mkdir(squat_dir.c_str(), 0777), 0);
  ASSERT_EQ(::chmod(squat_dir.c_str(), 0777), 0);
  const std::string squat = squat_dir + "/handoff.sock";
  int ready[2], heard[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(heard), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Only async-signal-safe calls from here on.
    if (::setgid(4242) != 0 || ::setuid(4242) != 0) ::_exit(1);
    const int listener = ::socket(AF_UNIX, SOCK_SEQPACKET, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, squat.c_str(), squat.size());
    if (::bind(listener, reinterpret_cast<sockaddr*>(&address),
               sizeof(address)) != 0 ||
        ::listen(listener, 4) != 0) {
      ::_exit(2);
    }
    (void)!::write(ready[1], "x", 1);
    // Greets whoever connects, as an agent would; reports on `heard` the
    // size of whatever the first connection sends before it closes.
    bool first = true;
    while (true) {
      const int peer = ::accept(listener, nullptr, nullptr);
      if (peer < 0) continue;
      (void)!::send(peer, "OK", 2, MSG_NOSIGNAL);
      if (first) {
        first = false;
        char buffer[64];
        const ssize_t n = ::recv(peer, buffer, sizeof(buffer), 0);
        const char got = n > 0 ? 'y' : 'n';
        (void)!::write(heard[1], &got, 1);
      }
    }
  }
  struct Reap {
    pid_t pid;
    ~Reap() {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reap{child};
  ::close(ready[1]);
  ::close(heard[1]);
  char byte;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1) << "the squatter did not listen";
  ::close(ready[0]);
  auto client = HandoffClient::Connect(squat);
  EXPECT_FALSE(client.ok());
  EXPECT_EQ(ErrnoOf(client.status()), EPERM) << client.status();
  EXPECT_THAT(std::string(client.status().message()),
              HasSubstr("served by uid 4242"));
  // The squatter saw the connection close with nothing sent.
  ASSERT_EQ(::read(heard[0], &byte, 1), 1);
  EXPECT_EQ(byte, 'n');
  ::close(heard[0]);
  // Unless that uid is named as the agent's.
  auto named = HandoffClient::Connect(squat, {4242});
  EXPECT_TRUE(named.ok()) << named.status();
}

// Connects to `path` from a child of uid and gid 4242 in `groups`: 'y' if
// greeted OK, 'n' if refused, 'x' if the child failed.
char GreetingAs(const std::string& path, const std::vector<gid_t>& groups) {
  int result[2];
  if (::pipe(result) != 0) return 'x';
  const pid_t child = ::fork();
  if (child < 0) return 'x';
  if (child == 0) {
    if (::setgroups(groups.size(), groups.data()) != 0 || ::setgid(4242) != 0 ||
        ::setuid(4242) != 0) {
      ::_exit(1);
    }
    const int socket = ::socket(AF_UNIX, SOCK_SEQPACKET, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, path.c_str(), path.size());
    char reply[64] = {};
    if (::connect(socket, reinterpret_cast<sockaddr*>(&address),
                  sizeof(address)) != 0 ||
        ::recv(socket, reply, sizeof(reply) - 1, 0) <= 0) {
      ::_exit(2);
    }
    const char got = reply[0] == 'O' && reply[1] == 'K' ? 'y' : 'n';
    (void)!::write(result[1], &got, 1);
    ::_exit(0);
  }
  ::close(result[1]);
  char got = 'x';
  if (::read(result[0], &got, 1) != 1) got = 'x';
  ::close(result[0]);
  ::waitpid(child, nullptr, 0);
  return got;
}

// A peer whose uid and effective gid are not allowed, but who is a member
// of an allowed supplementary group (SO_PEERGROUPS; 90 groups, more than
// the first getsockopt asks for, so it is retried with the size the kernel
// says).
TEST_F(HandoffServerTest, SupplementaryGroupAllowed_Served) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run as another uid";
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  StartServer({::geteuid()}, "/sys", {4300});
  std::vector<gid_t> groups;
  for (gid_t g = 4211; g <= 4300; ++g) groups.push_back(g);  // 4300 last
  EXPECT_EQ(GreetingAs(path_, groups), 'y');
  groups.pop_back();  // without 4300
  EXPECT_EQ(GreetingAs(path_, groups), 'n');
}

// sendmsg() of `text` with any number of fds (SendHandoffPacket caps them).
absl::Status SendRaw(int socket, const std::string& text,
                     const std::vector<int>& fds) {
  iovec iov{const_cast<char*>(text.data()), text.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  if (::sendmsg(socket, &msg, MSG_NOSIGNAL) < 0) {
    return ErrnoError(errno, "sendmsg");
  }
  return absl::OkStatus();
}

// Every hostile message a VMM could send: each is refused with its errno,
// nothing is added to the backend, every fd that came with it is closed (the
// process's open-fd count is what it was before it was sent), and the
// connection stays usable.
TEST_F(HandoffServerTest, HostileMessages_RefusedAndEveryFdClosed) {
  // A fake sysfs in which /dev/null's device number is the VFIO cdev of
  // device 0000:3b:00.2 (the kernel's way of naming a cdev's device).
  struct stat null_stat;
  ASSERT_EQ(::stat("/dev/null", &null_stat), 0);
  const std::string sys = dir_ + "/sys";
  const std::string cdev_dir =
      sys + "/devices/pci0000:00/0000:3b:00.2/vfio-dev/vfio0";
  std::filesystem::create_directories(cdev_dir);
  std::filesystem::create_directories(sys + "/dev/char");
  std::filesystem::create_directory_symlink(
      cdev_dir, sys + "/dev/char/" + std::to_string(major(null_stat.st_rdev)) +
                    ":" + std::to_string(minor(null_stat.st_rdev)));
  StartServer({}, sys);

  Fd event(::eventfd(0, EFD_CLOEXEC));
  Fd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  Fd zero(::open("/dev/zero", O_RDONLY | O_CLOEXEC));
  Fd path_only(::open("/dev/null", O_PATH | O_CLOEXEC));
  Fd kvm_system(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  Fd memfd(::memfd_create("hostile", MFD_CLOEXEC));
  Fd file(::open("/proc/self/status", O_RDONLY | O_CLOEXEC));
  int pipe_fds[2], pair[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  Fd pipe_read(pipe_fds[0]), pipe_write(pipe_fds[1]);
  Fd socket_a(pair[0]), socket_b(pair[1]);
  Fd vm = NewVmFd();
  for (const Fd* fd :
       {&event, &null, &zero, &path_only, &kvm_system, &memfd, &file}) {
    ASSERT_TRUE(fd->valid());
  }
  const int e = event.get();
  const std::vector<int> many(5, e), most(250, e);

  struct Case {
    std::string name;
    std::string text;
    std::vector<int> fds;
    int want_errno;
    std::string want_message;  // a part of the reply
  };
  const std::string kDev = "DEVICE 0000:3b:00.1";
  const std::vector<Case> cases = {
      {"device: eventfd", kDev, {e}, ENOTTY, "anon_inode:[eventfd]"},
      {"device: /dev/zero", kDev, {zero.get()}, ENOTTY, "/dev/zero"},
      {"device: O_PATH", kDev, {path_only.get()}, ENOTTY, "O_PATH"},
      {"device: /dev/kvm", kDev, {kvm_system.get()}, ENOTTY, "/dev/kvm"},
      {"device: a KVM VM", kDev, {vm.get()}, ENOTTY, "anon_inode:kvm-vm"},
      {"device: memfd", kDev, {memfd.get()}, ENOTTY, "memfd:hostile"},
      {"device: file", kDev, {file.get()}, ENOTTY, "status"},
      {"device: pipe", kDev, {pipe_read.get()}, ENOTTY, "pipe:["},
      {"device: socket", kDev, {socket_a.get()}, ENOTTY, "socket:["},
      // The cdev of 0000:3b:00.2 offered as 0000:3b:00.1: refused by the
      // kernel's name for it, before any ioctl.
      {"device: another device's cdev",
       kDev,
       {null.get()},
       EPERM,
       "is device \"0000:3b:00.2\""},
      // Named right, but no VFIO device answers VFIO_DEVICE_GET_INFO.
      {"device: right name, not VFIO",
       "DEVICE 0000:3b:00.2",
       {null.get()},
       ENOTTY,
       "VFIO_DEVICE_GET_INFO"},
      {"device: two fds", kDev, {e, null.get()}, EINVAL, "want 1 fd, got 2"},
      {"device: no fd", kDev, {}, EINVAL, "want 1 fd, got 0"},
      {"device: bad address",
       "DEVICE 0000:3b:00.9",
       {e},
       EINVAL,
       "bad PCI address"},
      {"vm: eventfd", "VM vm-h vmm", {e}, ENOTTY, "not a KVM VM fd"},
      {"vm: /dev/kvm", "VM vm-h agent", {kvm_system.get()}, ENOTTY, "/dev/kvm"},
      {"vm: O_PATH", "VM vm-h vmm", {path_only.get()}, ENOTTY, "O_PATH"},
      {"serve-vm with an fd",
       "SERVE-VM 1 vm-h",
       {e},
       EINVAL,
       "want 0 fd, got 1"},
      {"release with fds",
       "RELEASE-VM vm-h",
       {e, e, e},
       EINVAL,
       "want 0 fd, got 3"},
      {"unknown verb with an fd",
       "EXEC /bin/sh",
       {e},
       EINVAL,
       "unknown request"},
      {"empty with an fd", "", {e}, EINVAL, "unknown request"},
      {"name too long",
       "SERVE-VM 1 " + std::string(129, 'v'),
       {},
       EINVAL,
       "bad VM name"},
      {"5 fds (over the 4 a message may carry)", kDev, many, EMSGSIZE, "4 fds"},
      {"250 fds", kDev, most, EMSGSIZE, "4 fds"},
      {"2000 bytes with an fd",
       kDev + std::string(2000, 'x'),
       {e},
       EMSGSIZE,
       "1024 bytes"},
  };
  auto client = HandoffClient::Connect(path_);
  ASSERT_TRUE(client.ok()) << client.status();
  const int socket = (*client)->socket();
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const int before = OpenFdCount();
    ASSERT_TRUE(SendRaw(socket, c.text, c.fds).ok());
    auto reply = ReceiveHandoffPacket(socket);
    ASSERT_TRUE(reply.ok()) << reply.status();
    const absl::Status status = ParseHandoffReply(reply->text);
    EXPECT_EQ(ErrnoOf(status), c.want_errno) << reply->text;
    EXPECT_THAT(reply->text, HasSubstr(c.want_message));
    EXPECT_TRUE(reply->fds.empty());
    EXPECT_EQ(OpenFdCount(), before) << "an fd of the message stayed open";
  }
  // Character devices against the real /sys too (no fake device numbers).
  StartServer({}, "/sys");
  auto real = HandoffClient::Connect(path_);
  ASSERT_TRUE(real.ok()) << real.status();
  const std::string spoof_name = dir_ + "/anon_inode:[vfio-device]";
  Fd spoof(::open(spoof_name.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  ASSERT_TRUE(spoof.valid());
  for (const auto& [fd, what] :
       std::vector<std::pair<int, std::string>>{{null.get(), "/dev/null"},
                                                {zero.get(), "/dev/zero"},
                                                {kvm_system.get(), "/dev/kvm"},
                                                {spoof.get(), spoof_name}}) {
    SCOPED_TRACE(what);
    const int before = OpenFdCount();
    ASSERT_TRUE(SendRaw((*real)->socket(), kDev, {fd}).ok());
    auto reply = ReceiveHandoffPacket((*real)->socket());
    ASSERT_TRUE(reply.ok());
    EXPECT_EQ(ErrnoOf(ParseHandoffReply(reply->text)), ENOTTY) << reply->text;
    EXPECT_THAT(reply->text, HasSubstr(what + ", not a VFIO device fd"));
    EXPECT_EQ(OpenFdCount(), before);
  }
  real->reset();
  StartServer({}, sys);
  client = HandoffClient::Connect(path_);
  ASSERT_TRUE(client.ok()) << client.status();
  const int socket2 = (*client)->socket();

  // An IRQFD-REPLY (no reply is sent to one) carrying fds: closed too, as
  // the next request's answer shows.
  const int before = OpenFdCount();
  ASSERT_TRUE(SendRaw(socket2, "IRQFD-REPLY 1 77 0", {e, e}).ok());
  ASSERT_TRUE(SendRaw(socket2, "RELEASE-VM vm-h", {}).ok());
  auto reply = ReceiveHandoffPacket(socket2);
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(ErrnoOf(ParseHandoffReply(reply->text)), ENOENT) << reply->text;
  EXPECT_EQ(OpenFdCount(), before);

  EXPECT_EQ(backend_->FindVm("vm-h"), nullptr);
  EXPECT_EQ(backend_->FindIrqfdTarget("vm-h"), nullptr);
  EXPECT_EQ(backend_->FindDevice("0000:3b:00.2"), nullptr);
  // The fixture's (fake) device is still the one under its address.
  EXPECT_EQ(
      backend_->FindDevice(::irqbypass::agent::testing::kFixtureDevice).get(),
      device_);
  // The connection is still served.
  EXPECT_TRUE((*client)->HandOverVm("vm-h", vm.get(), false).ok());
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass
