#include "security/tls.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/log_limiter.h"
#include "grpc/grpc_security_constants.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_certificate_verifier.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace irqbypass::security {

namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyFree>;

std::vector<std::string> UrisOf(X509* cert) {
  std::vector<std::string> out;
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names == nullptr) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    if (name->type != GEN_URI) continue;
    const ASN1_IA5STRING* s = name->d.uniformResourceIdentifier;
    out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                     static_cast<size_t>(ASN1_STRING_length(s)));
  }
  GENERAL_NAMES_free(names);
  return out;
}

std::string RoleList(const std::vector<Role>& roles) {
  std::vector<std::string> names;
  for (Role r : roles) names.emplace_back(RoleName(r));
  return absl::StrJoin(names, ", ");
}

// The one identity in `uris`, if of one of `roles`; UNAUTHENTICATED else.
absl::StatusOr<Identity> IdentityOf(const std::vector<std::string>& uris,
                                    absl::string_view trust_domain,
                                    const std::vector<Role>& roles) {
  if (uris.size() != 1) {
    return absl::UnauthenticatedError(absl::StrCat(
        "a certificate must carry exactly one URI subject alternative name "
        "(its identity); this one has ",
        uris.size()));
  }
  absl::StatusOr<Identity> id = ParseIdentity(uris[0], trust_domain);
  if (!id.ok()) return id.status();
  if (std::find(roles.begin(), roles.end(), id->role) == roles.end()) {
    return absl::UnauthenticatedError(
        absl::StrCat("certificate identity \"", id->uri, "\" has role ",
                     RoleName(id->role), "; want ", RoleList(roles)));
  }
  return id;
}

// Checks the peer's identity at the handshake, after gRPC has verified
// its chain against the CA.
class IdentityVerifier final
    : public grpc::experimental::ExternalCertificateVerifier {
 public:
  IdentityVerifier(std::string trust_domain, std::vector<Role> roles)
      : trust_domain_(std::move(trust_domain)), roles_(std::move(roles)) {}

  bool Verify(grpc::experimental::TlsCustomVerificationCheckRequest* request,
              std::function<void(grpc::Status)> /*callback*/,
              grpc::Status* sync_status) override {
    std::vector<std::string> uris;
    for (const grpc::string_ref& uri : request->uri_names()) {
      uris.emplace_back(uri.data(), uri.size());
    }
    absl::StatusOr<Identity> id = IdentityOf(uris, trust_domain_, roles_);
    *sync_status = id.ok() ? grpc::Status::OK
                           : grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                                          std::string(id.status().message()));
    return true;  // answered synchronously
  }
  void Cancel(grpc::experimental::TlsCustomVerificationCheckRequest*) override {
  }

 private:
  const std::string trust_domain_;
  const std::vector<Role> roles_;
};

// Checks that an etcd member's certificate (its chain verified by gRPC)
// names one of the endpoints' hosts.
class EtcdHostVerifier final
    : public grpc::experimental::ExternalCertificateVerifier {
 public:
  explicit EtcdHostVerifier(std::vector<std::string> hosts)
      : hosts_(std::move(hosts)) {}

  bool Verify(grpc::experimental::TlsCustomVerificationCheckRequest* request,
              std::function<void(grpc::Status)> /*callback*/,
              grpc::Status* sync_status) override {
    const grpc::string_ref pem = request->peer_cert();
    if (CertificateNamesAHost(absl::string_view(pem.data(), pem.size()),
                              hosts_)) {
      *sync_status = grpc::Status::OK;
      return true;
    }
    const std::string why = absl::StrCat(
        "the etcd member's certificate names none of the hosts dialled (",
        absl::StrJoin(hosts_, ", "),
        ") in a DNS or IP subject alternative "
        "name");
    // A handshake per retry: at most a line a second.
    static LogLimiter* const limiter = new LogLimiter(1);
    uint64_t left_out = 0;
    if (limiter->Allow(&left_out)) {
      LogWarn("etcd member refused",
              {{"error", why}, {"left_out", absl::StrCat(left_out)}});
    }
    *sync_status = grpc::Status(grpc::StatusCode::UNAUTHENTICATED, why);
    return true;
  }
  void Cancel(grpc::experimental::TlsCustomVerificationCheckRequest*) override {
  }

 private:
  const std::vector<std::string> hosts_;
};

