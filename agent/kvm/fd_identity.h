// What a file descriptor received from another process is, found without an
// ioctl on it: an ioctl number means something else to another driver, so the
// agent sends a VFIO or KVM ioctl only to an fd the kernel names as such.
//
// The kernel names an fd in three places, none of which the sender controls:
//   * /proc/self/fd/N, readlink: an anonymous inode's class
//     ("anon_inode:[eventfd]", "anon_inode:kvm-vm",
//     "anon_inode:[vfio-device]" for a device fd from
//     VFIO_GROUP_GET_DEVICE_FD), or a path, "pipe:[..]", "socket:[..]";
//   * fstat(): a character device's number, which /sys/dev/char/MAJ:MIN
//     resolves to its sysfs directory: a VFIO device cdev
//     (/dev/vfio/devices/vfioN, whatever name or mknod it was opened by)
//     resolves to ".../<pci-address>/vfio-dev/vfioN";
//   * /proc/self/fdinfo/N: since Linux 6.18 a VFIO device fd's line
//     "vfio-device-syspath: /sys/devices/.../<pci-address>".
// An fd opened O_PATH is named like the file but serves no ioctl: it is
// reported as such (path_only) and refused by every check.
//
// Thread-safety: the functions are pure or read only /proc and /sys.
#ifndef IRQBYPASS_AGENT_KVM_FD_IDENTITY_H_
#define IRQBYPASS_AGENT_KVM_FD_IDENTITY_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace irqbypass {
namespace agent {

enum class FdKind {
  kOther,       // anything else: a file, pipe, socket, memfd, /dev/kvm...
  kEventfd,     // anon_inode:[eventfd]
  kKvmVm,       // anon_inode:kvm-vm (KVM_CREATE_VM)
  kVfioDevice,  // anon_inode:[vfio-device], or a VFIO device cdev
};

// "eventfd", "KVM VM fd", "VFIO device fd", "other".
absl::string_view FdKindName(FdKind kind);

// Where the kernel's views are (tests point them at a fake tree).
struct FdIdentityPaths {
  std::string proc_self = "/proc/self";
  std::string sys = "/sys";
};

struct FdIdentity {
  FdKind kind = FdKind::kOther;
  // What the kernel calls it (the /proc/self/fd link: "/dev/null",
  // "pipe:[1216504]", "anon_inode:kvm-vm"), for messages.
  std::string description;
  bool path_only = false;  // opened O_PATH: no ioctl works on it
  // kVfioDevice: the device's sysfs directory when the kernel names it
  // (fdinfo since 6.18, or the cdev's sysfs link); empty otherwise.
  std::string sysfs_path;
};

// Identifies `fd`. An error (with the errno) if `fd` is not open, or /proc
// (its fd link, or a VFIO device fd's fdinfo) cannot be read.
absl::StatusOr<FdIdentity> IdentifyFd(int fd,
                                      const FdIdentityPaths& paths = {});

// The pure parts, exposed for tests.
// The kind of an anonymous-inode link text ("anon_inode:[eventfd]");
// kOther for anything else.
FdKind KindOfLink(absl::string_view link);
// The value of "key:" in an fdinfo text (leading blanks dropped), or "".
std::string FdinfoField(absl::string_view fdinfo, absl::string_view key);
// The device a VFIO device's sysfs path names: the last component of a
// device directory (".../0000:e2:05.0/0000:e8:00.0" -> "0000:e8:00.0"), or
// the component before "vfio-dev/vfioN" of a cdev's. Compared by callers
// with the PCI address claimed.
std::string PciAddressOfSysfsPath(absl::string_view path);

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_KVM_FD_IDENTITY_H_
