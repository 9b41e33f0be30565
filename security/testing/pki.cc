#include "security/testing/pki.h"

#include <cstdio>
#include <filesystem>
#include <utility>

#include "tests/process.h"

namespace irqbypass::security::testing {

namespace {

std::string PkiScript() {
  return irqbypass::testing::BinaryPath("scripts/pki.sh");
}

}  // namespace

Pki::Pki(std::string dir) : dir_(std::move(dir)) {
  std::filesystem::create_directories(dir_);
  const auto result =
      irqbypass::testing::RunCommand("/bin/bash", {PkiScript(), "ca", dir_});
  if (result.exit_code != 0) {
    std::fprintf(stderr, "pki.sh ca failed: %s\n", result.err.c_str());
  }
}

TlsOptions Pki::Issue(const std::string& file_name,
                      const std::vector<std::string>& uris, int days) const {
  std::vector<std::string> args = {
      PkiScript(), "issue", dir_, dir_, file_name, std::to_string(days)};
  args.insert(args.end(), uris.begin(), uris.end());
  const auto result = irqbypass::testing::RunCommand("/bin/bash", args);
  TlsOptions options;
  options.trust_domain = kTrustDomain;
  options.refresh = absl::Seconds(1);
  options.ca_file = ca_file();
  if (result.exit_code != 0) {
    std::fprintf(stderr, "pki.sh issue failed: %s\n", result.err.c_str());
    return options;
  }
  options.cert_file = dir_ + "/" + file_name + ".pem";
  options.key_file = dir_ + "/" + file_name + ".key";
  return options;
}

TlsOptions Pki::For(Role role, const std::string& name) const {
  return Issue(std::string(RoleName(role)) + "-" + name,
               {IdentityUri(kTrustDomain, role, name)});
}

}  // namespace irqbypass::security::testing
