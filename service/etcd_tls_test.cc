// The etcd store over TLS against a real etcd member on loopback that
// requires client certificates (--client-cert-auth), with a CA of its own
// made by scripts/pki.sh: what connects, and every way a connection is
// refused (no client certificate, another CA, a member whose certificate
// does not name the endpoint's host, a scheme that does not match).
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "security/testing/pki.h"
#include "security/tls.h"
#include "service/etcd_election.h"
#include "service/etcd_mirror.h"
#include "service/etcd_store.h"
#include "service/testing/store_support.h"
#include "tests/etcd_support.h"
#include "tests/process.h"

namespace irqbypass {
namespace {

using security::EtcdTlsOptions;
using security::testing::Pki;
using testing::LoadAll;
using testing::PairedState;

class EtcdTlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("etcd-tls"));
    pki_ = new Pki(*dir_ + "/etcd-ca");
    other_ = new Pki(*dir_ + "/other-ca");
    const auto server =
        pki_->Issue("member", {"IP:127.0.0.1", "DNS:localhost"});
    const auto client = pki_->Issue("client", {});
    ASSERT_FALSE(server.cert_file.empty());
    ASSERT_FALSE(client.cert_file.empty());
    testing::EtcdTestTls tls;
    tls.ca_file = pki_->ca_file();
    tls.server_cert = server.cert_file;
    tls.server_key = server.key_file;
    tls.client_cert = client.cert_file;
    tls.client_key = client.key_file;
    etcd_ = new testing::EtcdCluster();
    ASSERT_TRUE(etcd_->Start(1, tls));
  }
  static void TearDownTestSuite() {
    delete etcd_;
    delete pki_;
    delete other_;
    delete dir_;
  }

  // TLS options with etcd's CA and the client certificate, for the
  // endpoints' hosts.
  static EtcdTlsOptions Good() {
    EtcdTlsOptions options;
    options.ca_file = pki_->ca_file();
    options.cert_file = etcd_->tls()->client_cert;
    options.key_file = etcd_->tls()->client_key;
    options.hosts = EtcdDialledHosts(etcd_->endpoints());
    return options;
  }
  static absl::StatusOr<std::unique_ptr<EtcdStore>> Open(
      const EtcdTlsOptions& tls, const std::string& prefix) {
    EtcdStoreOptions options;
    options.endpoints = etcd_->endpoints();
    options.prefix = "/tls/" + prefix + "/";
    options.timeout = absl::Seconds(3);
    options.credentials = security::EtcdChannelCredentials(tls);
    return EtcdStore::Open(options);
  }

  // etcd is up and the good options still work: so a refusal just seen
  // was the refused options' doing.
  static void ExpectGoodStillOpens() {
    auto store = Open(Good(), "control");
    EXPECT_TRUE(store.ok()) << store.status();
  }

  static std::string* dir_;
  static Pki* pki_;
  static Pki* other_;
  static testing::EtcdCluster* etcd_;
};

std::string* EtcdTlsTest::dir_ = nullptr;
Pki* EtcdTlsTest::pki_ = nullptr;
Pki* EtcdTlsTest::other_ = nullptr;
testing::EtcdCluster* EtcdTlsTest::etcd_ = nullptr;

TEST_F(EtcdTlsTest, WithCaAndClientCertificate_WritesAndLoads) {
  ASSERT_TRUE(absl::StartsWith(etcd_->endpoints()[0], "https://"));
  ASSERT_TRUE(security::CheckEtcdTlsFiles(Good()).ok());
  {
    auto store = Open(Good(), "good");
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE(
        (*store)->WriteAndWait(StoreChange{"a", PairedState(1, 1)}).ok());
  }
  auto store = Open(Good(), "good");
  ASSERT_TRUE(store.ok()) << store.status();
  uint64_t last = 0;
  auto loaded = LoadAll(**store, &last);
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded.at("a").producer->vector, 1u);
  // And etcd holds it (read with etcd's own client certificate).
  testing::EtcdKv kv(etcd_->endpoints()[0], etcd_->tls());
  EXPECT_GT(kv.Revision(), 0);
}

TEST_F(EtcdTlsTest, NoClientCertificate_Refused) {
  EtcdTlsOptions tls = Good();
  tls.cert_file.clear();
  tls.key_file.clear();
  ASSERT_TRUE(security::CheckEtcdTlsFiles(tls).ok());
  auto store = Open(tls, "nocert");
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable)
      << store.status();
  ExpectGoodStillOpens();
}

TEST_F(EtcdTlsTest, ClientCertificateOfAnotherCa_Refused) {
  const auto stranger = other_->Issue("stranger", {});
  EtcdTlsOptions tls = Good();
  tls.cert_file = stranger.cert_file;
  tls.key_file = stranger.key_file;
  auto store = Open(tls, "stranger");
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable);
  ExpectGoodStillOpens();
}

TEST_F(EtcdTlsTest, MembersOfAnotherCa_Refused) {
  EtcdTlsOptions tls = Good();
  tls.ca_file = other_->ca_file();
  auto store = Open(tls, "otherca");
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable);
  ExpectGoodStillOpens();
}

