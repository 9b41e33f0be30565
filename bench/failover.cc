// Failover on etcd: a 3-member etcd cluster, two irqbypassd replicas
// (--store=etcd), a sim agent and a client over both replicas. Each trial
// kill -9s the leader and measures the time until a write (a producer
// registration, retried by the client library as it fails over) succeeds on
// the new leader; the killed replica then comes back as a standby for the
// next trial. Reports p50/p99/max over --trials beside the target, the
// lease TTL + 2 s, and how long the new leader took to load its state.
//
// --pairs=N fills etcd with N connected pairs (on 100 other nodes) before
// the replicas start. --standby=warm (the default, irqbypassd's), cold
// (--warm_standby=false: the new leader reads the whole state from etcd) or
// both, one after the other in the same run (cold is the baseline).
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "bench/store_fill.h"
#include "service/etcd_store.h"
#include "tests/cluster.h"
#include "tests/ha_cluster.h"

ABSL_FLAG(int, trials, 20, "Leader kills");
ABSL_FLAG(absl::Duration, ttl, absl::Seconds(5),
          "irqbypassd --leader_lease_ttl (the default is 5s)");
ABSL_FLAG(int, pairs, 0, "Connected pairs in etcd before the replicas start");
ABSL_FLAG(std::string, standby, "warm", "warm, cold or both");
ABSL_FLAG(std::string, json_out, "", "Write results as JSON to this file");

namespace irqbypass::bench {
namespace {

using Clock = std::chrono::steady_clock;

// N pairs written straight into etcd, as the leader would have, under
// irqbypassd's default prefix; several writers at once.
bool FillEtcd(const std::vector<std::string>& endpoints, int pairs) {
  EtcdStoreOptions options;
  options.endpoints = endpoints;
  auto opened = EtcdStore::Open(options);
  if (!opened.ok()) {
    std::fprintf(stderr, "%s\n", opened.status().ToString().c_str());
    return false;
  }
  EtcdStore& store = **opened;
  constexpr int kWriters = 8;
  constexpr int kPerCall = 40;  // one transaction
  std::atomic<int> next{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&] {
      std::vector<std::string> tokens;
      std::vector<BindingState> states;
      while (!failed.load()) {
        const int start = next.fetch_add(kPerCall);
        if (start >= pairs) return;
        tokens.clear();
        states.clear();
        for (int i = start; i < std::min(pairs, start + kPerCall); ++i) {
          tokens.push_back(FilledToken(i));
          states.push_back(FilledPair(i, 100));
        }
        std::vector<StoreChange> changes;
        for (size_t i = 0; i < tokens.size(); ++i) {
          changes.push_back({tokens[i], states[i]});
        }
        absl::Status s = store.WriteAndWait(changes);
        if (!s.ok()) {
          std::fprintf(stderr, "filling etcd: %s\n", s.ToString().c_str());
          failed = true;
        }
      }
    });
  }
  for (auto& t : writers) t.join();
  return !failed.load();
}

// The "ms=" of the last "store loaded" line in `log` (-1 if none).
long LastLoadMs(const std::string& log) {
  const size_t at = log.rfind("msg=\"store loaded\"");
  if (at == std::string::npos) return -1;
  const size_t ms = log.find(" ms=", at);
  return ms == std::string::npos ? -1 : std::atol(log.c_str() + ms + 4);
}

struct Result {
  std::string mode;
  std::vector<double> seconds;  // sorted
  std::vector<long> load_ms;    // sorted
  double At(double q) const {
    return seconds[std::min(seconds.size() - 1,
                            static_cast<size_t>(q * seconds.size()))];
  }
};

bool RunTrials(bool warm, int trials, absl::Duration ttl, int pairs,
               Result* result) {
  result->mode = warm ? "warm" : "cold";
  testing::HaCluster ha;
  std::vector<std::string> flags;
  if (!warm) flags.push_back("--warm_standby=false");
  double fill_seconds = 0;
  auto fill = [&] {
    if (pairs == 0) return true;
    const auto t0 = Clock::now();
    const bool ok = FillEtcd(ha.etcd().endpoints(), pairs);
    fill_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return ok;
  };
  if (!ha.Start(3, 2, ttl, flags, fill) || !ha.StartAgent("bench-node")) {
    std::fprintf(stderr, "could not start etcd, irqbypassd or the agent\n");
    ha.DumpLogs();
    return false;
  }
  if (pairs > 0) {
    std::fprintf(stderr, "%s: %d pairs written to etcd in %.1f s\n",
                 result->mode.c_str(), pairs, fill_seconds);
  }
  int n = 0;
  for (int trial = 0; trial < trials; ++trial) {
    const int leader = ha.WaitLeader();
    if (leader < 0) {
      std::fprintf(stderr, "trial %d: no leader\n", trial);
      ha.DumpLogs();
      return false;
    }
    // The client talks to the leader before the kill.
    auto warm_up = ha.client().RegisterProducer(testing::MakeProducer(
        absl::StrCat("f", n), "bench-node", "0000:01:00.0", n % 2048));
    ++n;
    if (!warm_up.ok()) {
      std::fprintf(stderr, "trial %d: %s\n", trial,
                   warm_up.status().ToString().c_str());
      return false;
    }
    ha.replica(leader).Signal(SIGKILL);
    const auto killed = Clock::now();
    ha.replica(leader).Wait();
    auto written = ha.client().RegisterProducer(testing::MakeProducer(
        absl::StrCat("f", n), "bench-node", "0000:01:00.0", n % 2048));
    const double s =
        std::chrono::duration<double>(Clock::now() - killed).count();
    ++n;
    if (!written.ok()) {
      std::fprintf(stderr, "trial %d: no write succeeded: %s\n", trial,
                   written.status().ToString().c_str());
      ha.DumpLogs();
      return false;
    }
    const int next = ha.WaitLeader(leader);
    const long load_ms = next >= 0 ? LastLoadMs(ha.replica(next).Log()) : -1;
    result->seconds.push_back(s);
    result->load_ms.push_back(load_ms);
    std::fprintf(stderr, "%s trial %d: %.2f s (state loaded in %ld ms)\n",
                 result->mode.c_str(), trial, s, load_ms);
    // Back as a standby (its log is appended to) before the next kill; a
    // warm one must have listed its copy first.
    const std::string ready =
        warm ? "msg=\"standby copy listed\"" : "msg=standby leader=";
    const int ready_lines =
        testing::CountOccurrences(ha.replica(leader).Log(), ready);
    if (!ha.StartReplica(leader) || !testing::Eventually(
                                        [&] {
                                          return testing::CountOccurrences(
                                                     ha.replica(leader).Log(),
                                                     ready) > ready_lines;
                                        },
                                        absl::Seconds(120))) {
      std::fprintf(stderr, "trial %d: the killed replica did not come back\n",
                   trial);
      return false;
    }
  }
  std::sort(result->seconds.begin(), result->seconds.end());
  std::sort(result->load_ms.begin(), result->load_ms.end());
  return true;
}

int Run() {
  const int trials = absl::GetFlag(FLAGS_trials);
  const absl::Duration ttl = absl::GetFlag(FLAGS_ttl);
  const int pairs = absl::GetFlag(FLAGS_pairs);
  const std::string standby = absl::GetFlag(FLAGS_standby);
  if (trials < 1) {
    std::fprintf(stderr, "--trials: at least 1\n");
    return 2;
  }
  if (pairs < 0) {
    std::fprintf(stderr, "--pairs: at least 0\n");
    return 2;
  }
  std::vector<bool> modes;
  if (standby == "cold" || standby == "both") modes.push_back(false);
  if (standby == "warm" || standby == "both") modes.push_back(true);
  if (modes.empty()) {
    std::fprintf(stderr, "--standby: warm, cold or both\n");
    return 2;
  }
  std::vector<Result> results;
  for (bool warm : modes) {
    Result r;
    if (!RunTrials(warm, trials, ttl, pairs, &r)) return 1;
    results.push_back(std::move(r));
  }
  const double target = absl::ToDoubleSeconds(ttl) + 2;
  std::printf(
      "failover: %d kill -9s of the leader (3 etcd members, 2 replicas, lease "
      "TTL %s, %d pairs in etcd): time from the kill until a write succeeds "
      "on the new leader\n",
      trials, absl::FormatDuration(ttl).c_str(), pairs);
  for (const Result& r : results) {
    std::printf(
        "%-5s p50 %.2f s  p99 %.2f s  max %.2f s  state loaded in p50 %ld "
        "ms, max %ld ms\n",
        r.mode.c_str(), r.At(0.5), r.At(0.99), r.seconds.back(),
        r.load_ms[r.load_ms.size() / 2], r.load_ms.back());
  }
  std::printf("target p99 <= TTL + 2 s = %.1f s\n", target);
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream out(json_out);
    out << "{\"trials\": " << trials
        << ", \"ttl_s\": " << absl::ToDoubleSeconds(ttl)
        << ", \"pairs\": " << pairs;
    for (const Result& r : results) {
      out << ", \"" << r.mode << "_p50_s\": " << r.At(0.5) << ", \"" << r.mode
          << "_p99_s\": " << r.At(0.99) << ", \"" << r.mode
          << "_max_s\": " << r.seconds.back();
    }
    out << "}\n";
  }
  return 0;
}

}  // namespace
}  // namespace irqbypass::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return irqbypass::bench::Run();
}
