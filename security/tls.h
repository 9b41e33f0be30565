// Mutual TLS for every gRPC connection of the product: irqbypassd requires
// and verifies a client certificate; agents and clients verify the
// server's. Certificates are read by gRPC's file-watching provider, so a
// rotated certificate, key or CA bundle is picked up without a restart
// (within `refresh`); new connections use it, open ones keep theirs.
//
// Each side also checks the peer's identity (identity.h) at the handshake:
// exactly one URI SAN, in our trust domain, of a role the side accepts (a
// server accepts agents, orchestrators, readers and admins; a client only
// a server). A peer that fails this never gets a call through.
#ifndef IRQBYPASS_SECURITY_TLS_H_
#define IRQBYPASS_SECURITY_TLS_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/security/auth_context.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "security/identity.h"

namespace irqbypass::security {

struct TlsOptions {
  std::string cert_file;  // PEM: this process's certificate (chain)
  std::string key_file;   // PEM: its private key
  std::string ca_file;    // PEM: the CA bundle peers are verified against
  std::string trust_domain = "irqbypass.local";
  // How often the files are re-read.
  absl::Duration refresh = absl::Seconds(10);
};

// Reads the files now (so a start fails with a clear error rather than
// every handshake later): the certificate parses, the key is its key, the
// CA bundle holds a certificate, and the certificate's identity is in the
// trust domain with one of `roles`. The identity, or INVALID_ARGUMENT /
// FAILED_PRECONDITION naming the file and what is wrong.
absl::StatusOr<Identity> CheckOwnCertificate(const TlsOptions& options,
                                             const std::vector<Role>& roles);

// irqbypassd's credentials: TLS, client certificate required and verified
// against the CA, identity of an agent, orchestrator, reader or admin.
std::shared_ptr<grpc::ServerCredentials> ServerCredentials(
    const TlsOptions& options);

// A client's (agent, irqbypassctl, the client library): TLS with this
// process's certificate, the server's verified against the CA and its
// identity required to be a server of the trust domain (no host name
// check: replicas are reached by address).
std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials(
    const TlsOptions& options);

// TLS to etcd, whose certificates come from etcd's PKI, not the fleet's:
// the members' certificates are verified against `ca_file`, and the one
// answering must name one of `hosts` (the hosts dialled: service/
// etcd_store.h EtcdDialledHosts) in a DNS or IP subject alternative name,
// as etcd's own clients require (no common-name fallback); a refusal is
// logged (at most a line a second). `cert_file` and `key_file` (both or
// neither) are the client certificate a member started with --client-cert-auth
// asks for. All files are re-read every `refresh`.
struct EtcdTlsOptions {
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  std::vector<std::string> hosts;
  absl::Duration refresh = absl::Seconds(10);
};

// Which file a failed certificate check is about (its message names the
// file too): callers map it to their flag.
enum class TlsFile { kCertificate, kKey, kCa };
// Null for a failure that is about no one file.
std::optional<TlsFile> TlsFileAtFault(const absl::Status& status);

// Reads the files now: the CA bundle holds a certificate; the client
// certificate parses, is not expired and `key_file` is its key.
// INVALID_ARGUMENT / FAILED_PRECONDITION naming the file otherwise.
absl::Status CheckEtcdTlsFiles(const EtcdTlsOptions& options);

// Whether the certificate in `pem` names one of `hosts` (an IP address, in
// brackets or not, or a DNS name, a trailing dot ignored) in a subject
// alternative name: by OpenSSL's X509_check_ip_asc / X509_check_host, IP
// hosts only by IP SANs, names only by DNS SANs, a wildcard only as the
// whole leftmost label, never by the common name. Exposed for tests.
bool CertificateNamesAHost(absl::string_view pem,
                           const std::vector<std::string>& hosts);

std::shared_ptr<grpc::ChannelCredentials> EtcdChannelCredentials(
    const EtcdTlsOptions& options);

// The identity of the peer of a call on a TLS connection (verified at the
// handshake); UNAUTHENTICATED if it has none (a plaintext connection).
absl::StatusOr<Identity> PeerIdentity(const grpc::AuthContext& auth,
                                      absl::string_view trust_domain);

}  // namespace irqbypass::security

#endif  // IRQBYPASS_SECURITY_TLS_H_
