#include "tests/test_tls.h"

namespace irqbypass::testing {

namespace {

std::string Key(security::Role role, const std::string& name) {
  return std::string(security::RoleName(role)) + "/" + name;
}

}  // namespace

TestTls::TestTls(const std::string& dir, bool insecure)
    : insecure_(insecure), pki_(dir) {}

security::TlsOptions TestTls::Certificate(security::Role role,
                                          const std::string& name) {
  auto it = certificates_.find(Key(role, name));
  if (it == certificates_.end()) {
    it = certificates_.emplace(Key(role, name), pki_.For(role, name)).first;
  }
  return it->second;
}

std::vector<std::string> TestTls::Flags(const security::TlsOptions& tls) const {
  if (insecure_) return {"--insecure"};
  return {"--tls_cert=" + tls.cert_file, "--tls_key=" + tls.key_file,
          "--tls_ca=" + tls.ca_file, "--trust_domain=" + tls.trust_domain,
          "--tls_refresh=1s"};
}

std::vector<std::string> TestTls::Flags(security::Role role,
                                        const std::string& name) {
  return Flags(Certificate(role, name));
}

std::shared_ptr<grpc::ChannelCredentials> TestTls::Credentials(
    security::Role role, const std::string& name) {
  if (insecure_) return grpc::InsecureChannelCredentials();
  auto& credentials = credentials_[Key(role, name)];
  if (credentials == nullptr) {
    credentials = security::ChannelCredentials(Certificate(role, name));
  }
  return credentials;
}

}  // namespace irqbypass::testing
