// Test support: a manager (the real irqbypassd) and node agents (the real
// irqbypass-agent, sim backend) on loopback, and a client for them. The
// manager listens on a port the OS picks; restarts reuse it. Everything
// speaks mutual TLS with certificates of a throwaway CA in dir()/pki (the
// manager a server's, each agent its node's, the client an orchestrator's),
// unless the cluster is made insecure. Not thread-safe.
#ifndef IRQBYPASS_TESTS_CLUSTER_H_
#define IRQBYPASS_TESTS_CLUSTER_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "client/irqbypass_client.h"
#include "grpcpp/security/credentials.h"
#include "protocol/testing/records.h"  // IWYU pragma: export
#include "security/identity.h"
#include "security/tls.h"
#include "tests/process.h"
#include "tests/test_tls.h"

namespace irqbypass::testing {

class Cluster {
 public:
  enum class Security { kMutualTls, kInsecure };
  explicit Cluster(Security security = Security::kMutualTls);
  ~Cluster();

  // The certificates of this cluster's CA (test_tls.h).
  TestTls& tls() { return tls_; }
  security::TlsOptions Certificate(security::Role role,
                                   const std::string& name) {
    return tls_.Certificate(role, name);
  }
  std::vector<std::string> TlsFlags(const security::TlsOptions& tls) const {
    return tls_.Flags(tls);
  }
  // Channel credentials of an orchestrator ("tests"), as client() has;
  // plaintext if the cluster is insecure.
  std::shared_ptr<grpc::ChannelCredentials> credentials() {
    return tls_.Credentials(security::Role::kOrchestrator, "tests");
  }
  bool insecure() const { return tls_.insecure(); }

  // Starts irqbypassd (again, on the same port after the first start) and
  // waits until it serves. It uses the embedded store in dir()/data, so a
  // restart keeps its state; extra flags are appended (--store=memory for
  // none).
  bool StartManager(const std::vector<std::string>& flags = {});
  Process& manager() { return manager_; }
  std::string target() const;
  int port() const { return port_; }

  // Starts an agent for `node` and waits until the manager has reconciled it
  // (one more "agent reconciled" line for that node).
  bool StartAgent(const std::string& node,
                  const std::vector<std::string>& flags = {});
  Process& agent(const std::string& node) { return *agents_.at(node); }
  // How many times the manager reconciled `node` so far.
  int Reconciles(const std::string& node) const;
  bool WaitReconciles(const std::string& node, int at_least) const;

  client::Client& client() { return *client_; }
  // Prints the last lines of every process's log to stderr (for failures).
  void DumpLogs() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  TestTls tls_;
  int port_ = 0;
  int manager_starts_ = 0;
  Process manager_;
  std::map<std::string, std::unique_ptr<Process>> agents_;
  std::unique_ptr<client::Client> client_;
};

}  // namespace irqbypass::testing

#endif  // IRQBYPASS_TESTS_CLUSTER_H_
