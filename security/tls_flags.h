// The TLS flags every binary shares (--tls_cert, --tls_key, --tls_ca,
// --trust_domain, --tls_refresh, --insecure) and what they make: mutual TLS
// by default; plaintext only with an explicit --insecure.
#ifndef IRQBYPASS_SECURITY_TLS_FLAGS_H_
#define IRQBYPASS_SECURITY_TLS_FLAGS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "security/identity.h"
#include "security/tls.h"

namespace irqbypass::security {

struct TlsSetup {
  bool insecure = false;
  TlsOptions options;  // unset with insecure, but for refresh
  Identity own;        // this process's identity (unset with insecure)
};

// From the flags: --insecure alone, or all three files (checked now with
// CheckOwnCertificate: this process's certificate must have one of
// `own_roles`). INVALID_ARGUMENT whose message starts with the flag at fault
// ("--tls_cert: ..."), e.g. when neither is given.
absl::StatusOr<TlsSetup> TlsFromFlags(const std::vector<Role>& own_roles);

// The same, or prints "PROGRAM: MESSAGE" and exits 2 (a usage error). With
// --insecure, logs a warning saying what it gives up.
TlsSetup TlsFromFlagsOrExit(const char* program,
                            const std::vector<Role>& own_roles);

// --insecure's value now.
bool InsecureFlag();

// Whether `path` is this file (for the binaries' --help filters).
bool IsTlsFlagsFile(const std::string& path);

}  // namespace irqbypass::security

#endif  // IRQBYPASS_SECURITY_TLS_FLAGS_H_
