#include "service/authorizer.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "security/tls.h"

namespace irqbypass {

using security::Identity;
using security::Role;

namespace {

bool Allowed(Access access, Role role) {
  switch (access) {
    case Access::kRead:
      return role == Role::kReader || role == Role::kOrchestrator ||
             role == Role::kAdmin;
    case Access::kWrite:
      return role == Role::kOrchestrator || role == Role::kAdmin;
    case Access::kAgent:
      return role == Role::kAgent;
  }
  return false;
}

absl::string_view Needs(Access access) {
  switch (access) {
    case Access::kRead:
      return "reader, orchestrator or admin";
    case Access::kWrite:
      return "orchestrator or admin";
    case Access::kAgent:
      return "agent";
  }
  return "";
}

}  // namespace

Authorizer::Authorizer(bool insecure, std::string trust_domain,
                       double rate_per_second)
    : insecure_(insecure),
      trust_domain_(std::move(trust_domain)),
      rate_(rate_per_second) {}

bool Authorizer::TakeRate(const std::string& identity) const {
  if (rate_ <= 0) return true;
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  MutexLock lock(&rate_mu_);
  auto [it, fresh] = buckets_.try_emplace(identity);
  Bucket& b = it->second;
  if (fresh) {
    b.tokens = rate_;  // a full second's worth to start with
  } else {
    b.tokens = std::min(rate_, b.tokens + (now - b.at_ns) * 1e-9 * rate_);
  }
  b.at_ns = now;
  if (b.tokens < 1) return false;
  b.tokens -= 1;
  return true;
}

absl::StatusOr<Identity> Authorizer::Caller(
    const grpc::ServerContextBase& context) const {
  if (insecure_) {
    Identity anyone;
    anyone.role = Role::kAdmin;
    anyone.name = "insecure";
    return anyone;
  }
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr) {
    return absl::UnauthenticatedError("no authentication context");
  }
  return security::PeerIdentity(*auth, trust_domain_);
}

absl::StatusOr<Identity> Authorizer::Check(
    const grpc::ServerContextBase& context, Access access,
    absl::string_view method) const {
  absl::StatusOr<Identity> id = Caller(context);
  if (!id.ok()) {
    NoteDenied(method, id.status(), context.peer());
    return id;
  }
  if (insecure_) return id;  // (no identity: no per-identity limit)
  if (Allowed(access, id->role)) {
    if (TakeRate(id->uri)) return id;
    absl::Status limited = absl::ResourceExhaustedError(absl::StrCat(
        method, ": the caller \"", id->uri, "\" started more than ", rate_,
        " calls a second (--rate_limit_per_identity); slow down"));
    NoteDenied(method, limited, context.peer(), &*id);
    return limited;
  }
  absl::Status denied = absl::PermissionDeniedError(
      absl::StrCat(method, " takes the role ", Needs(access), "; the caller \"",
                   id->uri, "\" is ", security::RoleName(id->role)));
  NoteDenied(method, denied, context.peer(), &*id);
  return denied;
}

void Authorizer::NoteDenied(absl::string_view method, const absl::Status& why,
                            absl::string_view peer,
                            const security::Identity* who) const {
  denied_.fetch_add(1, std::memory_order_relaxed);
  uint64_t left_out = 0;
  if (!log_limiters_.Allow(method, &left_out)) return;
  if (audit_ != nullptr) {
    AuditEntry entry;
    if (who != nullptr) {
      entry.identity = who->uri;
      entry.role = security::RoleName(who->role);
    }
    entry.method = method;
    entry.denied = true;
    entry.code = why.code();
    entry.peer = peer;
    audit_->Write(entry);
  }
  LogWarn("call refused", {{"method", std::string(method)},
                           {"code", absl::StatusCodeToString(why.code())},
                           {"peer", std::string(peer)},
                           {"reason", std::string(why.message())},
                           {"refusals_not_logged", absl::StrCat(left_out)}});
}

}  // namespace irqbypass
