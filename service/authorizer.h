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
// Refusals are counted, and logged at most 10 times a second per method (a
// flood of them cannot flood the log, nor hide another method's).
// Thread-safe.
#ifndef IRQBYPASS_SERVICE_AUTHORIZER_H_
#define IRQBYPASS_SERVICE_AUTHORIZER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/log_limiter.h"
#include "common/mutex.h"
#include "grpcpp/server_context.h"
#include "security/identity.h"
#include "service/audit_log.h"

namespace irqbypass {

enum class Access { kRead, kWrite, kAgent };

class Authorizer {
 public:
  // `insecure`: plaintext, no identities (see above). `rate_per_second`
  // (0: no limit): the calls one identity may start a second, with bursts
  // of up to a second's worth; past it a call is RESOURCE_EXHAUSTED.
  Authorizer(bool insecure, std::string trust_domain,
             double rate_per_second = 0);

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

  // Logs a refusal, at most kLogsPerSecond a second for `method`; the next
  // line says how many were left out. Counts it.
  // `who`: the caller, if it has an identity. Also an audit line, when
  // there is an audit log (SetAuditLog).
  void NoteDenied(absl::string_view method, const absl::Status& why,
                  absl::string_view peer,
                  const security::Identity* who = nullptr) const;
  // Refusals also go to `audit` (may be null); set before serving.
  void SetAuditLog(const AuditLog* audit) { audit_ = audit; }
  static constexpr int kLogsPerSecond = 10;

 private:
  // Whether `identity` may start another call now (token bucket).
  bool TakeRate(const std::string& identity) const;

  const bool insecure_;
  const std::string trust_domain_;
  const double rate_;
  const AuditLog* audit_ = nullptr;
  struct Bucket {
    double tokens = 0;
    int64_t at_ns = 0;
  };
  mutable Mutex rate_mu_;
  mutable absl::flat_hash_map<std::string, Bucket> buckets_
      ABSL_GUARDED_BY(rate_mu_);
  mutable std::atomic<uint64_t> denied_{0};
  // One budget per method (a flood of refused writes does not hide a
  // refused agent session).
  mutable KeyedLogLimiter log_limiters_{kLogsPerSecond};
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_AUTHORIZER_H_
