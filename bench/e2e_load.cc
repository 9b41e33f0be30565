// End-to-end benchmark: an async gRPC load generator (one completion queue,
// --callers concurrent callers) driving irqbypassd with a sim agent on
// loopback, and in the same run, in alternating one-second windows, the same
// generator against bare_server (the same service with empty handlers, same
// server options) on gRPC's callback API (the ceiling) and on its sync API.
//
// Four workloads, each reported for the three servers with throughput and
// latency p50/p99/p99.9, and irqbypassd's throughput as a fraction of each
// bare server's: GetBinding of a registered pair; a duplicate
// RegisterProducer (ALREADY_EXISTS, no agent involved); the register
// cycle = RegisterProducer, RegisterConsumer (connects through the agent),
// UnregisterProducer (disconnects through the agent), UnregisterConsumer;
// and the batch (Batch calls registering and unregistering many pairs).
// With the embedded store, the cycle and the batch also run against the bare
// callback server appending each call to a synced log (--durable_dir), the
// least a server that keeps what it answered must pay.
//
// --durability: the same cycle against irqbypassd without a store and with
// the embedded store, and the store's fsyncs per durable write.
//
// --etcd: irqbypassd with --store=etcd against raw etcd Txns sent by the
// same generator to the same etcd.
//
// --scale: registration latency with --scale_small (1,000) and then
// --scale_large (1,000,000) connected pairs already registered, and
// irqbypassd's resident memory per registered pair at the large size.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "bench/latency_stats.h"
#include "common/allocator.h"
#include "grpcpp/grpcpp.h"
#include "protos/etcd/rpc.grpc.pb.h"
#include "protos/irqbypass/v1/irqbypass.grpc.pb.h"
#include "security/identity.h"
#include "security/testing/pki.h"
#include "security/tls.h"
#include "tests/etcd_support.h"
#include "tests/metrics_support.h"
#include "tests/process.h"

ABSL_FLAG(int, callers, 64, "Concurrent callers");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10),
          "How long each measurement runs");
ABSL_FLAG(bool, scale, false, "Run the scale measurement instead");
ABSL_FLAG(int, scale_small, 1000, "Pairs registered for the small case");
ABSL_FLAG(int, scale_large, 1000000, "Pairs registered for the large case");
ABSL_FLAG(std::string, store, "embedded",
          "irqbypassd's --store for the throughput and scale runs: embedded "
          "(durable, the default) or memory");
ABSL_FLAG(bool, durability, false,
          "Measure the durable store's cost instead: alternating windows "
          "between irqbypassd --store=memory and --store=embedded, with the "
          "embedded store's fsyncs per write");
ABSL_FLAG(bool, etcd, false,
          "Run irqbypassd on etcd (--store=etcd) against raw etcd Txns from "
          "the same generator, on the same etcd");
ABSL_FLAG(int, etcd_members, 1, "--etcd: etcd members to start");
ABSL_FLAG(bool, slow_vm, false,
          "Run the register cycle against two managers, one whose agent has "
          "a slow VM (its add steps take --slow_vm_delay_ms) kept busy by one "
          "more caller: the other VMs' rate beside the manager without one");
ABSL_FLAG(bool, tls, false,
          "Measure what mutual TLS costs instead: irqbypassd and its agent "
          "with certificates (a throwaway CA, scripts/pki.sh) against the "
          "same with --insecure, in alternating windows");
ABSL_FLAG(bool, abuse, false,
          "Measure what hostile watchers cost instead: GetBinding callers "
          "on a mutual-TLS irqbypassd before, while and after --abuse_"
          "identities reader identities each open their cap of watches "
          "that never read, plus --abuse_extra more each (refused)");
ABSL_FLAG(int, abuse_identities, 20, "--abuse: reader identities");
ABSL_FLAG(int, abuse_extra, 10,
          "--abuse: watches past its cap each identity tries");
ABSL_FLAG(int, slow_vm_delay_ms, 500,
          "--slow_vm: how long each of the slow VM's add steps takes");
ABSL_FLAG(std::string, json_out, "", "Write results as JSON to this file");
ABSL_FLAG(bool, keep_dirs, false,
          "Keep each server set's folder (its stores, logs and certificates, "
          "under $TEST_TMPDIR or /tmp) instead of removing it at the end; "
          "always kept when a server failed to start");
ABSL_FLAG(std::string, workloads,
          "get_binding,duplicate_register,register_cycle,batch",
          "The throughput run's workloads, comma-separated (the batch row's "
          "ratio to the unary cycle needs register_cycle too)");
ABSL_FLAG(int, batch_callers, 8, "Concurrent callers of the batch workload");
ABSL_FLAG(int, batch_pairs, 64,
          "Pairs per Batch call of the batch workload (a VM with this many "
          "queues: twice as many registrations)");
ABSL_FLAG(std::string, target, "",
          "Drive an irqbypassd already running here (its agent must serve "
          "node bench-node) instead of starting the servers; for profiling");

namespace irqbypass::bench {
namespace {

using Clock = std::chrono::steady_clock;
using testing::Process;

constexpr char kNode[] = "bench-node";

std::string Device(uint64_t n) {
  const uint64_t bdf = n % 65536;
  return absl::StrFormat("0000:%02x:%02x.%d", bdf >> 8, (bdf >> 3) & 0x1f,
                         bdf & 7);
}

// What RunLoad drives: one caller's cycles, one RPC at a time on the shared
// completion queue (the completion's tag is the caller). Subclasses say how
// many RPCs a cycle has and issue each.
class LoadCaller {
 public:
  LoadCaller(grpc::CompletionQueue* cq, int id, const char* name)
      : cq_(cq), id_(id), name_(name) {}
  virtual ~LoadCaller() = default;

  // Starts the first RPC for pair number `n`.
  void Begin(uint64_t n) {
    n_ = n;
    step_ = 0;
    cycle_failed_ = false;
    cycle_start_ = Clock::now();
    NewContext();
    Issue();
  }

  // Handles a completion; returns false when this caller's pair is done.
  bool Complete() {
    if (!Expected(status_)) {
      ++errors_;
      cycle_failed_ = true;
      if (errors_ <= 3) {
        std::fprintf(stderr, "%s %d step %d: %s\n", name_, id_, step_,
                     status_.error_message().c_str());
      }
    }
    if (++step_ == Steps()) {
      // Only a cycle whose every call ended as it should counts (in the
      // rate and the latency); a failed call is counted in errors().
      if (cycle_failed_) return false;
      samples_.Add(std::chrono::duration_cast<std::chrono::nanoseconds>(
                       Clock::now() - cycle_start_)
                       .count());
      return false;
    }
    NewContext();
    Issue();
    return true;
  }

  LatencySamples& samples() { return samples_; }
  uint64_t errors() const { return errors_; }

 protected:
  virtual int Steps() const = 0;
  // Whether a call ended as it should (OK, unless a mode expects an error).
  virtual bool Expected(const grpc::Status& status) const {
    return status.ok();
  }
  // Starts RPC number step_ with context ctx_, completing into status_ with
  // tag().
  virtual void Issue() = 0;
  void* tag() { return this; }

  grpc::CompletionQueue* const cq_;
  const int id_;
  uint64_t n_ = 0;
  int step_ = 0;
  std::unique_ptr<grpc::ClientContext> ctx_;
  grpc::Status status_;

 private:
  void NewContext() {
    ctx_ = std::make_unique<grpc::ClientContext>();
    ctx_->set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(60));
  }

  const char* const name_;
  Clock::time_point cycle_start_;
  bool cycle_failed_ = false;
  LatencySamples samples_;
  uint64_t errors_ = 0;
};

// A caller: runs cycles (or, preloading, registers pairs) one RPC at a time
// on the shared completion queue.
class Caller final : public LoadCaller {
 public:
  // kCycle: the register cycle (4 calls). kPreload: register a pair (2).
  // kGet: one GetBinding of a preloaded pair. kDuplicate: one
  // RegisterProducer of a preloaded pair's token with another device (the
  // ALREADY_EXISTS path: validation, index lookup, error, no agent).
  // (kBatch: a BatchCaller's cycle.)
  enum class Mode { kCycle, kPreload, kGet, kDuplicate, kBatch };

