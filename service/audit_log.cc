#include "service/audit_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/json_string.h"

namespace irqbypass {

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(
    const std::string& path) {
  if (path == "-") {
    return std::unique_ptr<AuditLog>(new AuditLog(STDERR_FILENO, false));
  }
  const int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("\"", path, "\": ", std::strerror(errno)));
  }
  return std::unique_ptr<AuditLog>(new AuditLog(fd, true));
}

AuditLog::~AuditLog() {
  if (owned_) ::close(fd_);
}

std::string AuditLog::Format(const AuditEntry& e, absl::string_view ts) {
  std::string line;
  line.reserve(256);
  auto field = [&line](absl::string_view name, absl::string_view value) {
    line.append(line.empty() ? "{" : ",");
    AppendJsonString(&line, name);
    line.push_back(':');
    AppendJsonString(&line, value);
  };
  field("ts", ts);
  field("identity", e.identity);
  field("role", e.role);
  field("method", e.method);
  field("token", e.token);
  field("node", e.node);
  field("decision", e.denied ? "denied" : "allowed");
  field("code", absl::StatusCodeToString(e.code));
  field("peer", e.peer);
  line.append("}\n");
  return line;
}

void AuditLog::Write(const AuditEntry& entry) const {
  const std::string line =
      Format(entry, absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                                     absl::UTCTimeZone()));
  // One write: with O_APPEND the line lands whole. A short or failed write
  // (disk full) is not retried: the service must not stall on its audit.
  const ssize_t n = ::write(fd_, line.data(), line.size());
  (void)n;
}

}  // namespace irqbypass
