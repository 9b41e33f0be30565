// Test support: the certificates of a test's processes, from a throwaway CA
// (security/testing/pki.h) in a folder of the test: each (role, name) is
// issued once, with the flags and the channel credentials that use it; or,
// for an insecure setup, --insecure and plaintext. Not thread-safe.
#ifndef IRQBYPASS_TESTS_TEST_TLS_H_
#define IRQBYPASS_TESTS_TEST_TLS_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "grpcpp/security/credentials.h"
#include "security/identity.h"
#include "security/testing/pki.h"
#include "security/tls.h"

namespace irqbypass::testing {

class TestTls {
 public:
  TestTls(const std::string& dir, bool insecure);

  bool insecure() const { return insecure_; }
  security::TlsOptions Certificate(security::Role role,
                                   const std::string& name);
  // The flags that make a binary use (role, name)'s certificate, or
  // --insecure.
  std::vector<std::string> Flags(security::Role role, const std::string& name);
  std::vector<std::string> Flags(const security::TlsOptions& tls) const;
  // Channel credentials of (role, name), made once (each set watches its
  // files with a thread of its own); plaintext if insecure.
  std::shared_ptr<grpc::ChannelCredentials> Credentials(
      security::Role role, const std::string& name);

 private:
  const bool insecure_;
  security::testing::Pki pki_;
  std::map<std::string, security::TlsOptions> certificates_;
  std::map<std::string, std::shared_ptr<grpc::ChannelCredentials>> credentials_;
};

}  // namespace irqbypass::testing

#endif  // IRQBYPASS_TESTS_TEST_TLS_H_