  Caller(v1::BypassManager::Stub* stub, grpc::CompletionQueue* cq, int id,
         Mode mode)
      : LoadCaller(cq, id, "caller"), stub_(stub), mode_(mode) {}

 private:
  std::string Token() const {
    switch (mode_) {
      case Mode::kCycle:
        return absl::StrCat("load-", id_, "-", n_);
      case Mode::kPreload:
        return absl::StrCat("pre-", n_);
      case Mode::kGet:
      case Mode::kDuplicate:
        return absl::StrCat("pre-", id_);  // preloaded: one per caller
      case Mode::kBatch:
        break;  // a BatchCaller's
    }
    return "";
  }

  int Steps() const override {
    switch (mode_) {
      case Mode::kCycle:
        return 4;
      case Mode::kPreload:
        return 2;
      case Mode::kGet:
      case Mode::kDuplicate:
      case Mode::kBatch:
        return 1;
    }
    return 1;
  }

  bool Expected(const grpc::Status& status) const override {
    // The bare server answers OK; irqbypassd ALREADY_EXISTS.
    return status.ok() ||
           (mode_ == Mode::kDuplicate &&
            status.error_code() == grpc::StatusCode::ALREADY_EXISTS);
  }

  void Issue() override {
    const std::string token = Token();
    if (mode_ == Mode::kGet) {
      v1::GetBindingRequest req;
      req.set_token(token);
      get_reader_ = stub_->PrepareAsyncGetBinding(ctx_.get(), req, cq_);
      get_reader_->StartCall();
      get_reader_->Finish(&binding_, &status_, tag());
      return;
    }
    if (mode_ == Mode::kDuplicate) {
      v1::RegisterProducerRequest req;
      auto* p = req.mutable_producer();
      p->set_token(token);
      p->set_node(kNode);
      p->set_device(Device(5000000 + id_));
      rp_reader_ = stub_->PrepareAsyncRegisterProducer(ctx_.get(), req, cq_);
      rp_reader_->StartCall();
      rp_reader_->Finish(&rp_, &status_, tag());
      return;
    }
    // Cycling callers reuse their own device and GSI (freed every cycle);
    // preloaded pairs each get their own.
    const uint64_t obj = mode_ == Mode::kCycle ? 4000000 + id_ : n_;
    switch (step_) {
      case 0: {
        v1::RegisterProducerRequest req;
        auto* p = req.mutable_producer();
        p->set_token(token);
        p->set_node(kNode);
        p->set_device(Device(obj));
        p->set_vector(static_cast<uint32_t>((obj / 65536) % 2048));
        rp_reader_ = stub_->PrepareAsyncRegisterProducer(ctx_.get(), req, cq_);
        rp_reader_->StartCall();
        rp_reader_->Finish(&rp_, &status_, tag());
        break;
      }
      case 1: {
        v1::RegisterConsumerRequest req;
        auto* c = req.mutable_consumer();
        c->set_token(token);
        c->set_node(kNode);
        c->set_vm(absl::StrCat("vm-", obj / 4096));
        c->set_gsi(static_cast<uint32_t>(obj % 4096));
        rc_reader_ = stub_->PrepareAsyncRegisterConsumer(ctx_.get(), req, cq_);
        rc_reader_->StartCall();
        rc_reader_->Finish(&rc_, &status_, tag());
        break;
      }
      case 2: {
        v1::UnregisterProducerRequest req;
        req.set_token(token);
        up_reader_ =
            stub_->PrepareAsyncUnregisterProducer(ctx_.get(), req, cq_);
        up_reader_->StartCall();
        up_reader_->Finish(&up_, &status_, tag());
        break;
      }
      case 3: {
        v1::UnregisterConsumerRequest req;
        req.set_token(token);
        uc_reader_ =
            stub_->PrepareAsyncUnregisterConsumer(ctx_.get(), req, cq_);
        uc_reader_->StartCall();
        uc_reader_->Finish(&uc_, &status_, tag());
        break;
      }
    }
  }

  v1::BypassManager::Stub* const stub_;
  const Mode mode_;
  v1::RegisterProducerResponse rp_;
  v1::RegisterConsumerResponse rc_;
  v1::UnregisterProducerResponse up_;
  v1::UnregisterConsumerResponse uc_;
  v1::Binding binding_;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::Binding>> get_reader_;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::RegisterProducerResponse>>
      rp_reader_;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::RegisterConsumerResponse>>
      rc_reader_;
  std::unique_ptr<
      grpc::ClientAsyncResponseReader<v1::UnregisterProducerResponse>>
      up_reader_;
  std::unique_ptr<
      grpc::ClientAsyncResponseReader<v1::UnregisterConsumerResponse>>
      uc_reader_;
};

// The batch workload: a cycle is one Batch registering batch_pairs pairs
// (producer and consumer of each token, the consumer connecting them
// through the sim agent) and one Batch unregistering them (consumer then
// producer of each: a disconnect each). Every item must succeed.
class BatchCaller final : public LoadCaller {
 public:
  BatchCaller(v1::BypassManager::Stub* stub, grpc::CompletionQueue* cq, int id,
              int pairs)
      : LoadCaller(cq, id, "batch caller"), stub_(stub), pairs_(pairs) {}

 private:
  int Steps() const override { return 2; }

  bool Expected(const grpc::Status& status) const override {
    if (!status.ok()) return false;
    if (response_.results_size() != 2 * pairs_) return false;
    for (const v1::BatchResult& r : response_.results()) {
      if (r.status().code() != 0) {
        std::fprintf(stderr, "batch caller %d: item failed: %s\n", id_,
                     r.status().message().c_str());
        return false;
      }
    }
    return true;
  }

  void Issue() override {
    v1::BatchRequest req;
    for (int q = 0; q < pairs_; ++q) {
      // Each caller its own device (vector q) and VM (GSI q): objects are
      // freed every cycle and reused by the next.
      const std::string token = absl::StrCat("batch-", id_, "-", n_, "-", q);
      if (step_ == 0) {
        auto* p =
            req.add_items()->mutable_register_producer()->mutable_producer();
        p->set_token(token);
        p->set_node(kNode);
        p->set_device(Device(6000000 + id_));
        p->set_vector(static_cast<uint32_t>(q));
        auto* c =
            req.add_items()->mutable_register_consumer()->mutable_consumer();
        c->set_token(token);
        c->set_node(kNode);
        c->set_vm(absl::StrCat("batch-vm-", id_));
        c->set_gsi(static_cast<uint32_t>(q));
      } else {
        req.add_items()->mutable_unregister_consumer()->set_token(token);
        req.add_items()->mutable_unregister_producer()->set_token(token);
      }
    }
    response_.Clear();
    reader_ = stub_->PrepareAsyncBatch(ctx_.get(), req, cq_);
    reader_->StartCall();
    reader_->Finish(&response_, &status_, tag());
  }

  v1::BypassManager::Stub* const stub_;
  const int pairs_;
  v1::BatchResponse response_;
  std::unique_ptr<grpc::ClientAsyncResponseReader<v1::BatchResponse>> reader_;
};

// The raw-etcd baseline of --etcd: the same generator, each cycle four etcd
// Txns of the least a registration cycle must write for one token (put,
// put, put, delete of one key, no compares), straight to etcd.
constexpr char kRawEtcdPrefix[] = "etcd-raw:";

class EtcdCaller final : public LoadCaller {
 public:
  EtcdCaller(etcdserverpb::KV::Stub* stub, grpc::CompletionQueue* cq, int id)
      : LoadCaller(cq, id, "etcd caller"), stub_(stub) {}

 private:
  int Steps() const override { return 4; }

