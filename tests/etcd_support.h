// Test support: a real etcd (Debian's etcd-server) on loopback, one member
// or a cluster of them, on ports the OS had free, with data in a temporary
// directory. Not thread-safe.
#ifndef IRQBYPASS_TESTS_ETCD_SUPPORT_H_
#define IRQBYPASS_TESTS_ETCD_SUPPORT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "protos/etcd/rpc.grpc.pb.h"
#include "tests/process.h"

namespace irqbypass::testing {

class EtcdCluster {
 public:
  // Starts `members` etcd members and waits until the cluster answers.
  // False (with the logs on stderr) if it did not come up.
  bool Start(int members = 1);
  // "http://127.0.0.1:P" of each member, in order.
  const std::vector<std::string>& endpoints() const { return endpoints_; }
  Process& member(int i) { return *members_.at(i); }
  // Starts member `i` again after it was stopped (same data, same ports).
  bool Restart(int i);
  void DumpLogs() const;

 private:
  bool StartMember(int i);
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
  // `endpoint`: "http://127.0.0.1:P", as EtcdCluster::endpoints() gives.
  explicit EtcdKv(absl::string_view endpoint);

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
