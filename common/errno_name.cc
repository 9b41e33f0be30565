#include "common/errno_name.h"

#include <cerrno>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace irqbypass {
namespace {

struct ErrnoEntry {
  int value;
  const char* name;
};

constexpr ErrnoEntry kErrnos[] = {
    {EPERM, "EPERM"},
    {ENOENT, "ENOENT"},
    {ESRCH, "ESRCH"},
    {EINTR, "EINTR"},
    {EIO, "EIO"},
    {ENXIO, "ENXIO"},
    {E2BIG, "E2BIG"},
    {EBADF, "EBADF"},
    {EAGAIN, "EAGAIN"},
    {ENOMEM, "ENOMEM"},
    {EACCES, "EACCES"},
    {EFAULT, "EFAULT"},
    {EBUSY, "EBUSY"},
    {EEXIST, "EEXIST"},
    {ENODEV, "ENODEV"},
    {ENOTDIR, "ENOTDIR"},
    {EINVAL, "EINVAL"},
    {ENFILE, "ENFILE"},
    {EMFILE, "EMFILE"},
    {ENOTTY, "ENOTTY"},
    {ENOSPC, "ENOSPC"},
    {ERANGE, "ERANGE"},
    {ENOSYS, "ENOSYS"},
    {ENOTSUP, "ENOTSUP"},
    {ETIMEDOUT, "ETIMEDOUT"},
    {ECONNRESET, "ECONNRESET"},
    {ENOTCONN, "ENOTCONN"},
    {ESHUTDOWN, "ESHUTDOWN"},
    {ECANCELED, "ECANCELED"},
};

}  // namespace

std::string ErrnoName(int err) {
  for (const auto& e : kErrnos) {
    if (e.value == err) return e.name;
  }
  return absl::StrCat("E", err);
}

int ErrnoFromName(absl::string_view name) {
  for (const auto& e : kErrnos) {
    if (name == e.name) return e.value;
  }
  int v = 0;
  if (absl::SimpleAtoi(name, &v) && v > 0) return v;
  return 0;
}

}  // namespace irqbypass