  void Issue() override {
    etcdserverpb::TxnRequest txn;
    const std::string key = absl::StrCat("/bench-raw/b/load-", id_, "-", n_);
    if (step_ == 3) {
      txn.add_success()->mutable_request_delete_range()->set_key(key);
    } else {
      etcdserverpb::PutRequest* put = txn.add_success()->mutable_request_put();
      put->set_key(key);
      // About the size of a stored binding with one or both sides.
      put->set_value(std::string(step_ == 1 ? 110 : 60, 'x'));
    }
    reader_ = stub_->PrepareAsyncTxn(ctx_.get(), txn, cq_);
    reader_->StartCall();
    reader_->Finish(&response_, &status_, tag());
  }

  etcdserverpb::KV::Stub* const stub_;
  etcdserverpb::TxnResponse response_;
  std::unique_ptr<grpc::ClientAsyncResponseReader<etcdserverpb::TxnResponse>>
      reader_;
};

// Client credentials of the targets that serve TLS (the --tls run); any
// other target is reached in plaintext.
std::map<std::string, std::shared_ptr<grpc::ChannelCredentials>>&
TargetCredentials() {
  static auto* credentials =
      new std::map<std::string, std::shared_ptr<grpc::ChannelCredentials>>();
  return *credentials;
}

std::shared_ptr<grpc::ChannelCredentials> CredentialsFor(
    const std::string& target) {
  auto it = TargetCredentials().find(target);
  return it != TargetCredentials().end() ? it->second
                                         : grpc::InsecureChannelCredentials();
}

struct LoadResult {
  double seconds = 0;
  uint64_t pairs = 0;
  uint64_t errors = 0;
  LatencySummary latency;
  double pairs_per_second() const { return seconds > 0 ? pairs / seconds : 0; }
};

// Runs `callers` callers until `duration` passes (kCycle) or until `total`
// pairs were started (kPreload, numbering pairs from `first`).
LoadResult RunLoad(const std::string& target, int callers, Caller::Mode mode,
                   absl::Duration duration, uint64_t first = 0,
                   uint64_t total = 0, LatencySamples* keep = nullptr) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // "etcd-raw:HOST:PORT": the raw etcd baseline (--etcd).
  const bool raw_etcd = absl::StartsWith(target, kRawEtcdPrefix);
  auto channel = grpc::CreateCustomChannel(
      raw_etcd ? target.substr(sizeof(kRawEtcdPrefix) - 1) : target,
      CredentialsFor(target), args);
  auto stub = v1::BypassManager::NewStub(channel);
  auto etcd_stub = etcdserverpb::KV::NewStub(channel);
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<LoadCaller>> all;
  for (int i = 0; i < callers; ++i) {
    if (raw_etcd) {
      all.push_back(std::make_unique<EtcdCaller>(etcd_stub.get(), &cq, i));
    } else if (mode == Caller::Mode::kBatch) {
      all.push_back(std::make_unique<BatchCaller>(
          stub.get(), &cq, i, absl::GetFlag(FLAGS_batch_pairs)));
    } else {
      all.push_back(std::make_unique<Caller>(stub.get(), &cq, i, mode));
    }
  }
  const auto start = Clock::now();
  const auto stop_at = start + absl::ToChronoNanoseconds(duration);
  uint64_t next = first;
  const uint64_t end = first + total;
  auto more = [&] {
    return mode == Caller::Mode::kPreload ? next < end : Clock::now() < stop_at;
  };
  int active = 0;
  for (auto& c : all) {
    if (!more()) break;
    c->Begin(next++);
    ++active;
  }
  void* tag;
  bool ok;
  while (active > 0 && cq.Next(&tag, &ok)) {
    auto* c = static_cast<LoadCaller*>(tag);
    if (c->Complete()) continue;
    if (more()) {
      c->Begin(next++);
    } else {
      --active;
    }
  }
  LoadResult r;
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  LatencySamples merged;
  for (auto& c : all) {
    merged.Merge(c->samples());
    r.errors += c->errors();
  }
  r.pairs = merged.size();
  if (keep != nullptr) keep->Merge(merged);
  r.latency = merged.Summarise();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return r;
}

// The certificates of a --tls run.
struct TlsFiles {
  security::TlsOptions server, agent, orchestrator;
};

// irqbypassd + one sim agent, or bare_server, as child processes.
class Servers {
 public:
  Servers() : dir_(testing::MakeTempDir("e2e-bench")) {}
  // Stops what it started and removes its folder (stores, logs,
  // certificates: a --scale run's is over 100 MB), unless --keep_dirs or a
  // server failed to start (then its logs are kept and named).
  ~Servers() {
    for (Process* p : {&agent_, &manager_, &bare_}) {
      if (p->running() && p->Signal(SIGKILL)) p->Wait();
    }
    if (dir_.empty()) return;
    if (keep_ || absl::GetFlag(FLAGS_keep_dirs)) {
      std::fprintf(stderr, "logs and data kept in %s\n", dir_.c_str());
      return;
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  Servers(const Servers&) = delete;
  Servers& operator=(const Servers&) = delete;
  // Serving and calling with these certificates instead of --insecure.
  void UseTls(const TlsFiles& tls) { tls_ = tls; }

  // `store`: irqbypassd's --store (the embedded one in this run's folder).
  bool StartManager(const std::string& store,
                    const std::vector<std::string>& extra = {},
                    const std::vector<std::string>& agent_extra = {}) {
    return KeepIfFailed(StartManagerAndAgent(store, extra, agent_extra));
  }

  // `api`: bare_server's --api (callback or sync); `extra`: its other
  // flags.
  bool StartBare(const std::string& api,
                 const std::vector<std::string>& extra = {}) {
    return KeepIfFailed(StartBareServer(api, extra));
  }

  std::string manager() const {
    return "127.0.0.1:" + std::to_string(manager_port_);
  }
  const std::string& dir() const { return dir_; }
  std::string bare() const { return "127.0.0.1:" + std::to_string(bare_port_); }
  // A counter's value on irqbypassd's /metrics (-1 if absent).
  double ManagerCounter(const std::string& name) const {
    const std::optional<std::string> body =
        testing::HttpGet(metrics_port_, "/metrics");
    if (!body.has_value()) return -1;
    std::istringstream in(*body);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind(name + " ", 0) == 0) {
        return std::atof(line.c_str() + name.size() + 1);
      }
    }
    return -1;
  }
  // irqbypassd's threads (-1 if unknown).
  int ManagerThreads() const {
    std::istringstream in(testing::ReadFile(
        "/proc/" + std::to_string(manager_.pid()) + "/status"));
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
    }
    return -1;
  }
  // Resident set of irqbypassd, bytes.
  int64_t ManagerRss() const {
    std::istringstream in(testing::ReadFile(
        "/proc/" + std::to_string(manager_.pid()) + "/status"));
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("VmRSS:", 0) == 0) {
        return std::atoll(line.c_str() + 6) * 1024;
      }
    }
    return -1;
  }

 private:
  bool KeepIfFailed(bool started) {
    if (!started) keep_ = true;
    return started;
  }
  bool StartManagerAndAgent(const std::string& store,
                            const std::vector<std::string>& extra,
                            const std::vector<std::string>& agent_extra) {
    const std::string port_file = dir_ + "/manager.port";
    std::vector<std::string> args = {
        "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
        "--port_file=" + port_file, "--store=" + store,
        "--data_dir=" + dir_ + "/data"};
    // Plaintext, as the bare server it is measured against, unless this is
    // the --tls run's TLS side.
    auto tls_flags = [&](const security::TlsOptions& o) {
      return tls_.has_value()
                 ? std::vector<std::string>{"--tls_cert=" + o.cert_file,
                                            "--tls_key=" + o.key_file,
                                            "--tls_ca=" + o.ca_file,
                                            "--trust_domain=" + o.trust_domain}
                 : std::vector<std::string>{"--insecure"};
    };
    for (std::string& f :
         tls_flags(tls_ ? tls_->server : security::TlsOptions{})) {
      args.push_back(std::move(f));
    }
    args.insert(args.end(), extra.begin(), extra.end());
    if (!manager_.Start(testing::BinaryPath("service/irqbypassd"), args,
                        dir_ + "/irqbypassd.log")) {
      return false;
    }
    manager_port_ = testing::WaitForPortFile(port_file);
    if (manager_port_ == 0) return false;
    metrics_port_ = testing::LoggedPort(
        testing::ReadFile(dir_ + "/irqbypassd.log"), "metrics_port");
    std::vector<std::string> agent_args = {
        "--manager=127.0.0.1:" + std::to_string(manager_port_),
        std::string("--node=") + kNode, "--backend=sim", "--log_level=warn"};
    for (std::string& f :
         tls_flags(tls_ ? tls_->agent : security::TlsOptions{})) {
      agent_args.push_back(std::move(f));
    }
    agent_args.insert(agent_args.end(), agent_extra.begin(), agent_extra.end());
    if (tls_.has_value()) {
      TargetCredentials()[manager()] =
          security::ChannelCredentials(tls_->orchestrator);
    }
    if (!agent_.Start(testing::BinaryPath("agent/irqbypass-agent"), agent_args,
                      dir_ + "/agent.log")) {
      return false;
    }
    return testing::Eventually([&] {
      return testing::ReadFile(dir_ + "/irqbypassd.log")
                 .find("msg=\"agent reconciled\"") != std::string::npos;
    });
  }

  bool StartBareServer(const std::string& api,
                       const std::vector<std::string>& extra = {}) {
    const std::string port_file = dir_ + "/bare.port";
    std::vector<std::string> args = {
        "--listen=127.0.0.1:0", "--port_file=" + port_file, "--api=" + api};
    args.insert(args.end(), extra.begin(), extra.end());
    if (!bare_.Start(testing::BinaryPath("bench/bare_server"), args,
                     dir_ + "/bare.log")) {
      return false;
    }
    bare_port_ = testing::WaitForPortFile(port_file);
    return bare_port_ != 0;
  }

  std::string dir_;
  bool keep_ = false;  // a server failed to start: keep its logs
  std::optional<TlsFiles> tls_;
  Process manager_;
  Process agent_;
  Process bare_;
  int manager_port_ = 0;
  int metrics_port_ = 0;
  int bare_port_ = 0;
};

void PrintLoad(const char* name, const LoadResult& r) {
  std::printf("%-16s %10.0f %10lu %10s %10s %10s %8lu\n", name,
              r.pairs_per_second(), static_cast<unsigned long>(r.pairs),
              HumanNs(static_cast<double>(r.latency.p50_ns)).c_str(),
              HumanNs(static_cast<double>(r.latency.p99_ns)).c_str(),
              HumanNs(static_cast<double>(r.latency.p999_ns)).c_str(),
              static_cast<unsigned long>(r.errors));
}

std::string LoadJson(const LoadResult& r) {
  return absl::StrFormat(
      "{\"pairs_per_second\": %.1f, \"pairs\": %u, \"errors\": %u, "
      "\"latency\": %s}",
      r.pairs_per_second(), r.pairs, r.errors, SummaryJson(r.latency));
}

// --target: the register cycle, or with --workloads=batch the batch
// workload (--batch_callers callers).
int RunAgainstTarget(const std::string& target, int callers,
                     absl::Duration duration) {
  const std::string workloads = absl::GetFlag(FLAGS_workloads);
  const bool batch = workloads == "batch";
  if (!batch && workloads != "register_cycle" &&
      workloads != "get_binding,duplicate_register,register_cycle,batch") {
    std::fprintf(stderr,
                 "--target: --workloads is register_cycle (the default) or "
                 "batch\n");
    return 2;
  }
  const LoadResult r =
      batch ? RunLoad(target, absl::GetFlag(FLAGS_batch_callers),
                      Caller::Mode::kBatch, duration)
            : RunLoad(target, callers, Caller::Mode::kCycle, duration);
  std::printf("%-16s %10s %10s %10s %10s %10s %8s\n", "server",
              batch ? "cycles/s" : "pairs/s", batch ? "cycles" : "pairs", "p50",
              "p99", "p99.9", "errors");
  PrintLoad(target.c_str(), r);
  if (batch) {
    std::printf("registrations/s: %.0f\n",
                r.pairs_per_second() * 2 * absl::GetFlag(FLAGS_batch_pairs));
  }
  return r.errors == 0 ? 0 : 1;
}

// Alternates one-second windows of `mode` load among `targets` for
// `duration` each, so that a change in the machine's speed during the run
// (shared hosts) affects them all alike. One result per target.
std::vector<LoadResult> AlternateAmong(const std::vector<std::string>& targets,
                                       int callers, Caller::Mode mode,
                                       absl::Duration duration) {
  std::vector<LoadResult> results(targets.size());
  std::vector<LatencySamples> samples(targets.size());
  const int64_t rounds = std::max<int64_t>(
      1, absl::ToInt64Seconds(absl::Ceil(duration, absl::Seconds(1))));
  const absl::Duration window = duration / rounds;
  for (int64_t i = 0; i < rounds; ++i) {
    for (size_t t = 0; t < targets.size(); ++t) {
      LoadResult r =
          RunLoad(targets[t], callers, mode, window, 0, 0, &samples[t]);
      results[t].seconds += r.seconds;
      results[t].pairs += r.pairs;
      results[t].errors += r.errors;
    }
  }
  for (size_t t = 0; t < targets.size(); ++t) {
    results[t].latency = samples[t].Summarise();
  }
  return results;
}

// The register cycle between two servers (the durability and etcd runs).
void Alternate(const std::string& first, const std::string& second, int callers,
               absl::Duration duration, LoadResult* at_first,
               LoadResult* at_second) {
  std::vector<LoadResult> r =
      AlternateAmong({first, second}, callers, Caller::Mode::kCycle, duration);
  *at_first = r[0];
  *at_second = r[1];
}

double Ratio(const LoadResult& ours, const LoadResult& base) {
  return base.pairs_per_second() > 0
             ? ours.pairs_per_second() / base.pairs_per_second()
             : 0;
}

