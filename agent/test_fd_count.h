// Test support: how many file descriptors this process has open, to prove
// that wiring and teardown leak none. Thread-compatible.
#ifndef IRQBYPASS_AGENT_TEST_FD_COUNT_H_
#define IRQBYPASS_AGENT_TEST_FD_COUNT_H_

#include <dirent.h>

namespace irqbypass::agent {

// Entries of /proc/self/fd, not counting the directory handle used to read
// them; -1 if it cannot be read.
inline int OpenFdCount() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int count = 0;
  while (dirent* entry = ::readdir(dir)) count += entry->d_name[0] != '.';
  ::closedir(dir);
  return count - 1;
}

}  // namespace irqbypass::agent

#endif  // IRQBYPASS_AGENT_TEST_FD_COUNT_H_
