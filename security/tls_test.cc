// Mutual TLS on loopback with real certificates (scripts/pki.sh): who gets
// through the handshake, what identity a call sees, rotation without a
// restart, and the start-up checks of a process's own certificate.
#include "security/tls.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/time/time.h"
#include "common/testing/eventually.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "gtest/gtest.h"
#include "protos/irqbypass/v1/irqbypass.grpc.pb.h"
#include "security/testing/pki.h"

namespace irqbypass::security {
namespace {

using testing::kTrustDomain;
using testing::Pki;

// Answers GetBinding with the caller's identity as the token (or the
// reason it has none as the status).
class WhoAmI final : public v1::BypassManager::CallbackService {
  grpc::ServerUnaryReactor* GetBinding(grpc::CallbackServerContext* context,
                                       const v1::GetBindingRequest*,
                                       v1::Binding* response) override {
    auto* reactor = context->DefaultReactor();
    absl::StatusOr<Identity> id =
        PeerIdentity(*context->auth_context(), kTrustDomain);
    if (!id.ok()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                                   std::string(id.status().message())));
    } else {
      response->set_token(std::string(RoleName(id->role)) + ":" + id->name);
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }
};

std::string TestDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  return std::string(tmp != nullptr ? tmp : "/tmp") + "/" + name;
}

class TlsTest : public ::testing::Test {
 protected:
  TlsTest() : pki_(TestDir("ca1")), other_ca_(TestDir("ca2")) {}

  void SetUp() override {
    server_tls_ = pki_.For(Role::kServer, "irqbypassd");
    ASSERT_FALSE(server_tls_.cert_file.empty());
    StartServer(server_tls_);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }
  void StartServer(const TlsOptions& tls) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", ServerCredentials(tls), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  // GetBinding over a new channel with `credentials`: the token it
  // answers (the identity), or the status.
  absl::StatusOr<std::string> Call(
      std::shared_ptr<grpc::ChannelCredentials> credentials) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a new connection
    auto stub = v1::BypassManager::NewStub(grpc::CreateCustomChannel(
        "127.0.0.1:" + std::to_string(port_), credentials, args));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(5));
    v1::Binding binding;
    grpc::Status s = stub->GetBinding(&ctx, v1::GetBindingRequest(), &binding);
    if (!s.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                          s.error_message());
    }
    return binding.token();
  }
  absl::StatusOr<std::string> CallAs(const TlsOptions& tls) {
    return Call(ChannelCredentials(tls));
  }

  Pki pki_;
  Pki other_ca_;
  TlsOptions server_tls_;
  WhoAmI service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(TlsTest, EachRole_SeenAsItsCertificateSays) {
  for (Role role :
       {Role::kAgent, Role::kOrchestrator, Role::kReader, Role::kAdmin}) {
    auto who = CallAs(pki_.For(role, "n1"));
    ASSERT_TRUE(who.ok()) << RoleName(role) << ": " << who.status();
    EXPECT_EQ(*who, std::string(RoleName(role)) + ":n1");
  }
}