std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> Provider(
    const TlsOptions& options) {
  const int64_t seconds =
      std::max<int64_t>(1, absl::ToInt64Seconds(options.refresh));
  return std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      options.key_file, options.cert_file, options.ca_file,
      static_cast<unsigned int>(seconds));
}

const std::vector<Role>& ClientRoles() {
  static const std::vector<Role>* roles = new std::vector<Role>{
      Role::kAgent, Role::kOrchestrator, Role::kReader, Role::kAdmin};
  return *roles;
}

constexpr absl::string_view kTlsFilePayload = "irqbypass/tls-file";

// `status`, marked as being about `file` (TlsFileAtFault).
absl::Status About(TlsFile file, absl::Status status) {
  status.SetPayload(kTlsFilePayload,
                    absl::Cord(std::string(1, static_cast<char>(file))));
  return status;
}

// The certificate in `cert_file`, whose key `key_file` holds, not expired;
// INVALID_ARGUMENT / FAILED_PRECONDITION naming the file otherwise.
absl::StatusOr<X509Ptr> LoadCertificateAndKey(const std::string& cert_file,
                                              const std::string& key_file) {
  BioPtr cert_bio(BIO_new_file(cert_file.c_str(), "r"));
  if (cert_bio == nullptr) {
    return About(TlsFile::kCertificate,
                 absl::FailedPreconditionError(absl::StrCat(
                     "certificate file \"", cert_file, "\" cannot be read")));
  }
  X509Ptr cert(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
  if (cert == nullptr) {
    return About(TlsFile::kCertificate, absl::InvalidArgumentError(absl::StrCat(
                                            "certificate file \"", cert_file,
                                            "\" holds no PEM certificate")));
  }
  BioPtr key_bio(BIO_new_file(key_file.c_str(), "r"));
  if (key_bio == nullptr) {
    return About(TlsFile::kKey,
                 absl::FailedPreconditionError(absl::StrCat(
                     "key file \"", key_file, "\" cannot be read")));
  }
  KeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return About(TlsFile::kKey,
                 absl::InvalidArgumentError(absl::StrCat(
                     "key file \"", key_file, "\" holds no PEM private key")));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return About(TlsFile::kKey,
                 absl::InvalidArgumentError(absl::StrCat(
                     "key file \"", key_file,
                     "\" is not the key of certificate \"", cert_file, "\"")));
  }
  if (X509_cmp_current_time(X509_get0_notAfter(cert.get())) < 0) {
    return About(TlsFile::kCertificate,
                 absl::FailedPreconditionError(absl::StrCat(
                     "certificate \"", cert_file, "\" has expired")));
  }
  return cert;
}

// `ca_file` holds a PEM certificate.
absl::Status CheckCaFile(const std::string& ca_file) {
  BioPtr ca_bio(BIO_new_file(ca_file.c_str(), "r"));
  if (ca_bio == nullptr) {
    return About(TlsFile::kCa,
                 absl::FailedPreconditionError(
                     absl::StrCat("CA file \"", ca_file, "\" cannot be read")));
  }
  X509Ptr ca(PEM_read_bio_X509(ca_bio.get(), nullptr, nullptr, nullptr));
  if (ca == nullptr) {
    return About(TlsFile::kCa,
                 absl::InvalidArgumentError(absl::StrCat(
                     "CA file \"", ca_file, "\" holds no PEM certificate")));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Identity> CheckOwnCertificate(const TlsOptions& options,
                                             const std::vector<Role>& roles) {
  if (!ValidTrustDomain(options.trust_domain)) {
    return absl::InvalidArgumentError(
        absl::StrCat("trust domain \"", options.trust_domain,
                     "\": want 1..255 characters of [a-z0-9.-_]"));
  }
  absl::StatusOr<X509Ptr> cert =
      LoadCertificateAndKey(options.cert_file, options.key_file);
  if (!cert.ok()) return cert.status();
  if (absl::Status s = CheckCaFile(options.ca_file); !s.ok()) return s;
  absl::StatusOr<Identity> id =
      IdentityOf(UrisOf(cert->get()), options.trust_domain, roles);
  if (!id.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "certificate \"", options.cert_file, "\": ", id.status().message()));
  }
  return id;
}

