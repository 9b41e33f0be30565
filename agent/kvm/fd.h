// Fd: an owning file descriptor. Every descriptor the agent opens or receives
// (/dev/kvm, VM fds, eventfds, VFIO device fds, handoff sockets) lives in one,
// so no error path can leak it: the destructor closes it. Move-only.
//
// Thread-safety: like an int; a const Fd may be read from any thread, a
// mutated one must not be shared.
#ifndef IRQBYPASS_AGENT_KVM_FD_H_
#define IRQBYPASS_AGENT_KVM_FD_H_

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace irqbypass {
namespace agent {

class Fd {
 public:
  Fd() = default;
  // Takes ownership of `fd` (-1: empty).
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

  // Gives up ownership without closing; the Fd becomes empty.
  [[nodiscard]] int release() { return std::exchange(fd_, -1); }

  // Closes the current descriptor (if any) and takes `fd`. close(2) errors are
  // ignored on purpose: the descriptor is gone either way (Linux), and none of
  // ours buffers data.
  void reset(int fd = -1) {
    if (fd_ >= 0) {
      const int saved_errno = errno;  // callers may still report errno
      ::close(fd_);
      errno = saved_errno;
    }
    fd_ = fd;
  }

  // A second descriptor for the same open file, close-on-exec; empty with
  // errno set on failure.
  Fd Duplicate() const { return DuplicateOf(fd_); }
  // The same for a descriptor this process holds elsewhere (not owned).
  static Fd DuplicateOf(int fd) {
    if (fd < 0) {
      errno = EBADF;
      return Fd();
    }
    return Fd(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  }

 private:
  int fd_ = -1;
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_KVM_FD_H_
