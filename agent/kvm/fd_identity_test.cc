// IdentifyFd on the kinds of fd a VMM could pass, and the parsers of what
// the kernel says (fdinfo, sysfs paths).
#include "agent/kvm/fd_identity.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "agent/kvm/fd.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace irqbypass {
namespace agent {
namespace {

using ::testing::HasSubstr;

FdIdentity Identify(int fd, const FdIdentityPaths& paths = {}) {
  absl::StatusOr<FdIdentity> identity = IdentifyFd(fd, paths);
  EXPECT_TRUE(identity.ok()) << identity.status();
  return identity.ok() ? *identity : FdIdentity{};
}

TEST(FdIdentityTest, KindsByTheKernelsName) {
  Fd event(::eventfd(0, EFD_CLOEXEC));
  EXPECT_EQ(Identify(event.get()).kind, FdKind::kEventfd);
  EXPECT_EQ(Identify(event.get()).description, "anon_inode:[eventfd]");

  Fd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  FdIdentity id = Identify(null.get());
  EXPECT_EQ(id.kind, FdKind::kOther);
  EXPECT_EQ(id.description, "/dev/null");
  EXPECT_FALSE(id.path_only);

  Fd path_only(::open("/dev/null", O_PATH | O_CLOEXEC));
  EXPECT_TRUE(Identify(path_only.get()).path_only);

  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  Fd read_end(fds[0]), write_end(fds[1]);
  EXPECT_EQ(Identify(read_end.get()).kind, FdKind::kOther);
  EXPECT_THAT(Identify(read_end.get()).description, HasSubstr("pipe:["));

  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  Fd a(fds[0]), b(fds[1]);
  EXPECT_EQ(Identify(a.get()).kind, FdKind::kOther);

  Fd memfd(::memfd_create("x", MFD_CLOEXEC));
  EXPECT_EQ(Identify(memfd.get()).kind, FdKind::kOther);
}

TEST(FdIdentityTest, KvmVmFd) {
  Fd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!kvm.valid()) GTEST_SKIP() << "no /dev/kvm";
  EXPECT_EQ(Identify(kvm.get()).kind, FdKind::kOther);  // the system fd
  Fd vm(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
  ASSERT_TRUE(vm.valid());
  EXPECT_EQ(Identify(vm.get()).kind, FdKind::kKvmVm);
}

TEST(FdIdentityTest, ClosedFd_Error) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_FALSE(IdentifyFd(fds[0]).ok());
}

// A VFIO device cdev is known by its device number's sysfs link; a fake
// sysfs in which /dev/null's number is one shows the lookup (the device
// number, not the path the fd was opened by).
TEST(FdIdentityTest, VfioCdev_ByDeviceNumberInSysfs) {
  char dir[] = "/tmp/irqbypass-fdid-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string sys = std::string(dir) + "/sys";
  struct stat st;
  ASSERT_EQ(::stat("/dev/null", &st), 0);
  const std::string number = std::to_string(major(st.st_rdev)) + ":" +
                             std::to_string(minor(st.st_rdev));
  std::filesystem::create_directories(sys + "/dev/char");
  Fd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  // Not (yet) a vfio-dev device there: other.
  const std::string other = sys + "/devices/virtual/mem/null";
  std::filesystem::create_directories(other);
  std::filesystem::create_directory_symlink(other, sys + "/dev/char/" + number);
  EXPECT_EQ(Identify(null.get(), {"/proc/self", sys}).kind, FdKind::kOther);

  std::filesystem::remove(sys + "/dev/char/" + number);
  const std::string cdev =
      sys + "/devices/pci0000:00/0000:00:03.0/0000:3b:00.1/vfio-dev/vfio7";
  std::filesystem::create_directories(cdev);
  std::filesystem::create_directory_symlink(cdev, sys + "/dev/char/" + number);
  const FdIdentity id = Identify(null.get(), {"/proc/self", sys});
  EXPECT_EQ(id.kind, FdKind::kVfioDevice);
  EXPECT_EQ(id.sysfs_path, std::filesystem::canonical(cdev).string());
  EXPECT_EQ(PciAddressOfSysfsPath(id.sysfs_path), "0000:3b:00.1");
  std::filesystem::remove_all(dir);
}

TEST(FdIdentityTest, KindOfLink_ExactNamesOnly) {
  EXPECT_EQ(KindOfLink("anon_inode:[eventfd]"), FdKind::kEventfd);
  EXPECT_EQ(KindOfLink("anon_inode:kvm-vm"), FdKind::kKvmVm);
  EXPECT_EQ(KindOfLink("anon_inode:[vfio-device]"), FdKind::kVfioDevice);
  for (const char* link :
       {"anon_inode:[eventfd]x", "/anon_inode:kvm-vm", "anon_inode:kvm-vcpu:0",
        "/dev/vfio/devices/vfio0", "anon_inode:[vfio-device] (deleted)", ""}) {
    EXPECT_EQ(KindOfLink(link), FdKind::kOther) << link;
  }
}

TEST(FdIdentityTest, FdinfoField) {
  // The layout of a VFIO device fd's fdinfo since Linux 6.18.
  const std::string fdinfo =
      "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1057\n"
      "vfio-device-syspath: /sys/devices/pci0000:e0/0000:e0:01.1/"
      "0000:e8:00.0\n";
  EXPECT_EQ(FdinfoField(fdinfo, "vfio-device-syspath"),
            "/sys/devices/pci0000:e0/0000:e0:01.1/0000:e8:00.0");
  EXPECT_EQ(FdinfoField(fdinfo, "flags"), "02000002");
  EXPECT_EQ(FdinfoField(fdinfo, "vfio-device"), "");
  EXPECT_EQ(FdinfoField("pos:\t0\n", "vfio-device-syspath"), "");
}

TEST(FdIdentityTest, PciAddressOfSysfsPath) {
  EXPECT_EQ(PciAddressOfSysfsPath(
                "/sys/devices/pci0000:e0/0000:e0:01.1/0000:e8:00.0"),
            "0000:e8:00.0");
  EXPECT_EQ(PciAddressOfSysfsPath("/sys/devices/pci0000:00/0000:3b:00.1/"
                                  "vfio-dev/vfio3"),
            "0000:3b:00.1");
  EXPECT_EQ(PciAddressOfSysfsPath(""), "");
}

TEST(FdIdentityTest, KindNames) {
  EXPECT_EQ(FdKindName(FdKind::kVfioDevice), "VFIO device fd");
  EXPECT_EQ(FdKindName(FdKind::kOther), "other");
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass
