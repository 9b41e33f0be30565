// Start-up with a large durable state: writes --pairs connected pairs into
// an embedded store (as irqbypassd writes them), then starts the real
// irqbypassd on it and measures the time from exec until it serves (its
// --port_file appears: the whole store is loaded before that). The same for
// an empty store, and reading the store alone, in the same run, as the
// baselines. Reports the load time
// irqbypassd logs, the store's bytes on disk and irqbypassd's resident memory
// per pair.
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "bench/store_fill.h"
#include "service/rocksdb_store.h"
#include "tests/process.h"

ABSL_FLAG(int, pairs, 1000000, "Connected pairs in the store");
ABSL_FLAG(int, nodes, 100, "Nodes the pairs are spread over");
ABSL_FLAG(std::string, json_out, "", "Write results as JSON to this file");

namespace irqbypass::bench {
namespace {

using Clock = std::chrono::steady_clock;

int64_t DirBytes(const std::string& dir) {
  int64_t total = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) total += entry.file_size();
  }
  return total;
}

int64_t Rss(pid_t pid) {
  std::istringstream in(
      testing::ReadFile("/proc/" + std::to_string(pid) + "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      return std::atoll(line.c_str() + 6) * 1024;
    }
  }
  return -1;
}

struct Start {
  double serve_seconds = 0;  // exec until the port file appears
  std::string load_ms;       // as irqbypassd logs it
  int64_t rss = 0;
};

bool StartOn(const std::string& data_dir, const std::string& run_dir,
             Start* out) {
  const std::string port_file = run_dir + "/port";
  std::filesystem::remove(port_file);
  testing::Process manager;
  const auto t0 = Clock::now();
  if (!manager.Start(testing::BinaryPath("service/irqbypassd"),
                     {"--listen=127.0.0.1:0", "--insecure",
                      "--metrics_listen=", "--port_file=" + port_file,
                      "--store=embedded", "--data_dir=" + data_dir},
                     run_dir + "/irqbypassd.log")) {
    return false;
  }
  struct stat st;
  while (stat(port_file.c_str(), &st) != 0 || st.st_size == 0) {
    if (Clock::now() - t0 > std::chrono::seconds(300)) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  out->serve_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  out->rss = Rss(manager.pid());
  const std::string log = manager.Log();
  const size_t at = log.rfind(" ms=");
  if (at != std::string::npos) {
    out->load_ms =
        log.substr(at + 4, log.find_first_of(" \n", at + 4) - at - 4);
  }
  manager.Signal(SIGTERM);
  return manager.Wait(std::chrono::seconds(60)) == 0;
}

int Run() {
  const int pairs = absl::GetFlag(FLAGS_pairs);
  const int nodes = absl::GetFlag(FLAGS_nodes);
  if (pairs < 1 || nodes < 1) {
    std::fprintf(stderr, "--pairs, --nodes: at least 1\n");
    return 2;
  }
  const std::string dir = testing::MakeTempDir("store-startup");
  const std::string empty_dir = dir + "/empty";
  const std::string full_dir = dir + "/full";
  double fill_seconds = 0;
  std::fprintf(stderr, "writing %d pairs ...\n", pairs);
  if (!FillEmbeddedStore(full_dir, pairs, nodes, &fill_seconds)) return 1;
  const int64_t disk = DirBytes(full_dir);
  // The baseline: reading and decoding the store alone, in this process.
  double read_seconds = 0;
  {
    RocksDbStoreOptions options;
    options.dir = full_dir;
    auto store = RocksDbStore::Open(options);
    if (!store.ok()) return 1;
    size_t n = 0;
    const auto t0 = Clock::now();
    auto loaded = (*store)->Load([&](std::string, BindingState) {
      ++n;
      return absl::OkStatus();
    });
    read_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!loaded.ok() || n != static_cast<size_t>(pairs)) {
      std::fprintf(stderr, "store read back %zu of %d pairs\n", n, pairs);
      return 1;
    }
  }
  Start empty, full;
  if (!StartOn(empty_dir, dir, &empty) || !StartOn(full_dir, dir, &full)) {
    std::fprintf(stderr, "irqbypassd did not start (logs in %s)\n",
                 dir.c_str());
    return 1;
  }
  std::printf(
      "start-up on the embedded store: %d connected pairs on %d nodes "
      "(written in %.1f s, batches of 5,000)\n",
      pairs, nodes, fill_seconds);
  std::printf("%-10s %12s %12s %12s\n", "store", "serving in", "load (log)",
              "resident");
  std::printf("%-10s %10.2f s %9s ms %9.1f MiB\n", "empty", empty.serve_seconds,
              empty.load_ms.c_str(), empty.rss / 1048576.0);
  std::printf("%-10s %10.2f s %9s ms %9.1f MiB\n", absl::StrCat(pairs).c_str(),
              full.serve_seconds, full.load_ms.c_str(), full.rss / 1048576.0);
  std::printf("reading and decoding the store alone: %.2f s\n", read_seconds);
  const double rss_per_pair = static_cast<double>(full.rss - empty.rss) / pairs;
  std::printf(
      "disk: %.1f MiB, %.0f bytes per pair; resident memory: %.0f bytes per "
      "pair\n",
      disk / 1048576.0, static_cast<double>(disk) / pairs, rss_per_pair);
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream(json_out)
        << "{\"pairs\": " << pairs
        << ", \"serve_seconds_empty\": " << empty.serve_seconds
        << ", \"serve_seconds\": " << full.serve_seconds
        << ", \"read_seconds\": " << read_seconds
        << ", \"disk_bytes\": " << disk
        << ", \"rss_bytes_per_pair\": " << rss_per_pair << "}\n";
  }
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace irqbypass::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return irqbypass::bench::Run();
}
