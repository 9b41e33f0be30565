#include "tests/etcd_support.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/strip.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/metrics_support.h"

namespace irqbypass::testing {

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::shared_ptr<grpc::Channel> TestChannel(const std::string& target,
                                           const EtcdTestTls& tls);

std::shared_ptr<grpc::ChannelCredentials> TestCredentials(
    const EtcdTestTls& tls) {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFile(tls.ca_file);
  ssl.pem_cert_chain = ReadFile(tls.client_cert);
  ssl.pem_private_key = ReadFile(tls.client_key);
  return grpc::SslCredentials(ssl);
}

std::shared_ptr<grpc::Channel> TestChannel(const std::string& target,
                                           const EtcdTestTls& tls) {
  grpc::ChannelArguments args;
  if (!tls.server_name.empty()) {
    args.SetSslTargetNameOverride(tls.server_name);
  }
  return grpc::CreateCustomChannel(target, TestCredentials(tls), args);
}

}  // namespace

bool EtcdCluster::Start(int members, std::optional<EtcdTestTls> tls) {
  tls_ = std::move(tls);
  const std::string scheme = tls_.has_value() ? "https://" : "http://";
  dir_ = MakeTempDir("etcd");
  initial_cluster_.clear();
  for (int i = 0; i < members; ++i) {
    client_ports_.push_back(FreeLoopbackPort());
    peer_ports_.push_back(FreeLoopbackPort());
    endpoints_.push_back(scheme +
                         "127.0.0.1:" + std::to_string(client_ports_.back()));
    if (i > 0) initial_cluster_ += ",";
    initial_cluster_ += "m" + std::to_string(i) + "=" + scheme +
                        "127.0.0.1:" + std::to_string(peer_ports_.back());
    members_.push_back(std::make_unique<Process>());
  }
  for (int i = 0; i < members; ++i) {
    if (!StartMember(i)) return false;
  }
  // Up once every member answers its health endpoint (with TLS: a read,
  // through a client certificate).
  for (int i = 0; i < members; ++i) {
    const int port = client_ports_[i];
    bool up;
    if (tls_.has_value()) {
      auto kv = etcdserverpb::KV::NewStub(
          TestChannel("127.0.0.1:" + std::to_string(port), *tls_));
      up = Eventually([&] {
        etcdserverpb::RangeRequest request;
        request.set_key("/none");
        etcdserverpb::RangeResponse response;
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() +
                             std::chrono::seconds(1));
        return kv->Range(&context, request, &response).ok();
      });
    } else {
      up = Eventually([&] {
        auto body = HttpGet(port, "/health");
        return body.has_value() && body->find("\"true\"") != std::string::npos;
      });
    }
    if (!up) {
      DumpLogs();
      return false;
    }
  }
  return true;
}

bool EtcdCluster::StartMember(int i) {
  const std::string name = "m" + std::to_string(i);
  const std::string scheme = tls_.has_value() ? "https://" : "http://";
  const std::string client =
      scheme + "127.0.0.1:" + std::to_string(client_ports_[i]);
  const std::string peer =
      scheme + "127.0.0.1:" + std::to_string(peer_ports_[i]);
  std::vector<std::string> args = {"--name=" + name,
                                   "--data-dir=" + dir_ + "/" + name,
                                   "--listen-client-urls=" + client,
                                   "--advertise-client-urls=" + client,
                                   "--listen-peer-urls=" + peer,
                                   "--initial-advertise-peer-urls=" + peer,
                                   "--initial-cluster=" + initial_cluster_,
                                   "--initial-cluster-state=new",
                                   "--initial-cluster-token=irqbypass-test",
                                   "--heartbeat-interval=50",
                                   "--election-timeout=500",
                                   "--log-level=warn"};
  if (tls_.has_value()) {
    for (const char* side : {"", "peer-"}) {
      const std::string p = std::string("--") + side;
      args.push_back(p + "cert-file=" + tls_->server_cert);
      args.push_back(p + "key-file=" + tls_->server_key);
      args.push_back(p + "trusted-ca-file=" + tls_->ca_file);
      args.push_back(p + "client-cert-auth");
    }
  }
  return members_[i]->Start("/usr/bin/etcd", args, dir_ + "/" + name + ".log");
}

bool EtcdCluster::Restart(int i) { return StartMember(i); }

void EtcdCluster::DumpLogs() const {
  for (size_t i = 0; i < members_.size(); ++i) {
    std::fprintf(stderr, "--- etcd m%zu ---\n%s\n", i,
                 members_[i]->Log().c_str());
  }
}

EtcdKv::EtcdKv(absl::string_view endpoint,
               const std::optional<EtcdTestTls>& tls) {
  absl::string_view target = endpoint;
  absl::ConsumePrefix(&target, "http://");
  absl::ConsumePrefix(&target, "https://");
  kv_ = etcdserverpb::KV::NewStub(
      tls.has_value()
          ? TestChannel(std::string(target), *tls)
          : grpc::CreateChannel(std::string(target),
                                grpc::InsecureChannelCredentials()));
}

int64_t EtcdKv::Revision() {
  etcdserverpb::RangeRequest request;
  request.set_key("/none");
  etcdserverpb::RangeResponse response;
  grpc::ClientContext context;
  grpc::Status s = kv_->Range(&context, request, &response);
  EXPECT_TRUE(s.ok()) << "etcd Range: " << s.error_message();
  return s.ok() ? response.header().revision() : 0;
}

int64_t EtcdKv::Put(absl::string_view key, absl::string_view value) {
  etcdserverpb::PutRequest request;
  request.set_key(std::string(key));
  request.set_value(std::string(value));
  etcdserverpb::PutResponse response;
  grpc::ClientContext context;
  grpc::Status s = kv_->Put(&context, request, &response);
  EXPECT_TRUE(s.ok()) << "etcd Put " << key << ": " << s.error_message();
  return s.ok() ? response.header().revision() : 0;
}

void EtcdKv::Delete(absl::string_view key) {
  etcdserverpb::DeleteRangeRequest request;
  request.set_key(std::string(key));
  etcdserverpb::DeleteRangeResponse response;
  grpc::ClientContext context;
  grpc::Status s = kv_->DeleteRange(&context, request, &response);
  EXPECT_TRUE(s.ok()) << "etcd DeleteRange " << key << ": "
                      << s.error_message();
}

void EtcdKv::CompactAll() {
  etcdserverpb::CompactionRequest request;
  request.set_revision(Revision());
  request.set_physical(true);
  etcdserverpb::CompactionResponse response;
  grpc::ClientContext context;
  grpc::Status s = kv_->Compact(&context, request, &response);
  EXPECT_TRUE(s.ok()) << "etcd Compact: " << s.error_message();
}

}  // namespace irqbypass::testing
