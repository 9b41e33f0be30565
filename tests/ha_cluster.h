// Test support for HA on etcd: a real etcd cluster (etcd_support.h), several
// irqbypassd replicas on it (--store=etcd, one leader), node agents that know
// every replica, and a client over all of them. Each replica keeps its port
// across restarts. Not thread-safe.
#ifndef IRQBYPASS_TESTS_HA_CLUSTER_H_
#define IRQBYPASS_TESTS_HA_CLUSTER_H_

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "client/irqbypass_client.h"
#include "tests/etcd_support.h"
#include "tests/process.h"
#include "tests/test_tls.h"

namespace irqbypass::testing {

class HaCluster {
 public:
  HaCluster();
  ~HaCluster();  // SIGKILLs everything

  // `etcd_members` etcd members, then `replicas` irqbypassd replicas with a
  // leader lease of `ttl` (and `replica_flags`); waits until one of them
  // leads. `before_replicas` (if set) runs once etcd is up, before any
  // replica starts (benchmarks fill etcd there); false from it fails Start.
  bool Start(int etcd_members, int replicas, absl::Duration ttl,
             std::vector<std::string> replica_flags = {},
             const std::function<bool()>& before_replicas = nullptr);

  EtcdCluster& etcd() { return etcd_; }
  Process& replica(int i) { return *replicas_.at(i); }
  // Starts replica i (again) on its port.
  bool StartReplica(int i);
  // "127.0.0.1:P" of replica i, and of all of them comma-separated.
  std::string address(int i) const;
  std::string targets() const;
  // Whether replica i answers health SERVING for irqbypass.v1.BypassManager.
  bool Serving(int i) const;
  // Waits until some replica other than `other_than` serves; its index, or
  // -1 after `timeout`.
  int WaitLeader(int other_than = -1,
                 std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // An agent for `node` with --manager=targets(); waits until a replica has
  // reconciled it.
  bool StartAgent(const std::string& node,
                  const std::vector<std::string>& flags = {});
  Process& agent(const std::string& node) { return *agents_.at(node); }
  // Reconciliations of `node`, summed over every replica's log.
  int Reconciles(const std::string& node) const;
  bool WaitReconciles(const std::string& node, int at_least) const;

  // A client over every replica (an orchestrator's certificate).
  client::Client& client() { return *client_; }
  // The certificates (mutual TLS, as Cluster).
  TestTls& tls() { return tls_; }
  void DumpLogs() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string LogPath(int i) const;
  std::string dir_;
  TestTls tls_;
  std::shared_ptr<grpc::ChannelCredentials> probe_credentials_;  // Serving's
  EtcdCluster etcd_;
  absl::Duration ttl_;
  std::vector<std::string> replica_flags_;
  std::vector<int> ports_;
  std::vector<std::unique_ptr<Process>> replicas_;
  std::map<std::string, std::unique_ptr<Process>> agents_;
  std::unique_ptr<client::Client> client_;
};

}  // namespace irqbypass::testing

#endif  // IRQBYPASS_TESTS_HA_CLUSTER_H_
