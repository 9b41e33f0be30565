#include "agent/kvm/fd_identity.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "agent/errno_status.h"

namespace irqbypass {
namespace agent {
namespace {

// readlink() of `path`; "" if it cannot be read.
std::string ReadLink(const std::string& path) {
  char buffer[PATH_MAX];
  errno = 0;
  const ssize_t n = ::readlink(path.c_str(), buffer, sizeof(buffer));
  if (n <= 0) return "";
  return std::string(buffer, static_cast<size_t>(n));
}

// realpath() of `path`; "" if it does not resolve.
std::string RealPath(const std::string& path) {
  char buffer[PATH_MAX];
  if (::realpath(path.c_str(), buffer) == nullptr) return "";
  return buffer;
}

}  // namespace

absl::string_view FdKindName(FdKind kind) {
  switch (kind) {
    case FdKind::kEventfd:
      return "eventfd";
    case FdKind::kKvmVm:
      return "KVM VM fd";
    case FdKind::kVfioDevice:
      return "VFIO device fd";
    case FdKind::kOther:
      break;
  }
  return "other";
}

FdKind KindOfLink(absl::string_view link) {
  if (link == "anon_inode:[eventfd]") return FdKind::kEventfd;
  if (link == "anon_inode:kvm-vm") return FdKind::kKvmVm;
  if (link == "anon_inode:[vfio-device]") return FdKind::kVfioDevice;
  return FdKind::kOther;
}

std::string FdinfoField(absl::string_view fdinfo, absl::string_view key) {
  for (absl::string_view line : absl::StrSplit(fdinfo, '\n')) {
    if (!absl::ConsumePrefix(&line, key) || !absl::ConsumePrefix(&line, ":")) {
      continue;
    }
    return std::string(absl::StripAsciiWhitespace(line));
  }
  return "";
}

std::string PciAddressOfSysfsPath(absl::string_view path) {
  std::vector<absl::string_view> parts =
      absl::StrSplit(path, '/', absl::SkipEmpty());
  if (parts.empty()) return "";
  // A cdev's directory: .../<address>/vfio-dev/vfioN
  if (parts.size() >= 3 && parts[parts.size() - 2] == "vfio-dev" &&
      absl::StartsWith(parts.back(), "vfio")) {
    return std::string(parts[parts.size() - 3]);
  }
  return std::string(parts.back());
}

absl::StatusOr<FdIdentity> IdentifyFd(int fd, const FdIdentityPaths& paths) {
  FdIdentity identity;
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return ErrnoError(errno, "fcntl(F_GETFL) of a received fd");
  identity.path_only = (flags & O_PATH) != 0;
  const std::string link_path = absl::StrCat(paths.proc_self, "/fd/", fd);
  identity.description = ReadLink(link_path);
  if (identity.description.empty()) {
    const int err = errno != 0 ? errno : EIO;
    return ErrnoError(
        err, absl::StrCat("readlink ", link_path, " (is /proc mounted?)"));
  }
  identity.kind = KindOfLink(identity.description);
  if (identity.path_only) return identity;
  if (identity.kind == FdKind::kVfioDevice) {
    // Unreadable fdinfo is an error, not "the kernel does not say" (which
    // would fall back to a weaker check).
    const std::string fdinfo_path =
        absl::StrCat(paths.proc_self, "/fdinfo/", fd);
    std::ifstream in(fdinfo_path);
    std::stringstream text;
    if (!in || !(text << in.rdbuf()) || text.str().empty()) {
      return ErrnoErrorWithMessage(
          EIO, absl::StrCat(fdinfo_path, " cannot be read"));
    }
    identity.sysfs_path = FdinfoField(text.str(), "vfio-device-syspath");
    return identity;
  }
  if (identity.kind != FdKind::kOther) return identity;
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode)) return identity;
  // A character device: is it a VFIO device cdev (the vfio-dev class)?
  const std::string sysfs = RealPath(absl::StrCat(
      paths.sys, "/dev/char/", major(st.st_rdev), ":", minor(st.st_rdev)));
  const std::vector<absl::string_view> parts =
      absl::StrSplit(sysfs, '/', absl::SkipEmpty());
  if (parts.size() >= 3 && parts[parts.size() - 2] == "vfio-dev" &&
      absl::StartsWith(parts.back(), "vfio")) {
    identity.kind = FdKind::kVfioDevice;
    identity.sysfs_path = sysfs;
  }
  return identity;
}

}  // namespace agent
}  // namespace irqbypass
