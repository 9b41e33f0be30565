// Who a peer is, from its certificate: exactly one URI subject alternative
// name of the form
//
//   spiffe://<trust-domain>/irqbypass/<role>/<name>
//
// where <role> is server (an irqbypassd replica), agent (<name> is the node
// it runs on), orchestrator, reader or admin. Nothing in a message can
// change a peer's identity; there is no fallback to the common name.
#ifndef IRQBYPASS_SECURITY_IDENTITY_H_
#define IRQBYPASS_SECURITY_IDENTITY_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace irqbypass::security {

enum class Role { kServer, kAgent, kOrchestrator, kReader, kAdmin };

// "server", "agent", "orchestrator", "reader", "admin".
absl::string_view RoleName(Role role);

struct Identity {
  Role role = Role::kReader;
  std::string name;  // the node, for an agent
  std::string uri;   // as in the certificate
};

// A trust domain: 1..255 characters of [a-z0-9.-_].
bool ValidTrustDomain(absl::string_view trust_domain);
// An identity's name: 1..253 characters of [A-Za-z0-9._-], not "." or "..".
bool ValidIdentityName(absl::string_view name);

// The identity `uri` names in `trust_domain`; UNAUTHENTICATED saying what
// is wrong (another trust domain, an unknown role, a bad name).
absl::StatusOr<Identity> ParseIdentity(absl::string_view uri,
                                       absl::string_view trust_domain);

// The URI for (role, name) in `trust_domain`.
std::string IdentityUri(absl::string_view trust_domain, Role role,
                        absl::string_view name);

}  // namespace irqbypass::security

#endif  // IRQBYPASS_SECURITY_IDENTITY_H_