// irqbypassd against the bare server on the callback API (the ceiling) and
// on the sync API, for each workload: (a) GetBinding, (b) the duplicate
// register (ALREADY_EXISTS), (c) the register cycle through the sim agent.
int RunThroughput(int callers, absl::Duration duration) {
  Servers servers, sync_servers;
  if (!servers.StartManager(absl::GetFlag(FLAGS_store)) ||
      !servers.StartBare("callback") || !sync_servers.StartBare("sync")) {
    std::fprintf(stderr, "could not start the servers\n");
    return 1;
  }
  const std::vector<std::string> targets = {servers.manager(), servers.bare(),
                                            sync_servers.bare()};
  // One preloaded pair per caller, for GetBinding and the duplicate
  // register; then warm every server up (connections, first-use paths).
  LoadResult preload =
      RunLoad(servers.manager(), callers, Caller::Mode::kPreload,
              absl::ZeroDuration(), 0, static_cast<uint64_t>(callers));
  for (const std::string& target : targets) {
    RunLoad(target, callers, Caller::Mode::kCycle, absl::Seconds(1));
  }
  // With the embedded store, for the register cycle and the batch, a fifth
  // server: the bare callback one appending each mutating call (a Batch as
  // one record) to a synced log before answering it, so those rows also
  // show irqbypassd against a server that pays for durability and nothing
  // else.
  Servers durable_servers;
  std::string durable_target;
  if (absl::GetFlag(FLAGS_store) == "embedded") {
    if (!durable_servers.StartBare(
            "callback",
            {"--durable_dir=" + durable_servers.dir() + "/synced"})) {
      std::fprintf(stderr, "could not start the bare durable server\n");
      return 1;
    }
    durable_target = durable_servers.bare();
    RunLoad(durable_target, callers, Caller::Mode::kCycle, absl::Seconds(1));
  }
  // For the duplicate register, a fourth server: the bare callback one
  // answering with the very error irqbypassd gives (its status details, as
  // received), so the row shows what gRPC charges for sending that error
  // apart from what irqbypassd does to find it.
  Servers error_servers;
  std::string error_target;
  {
    auto stub = v1::BypassManager::NewStub(grpc::CreateChannel(
        servers.manager(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    v1::RegisterProducerRequest req;
    req.mutable_producer()->set_token("pre-0");
    req.mutable_producer()->set_node(kNode);
    req.mutable_producer()->set_device(Device(5000000));
    v1::RegisterProducerResponse resp;
    const grpc::Status s = stub->RegisterProducer(&ctx, req, &resp);
    if (s.error_code() != grpc::StatusCode::ALREADY_EXISTS ||
        s.error_details().empty()) {
      std::fprintf(stderr,
                   "duplicate register: expected ALREADY_EXISTS with "
                   "details, got %d\n",
                   s.error_code());
      return 1;
    }
    const std::string path = error_servers.dir() + "/duplicate_error.bin";
    std::ofstream(path, std::ios::binary) << s.error_details();
    if (!error_servers.StartBare("callback",
                                 {"--register_error_file=" + path})) {
      std::fprintf(stderr, "could not start the bare error server\n");
      return 1;
    }
    error_target = error_servers.bare();
    RunLoad(error_target, callers, Caller::Mode::kDuplicate, absl::Seconds(1));
  }
  struct Workload {
    const char* name;
    const char* unit;
    Caller::Mode mode;
    int callers;
    // What one counted unit is worth in the unit shown (registrations per
    // batch cycle).
    int scale = 1;
  };
  const int batch_pairs = absl::GetFlag(FLAGS_batch_pairs);
  const Workload workloads[] = {
      {"get_binding", "calls/s", Caller::Mode::kGet, callers},
      {"duplicate_register", "calls/s", Caller::Mode::kDuplicate, callers},
      {"register_cycle", "cycles/s", Caller::Mode::kCycle, callers},
      {"batch", "regs/s", Caller::Mode::kBatch,
       absl::GetFlag(FLAGS_batch_callers), 2 * batch_pairs},
  };
  std::printf(
      "end-to-end: %d callers, %s per server and workload (alternating 1 s "
      "windows among the servers); cycle = register producer + "
      "register consumer (connect via sim agent) + unregister both; "
      "irqbypassd --store=%s; %u cores; allocator %s\n",
      callers, absl::FormatDuration(duration).c_str(),
      absl::GetFlag(FLAGS_store).c_str(), std::thread::hardware_concurrency(),
      AllocatorName().c_str());
  uint64_t errors = preload.errors;
  std::ostringstream json;
  json << "{\"callers\": " << callers;
  double unary_registrations = 0;  // per second: 2 per register cycle
  const std::vector<std::string> chosen =
      absl::StrSplit(absl::GetFlag(FLAGS_workloads), ',', absl::SkipEmpty());
  for (const std::string& name : chosen) {
    bool known = false;
    for (const Workload& w : workloads) known = known || name == w.name;
    if (!known) {
      std::fprintf(stderr, "--workloads: unknown workload %s\n", name.c_str());
      return 2;
    }
  }
  for (const Workload& w : workloads) {
    if (std::find(chosen.begin(), chosen.end(), w.name) == chosen.end()) {
      continue;
    }
    std::vector<std::string> these = targets;
    if (w.mode == Caller::Mode::kDuplicate) these.push_back(error_target);
    const bool with_durable =
        !durable_target.empty() &&
        (w.mode == Caller::Mode::kCycle || w.mode == Caller::Mode::kBatch);
    if (with_durable) these.push_back(durable_target);
    std::vector<LoadResult> r =
        AlternateAmong(these, w.callers, w.mode, duration);
    for (LoadResult& each : r) {
      each.pairs *= w.scale;  // latency stays per call or cycle
    }
    if (w.mode == Caller::Mode::kCycle) {
      unary_registrations = 2 * r[0].pairs_per_second();
    }
    if (w.mode == Caller::Mode::kBatch) {
      std::printf(
          "\nbatch: %d callers, each cycle one Batch registering %d pairs (%d "
          "registrations, %d connects) and one unregistering them; latency "
          "per cycle",
          w.callers, batch_pairs, 2 * batch_pairs, batch_pairs);
    }
    std::printf("\n%s\n%-16s %10s %10s %10s %10s %10s %8s\n", w.name, "server",
                w.unit, "count", "p50", "p99", "p99.9", "errors");
    PrintLoad("irqbypassd", r[0]);
    PrintLoad("bare callback", r[1]);
    PrintLoad("bare sync", r[2]);
    std::printf(
        "irqbypassd / bare callback: %.1f%%; irqbypassd / bare sync: %.1f%%; "
        "bare sync / bare callback: %.1f%%\n",
        Ratio(r[0], r[1]) * 100, Ratio(r[0], r[2]) * 100,
        Ratio(r[2], r[1]) * 100);
    if (with_durable) {
      const LoadResult& durable = r.back();
      PrintLoad("bare, synced", durable);
      std::printf(
          "bare callback appending each call to a synced log / without: "
          "%.1f%%; "
          "irqbypassd / that: %.1f%%\n",
          Ratio(durable, r[1]) * 100, Ratio(r[0], durable) * 100);
      json << ", \"" << w.name
           << "_synced\": {\"bare_synced\": " << LoadJson(durable)
           << ", \"ratio\": " << Ratio(r[0], durable) << "}";
    }
    if (w.mode == Caller::Mode::kDuplicate) {
      PrintLoad("bare, same error", r[3]);
      std::printf(
          "bare callback answering irqbypassd's ALREADY_EXISTS (message and "
          "details) / answering OK: %.1f%%; irqbypassd / that: %.1f%%\n",
          Ratio(r[3], r[1]) * 100, Ratio(r[0], r[3]) * 100);
      json << ", \"" << w.name
           << "_same_error\": {\"bare_error\": " << LoadJson(r[3])
           << ", \"ratio\": " << Ratio(r[0], r[3]) << "}";
    }
    json << ", \"" << w.name << "\": {\"irqbypassd\": " << LoadJson(r[0])
         << ", \"bare_callback\": " << LoadJson(r[1])
         << ", \"bare_sync\": " << LoadJson(r[2])
         << ", \"ratio\": " << Ratio(r[0], r[1])
         << ", \"ratio_to_sync\": " << Ratio(r[0], r[2]) << "}";
    if (w.mode == Caller::Mode::kBatch && unary_registrations > 0) {
      std::printf(
          "irqbypassd batch registrations/s / unary register-cycle "
          "registrations/s (%.0f): %.1fx\n",
          unary_registrations, r[0].pairs_per_second() / unary_registrations);
      json << ", \"batch_over_unary\": "
           << r[0].pairs_per_second() / unary_registrations;
    }
    for (const LoadResult& each : r) errors += each.errors;
  }
  json << "}\n";
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) std::ofstream(json_out) << json.str();
  return errors == 0 ? 0 : 1;
}

// What durability costs: the same cycle against a manager with no store and
// one with the embedded store, in alternating windows, and how many fsyncs
// the embedded store made per durable write (group commit at work: with one
// fsync per write the disk's fsync latency would cap the write rate).
int RunDurability(int callers, absl::Duration duration) {
  Servers memory, embedded;
  if (!memory.StartManager("memory") || !embedded.StartManager("embedded")) {
    std::fprintf(stderr, "could not start irqbypassd\n");
    return 1;
  }
  RunLoad(memory.manager(), callers, Caller::Mode::kCycle, absl::Seconds(1));
  RunLoad(embedded.manager(), callers, Caller::Mode::kCycle, absl::Seconds(1));
  const double writes0 =
      embedded.ManagerCounter("irqbypass_store_writes_total");
  const double syncs0 =
      embedded.ManagerCounter("irqbypass_store_wal_syncs_total");
  LoadResult at_memory, at_embedded;
  Alternate(memory.manager(), embedded.manager(), callers, duration, &at_memory,
            &at_embedded);
  const double writes =
      embedded.ManagerCounter("irqbypass_store_writes_total") - writes0;
  const double syncs =
      embedded.ManagerCounter("irqbypass_store_wal_syncs_total") - syncs0;
  if (writes0 < 0 || syncs0 < 0 || writes <= 0) {
    std::fprintf(stderr, "could not read the store's counters\n");
    return 1;
  }
  const double ratio =
      at_memory.pairs_per_second() > 0
          ? at_embedded.pairs_per_second() / at_memory.pairs_per_second()
          : 0;
  // A cycle makes four durable writes: two registrations, two removals.
  const double writes_per_second = 4 * at_embedded.pairs_per_second();
  std::printf(
      "durability: %d callers, %s each (alternating 1 s windows); cycle = "
      "register producer + register consumer (connect via sim agent) + "
      "unregister both = 4 durable writes; %u cores\n",
      callers, absl::FormatDuration(duration).c_str(),
      std::thread::hardware_concurrency());
  std::printf("%-16s %10s %10s %10s %10s %10s %8s\n", "store", "pairs/s",
              "pairs", "p50", "p99", "p99.9", "errors");
  PrintLoad("memory", at_memory);
  PrintLoad("embedded", at_embedded);
  std::printf("embedded / memory throughput: %.1f%%\n", ratio * 100);
  std::printf(
      "embedded store: %.0f durable writes/s, %.0f writes, %.0f WAL fsyncs: "
      "%.3f fsyncs per write\n",
      writes_per_second, writes, syncs, syncs / writes);
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream(json_out)
        << "{\"callers\": " << callers
        << ", \"memory\": " << LoadJson(at_memory)
        << ", \"embedded\": " << LoadJson(at_embedded)
        << ", \"ratio\": " << ratio << ", \"store_writes\": " << writes
        << ", \"wal_syncs\": " << syncs << "}\n";
  }
  return at_memory.errors == 0 && at_embedded.errors == 0 ? 0 : 1;
}

// --etcd: irqbypassd on etcd against the raw etcd baseline: the same
// generator sending, per cycle, the four plainest Txns that a registration
// cycle's four durable writes could be, straight to the same etcd.
int RunEtcd(int callers, absl::Duration duration) {
  testing::EtcdCluster etcd;
  if (!etcd.Start(absl::GetFlag(FLAGS_etcd_members))) {
    std::fprintf(stderr, "could not start etcd\n");
    return 1;
  }
  std::string endpoints;
  for (const std::string& e : etcd.endpoints()) {
    absl::StrAppend(&endpoints, endpoints.empty() ? "" : ",", e);
  }
  Servers servers;
  if (!servers.StartManager("etcd", {"--etcd_endpoints=" + endpoints})) {
    std::fprintf(stderr, "could not start irqbypassd\n");
    return 1;
  }
  const std::string raw =
      kRawEtcdPrefix + etcd.endpoints()[0].substr(sizeof("http://") - 1);
  RunLoad(servers.manager(), callers, Caller::Mode::kCycle, absl::Seconds(1));
  RunLoad(raw, callers, Caller::Mode::kCycle, absl::Seconds(1));
  LoadResult ours, bare;
  Alternate(servers.manager(), raw, callers, duration, &ours, &bare);
  const double ratio = bare.pairs_per_second() > 0
                           ? ours.pairs_per_second() / bare.pairs_per_second()
                           : 0;
  std::printf(
      "etcd: %d callers, %s each (alternating 1 s windows), %zu etcd "
      "member(s); irqbypassd cycle = register producer + register consumer "
      "(connect via sim agent) + unregister both = 4 fenced etcd Txns; raw "
      "cycle = 4 one-op Txns on one key; %u cores\n",
      callers, absl::FormatDuration(duration).c_str(), etcd.endpoints().size(),
      std::thread::hardware_concurrency());
  std::printf("%-16s %10s %10s %10s %10s %10s %8s\n", "driving", "cycles/s",
              "cycles", "p50", "p99", "p99.9", "errors");
  PrintLoad("irqbypassd", ours);
  PrintLoad("raw etcd", bare);
  std::printf(
      "irqbypassd: %.0f durable writes/s; raw etcd: %.0f Txn/s; irqbypassd / "
      "raw etcd: %.1f%%\n",
      4 * ours.pairs_per_second(), 4 * bare.pairs_per_second(), ratio * 100);
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream(json_out)
        << "{\"callers\": " << callers << ", \"irqbypassd\": " << LoadJson(ours)
        << ", \"raw_etcd\": " << LoadJson(bare) << ", \"ratio\": " << ratio
        << "}\n";
  }
  return ours.errors == 0 && bare.errors == 0 ? 0 : 1;
}