std::shared_ptr<grpc::ServerCredentials> ServerCredentials(
    const TlsOptions& options) {
  grpc::experimental::TlsServerCredentialsOptions tls(Provider(options));
  tls.watch_root_certs();
  tls.watch_identity_key_cert_pairs();
  tls.set_cert_request_type(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  tls.set_certificate_verifier(
      grpc::experimental::ExternalCertificateVerifier::Create<IdentityVerifier>(
          options.trust_domain, ClientRoles()));
  return grpc::experimental::TlsServerCredentials(tls);
}

std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials(
    const TlsOptions& options) {
  grpc::experimental::TlsChannelCredentialsOptions tls;
  tls.set_certificate_provider(Provider(options));
  tls.watch_root_certs();
  tls.watch_identity_key_cert_pairs();
  tls.set_verify_server_certs(true);
  tls.set_check_call_host(false);
  tls.set_certificate_verifier(
      grpc::experimental::ExternalCertificateVerifier::Create<IdentityVerifier>(
          options.trust_domain, std::vector<Role>{Role::kServer}));
  return grpc::experimental::TlsCredentials(tls);
}

bool CertificateNamesAHost(absl::string_view pem,
                           const std::vector<std::string>& hosts) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) return false;
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (cert == nullptr) return false;
  for (std::string host : hosts) {
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
      host = host.substr(1, host.size() - 2);
    }
    if (!host.empty() && host.back() == '.') host.pop_back();
    if (host.empty()) continue;
    in6_addr ip;
    if (::inet_pton(AF_INET, host.c_str(), &ip) == 1 ||
        ::inet_pton(AF_INET6, host.c_str(), &ip) == 1) {
      if (X509_check_ip_asc(cert.get(), host.c_str(), 0) == 1) return true;
      continue;
    }
    if (X509_check_host(cert.get(), host.data(), host.size(),
                        X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
                            X509_CHECK_FLAG_NEVER_CHECK_SUBJECT,
                        nullptr) == 1) {
      return true;
    }
  }
  return false;
}

std::optional<TlsFile> TlsFileAtFault(const absl::Status& status) {
  const absl::optional<absl::Cord> file = status.GetPayload(kTlsFilePayload);
  if (!file.has_value() || file->size() != 1) return std::nullopt;
  switch (static_cast<TlsFile>(std::string(*file)[0])) {
    case TlsFile::kCertificate:
      return TlsFile::kCertificate;
    case TlsFile::kKey:
      return TlsFile::kKey;
    case TlsFile::kCa:
      return TlsFile::kCa;
  }
  return std::nullopt;
}

absl::Status CheckEtcdTlsFiles(const EtcdTlsOptions& options) {
  if (absl::Status s = CheckCaFile(options.ca_file); !s.ok()) return s;
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs both its certificate and its key file");
  }
  if (options.cert_file.empty()) return absl::OkStatus();
  return LoadCertificateAndKey(options.cert_file, options.key_file).status();
}

std::shared_ptr<grpc::ChannelCredentials> EtcdChannelCredentials(
    const EtcdTlsOptions& options) {
  const unsigned int seconds = static_cast<unsigned int>(
      std::max<int64_t>(1, absl::ToInt64Seconds(options.refresh)));
  grpc::experimental::TlsChannelCredentialsOptions tls;
  if (options.cert_file.empty()) {
    tls.set_certificate_provider(
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            options.ca_file, seconds));
  } else {
    tls.set_certificate_provider(
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            options.key_file, options.cert_file, options.ca_file, seconds));
    tls.watch_identity_key_cert_pairs();
  }
  tls.watch_root_certs();
  tls.set_verify_server_certs(true);
  // The target of several members is "ipv4:a,b,c": no one host name to
  // check the call against; the verifier checks each member's instead.
  tls.set_check_call_host(false);
  tls.set_certificate_verifier(
      grpc::experimental::ExternalCertificateVerifier::Create<EtcdHostVerifier>(
          options.hosts));
  return grpc::experimental::TlsCredentials(tls);
}

absl::StatusOr<Identity> PeerIdentity(const grpc::AuthContext& auth,
                                      absl::string_view trust_domain) {
  if (!auth.IsPeerAuthenticated()) {
    return absl::UnauthenticatedError(
        "no client certificate: the connection is not mutual TLS");
  }
  // The verified leaf certificate's URI SANs (gRPC sets one property each).
  std::vector<std::string> uris;
  for (const grpc::string_ref& uri :
       auth.FindPropertyValues(GRPC_PEER_URI_PROPERTY_NAME)) {
    uris.emplace_back(uri.data(), uri.size());
  }
  return IdentityOf(uris, trust_domain, ClientRoles());
}

}  // namespace irqbypass::security