// A member whose certificate is etcd's CA's but names only
// etcd-0.example.net, dialled at 127.0.0.1: refused, by the host check
// alone (the same member is accepted when the host dialled is the name its
// certificate has).
TEST_F(EtcdTlsTest, MemberCertificateNamesAnotherHost_Refused) {
  const auto elsewhere = pki_->Issue("elsewhere", {"DNS:etcd-0.example.net"});
  testing::EtcdTestTls tls = *etcd_->tls();
  tls.server_cert = elsewhere.cert_file;
  tls.server_key = elsewhere.key_file;
  tls.server_name = "etcd-0.example.net";  // for its own health check
  testing::EtcdCluster other;
  ASSERT_TRUE(other.Start(1, tls));
  EtcdTlsOptions options = Good();
  options.hosts = EtcdDialledHosts(other.endpoints());
  ASSERT_EQ(options.hosts, std::vector<std::string>{"127.0.0.1"});
  EtcdStoreOptions store_options;
  store_options.endpoints = other.endpoints();
  store_options.prefix = "/tls/otherhost/";
  store_options.timeout = absl::Seconds(3);
  store_options.credentials = security::EtcdChannelCredentials(options);
  auto store = EtcdStore::Open(store_options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable);
  // The same member, the host its certificate names: accepted.
  options.hosts = {"etcd-0.example.net"};
  store_options.credentials = security::EtcdChannelCredentials(options);
  store_options.prefix = "/tls/named/";
  auto named = EtcdStore::Open(store_options);
  EXPECT_TRUE(named.ok()) << named.status();
}

TEST(EtcdEndpointTest, Parse) {
  auto e = ParseEtcdEndpoint("https://[::1]:2379");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(e->tls);
  EXPECT_EQ(e->host, "::1");
  EXPECT_EQ(e->port, 2379);
  EXPECT_EQ(e->HostPort(), "[::1]:2379");
  e = ParseEtcdEndpoint(" http://10.0.0.1:2379 ");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_FALSE(e->tls);
  EXPECT_EQ(e->HostPort(), "10.0.0.1:2379");
  e = ParseEtcdEndpoint("etcd-0.example.net:2379");
  ASSERT_TRUE(e.ok());
  EXPECT_FALSE(e->tls);
  EXPECT_EQ(e->host, "etcd-0.example.net");
  for (const char* bad :
       {"https://[::1]", "https://::1:2379", "https://etcd-0:", "https://:2379",
        "https://etcd-0", "https://etcd-0:0", "https://etcd-0:65536",
        "https://etcd-0:2379/x", "https://[nope]:2379", "https://[::1:2379"}) {
    auto parsed = ParseEtcdEndpoint(bad);
    EXPECT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.status().message().find("--etcd_endpoints"),
              std::string::npos)
        << parsed.status();
  }
}

TEST(EtcdEndpointTest, TargetAndHostsDialled) {
  const std::vector<std::string> ipv4 = {"https://10.0.0.1:2379",
                                         "https://10.0.0.2:2379"};
  EXPECT_EQ(*EtcdTarget(ipv4), "ipv4:10.0.0.1:2379,10.0.0.2:2379");
  EXPECT_EQ(EtcdDialledHosts(ipv4),
            (std::vector<std::string>{"10.0.0.1", "10.0.0.2"}));
  // Not all IPv4: only the first is dialled, so only its host may answer.
  const std::vector<std::string> names = {"https://etcd-0.example.net:2379",
                                          "https://etcd-1.example.net:2379"};
  EXPECT_EQ(*EtcdTarget(names), "etcd-0.example.net:2379");
  EXPECT_EQ(EtcdDialledHosts(names),
            std::vector<std::string>{"etcd-0.example.net"});
  // "010.0.0.1" is no IPv4 literal to inet_pton: a name, dialled alone.
  EXPECT_EQ(*EtcdTarget({"http://010.0.0.1:2379", "http://10.0.0.2:2379"}),
            "010.0.0.1:2379");
  EXPECT_EQ(*EtcdTarget({"https://[::1]:2379"}), "[::1]:2379");
  EXPECT_FALSE(EtcdTarget({}).ok());
  EXPECT_TRUE(EtcdEndpointsUseTls(ipv4));
  EXPECT_FALSE(EtcdEndpointsUseTls({"10.0.0.1:2379"}));
}

TEST_F(EtcdTlsTest, SchemeAndCredentialsMustAgree) {
  EtcdStoreOptions options;
  options.endpoints = etcd_->endpoints();  // https://
  auto store = EtcdStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(store.status().message().find("--etcd_cacert"), std::string::npos)
      << store.status();

  options.endpoints = {"http://127.0.0.1:2379"};
  options.credentials = security::EtcdChannelCredentials(Good());
  store = EtcdStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);

  options.endpoints = {etcd_->endpoints()[0], "http://127.0.0.1:2379"};
  store = EtcdStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("all https://"), std::string::npos)
      << store.status();

  // The election and the mirror check the same.
  EtcdElectionOptions election;
  election.endpoints = etcd_->endpoints();
  election.address = "127.0.0.1:1";
  election.key = "/tls/leader";
  EXPECT_EQ(EtcdElection::Create(election).status().code(),
            absl::StatusCode::kInvalidArgument);
  EtcdMirrorOptions mirror;
  mirror.endpoints = etcd_->endpoints();
  mirror.prefix = "/tls/mirror/";
  EXPECT_EQ(EtcdMirror::Start(mirror).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(EtcdTlsTest, BadFiles_NamedAtStart) {
  EtcdTlsOptions tls = Good();
  tls.ca_file = *dir_ + "/missing.pem";
  absl::Status s = security::CheckEtcdTlsFiles(tls);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("missing.pem"), std::string::npos) << s;
  tls = Good();
  tls.key_file = pki_->Issue("unrelated", {}).key_file;
  s = security::CheckEtcdTlsFiles(tls);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("is not the key of"), std::string::npos) << s;
  tls = Good();
  tls.key_file.clear();
  EXPECT_EQ(security::CheckEtcdTlsFiles(tls).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace irqbypass