int RunScale(int callers, absl::Duration duration) {
  const int small = absl::GetFlag(FLAGS_scale_small);
  const int large = absl::GetFlag(FLAGS_scale_large);
  if (small < 0 || large < small) {
    std::fprintf(stderr,
                 "--scale_small/--scale_large: need 0 <= small <= large\n");
    return 2;
  }
  // Two managers, one holding `small` pairs and one `large`, measured in
  // alternating windows (as RunThroughput does) so that drift in the
  // machine's speed does not pass for an effect of the table's size.
  Servers small_servers, large_servers;
  const std::string store = absl::GetFlag(FLAGS_store);
  if (!small_servers.StartManager(store) ||
      !large_servers.StartManager(store)) {
    std::fprintf(stderr, "could not start irqbypassd\n");
    return 1;
  }
  RunLoad(small_servers.manager(), callers, Caller::Mode::kCycle,
          absl::Seconds(1));
  RunLoad(large_servers.manager(), callers, Caller::Mode::kCycle,
          absl::Seconds(1));
  const int64_t rss_empty = large_servers.ManagerRss();
  LoadResult pre =
      RunLoad(small_servers.manager(), callers, Caller::Mode::kPreload,
              absl::ZeroDuration(), 0, small);
  LoadResult pre_large_small =
      RunLoad(large_servers.manager(), callers, Caller::Mode::kPreload,
              absl::ZeroDuration(), 0, small);
  const int64_t rss_small = large_servers.ManagerRss();
  std::fprintf(stderr, "preloading %d pairs ...\n", large - small);
  const auto t0 = Clock::now();
  LoadResult pre_large =
      RunLoad(large_servers.manager(), callers, Caller::Mode::kPreload,
              absl::ZeroDuration(), small, large - small);
  const double preload_s =
      std::chrono::duration<double>(Clock::now() - t0).count();
  const int64_t rss_large = large_servers.ManagerRss();
  pre.errors += pre_large_small.errors;
  LoadResult at_small, at_large;
  Alternate(small_servers.manager(), large_servers.manager(), callers, duration,
            &at_small, &at_large);
  const double p99_ratio = at_small.latency.p99_ns > 0
                               ? static_cast<double>(at_large.latency.p99_ns) /
                                     at_small.latency.p99_ns
                               : 0;
  const double bytes_per_pair =
      large > small
          ? static_cast<double>(rss_large - rss_small) / (large - small)
          : 0;
  std::printf(
      "scale: %d callers, %s per measurement (alternating 1 s windows "
      "between a manager holding %d pairs and one holding %d)\n",
      callers, absl::FormatDuration(duration).c_str(), small, large);
  std::printf("%-16s %10s %10s %10s %10s %10s %8s\n", "registered", "pairs/s",
              "pairs", "p50", "p99", "p99.9", "errors");
  PrintLoad(absl::StrCat(small).c_str(), at_small);
  PrintLoad(absl::StrCat(large).c_str(), at_large);
  std::printf("p99 at %d / p99 at %d: %.2fx\n", large, small, p99_ratio);
  std::printf("preload: %d pairs in %.1f s (%.0f pairs/s, %lu errors)\n",
              large - small, preload_s, (large - small) / preload_s,
              static_cast<unsigned long>(pre.errors + pre_large.errors));
  std::printf(
      "irqbypassd resident memory: %.1f MiB empty, %.1f MiB at %d, %.1f MiB "
      "at %d pairs: %.0f bytes per registered pair\n",
      rss_empty / 1048576.0, rss_small / 1048576.0, small,
      rss_large / 1048576.0, large, bytes_per_pair);
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream(json_out)
        << "{\"callers\": " << callers << ", \"small\": " << small
        << ", \"large\": " << large << ", \"at_small\": " << LoadJson(at_small)
        << ", \"at_large\": " << LoadJson(at_large)
        << ", \"p99_ratio\": " << p99_ratio
        << ", \"rss_bytes\": {\"empty\": " << rss_empty
        << ", \"small\": " << rss_small << ", \"large\": " << rss_large
        << "}, \"bytes_per_pair\": " << bytes_per_pair << "}\n";
  }
  return at_small.errors == 0 && at_large.errors == 0 &&
                 pre.errors + pre_large.errors == 0
             ? 0
             : 1;
}

