// Authorizer: who may call what on irqbypassd, from the identity in the
// caller's certificate (security/identity.h), checked at the start of
// every call:
//
//   read  (GetBinding, ListBindings, WatchBindings, ListNodes, GetNode):
//         reader, orchestrator, admin
//   write (Register*, Unregister*, Batch): orchestrator, admin
//   agent (AgentControl/Session): an agent, for its own node only
//
// Health and reflection take any authenticated caller. With --insecure
// there is no identity: every caller is let through as admin "insecure"
// and an agent stream may claim any node (what --insecure gives up).
// Refusals are counted per method and reason, and logged at most a few
// times a second (a flood of them cannot flood the log). Thread-safe.
#ifndef IRQBYPASS_SERVICE_AUTHORIZER_H_
#define IRQBYPASS_SERVICE_AUTHORIZER_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/log_limiter.h"
#include "grpcpp/server_context.h"
#include "security/identity.h"

namespace irqbypass {

enum class Access { kRead, kWrite, kAgent };

class Authorizer {
 public:
  // `insecure`: plaintext, no identities (see above).
  Authorizer(bool insecure, std::string trust_domain);

  // The caller's identity if it may make a call of `access` to `method`
  // ("GetBinding"); UNAUTHENTICATED (no identity) or PERMISSION_DENIED
  // naming the method, the roles it takes and the caller otherwise.
  absl::StatusOr<security::Identity> Check(
      const grpc::ServerContextBase& context, Access access,
      absl::string_view method) const;

  // The caller's identity, whatever its role (the agent stream checks the
  // node itself).
  absl::StatusOr<security::Identity> Caller(
      const grpc::ServerContextBase& context) const;

  bool insecure() const { return insecure_; }
  // Refusals so far (all methods).
  uint64_t denied() const { return denied_.load(std::memory_order_relaxed); }

  // Logs a refusal, at most kLogsPerSecond a second; the next line says how
  // many were left out. Counts it.
  void NoteDenied(absl::string_view method, const absl::Status& why,
                  absl::string_view peer) const;
  static constexpr int kLogsPerSecond = 10;

 private:
  const bool insecure_;
  const std::string trust_domain_;
  mutable std::atomic<uint64_t> denied_{0};
  mutable LogLimiter log_limiter_{kLogsPerSecond};
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_AUTHORIZER_H_
