// Which file a path names now: its inode and change time. A socket that is
// deleted and created again may get the same inode back, never the same
// change time, so the pair tells a re-created kubelet socket from the old.
#ifndef IRQBYPASS_AGENT_DEVICEPLUGIN_FILE_ID_H_
#define IRQBYPASS_AGENT_DEVICEPLUGIN_FILE_ID_H_

#include <sys/stat.h>

#include <cstdint>
#include <optional>
#include <string>

namespace irqbypass::agent {

struct FileId {
  ino_t inode = 0;
  int64_t ctime_ns = 0;
  bool operator==(const FileId& o) const {
    return inode == o.inode && ctime_ns == o.ctime_ns;
  }
  bool operator!=(const FileId& o) const { return !(*this == o); }
};

// nullopt when `path` does not exist (or cannot be stat'ed).
inline std::optional<FileId> IdentifyFile(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileId{st.st_ino,
                static_cast<int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 +
                    st.st_ctim.tv_nsec};
}

}  // namespace irqbypass::agent

#endif  // IRQBYPASS_AGENT_DEVICEPLUGIN_FILE_ID_H_