// One slow VM on a host must not slow the others (issue #11): the register
// cycle of `callers` callers on ordinary VMs, against a manager whose agent
// has one slow VM that one more caller keeps connecting and disconnecting,
// and against a manager without it, in alternating windows.
int RunSlowVm(int callers, absl::Duration duration) {
  const int delay_ms = absl::GetFlag(FLAGS_slow_vm_delay_ms);
  Servers plain, with_slow;
  if (!plain.StartManager(absl::GetFlag(FLAGS_store)) ||
      !with_slow.StartManager(
          absl::GetFlag(FLAGS_store), {},
          {"--sim_slow_vms=slow-vm",
           absl::StrCat("--sim_step_delay_ms=", delay_ms)})) {
    std::fprintf(stderr, "could not start the servers\n");
    return 1;
  }
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> slow_cycles{0}, slow_errors{0};
  std::thread slow([&] {
    auto stub = v1::BypassManager::NewStub(grpc::CreateChannel(
        with_slow.manager(), grpc::InsecureChannelCredentials()));
    for (uint64_t n = 0; !stop.load(); ++n) {
      const std::string token = absl::StrCat("slow-", n);
      bool ok = true;
      auto call = [&](auto rpc) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
        ok = rpc(&ctx).ok() && ok;
      };
      v1::RegisterProducerRequest rp;
      rp.mutable_producer()->set_token(token);
      rp.mutable_producer()->set_node(kNode);
      rp.mutable_producer()->set_device("0000:99:00.0");
      v1::RegisterProducerResponse rp_out;
      call([&](grpc::ClientContext* c) {
        return stub->RegisterProducer(c, rp, &rp_out);
      });
      v1::RegisterConsumerRequest rc;
      rc.mutable_consumer()->set_token(token);
      rc.mutable_consumer()->set_node(kNode);
      rc.mutable_consumer()->set_vm("slow-vm");
      rc.mutable_consumer()->set_gsi(1);
      v1::RegisterConsumerResponse rc_out;
      call([&](grpc::ClientContext* c) {
        return stub->RegisterConsumer(c, rc, &rc_out);
      });
      v1::UnregisterConsumerRequest uc;
      uc.set_token(token);
      v1::UnregisterConsumerResponse uc_out;
      call([&](grpc::ClientContext* c) {
        return stub->UnregisterConsumer(c, uc, &uc_out);
      });
      v1::UnregisterProducerRequest up;
      up.set_token(token);
      v1::UnregisterProducerResponse up_out;
      call([&](grpc::ClientContext* c) {
        return stub->UnregisterProducer(c, up, &up_out);
      });
      ++(ok ? slow_cycles : slow_errors);
    }
  });
  // Warm up both, then measure.
  RunLoad(plain.manager(), callers, Caller::Mode::kCycle, absl::Seconds(1));
  RunLoad(with_slow.manager(), callers, Caller::Mode::kCycle, absl::Seconds(1));
  const uint64_t slow_before = slow_cycles.load();
  LoadResult without_r, with_r;
  Alternate(plain.manager(), with_slow.manager(), callers, duration, &without_r,
            &with_r);
  const uint64_t slow_done = slow_cycles.load() - slow_before;
  stop = true;
  slow.join();
  std::printf(
      "slow VM: %d callers cycling on ordinary VMs, %s per manager "
      "(alternating 1 s windows); on one manager's host one more caller "
      "cycles a VM whose add steps take %d ms each\n"
      "%-16s %10s %10s %10s %10s %10s %8s\n",
      callers, absl::FormatDuration(duration).c_str(), delay_ms, "manager",
      "cycles/s", "cycles", "p50", "p99", "p99.9", "errors");
  PrintLoad("no slow VM", without_r);
  PrintLoad("with slow VM", with_r);
  std::printf(
      "other VMs with a slow VM / without: %.1f%%; the slow VM's own cycles "
      "meanwhile: %lu (%lu failed)\n",
      Ratio(with_r, without_r) * 100, static_cast<unsigned long>(slow_done),
      static_cast<unsigned long>(slow_errors.load()));
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream(json_out) << "{\"without_slow_vm\": " << LoadJson(without_r)
                            << ", \"with_slow_vm\": " << LoadJson(with_r)
                            << ", \"ratio\": " << Ratio(with_r, without_r)
                            << ", \"slow_vm_cycles\": " << slow_done << "}\n";
  }
  return without_r.errors + with_r.errors + slow_errors.load() == 0 ? 0 : 1;
}

// What mutual TLS costs (issue #13): the same irqbypassd and sim agent
// served plaintext (--insecure) and with mutual TLS (certificates from a
// throwaway CA; the callers present an orchestrator's), for GetBinding and
// the register cycle, in alternating windows. Each caller's calls share one
// connection, so this is the cost per call (record encryption, the
// identity and role checks), not of handshakes.
int RunTls(int callers, absl::Duration duration) {
  Servers plain, tls;
  const security::testing::Pki pki(tls.dir() + "/pki");
  TlsFiles files;
  files.server = pki.For(security::Role::kServer, "irqbypassd");
  files.agent = pki.For(security::Role::kAgent, kNode);
  files.orchestrator = pki.For(security::Role::kOrchestrator, "bench");
  if (files.server.cert_file.empty() || files.agent.cert_file.empty() ||
      files.orchestrator.cert_file.empty()) {
    std::fprintf(stderr, "could not make the certificates (openssl)\n");
    return 1;
  }
  tls.UseTls(files);
  const std::string store = absl::GetFlag(FLAGS_store);
  if (!plain.StartManager(store) || !tls.StartManager(store)) {
    std::fprintf(stderr, "could not start the servers\n");
    return 1;
  }
  const std::vector<std::string> targets = {plain.manager(), tls.manager()};
  uint64_t errors = 0;
  for (const std::string& target : targets) {
    errors += RunLoad(target, callers, Caller::Mode::kPreload,
                      absl::ZeroDuration(), 0, static_cast<uint64_t>(callers))
                  .errors;
    RunLoad(target, callers, Caller::Mode::kCycle, absl::Seconds(1));
  }
  std::printf(
      "mutual TLS: irqbypassd + sim agent, plaintext vs mutual TLS, %d "
      "callers, %s each (alternating 1 s windows)\n"
      "%-16s %10s %10s %10s %10s %10s %8s\n",
      callers, absl::FormatDuration(duration).c_str(), "workload", "calls/s",
      "calls", "p50", "p99", "p99.9", "errors");
  std::string json = "{";
  for (const auto& [name, mode] :
       {std::pair<const char*, Caller::Mode>{"get_binding", Caller::Mode::kGet},
        {"register_cycle", Caller::Mode::kCycle}}) {
    const std::vector<LoadResult> r =
        AlternateAmong(targets, callers, mode, duration);
    PrintLoad(absl::StrCat(name, " plain").c_str(), r[0]);
    PrintLoad(absl::StrCat(name, " mTLS").c_str(), r[1]);
    std::printf("  %s: mutual TLS / plaintext %.1f%%\n", name,
                Ratio(r[1], r[0]) * 100);
    errors += r[0].errors + r[1].errors;
    absl::StrAppend(&json, json.size() > 1 ? ", " : "", "\"", name,
                    "\": {\"plaintext\": ", LoadJson(r[0]),
                    ", \"tls\": ", LoadJson(r[1]),
                    ", \"ratio\": ", Ratio(r[1], r[0]), "}");
  }
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) std::ofstream(json_out) << json << "}\n";
  return errors == 0 ? 0 : 1;
}

