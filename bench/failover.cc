// Failover on etcd: a 3-member etcd cluster, two irqbypassd replicas
// (--store=etcd), a sim agent and a client over both replicas. Each trial
// kill -9s the leader and measures the time until a write (a producer
// registration, retried by the client library as it fails over) succeeds on
// the new leader; the killed replica then comes back as a standby for the
// next trial. Reports p50/p99/max over --trials beside the target, the
// lease TTL + 2 s.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "tests/cluster.h"
#include "tests/ha_cluster.h"

ABSL_FLAG(int, trials, 20, "Leader kills");
ABSL_FLAG(absl::Duration, ttl, absl::Seconds(5),
          "irqbypassd --leader_lease_ttl (the default is 5s)");
ABSL_FLAG(std::string, json_out, "", "Write results as JSON to this file");

namespace irqbypass::bench {
namespace {

using Clock = std::chrono::steady_clock;

int Run() {
  const int trials = absl::GetFlag(FLAGS_trials);
  const absl::Duration ttl = absl::GetFlag(FLAGS_ttl);
  if (trials < 1) {
    std::fprintf(stderr, "--trials: at least 1\n");
    return 2;
  }
  testing::HaCluster ha;
  if (!ha.Start(3, 2, ttl) || !ha.StartAgent("bench-node")) {
    std::fprintf(stderr, "could not start etcd, irqbypassd or the agent\n");
    ha.DumpLogs();
    return 1;
  }
  std::vector<double> seconds;
  int n = 0;
  for (int trial = 0; trial < trials; ++trial) {
    const int leader = ha.WaitLeader();
    if (leader < 0) {
      std::fprintf(stderr, "trial %d: no leader\n", trial);
      ha.DumpLogs();
      return 1;
    }
    // The client talks to the leader before the kill.
    auto warm = ha.client().RegisterProducer(testing::MakeProducer(
        absl::StrCat("f", n), "bench-node", "0000:01:00.0", n % 2048));
    ++n;
    if (!warm.ok()) {
      std::fprintf(stderr, "trial %d: %s\n", trial,
                   warm.status().ToString().c_str());
      return 1;
    }
    ha.replica(leader).Signal(SIGKILL);
    const auto killed = Clock::now();
    ha.replica(leader).Wait();
    auto written = ha.client().RegisterProducer(testing::MakeProducer(
        absl::StrCat("f", n), "bench-node", "0000:01:00.0", n % 2048));
    ++n;
    const double s =
        std::chrono::duration<double>(Clock::now() - killed).count();
    if (!written.ok()) {
      std::fprintf(stderr, "trial %d: no write succeeded: %s\n", trial,
                   written.status().ToString().c_str());
      ha.DumpLogs();
      return 1;
    }
    seconds.push_back(s);
    std::fprintf(stderr, "trial %d: %.2f s\n", trial, s);
    // Back as a standby (its log is appended to) before the next kill.
    const int standby_lines =
        testing::CountOccurrences(ha.replica(leader).Log(), "msg=standby leader=");
    if (!ha.StartReplica(leader) ||
        !testing::WaitFor([&] {
          return testing::CountOccurrences(ha.replica(leader).Log(),
                                           "msg=standby leader=") >
                 standby_lines;
        })) {
      std::fprintf(stderr, "trial %d: the killed replica did not come back\n",
                   trial);
      return 1;
    }
  }
  std::sort(seconds.begin(), seconds.end());
  auto at = [&](double q) {
    const size_t i = std::min(seconds.size() - 1,
                              static_cast<size_t>(q * seconds.size()));
    return seconds[i];
  };
  const double target = absl::ToDoubleSeconds(ttl) + 2;
  std::printf(
      "failover: %d kill -9s of the leader (3 etcd members, 2 replicas, lease "
      "TTL %s): time from the kill until a write succeeds on the new "
      "leader\n",
      trials, absl::FormatDuration(ttl).c_str());
  std::printf("p50 %.2f s  p99 %.2f s  max %.2f s  (target p99 <= TTL + 2 s "
              "= %.1f s)\n",
              at(0.5), at(0.99), seconds.back(), target);
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream(json_out) << "{\"trials\": " << trials
                            << ", \"ttl_s\": " << absl::ToDoubleSeconds(ttl)
                            << ", \"p50_s\": " << at(0.5)
                            << ", \"p99_s\": " << at(0.99)
                            << ", \"max_s\": " << seconds.back() << "}\n";
  }
  return 0;
}

}  // namespace
}  // namespace irqbypass::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return irqbypass::bench::Run();
}