TEST_F(TlsTest, RefusedAtTheHandshake) {
  const std::string ours = IdentityUri(kTrustDomain, Role::kOrchestrator, "o1");
  TlsOptions other_ca = other_ca_.For(Role::kOrchestrator, "o1");
  other_ca.ca_file = pki_.ca_file();  // it trusts our server
  const struct {
    const char* what;
    TlsOptions tls;
  } refused[] = {
      {"another CA", other_ca},
      {"expired", pki_.Issue("expired", {ours}, /*days=*/0)},
      {"two URI SANs",
       pki_.Issue("two", {ours, IdentityUri(kTrustDomain, Role::kAdmin, "a")})},
      {"no URI SAN", pki_.Issue("none", {})},
      {"another trust domain",
       pki_.Issue("td", {IdentityUri("other.test", Role::kAdmin, "a")})},
      {"role server", pki_.For(Role::kServer, "s2")},
  };
  absl::SleepFor(absl::Seconds(1.5));  // "expired" has expired
  for (const auto& c : refused) {
    ASSERT_FALSE(c.tls.cert_file.empty()) << c.what;
    auto who = CallAs(c.tls);
    EXPECT_EQ(who.status().code(), absl::StatusCode::kUnavailable)
        << c.what << ": " << (who.ok() ? *who : who.status().ToString());
  }
  // No certificate at all (TLS, the server verified), and plaintext.
  grpc::experimental::TlsChannelCredentialsOptions anonymous;
  anonymous.set_certificate_provider(
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          pki_.ca_file(), 1));
  anonymous.watch_root_certs();
  anonymous.set_check_call_host(false);
  anonymous.set_certificate_verifier(
      std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
  EXPECT_EQ(Call(grpc::experimental::TlsCredentials(anonymous)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(Call(grpc::InsecureChannelCredentials()).status().code(),
            absl::StatusCode::kUnavailable);
  // And a good one still gets through.
  EXPECT_TRUE(CallAs(pki_.For(Role::kReader, "r1")).ok());
}

TEST_F(TlsTest, ClientRefusesAServerThatIsNotAServer) {
  server_->Shutdown();
  StartServer(pki_.For(Role::kAgent, "impostor"));
  auto who = CallAs(pki_.For(Role::kOrchestrator, "o1"));
  EXPECT_EQ(who.status().code(), absl::StatusCode::kUnavailable)
      << who.status();
}

TEST_F(TlsTest, ClientRefusesAServerOfAnotherCa) {
  // A server identity all right, but signed by a CA the client does not
  // trust (the server would accept the client: it trusts the client's CA).
  server_->Shutdown();
  TlsOptions impostor = other_ca_.For(Role::kServer, "irqbypassd");
  impostor.ca_file = pki_.ca_file();
  StartServer(impostor);
  auto who = CallAs(pki_.For(Role::kOrchestrator, "o1"));
  EXPECT_EQ(who.status().code(), absl::StatusCode::kUnavailable)
      << who.status();
}

TEST_F(TlsTest, RotatedFiles_PickedUpWithoutARestart) {
  const TlsOptions old_client = pki_.For(Role::kOrchestrator, "o1");
  ASSERT_TRUE(CallAs(old_client).ok());
  // The server moves to the other CA: its own certificate and the bundle
  // it verifies clients with, each replaced by a rename.
  const TlsOptions rotated = other_ca_.For(Role::kServer, "irqbypassd");
  std::filesystem::copy_file(rotated.cert_file, server_tls_.cert_file + ".new");
  std::filesystem::copy_file(rotated.key_file, server_tls_.key_file + ".new");
  std::filesystem::copy_file(other_ca_.ca_file(),
                             pki_.dir() + "/server-ca.pem.new");
  // (The server was started with pki_'s ca.pem: replace that file.)
  std::filesystem::rename(server_tls_.key_file + ".new", server_tls_.key_file);
  std::filesystem::rename(server_tls_.cert_file + ".new",
                          server_tls_.cert_file);
  std::filesystem::rename(pki_.dir() + "/server-ca.pem.new",
                          server_tls_.ca_file);
  const TlsOptions new_client = other_ca_.For(Role::kOrchestrator, "o2");
  EXPECT_TRUE(irqbypass::testing::Eventually(
      [&] { return CallAs(new_client).ok(); }, absl::Seconds(20)))
      << CallAs(new_client).status();
  EXPECT_EQ(*CallAs(new_client), "orchestrator:o2");
  // A client of the old CA is refused now (the server is no longer of it,
  // nor does it trust it).
  EXPECT_EQ(CallAs(old_client).status().code(), absl::StatusCode::kUnavailable);
}

TEST(CheckOwnCertificateTest, NamesTheFileAndWhatIsWrong) {
  Pki pki(TestDir("own"));
  const TlsOptions server = pki.For(Role::kServer, "irqbypassd");
  auto id = CheckOwnCertificate(server, {Role::kServer});
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->name, "irqbypassd");

  auto wrong_role = CheckOwnCertificate(server, {Role::kAgent});
  EXPECT_EQ(wrong_role.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong_role.status().message().find("has role server; want agent"),
            std::string::npos)
      << wrong_role.status();

  TlsOptions mismatched = server;
  mismatched.key_file = pki.For(Role::kAgent, "n1").key_file;
  auto m = CheckOwnCertificate(mismatched, {Role::kServer});
  EXPECT_NE(m.status().message().find("is not the key of certificate"),
            std::string::npos)
      << m.status();

  TlsOptions missing = server;
  missing.ca_file = pki.dir() + "/nothing.pem";
  auto n = CheckOwnCertificate(missing, {Role::kServer});
  EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(n.status().message().find("nothing.pem"), std::string::npos);

  TlsOptions expired = pki.Issue(
      "old", {IdentityUri(kTrustDomain, Role::kServer, "s")}, /*days=*/0);
  absl::SleepFor(absl::Seconds(1.5));
  auto e = CheckOwnCertificate(expired, {Role::kServer});
  EXPECT_NE(e.status().message().find("has expired"), std::string::npos)
      << e.status();

  TlsOptions bad_domain = server;
  bad_domain.trust_domain = "Bad Domain";
  EXPECT_EQ(CheckOwnCertificate(bad_domain, {Role::kServer}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Which file a refusal is about, for the caller to name its flag.
TEST(CheckOwnCertificateTest, SaysWhichFileIsAtFault) {
  Pki pki(TestDir("at-fault"));
  const TlsOptions server = pki.For(Role::kServer, "irqbypassd");
  TlsOptions bad = server;
  bad.ca_file = pki.dir() + "/nothing.pem";
  EXPECT_EQ(TlsFileAtFault(CheckOwnCertificate(bad, {Role::kServer}).status()),
            TlsFile::kCa);
  bad = server;
  bad.key_file = pki.For(Role::kAgent, "n1").key_file;  // another's key
  EXPECT_EQ(TlsFileAtFault(CheckOwnCertificate(bad, {Role::kServer}).status()),
            TlsFile::kKey);
  bad = server;
  bad.cert_file = pki.dir() + "/nothing.pem";
  EXPECT_EQ(TlsFileAtFault(CheckOwnCertificate(bad, {Role::kServer}).status()),
            TlsFile::kCertificate);
  // A refusal about no one file.
  bad = server;
  bad.trust_domain = "Bad Domain";
  EXPECT_EQ(TlsFileAtFault(CheckOwnCertificate(bad, {Role::kServer}).status()),
            std::nullopt);
  EtcdTlsOptions etcd;
  etcd.ca_file = server.ca_file;
  etcd.cert_file = server.cert_file;
  etcd.key_file = pki.dir() + "/nothing.pem";
  EXPECT_EQ(TlsFileAtFault(CheckEtcdTlsFiles(etcd)), TlsFile::kKey);
}

std::string ReadWhole(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(EtcdHostCheckTest, CertificateNamesAHost) {
  Pki pki(::testing::TempDir() + "/etcd-host-check");
  const std::string ips = ReadWhole(
      pki.Issue("ips", {"IP:127.0.0.1", "IP:::1", "IP:10.0.0.2"}).cert_file);
  ASSERT_FALSE(ips.empty());
  EXPECT_TRUE(CertificateNamesAHost(ips, {"127.0.0.1"}));
  EXPECT_TRUE(CertificateNamesAHost(ips, {"0:0::1"}));  // by value
  EXPECT_TRUE(CertificateNamesAHost(ips, {"[::1]"}));
  EXPECT_FALSE(CertificateNamesAHost(ips, {"127.0.0.2"}));
  EXPECT_FALSE(CertificateNamesAHost(ips, {"localhost"}));
  EXPECT_TRUE(CertificateNamesAHost(ips, {"10.0.0.1", "10.0.0.2"}));
  EXPECT_FALSE(CertificateNamesAHost(ips, {}));
  EXPECT_FALSE(CertificateNamesAHost(ips, {""}));

  const std::string names =
      ReadWhole(pki.Issue("names", {"DNS:ETCD-0.example.org",
                                    "DNS:*.example.net", "DNS:127.0.0.3"})
                    .cert_file);
  EXPECT_TRUE(CertificateNamesAHost(names, {"etcd-0.example.org"}));
  EXPECT_TRUE(CertificateNamesAHost(names, {"etcd-0.example.org."}));
  EXPECT_TRUE(CertificateNamesAHost(names, {"a.example.net"}));
  EXPECT_FALSE(CertificateNamesAHost(names, {"example.net"}));
  EXPECT_FALSE(CertificateNamesAHost(names, {"a.b.example.net"}));
  EXPECT_FALSE(CertificateNamesAHost(names, {"etcd-1.example.org"}));
  // An IP host is matched only by an IP SAN, not a DNS SAN spelling it.
  EXPECT_FALSE(CertificateNamesAHost(names, {"127.0.0.3"}));

  // The common name is never used (pki.sh puts the file name there).
  const std::string cn_only =
      ReadWhole(pki.Issue("etcd-0.example.org", {}).cert_file);
  EXPECT_FALSE(CertificateNamesAHost(cn_only, {"etcd-0.example.org"}));
  EXPECT_FALSE(CertificateNamesAHost("not a certificate", {"127.0.0.1"}));
}

}  // namespace
}  // namespace irqbypass::security
