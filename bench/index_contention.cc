// Index contention benchmark: the workload of the 2023 irqbypass review
// (174,000 concurrent registrations), against three designs in one run:
//   sharded  - irqbypass's TokenIndex + Matcher (sharded map, per-token op
//              locks), with an agent that connects instantly;
//   list     - one global mutex + two linked lists, walked to find a token
//              (the kernel's design before 2025);
//   hashmap  - one global mutex + one hash map keyed by token (upstream's
//              XArray under one mutex).
// Each of --threads threads takes its share of --tokens tokens and registers
// a producer then a consumer for each (the second connects the pair); when
// all threads are done, they unregister everything. Lock wait is measured the
// same way for all three: from just before taking a lock to just after
// holding it (0 when the first try succeeds: uncontended), summed over every
// lock an operation takes. The global designs take one mutex; the sharded
// index takes one lock, the token's op lock (its shared lists are lock-free:
// a lost CAS race is not a wait but a retry, counted per operation in the
// "retries/op" column). One sample per operation. Prints a table;
// --json_out writes JSON.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/latency_stats.h"
#include "service/matcher.h"
#include "service/testing/fake_dispatcher.h"
#include "service/token_index.h"

ABSL_FLAG(int, tokens, 174000, "Tokens (each gets a producer and a consumer)");
ABSL_FLAG(int, threads, 64, "Registering threads");
ABSL_FLAG(std::string, designs, "sharded,hashmap,list",
          "Comma list of designs to run: sharded, hashmap, list");
ABSL_FLAG(int, shards, 65536, "Shards of the sharded index");
ABSL_FLAG(std::string, json_out, "", "Write results as JSON to this file");
ABSL_FLAG(std::string, sides, "together",
          "together: one thread registers both sides of a token (the "
          "review's workload); apart: a token's producer and consumer come "
          "from two threads at about the same time, so they contend for "
          "the token itself");

namespace irqbypass::bench {
namespace {

using Clock = std::chrono::steady_clock;

int64_t NsSince(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0)
      .count();
}

std::string TokenName(int i) { return absl::StrFormat("tok-%07d", i); }

ProducerRecord ProducerFor(int i) {
  ProducerRecord p;
  p.node = "node-1";
  const int bdf = i % 65536;
  p.device = absl::StrFormat("0000:%02x:%02x.%d", bdf >> 8, (bdf >> 3) & 0x1f,
                             bdf & 7);
  p.vector = static_cast<uint32_t>(i / 65536);
  return p;
}

ConsumerRecord ConsumerFor(int i) {
  ConsumerRecord c;
  c.node = "node-1";
  c.vm = absl::StrFormat("vm-%d", i / 4096);
  c.gsi = static_cast<uint32_t>(i % 4096);
  return c;
}

// Lock wait of the operation running on this thread, and how many locks it
// took.
thread_local int64_t tls_op_wait_ns = 0;
thread_local int64_t tls_op_locks = 0;

void AddWait(int64_t ns) {
  tls_op_wait_ns += ns;
  ++tls_op_locks;
}

class Design {
 public:
  virtual ~Design() = default;
  virtual const char* name() const = 0;
  // Each returns false on an unexpected contract outcome (the side was not
  // registered or not found); whether a pair connected is checked once the
  // registrations are done (ConnectedPairs).
  virtual bool RegisterProducer(int i, const std::string& token) = 0;
  virtual bool RegisterConsumer(int i, const std::string& token) = 0;
  virtual bool UnregisterProducer(const std::string& token) = 0;
  virtual bool UnregisterConsumer(const std::string& token) = 0;
  // Lock-free retries on the calling thread so far (designs without
  // lock-free parts: 0).
  virtual uint64_t RetriesOnThisThread() const { return 0; }
  virtual bool lock_free_parts() const { return false; }
  virtual size_t ConnectedPairs() = 0;
};

// --- sharded: the product's index and matcher ------------------------------

class ThreadLocalWaits : public LockWaitObserver {
 public:
  void OnLockWait(LockOp, size_t, int64_t wait_ns) override {
    AddWait(wait_ns);
  }
};

class ShardedDesign : public Design {
 public:
  explicit ShardedDesign(int shards)
      : index_(static_cast<size_t>(shards), nullptr, &observer_),
        matcher_(index_, agent_) {}
  const char* name() const override { return "sharded"; }
  bool RegisterProducer(int i, const std::string& token) override {
    return matcher_.RegisterProducer(token, ProducerFor(i)).ok();
  }
  bool RegisterConsumer(int i, const std::string& token) override {
    return matcher_.RegisterConsumer(token, ConsumerFor(i)).ok();
  }
  bool UnregisterProducer(const std::string& token) override {
    return matcher_.UnregisterProducer(token, 0).ok();
  }
  size_t ConnectedPairs() override { return index_.CountAll().connected; }
  bool UnregisterConsumer(const std::string& token) override {
    return matcher_.UnregisterConsumer(token, 0).ok();
  }
  uint64_t RetriesOnThisThread() const override {
    return TokenIndex::RetriesOnThisThread();
  }
  bool lock_free_parts() const override { return true; }