// Hostile watchers (issue #13): a watcher that never reads used to hold a
// thread and megabytes for as long as it stayed. GetBinding from
// well-behaved callers on a mutual-TLS irqbypassd, in three windows:
// before, while `identities` reader identities each hold their cap of
// watches (--max_watches_per_identity, default 100) that never read and
// try `extra` more (refused RESOURCE_EXHAUSTED), and after they are gone;
// with irqbypassd's threads and resident memory in each.
int RunAbuse(int callers, absl::Duration duration) {
  const int identities = absl::GetFlag(FLAGS_abuse_identities);
  const int extra = absl::GetFlag(FLAGS_abuse_extra);
  constexpr int kCap = 100;
  Servers servers;
  const security::testing::Pki pki(servers.dir() + "/pki");
  TlsFiles files;
  files.server = pki.For(security::Role::kServer, "irqbypassd");
  files.agent = pki.For(security::Role::kAgent, kNode);
  files.orchestrator = pki.For(security::Role::kOrchestrator, "bench");
  std::vector<security::TlsOptions> readers;
  for (int i = 0; i < identities; ++i) {
    readers.push_back(pki.For(security::Role::kReader, absl::StrCat("w", i)));
    if (readers.back().cert_file.empty()) files.server.cert_file.clear();
  }
  if (files.server.cert_file.empty() || files.agent.cert_file.empty() ||
      files.orchestrator.cert_file.empty()) {
    std::fprintf(stderr, "could not make the certificates (openssl)\n");
    return 1;
  }
  servers.UseTls(files);
  if (!servers.StartManager(
          absl::GetFlag(FLAGS_store),
          {absl::StrCat("--max_watches_per_identity=", kCap)})) {
    std::fprintf(stderr, "could not start the servers\n");
    return 1;
  }
  const std::string target = servers.manager();
  uint64_t errors =
      RunLoad(target, callers, Caller::Mode::kPreload, absl::ZeroDuration(), 0,
              static_cast<uint64_t>(callers))
          .errors;
  RunLoad(target, callers, Caller::Mode::kGet, absl::Seconds(1));
  struct Window {
    LoadResult load;
    int threads;
    int64_t rss;
  };
  auto window = [&] {
    Window w;
    w.load = RunLoad(target, callers, Caller::Mode::kGet, duration);
    w.threads = servers.ManagerThreads();
    w.rss = servers.ManagerRss();
    return w;
  };
  const Window before = window();

  struct Watch {
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::ClientReader<v1::BindingEvent>> reader;
  };
  std::vector<std::unique_ptr<v1::BypassManager::Stub>> stubs;
  std::vector<Watch> watches;
  // At most 100 streams on a connection, like gRPC's default HTTP/2
  // setting in many clients: each identity spreads its watches over
  // connections of their own.
  constexpr int kPerConnection = 50;
  for (const security::TlsOptions& reader : readers) {
    for (int i = 0; i < kCap + extra; ++i) {
      if (i % kPerConnection == 0) {
        grpc::ChannelArguments args;
        args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
        stubs.push_back(v1::BypassManager::NewStub(grpc::CreateCustomChannel(
            target, security::ChannelCredentials(reader), args)));
      }
      Watch w;
      w.context = std::make_unique<grpc::ClientContext>();
      v1::WatchBindingsRequest request;
      request.set_include_existing(true);
      w.reader = stubs.back()->WatchBindings(w.context.get(), request);
      watches.push_back(std::move(w));
    }
  }
  absl::SleepFor(absl::Seconds(1));  // every stream opened (or refused)
  const Window during = window();
  // Now (the window over) one read each tells the admitted (their first
  // event) from the refused (the stream's end, and its status).
  int refused = 0, other = 0;
  std::vector<Watch*> live;
  for (Watch& w : watches) {
    v1::BindingEvent event;
    if (w.reader->Read(&event)) {
      live.push_back(&w);
      continue;
    }
    // Ended: its status, before any cancel could replace it.
    const grpc::Status s = w.reader->Finish();
    ++(s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ? refused
                                                              : other);
  }
  for (Watch* w : live) w->context->TryCancel();
  for (Watch* w : live) {
    if (w->reader->Finish().error_code() != grpc::StatusCode::CANCELLED) {
      ++other;
    }
  }
  watches.clear();
  stubs.clear();
  absl::SleepFor(absl::Seconds(1));
  const Window after = window();

  std::printf(
      "hostile watchers: %d callers' GetBinding on a mutual-TLS irqbypassd, "
      "%s per window; during: %d identities x %d watches that never read, "
      "and %d more each past the cap\n"
      "%-16s %10s %10s %10s %10s %10s %8s %8s %10s\n",
      callers, absl::FormatDuration(duration).c_str(), identities, kCap, extra,
      "window", "calls/s", "calls", "p50", "p99", "p99.9", "errors", "threads",
      "RSS MiB");
  for (const auto& [name, w] :
       {std::pair<const char*, const Window&>{"before", before},
        {"during", during},
        {"after", after}}) {
    std::printf("%-16s %10.0f %10lu %10s %10s %10s %8lu %8d %10.1f\n", name,
                w.load.pairs_per_second(),
                static_cast<unsigned long>(w.load.pairs),
                HumanNs(static_cast<double>(w.load.latency.p50_ns)).c_str(),
                HumanNs(static_cast<double>(w.load.latency.p99_ns)).c_str(),
                HumanNs(static_cast<double>(w.load.latency.p999_ns)).c_str(),
                static_cast<unsigned long>(w.load.errors), w.threads,
                static_cast<double>(w.rss) / (1 << 20));
    errors += w.load.errors;
  }
  const double base =
      (before.load.pairs_per_second() + after.load.pairs_per_second()) / 2;
  std::printf(
      "during / mean(before, after): %.1f%%; watches refused at the cap: %d "
      "of %d tried past it (other outcomes: %d)\n",
      base > 0 ? during.load.pairs_per_second() / base * 100 : 0, refused,
      identities * extra, other);
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream(json_out)
        << "{\"before\": " << LoadJson(before.load)
        << ", \"during\": " << LoadJson(during.load)
        << ", \"after\": " << LoadJson(after.load) << ", \"threads\": ["
        << before.threads << ", " << during.threads << ", " << after.threads
        << "], \"rss_bytes\": [" << before.rss << ", " << during.rss << ", "
        << after.rss << "], \"refused\": " << refused << "}\n";
  }
  return errors == 0 && refused == identities * extra && other == 0 ? 0 : 1;
}

}  // namespace
}  // namespace irqbypass::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  // As in the servers: no lock-graph bookkeeping inside gRPC's mutexes.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const int callers = absl::GetFlag(FLAGS_callers);
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  if (callers < 1 || callers > 4000 || duration <= absl::ZeroDuration()) {
    std::fprintf(stderr, "--callers: 1..4000; --duration: positive\n");
    return 2;
  }
  const std::string target = absl::GetFlag(FLAGS_target);
  if (!target.empty()) {
    return irqbypass::bench::RunAgainstTarget(target, callers, duration);
  }
  const std::string store = absl::GetFlag(FLAGS_store);
  if (store != "embedded" && store != "memory") {
    std::fprintf(stderr, "--store: embedded|memory\n");
    return 2;
  }
  if (absl::GetFlag(FLAGS_durability)) {
    return irqbypass::bench::RunDurability(callers, duration);
  }
  if (absl::GetFlag(FLAGS_etcd)) {
    return irqbypass::bench::RunEtcd(callers, duration);
  }
  if (absl::GetFlag(FLAGS_slow_vm)) {
    return irqbypass::bench::RunSlowVm(callers, duration);
  }
  if (absl::GetFlag(FLAGS_tls)) {
    return irqbypass::bench::RunTls(callers, duration);
  }
  if (absl::GetFlag(FLAGS_abuse)) {
    return irqbypass::bench::RunAbuse(callers, duration);
  }
  return absl::GetFlag(FLAGS_scale)
             ? irqbypass::bench::RunScale(callers, duration)
             : irqbypass::bench::RunThroughput(callers, duration);
}
