#include "tests/ha_cluster.h"

#include <signal.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/metrics_support.h"

namespace irqbypass::testing {

HaCluster::HaCluster()
    : dir_(MakeTempDir("ha")),
      tls_(dir_ + "/pki", /*insecure=*/false),
      probe_credentials_(
          tls_.Credentials(security::Role::kReader, "health-probe")) {}

HaCluster::~HaCluster() {
  for (auto& [node, agent] : agents_) agent->Signal(SIGKILL);
  for (auto& replica : replicas_) replica->Signal(SIGKILL);
}

std::string HaCluster::LogPath(int i) const {
  return absl::StrCat(dir_, "/irqbypassd-", i, ".log");
}

std::string HaCluster::address(int i) const {
  return absl::StrCat("127.0.0.1:", ports_.at(i));
}

std::string HaCluster::targets() const {
  std::vector<std::string> all;
  for (size_t i = 0; i < ports_.size(); ++i) {
    all.push_back(address(static_cast<int>(i)));
  }
  return absl::StrJoin(all, ",");
}

bool HaCluster::Start(int etcd_members, int replicas, absl::Duration ttl,
                      std::vector<std::string> replica_flags,
                      const std::function<bool()>& before_replicas) {
  ttl_ = ttl;
  replica_flags_ = std::move(replica_flags);
  if (!etcd_.Start(etcd_members)) return false;
  if (before_replicas && !before_replicas()) return false;
  for (int i = 0; i < replicas; ++i) {
    ports_.push_back(FreeLoopbackPort());
    replicas_.push_back(std::make_unique<Process>());
  }
  for (int i = 0; i < replicas; ++i) {
    if (!StartReplica(i)) return false;
  }
  client::ClientOptions options;
  options.call_timeout = absl::Seconds(20);
  // After a failover the agent needs a few seconds to reconnect to the new
  // leader; connects meanwhile fail AGENT_UNAVAILABLE and are retried.
  options.max_attempts = 20;
  options.credentials =
      tls_.Credentials(security::Role::kOrchestrator, "tests");
  auto created = client::Client::Create(targets(), options);
  if (!created.ok()) return false;
  client_ = *std::move(created);
  return WaitLeader() >= 0;
}

bool HaCluster::StartReplica(int i) {
  std::vector<std::string> args = {
      "--listen=" + address(i),
      "--metrics_listen=",
      "--store=etcd",
      "--etcd_endpoints=" + absl::StrJoin(etcd_.endpoints(), ","),
      "--leader_lease_ttl=" + absl::FormatDuration(ttl_),
      "--log_level=debug",
  };
  // One server certificate for every replica (any may lead).
  for (std::string& f : tls_.Flags(security::Role::kServer, "irqbypassd")) {
    args.push_back(std::move(f));
  }
  args.insert(args.end(), replica_flags_.begin(), replica_flags_.end());
  return replicas_.at(i)->Start(BinaryPath("service/irqbypassd"), args,
                                LogPath(i));
}

bool HaCluster::Serving(int i) const {
  RawResult r = RawUnary(address(i), "/grpc.health.v1.Health/Check",
                         ProtoStringField(1, "irqbypass.v1.BypassManager"),
                         probe_credentials_);
  return r.status.ok() && r.response == std::string("\x08\x01", 2);
}

int HaCluster::WaitLeader(int other_than, std::chrono::milliseconds timeout) {
  int leader = -1;
  Eventually(
      [&] {
        for (size_t i = 0; i < replicas_.size(); ++i) {
          if (static_cast<int>(i) != other_than && replicas_[i]->running() &&
              Serving(static_cast<int>(i))) {
            leader = static_cast<int>(i);
            return true;
          }
        }
        return false;
      },
      absl::FromChrono(timeout));
  return leader;
}

int HaCluster::Reconciles(const std::string& node) const {
  int n = 0;
  for (size_t i = 0; i < replicas_.size(); ++i) {
    n += CountOccurrences(ReadFile(LogPath(static_cast<int>(i))),
                          "msg=\"agent reconciled\" node=" + node + " ");
  }
  return n;
}

bool HaCluster::WaitReconciles(const std::string& node, int at_least) const {
  return Eventually([&] { return Reconciles(node) >= at_least; },
                    absl::Seconds(40));
}

bool HaCluster::StartAgent(const std::string& node,
                           const std::vector<std::string>& flags) {
  const int before = Reconciles(node);
  auto& agent = agents_[node];
  if (agent != nullptr) agent->Signal(SIGKILL), agent->Wait();
  agent = std::make_unique<Process>();
  std::vector<std::string> args = {"--manager=" + targets(), "--node=" + node,
                                   "--backend=sim", "--log_level=debug"};
  for (std::string& f : tls_.Flags(security::Role::kAgent, node)) {
    args.push_back(std::move(f));
  }
  args.insert(args.end(), flags.begin(), flags.end());
  if (!agent->Start(BinaryPath("agent/irqbypass-agent"), args,
                    absl::StrCat(dir_, "/agent-", node, ".log"))) {
    return false;
  }
  return WaitReconciles(node, before + 1);
}

void HaCluster::DumpLogs() const {
  for (size_t i = 0; i < replicas_.size(); ++i) {
    std::fprintf(stderr, "--- irqbypassd %zu log (tail) ---\n%s\n", i,
                 TailLines(ReadFile(LogPath(static_cast<int>(i))), 50).c_str());
  }
  for (const auto& [node, agent] : agents_) {
    std::fprintf(stderr, "--- agent %s log (tail) ---\n%s\n", node.c_str(),
                 TailLines(agent->Log(), 50).c_str());
  }
}

}  // namespace irqbypass::testing