 private:
  ThreadLocalWaits observer_;
  // Every connect succeeds at once, with no lock of the fake's own.
  testing::FakeDispatcher agent_{testing::FakeDispatcher::Recording::kOff};
  TokenIndex index_;
  Matcher matcher_;
};

// --- global mutex designs
// ------------------------------------------------------

struct Side {
  std::string token;
  ProducerRecord producer;  // one of the two is used
  ConsumerRecord consumer;
  bool connected = false;
};

class TimedLock {
 public:
  explicit TimedLock(std::mutex& mu) : lock_(mu, std::defer_lock) {
    if (lock_.try_lock()) {  // uncontended: no wait, no clock read
      AddWait(0);
      return;
    }
    const auto t0 = Clock::now();
    lock_.lock();
    AddWait(NsSince(t0));
  }

 private:
  std::unique_lock<std::mutex> lock_;
};

// The kernel before 2025: two lists, walked under one mutex.
class ListDesign : public Design {
 public:
  const char* name() const override { return "list"; }
  bool RegisterProducer(int i, const std::string& token) override {
    TimedLock lock(mu_);
    if (Find(producers_, token) != producers_.end()) return false;  // EBUSY
    Side p{token, ProducerFor(i), {}, false};
    auto c = Find(consumers_, token);
    if (c != consumers_.end()) c->connected = p.connected = true;
    producers_.push_back(std::move(p));
    return true;
  }
  bool RegisterConsumer(int i, const std::string& token) override {
    TimedLock lock(mu_);
    if (Find(consumers_, token) != consumers_.end()) return false;
    Side c{token, {}, ConsumerFor(i), false};
    auto p = Find(producers_, token);
    if (p != producers_.end()) p->connected = c.connected = true;
    consumers_.push_back(std::move(c));
    return true;
  }
  size_t ConnectedPairs() override {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    for (const Side& p : producers_) n += p.connected ? 1 : 0;
    return n;
  }
  bool UnregisterProducer(const std::string& token) override {
    return Unregister(producers_, consumers_, token);
  }
  bool UnregisterConsumer(const std::string& token) override {
    return Unregister(consumers_, producers_, token);
  }

 private:
  static std::list<Side>::iterator Find(std::list<Side>& l,
                                        const std::string& token) {
    for (auto it = l.begin(); it != l.end(); ++it) {
      if (it->token == token) return it;
    }
    return l.end();
  }
  bool Unregister(std::list<Side>& mine, std::list<Side>& theirs,
                  const std::string& token) {
    TimedLock lock(mu_);
    auto it = Find(mine, token);
    if (it == mine.end()) return false;
    if (it->connected) {
      auto other = Find(theirs, token);
      if (other != theirs.end()) other->connected = false;  // disconnect
    }
    mine.erase(it);
    return true;
  }

  std::mutex mu_;
  std::list<Side> producers_;
  std::list<Side> consumers_;
};

// One hash map under one mutex.
class HashMapDesign : public Design {
 public:
  const char* name() const override { return "hashmap"; }
  bool RegisterProducer(int i, const std::string& token) override {
    TimedLock lock(mu_);
    Entry& e = map_[token];
    if (e.producer) return false;
    e.producer = std::make_unique<ProducerRecord>(ProducerFor(i));
    e.connected = e.consumer != nullptr;
    return true;
  }
  bool RegisterConsumer(int i, const std::string& token) override {
    TimedLock lock(mu_);
    Entry& e = map_[token];
    if (e.consumer) return false;
    e.consumer = std::make_unique<ConsumerRecord>(ConsumerFor(i));
    e.connected = e.producer != nullptr;
    return true;
  }
  size_t ConnectedPairs() override {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    for (const auto& [token, e] : map_) n += e.connected ? 1 : 0;
    return n;
  }
  bool UnregisterProducer(const std::string& token) override {
    TimedLock lock(mu_);
    auto it = map_.find(token);
    if (it == map_.end() || !it->second.producer) return false;
    it->second.producer.reset();
    it->second.connected = false;
    if (!it->second.consumer) map_.erase(it);
    return true;
  }
  bool UnregisterConsumer(const std::string& token) override {
    TimedLock lock(mu_);
    auto it = map_.find(token);
    if (it == map_.end() || !it->second.consumer) return false;
    it->second.consumer.reset();
    it->second.connected = false;
    if (!it->second.producer) map_.erase(it);
    return true;
  }

