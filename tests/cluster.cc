#include "tests/cluster.h"

#include <signal.h>

#include <cstdio>
#include <cstdlib>

namespace irqbypass::testing {

Cluster::Cluster(Security security)
    : dir_(MakeTempDir("cluster")),
      tls_(dir_ + "/pki", security == Security::kInsecure) {}

Cluster::~Cluster() {
  for (auto& [node, agent] : agents_) agent->Signal(SIGKILL);
  manager_.Signal(SIGKILL);
}

std::string Cluster::target() const {
  return "127.0.0.1:" + std::to_string(port_);
}

bool Cluster::StartManager(const std::vector<std::string>& flags) {
  const std::string port_file =
      dir_ + "/port." + std::to_string(++manager_starts_);
  std::vector<std::string> args = {
      "--listen=127.0.0.1:" + std::to_string(port_),
      "--metrics_listen=",
      "--port_file=" + port_file,
      // The embedded store, kept across restarts of this cluster's manager.
      "--data_dir=" + dir_ + "/data",
  };
  for (std::string& f : tls_.Flags(security::Role::kServer, "irqbypassd")) {
    args.push_back(std::move(f));
  }
  args.insert(args.end(), flags.begin(), flags.end());
  if (!manager_.Start(BinaryPath("service/irqbypassd"), args,
                      dir_ + "/irqbypassd.log")) {
    return false;
  }
  port_ = WaitForPortFile(port_file);
  if (port_ == 0) return false;
  {
    // A fresh channel: the old one may be in reconnect backoff after a
    // manager restart.
    client::ClientOptions options;
    options.call_timeout = absl::Seconds(30);
    options.credentials = credentials();
    auto created = client::Client::Create(target(), options);
    if (!created.ok()) return false;
    client_ = *std::move(created);
  }
  return port_ > 0;
}

void Cluster::DumpLogs() const {
  std::fprintf(stderr, "--- irqbypassd log (tail) ---\n%s\n",
               TailLines(ReadFile(dir_ + "/irqbypassd.log"), 60).c_str());
  for (const auto& [node, agent] : agents_) {
    std::fprintf(stderr, "--- agent %s log (tail) ---\n%s\n", node.c_str(),
                 TailLines(agent->Log(), 60).c_str());
  }
}

int Cluster::Reconciles(const std::string& node) const {
  return CountOccurrences(ReadFile(dir_ + "/irqbypassd.log"),
                          "msg=\"agent reconciled\" node=" + node + " ");
}

bool Cluster::WaitReconciles(const std::string& node, int at_least) const {
  return Eventually([&] { return Reconciles(node) >= at_least; });
}

bool Cluster::StartAgent(const std::string& node,
                         const std::vector<std::string>& flags) {
  const int before = Reconciles(node);
  auto& agent = agents_[node];
  if (agent != nullptr) agent->Signal(SIGKILL), agent->Wait();
  agent = std::make_unique<Process>();
  std::vector<std::string> args = {"--manager=" + target(), "--node=" + node,
                                   "--backend=sim", "--log_level=debug"};
  for (std::string& f : tls_.Flags(security::Role::kAgent, node)) {
    args.push_back(std::move(f));
  }
  args.insert(args.end(), flags.begin(), flags.end());
  if (!agent->Start(BinaryPath("agent/irqbypass-agent"), args,
                    dir_ + "/agent-" + node + ".log")) {
    return false;
  }
  return WaitReconciles(node, before + 1);
}

}  // namespace irqbypass::testing
