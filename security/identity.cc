#include "security/identity.h"

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace irqbypass::security {

namespace {

constexpr absl::string_view kScheme = "spiffe://";
constexpr absl::string_view kProduct = "irqbypass";

struct RoleEntry {
  Role role;
  absl::string_view name;
};
constexpr RoleEntry kRoles[] = {{Role::kServer, "server"},
                                {Role::kAgent, "agent"},
                                {Role::kOrchestrator, "orchestrator"},
                                {Role::kReader, "reader"},
                                {Role::kAdmin, "admin"}};

}  // namespace

absl::string_view RoleName(Role role) {
  for (const RoleEntry& e : kRoles) {
    if (e.role == role) return e.name;
  }
  return "unknown";
}

bool ValidTrustDomain(absl::string_view trust_domain) {
  if (trust_domain.empty() || trust_domain.size() > 255) return false;
  for (char c : trust_domain) {
    if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '.' ||
          c == '-' || c == '_')) {
      return false;
    }
  }
  return true;
}

bool ValidIdentityName(absl::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  if (name == "." || name == "..") return false;  // not a SPIFFE path segment
  for (char c : name) {
    if (!(absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

absl::StatusOr<Identity> ParseIdentity(absl::string_view uri,
                                       absl::string_view trust_domain) {
  auto bad = [&](absl::string_view why) {
    return absl::UnauthenticatedError(
        absl::StrCat("certificate identity \"", uri, "\": ", why,
                     " (want spiffe://", trust_domain, "/", kProduct,
                     "/{server,agent,orchestrator,reader,admin}/NAME)"));
  };
  absl::string_view rest = uri;
  if (!absl::ConsumePrefix(&rest, kScheme)) return bad("not a spiffe:// URI");
  const std::vector<absl::string_view> parts = absl::StrSplit(rest, '/');
  if (parts.size() != 4) return bad("not DOMAIN/irqbypass/ROLE/NAME");
  if (parts[0] != trust_domain) {
    return bad(absl::StrCat("trust domain \"", parts[0], "\" is not ours"));
  }
  if (parts[1] != kProduct) return bad("not an irqbypass identity");
  Identity id;
  bool known = false;
  for (const RoleEntry& e : kRoles) {
    if (e.name == parts[2]) {
      id.role = e.role;
      known = true;
    }
  }
  if (!known) return bad(absl::StrCat("unknown role \"", parts[2], "\""));
  if (!ValidIdentityName(parts[3])) {
    return bad("the name must be 1..253 characters of [A-Za-z0-9._-]");
  }
  id.name = std::string(parts[3]);
  id.uri = std::string(uri);
  return id;
}

std::string IdentityUri(absl::string_view trust_domain, Role role,
                        absl::string_view name) {
  return absl::StrCat(kScheme, trust_domain, "/", kProduct, "/", RoleName(role),
                      "/", name);
}

}  // namespace irqbypass::security