 private:
  struct Entry {
    std::unique_ptr<ProducerRecord> producer;
    std::unique_ptr<ConsumerRecord> consumer;
    bool connected = false;
  };
  std::mutex mu_;
  absl::flat_hash_map<std::string, Entry> map_;
};

struct Result {
  std::string design;
  double register_seconds = 0;
  double unregister_seconds = 0;
  uint64_t operations = 0;
  uint64_t errors = 0;
  double locks_per_op = 0;
  double retries_per_op = 0;
  bool lock_free_parts = false;
  LatencySummary wait;
  double ops_per_second() const {
    return operations / (register_seconds + unregister_seconds);
  }
};

Result Run(Design& design, int tokens, int threads, bool apart) {
  std::vector<std::string> names;
  names.reserve(tokens);
  for (int i = 0; i < tokens; ++i) names.push_back(TokenName(i));

  std::vector<LatencySamples> waits(threads);
  std::atomic<uint64_t> errors{0};
  std::atomic<int64_t> locks{0};
  std::atomic<uint64_t> retries{0};
  auto phase = [&](bool registering) {
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        LatencySamples& mine = waits[t];
        tls_op_locks = 0;
        const uint64_t retries_before = design.RetriesOnThisThread();
        ++ready;
        while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
        uint64_t local_errors = 0;
        auto op = [&](bool ok) {
          local_errors += !ok;
          mine.Add(tls_op_wait_ns);
          tls_op_wait_ns = 0;
        };
        // Together: this thread's tokens, both sides. Apart: the producers
        // of this thread's tokens and the consumers of the tokens of the
        // thread half-way round, which does the reverse at the same pace.
        const int partner = apart ? (t + threads / 2) % threads : t;
        for (int base = 0; base < tokens; base += threads) {
          const int p = base + t;
          const int c = base + partner;
          if (registering) {
            if (p < tokens) op(design.RegisterProducer(p, names[p]));
            if (c < tokens) op(design.RegisterConsumer(c, names[c]));
          } else {
            if (p < tokens) op(design.UnregisterProducer(names[p]));
            if (c < tokens) op(design.UnregisterConsumer(names[c]));
          }
        }
        errors += local_errors;
        locks += tls_op_locks;
        retries += design.RetriesOnThisThread() - retries_before;
      });
    }
    while (ready.load() < threads) std::this_thread::yield();
    const auto t0 = Clock::now();
    go.store(true, std::memory_order_release);
    for (auto& w : workers) w.join();
    return NsSince(t0) / 1e9;
  };
  for (auto& w : waits)
    w.Reserve(static_cast<size_t>(4 * tokens / threads + 16));

  Result r;
  r.design = design.name();
  r.register_seconds = phase(true);
  // Every token has both sides now: each pair must be connected.
  const size_t connected = design.ConnectedPairs();
  if (connected != static_cast<size_t>(tokens)) {
    std::fprintf(stderr, "%s: %zu of %d pairs connected\n", design.name(),
                 connected, tokens);
    errors += static_cast<uint64_t>(tokens) - connected;
  }
  r.unregister_seconds = phase(false);
  r.operations = 4ull * static_cast<uint64_t>(tokens);
  r.errors = errors.load();
  r.locks_per_op = static_cast<double>(locks.load()) / r.operations;
  r.retries_per_op = static_cast<double>(retries.load()) / r.operations;
  r.lock_free_parts = design.lock_free_parts();
  LatencySamples all;
  all.Reserve(r.operations);
  for (auto& w : waits) all.Merge(w);
  r.wait = all.Summarise();
  return r;
}

