// Test support: a throwaway certificate authority (scripts/pki.sh, openssl)
// in a test's folder, and certificates from it for any identity, including
// the broken ones a hostile peer would present. Not thread-safe.
#ifndef IRQBYPASS_SECURITY_TESTING_PKI_H_
#define IRQBYPASS_SECURITY_TESTING_PKI_H_

#include <string>
#include <vector>

#include "security/identity.h"
#include "security/tls.h"

namespace irqbypass::security::testing {

inline constexpr char kTrustDomain[] = "irqbypass.test";

class Pki {
 public:
  // A new CA in `dir` (created).
  explicit Pki(std::string dir);

  const std::string& dir() const { return dir_; }
  std::string ca_file() const { return dir_ + "/ca.pem"; }

  // A certificate named `file_name` with `uris` as its URI SANs ("DNS:x"
  // and "IP:x" entries are DNS and IP SANs: scripts/pki.sh), valid for
  // `days` (0: expired a second later): the TlsOptions to use it with this
  // CA. Empty cert_file if openssl failed.
  TlsOptions Issue(const std::string& file_name,
                   const std::vector<std::string>& uris, int days = 30) const;
  // The usual one: a single URI for (role, name) in kTrustDomain.
  TlsOptions For(Role role, const std::string& name) const;

 private:
  std::string dir_;
};

}  // namespace irqbypass::security::testing

#endif  // IRQBYPASS_SECURITY_TESTING_PKI_H_
