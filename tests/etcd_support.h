// Test support: a real etcd (Debian's etcd-server) on loopback, one member
// or a cluster of them, on ports the OS had free, with data in a temporary
// directory. Not thread-safe.
#ifndef IRQBYPASS_TESTS_ETCD_SUPPORT_H_
#define IRQBYPASS_TESTS_ETCD_SUPPORT_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "protos/etcd/rpc.grpc.pb.h"
#include "tests/process.h"

namespace irqbypass::testing {

// TLS for an EtcdCluster: every member serves clients and peers with
// `server` (its SANs must name 127.0.0.1) and verifies client and peer
// certificates against `ca_file` (--client-cert-auth); `client` is what
// the cluster's own health checks and EtcdKv present.
struct EtcdTestTls {
  std::string ca_file;
  std::string server_cert, server_key;
  std::string client_cert, client_key;
  // The name the health checks and EtcdKv expect `server` to carry (empty:
  // 127.0.0.1, the address dialled).
  std::string server_name;
};

class EtcdCluster {
 public:
  // Starts `members` etcd members and waits until the cluster answers.
  // False (with the logs on stderr) if it did not come up. With `tls`, the
  // endpoints are https:// and need a client certificate.
  bool Start(int members = 1, std::optional<EtcdTestTls> tls = std::nullopt);
  const std::optional<EtcdTestTls>& tls() const { return tls_; }
  // "http://127.0.0.1:P" (or https://) of each member, in order.
  const std::vector<std::string>& endpoints() const { return endpoints_; }
  Process& member(int i) { return *members_.at(i); }
  // Starts member `i` again after it was stopped (same data, same ports).
  bool Restart(int i);
  void DumpLogs() const;

 private:
  bool StartMember(int i);
  std::optional<EtcdTestTls> tls_;
  std::string dir_;
  std::string initial_cluster_;
  std::vector<int> client_ports_;
  std::vector<int> peer_ports_;
  std::vector<std::string> endpoints_;
  std::vector<std::unique_ptr<Process>> members_;
};

// A plain etcd KV client, for tests that read or change etcd behind the
// back of the code under test. Each call fails the running test (gtest
// EXPECT) if etcd refuses it.
class EtcdKv {
 public:
  // `endpoint`: "http://127.0.0.1:P", as EtcdCluster::endpoints() gives;
  // https:// with `tls` (its CA and client certificate).
  explicit EtcdKv(absl::string_view endpoint,
                  const std::optional<EtcdTestTls>& tls = std::nullopt);

  // etcd's current revision (0 on failure).
  int64_t Revision();
  // Puts `key` = `value`; the revision of the put (0 on failure).
  int64_t Put(absl::string_view key, absl::string_view value);
  void Delete(absl::string_view key);
  // Compacts (physically) up to the current revision.
  void CompactAll();

 private:
  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
};

}  // namespace irqbypass::testing

#endif  // IRQBYPASS_TESTS_ETCD_SUPPORT_H_