int Main() {
  const int tokens = absl::GetFlag(FLAGS_tokens);
  const int threads = absl::GetFlag(FLAGS_threads);
  if (tokens < 1 || threads < 1) {
    std::fprintf(stderr, "--tokens and --threads must be positive\n");
    return 2;
  }
  const std::string sides = absl::GetFlag(FLAGS_sides);
  if (sides != "together" && sides != "apart") {
    std::fprintf(stderr, "--sides: expected together or apart, got %s\n",
                 sides.c_str());
    return 2;
  }
  const bool apart = sides == "apart";
  std::printf(
      "index contention: %d tokens (producer + consumer each, then both "
      "unregistered), %d threads, %u cores, sides %s\n",
      tokens, threads, std::thread::hardware_concurrency(),
      apart ? "apart (two threads per token)"
            : "together (one thread per token)");
  std::printf("lock wait per operation (sum over the locks it takes):\n");
  std::printf("%-8s %12s %10s %9s %10s %8s %8s %10s %10s %8s %7s %11s\n",
              "design", "ops/s", "ops", "locks/op", "avg", "p50", "p99",
              "p99.9", "max", ">=1ms", "errors", "retries/op");
  auto print_row = [](const Result& r) {
    const std::string retries =
        r.lock_free_parts ? absl::StrFormat("%.5f", r.retries_per_op) : "-";
    std::printf(
        "%-8s %12.0f %10lu %9.1f %10s %8s %8s %10s %10s %8lu %7lu %11s\n",
        r.design.c_str(), r.ops_per_second(),
        static_cast<unsigned long>(r.wait.count), r.locks_per_op,
        HumanNs(r.wait.avg_ns).c_str(),
        HumanNs(static_cast<double>(r.wait.p50_ns)).c_str(),
        HumanNs(static_cast<double>(r.wait.p99_ns)).c_str(),
        HumanNs(static_cast<double>(r.wait.p999_ns)).c_str(),
        HumanNs(static_cast<double>(r.wait.max_ns)).c_str(),
        static_cast<unsigned long>(r.wait.over_1ms),
        static_cast<unsigned long>(r.errors), retries.c_str());
    std::fflush(stdout);
  };
  std::vector<Result> results;
  for (absl::string_view name :
       absl::StrSplit(absl::GetFlag(FLAGS_designs), ',', absl::SkipEmpty())) {
    std::unique_ptr<Design> design;
    if (name == "sharded") {
      design = std::make_unique<ShardedDesign>(absl::GetFlag(FLAGS_shards));
    } else if (name == "hashmap") {
      design = std::make_unique<HashMapDesign>();
    } else if (name == "list") {
      design = std::make_unique<ListDesign>();
    } else {
      std::fprintf(stderr, "--designs: unknown design %s\n",
                   std::string(name).c_str());
      return 2;
    }
    results.push_back(Run(*design, tokens, threads, apart));
    print_row(results.back());
  }

  std::printf(
      "review (144 cores, 174,000 irqfds): list 117.9 ms avg / 11.4 s max; "
      "XArray 314 ns avg / 47.6 us max\n");
  const Result* sharded = nullptr;
  const Result* list = nullptr;
  for (const Result& r : results) {
    if (r.design == "sharded") sharded = &r;
    if (r.design == "list") list = &r;
  }
  if (sharded != nullptr && list != nullptr) {
    if (sharded->wait.avg_ns > 0) {
      std::printf("average wait, list / sharded: %.0fx\n",
                  list->wait.avg_ns / sharded->wait.avg_ns);
    } else {
      std::printf("average wait, list / sharded: sharded waited 0 ns\n");
    }
  }

  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream out(json_out);
    out << "{\"tokens\": " << tokens << ", \"threads\": " << threads
        << ", \"sides\": \"" << sides << "\""
        << ", \"cores\": " << std::thread::hardware_concurrency()
        << ", \"results\": [";
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      out << (i ? ", " : "") << "{\"design\": \"" << r.design
          << "\", \"register_seconds\": " << r.register_seconds
          << ", \"unregister_seconds\": " << r.unregister_seconds
          << ", \"operations\": " << r.operations
          << ", \"ops_per_second\": " << r.ops_per_second()
          << ", \"errors\": " << r.errors
          << ", \"locks_per_operation\": " << r.locks_per_op
          << ", \"retries_per_operation\": " << r.retries_per_op
          << ", \"lock_wait\": " << SummaryJson(r.wait) << "}";
    }
    out << "]}\n";
  }
  for (const Result& r : results) {
    if (r.errors != 0) {
      std::fprintf(stderr, "%s: %lu contract errors\n", r.design.c_str(),
                   static_cast<unsigned long>(r.errors));
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace irqbypass::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return irqbypass::bench::Main();
}
