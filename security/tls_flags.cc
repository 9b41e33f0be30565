#include "security/tls_flags.h"

#include <cstdio>
#include <cstdlib>
#include <optional>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/log.h"

ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate (chain) of this process; its one URI SAN is its "
          "identity: spiffe://TRUST_DOMAIN/irqbypass/ROLE/NAME. Re-read "
          "every --tls_refresh, so a rotated file takes effect without a "
          "restart.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM bundle of the CA certificates peers are verified against.");
ABSL_FLAG(std::string, trust_domain, "irqbypass.local",
          "The trust domain of every identity (the host part of the "
          "spiffe:// URIs).");
ABSL_FLAG(absl::Duration, tls_refresh, absl::Seconds(10),
          "How often --tls_cert, --tls_key and --tls_ca are re-read.");
ABSL_FLAG(bool, insecure, false,
          "Plaintext, no certificates: no identity, so no authorization "
          "(anyone who reaches the port may do anything). For a laptop, "
          "never for a fleet.");

namespace irqbypass::security {

absl::StatusOr<TlsSetup> TlsFromFlags(const std::vector<Role>& own_roles) {
  TlsSetup setup;
  const std::string cert = absl::GetFlag(FLAGS_tls_cert);
  const std::string key = absl::GetFlag(FLAGS_tls_key);
  const std::string ca = absl::GetFlag(FLAGS_tls_ca);
  const bool any = !cert.empty() || !key.empty() || !ca.empty();
  // Read with --insecure too: other certificates (irqbypassd's to etcd)
  // are refreshed as often.
  setup.options.refresh = absl::GetFlag(FLAGS_tls_refresh);
  if (setup.options.refresh < absl::Seconds(1)) {
    return absl::InvalidArgumentError(
        "--tls_refresh: want a duration of at least 1s");
  }
  if (absl::GetFlag(FLAGS_insecure)) {
    if (any) {
      return absl::InvalidArgumentError(
          "--insecure: plaintext takes no --tls_cert, --tls_key or --tls_ca");
    }
    setup.insecure = true;
    return setup;
  }
  if (!any) {
    return absl::InvalidArgumentError(
        "--tls_cert: mutual TLS needs --tls_cert, --tls_key and --tls_ca "
        "(scripts/pki.sh makes a throwaway set); --insecure for plaintext");
  }
  for (const auto& [flag, value] :
       {std::pair<const char*, const std::string&>{"--tls_cert", cert},
        {"--tls_key", key},
        {"--tls_ca", ca}}) {
    if (value.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag,
                       ": missing (mutual TLS needs --tls_cert, "
                       "--tls_key and --tls_ca)"));
    }
  }
  setup.options.cert_file = cert;
  setup.options.key_file = key;
  setup.options.ca_file = ca;
  setup.options.trust_domain = absl::GetFlag(FLAGS_trust_domain);
  if (!ValidTrustDomain(setup.options.trust_domain)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--trust_domain: \"", setup.options.trust_domain,
                     "\": want 1..255 characters of [a-z0-9.-_]"));
  }
  absl::StatusOr<Identity> own = CheckOwnCertificate(setup.options, own_roles);
  if (!own.ok()) {
    const std::optional<TlsFile> file = TlsFileAtFault(own.status());
    const char* flag = file == TlsFile::kKey  ? "--tls_key"
                       : file == TlsFile::kCa ? "--tls_ca"
                                              : "--tls_cert";
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", own.status().message()));
  }
  setup.own = *std::move(own);
  return setup;
}

TlsSetup TlsFromFlagsOrExit(const char* program,
                            const std::vector<Role>& own_roles) {
  absl::StatusOr<TlsSetup> setup = TlsFromFlags(own_roles);
  if (!setup.ok()) {
    std::fprintf(stderr, "%s: %s\n", program,
                 std::string(setup.status().message()).c_str());
    std::exit(2);
  }
  if (setup->insecure) {
    LogWarn(
        "--insecure: plaintext, no certificates and no authorization; "
        "anyone who can reach this process's port can read and change "
        "everything",
        {{"program", program}});
  } else {
    LogInfo("mutual TLS", {{"program", program},
                           {"identity", setup->own.uri},
                           {"ca", setup->options.ca_file}});
  }
  return *std::move(setup);
}

bool InsecureFlag() { return absl::GetFlag(FLAGS_insecure); }

bool IsTlsFlagsFile(const std::string& path) {
  return absl::EndsWith(path, "security/tls_flags.cc");
}

}  // namespace irqbypass::security
