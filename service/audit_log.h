// AuditLog: one JSON line per mutation (each Register*, Unregister* and
// Batch item) and per refused call, to its own file (--audit_log), apart
// from the process log. Fields, always in this order:
//
//   ts        UTC, millisecond precision (2026-12-03T12:00:00.000Z)
//   identity  the caller's certificate URI ("" with --insecure)
//   role      server|agent|orchestrator|reader|admin ("" with --insecure)
//   method    the RPC ("RegisterProducer"; "Batch[3]" for a batch item)
//   token     the token it names ("" if none)
//   node      the node it names ("" if none)
//   decision  "allowed" (the call ran; see code) or "denied"
//   code      the gRPC status code name it ended with (OK, NOT_FOUND, ...)
//   peer      the caller's address (ipv4:10.0.0.7:51234)
//
// Lines are written whole (one write each, O_APPEND), so several writers'
// lines never interleave. Refusals are rate-limited where they are noted
// (Authorizer), mutations are not. Thread-safe.
#ifndef IRQBYPASS_SERVICE_AUDIT_LOG_H_
#define IRQBYPASS_SERVICE_AUDIT_LOG_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace irqbypass {

struct AuditEntry {
  absl::string_view identity;
  absl::string_view role;
  absl::string_view method;
  absl::string_view token;
  absl::string_view node;
  bool denied = false;
  absl::StatusCode code = absl::StatusCode::kOk;
  absl::string_view peer;
};

class AuditLog {
 public:
  // Appends to `path` ("-": standard error), created with mode 0600.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(
      const std::string& path);
  ~AuditLog();

  void Write(const AuditEntry& entry) const;
  // The line Write writes (for tests), without the timestamp field's value.
  static std::string Format(const AuditEntry& entry, absl::string_view ts);

 private:
  AuditLog(int fd, bool owned) : fd_(fd), owned_(owned) {}
  const int fd_;
  const bool owned_;
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_AUDIT_LOG_H_
