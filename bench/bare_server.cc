// bare_server: the same gRPC service (irqbypass.v1.BypassManager) with empty
// handlers, built with irqbypassd's server options (same channel arguments).
// The end-to-end benchmark drives it beside irqbypassd: the ratio of the two
// is what irqbypass costs over gRPC itself.
//
// --api=callback (the default) serves on gRPC's callback API, each handler
// finishing inline on the thread that received the call: the fastest server
// gRPC 1.51 offers here, so the baseline to measure against. --api=sync is the
// thread-per-call sync server, kept to show the difference.
//
// --durable_dir=DIR (callback API only): every mutating call (a Batch as a
// whole) is appended to a RocksDB in DIR, as the request it received, with a
// synced write before it is answered. The baseline for what a server that
// keeps everything it acknowledged must pay, with nothing else of
// irqbypassd's work: one record per call, one writer thread that takes every
// queued call at once into one WriteBatch and one fsync (group commit) and
// answers them itself, RocksDB's default options.
#include <signal.h>

#include <cstdio>
#include <deque>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/allocator.h"
#include "grpcpp/grpcpp.h"
#include "protos/irqbypass/v1/irqbypass.grpc.pb.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"
#include "service/server_options.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0", "HOST:PORT");
ABSL_FLAG(std::string, port_file, "", "Write the bound port here");
ABSL_FLAG(std::string, api, "callback",
          "callback (gRPC's callback API) or sync (the sync server)");
ABSL_FLAG(int, grpc_max_pollers, irqbypass::kDefaultGrpcMaxPollers,
          "--api=sync: most idle gRPC server threads kept");
ABSL_FLAG(std::string, register_error_file, "",
          "If set: RegisterProducer answers with this error instead of OK "
          "(the file holds a serialized irqbypass.v1.RpcStatus, sent as the "
          "status details, its code and message as the status), so the "
          "price gRPC itself charges for an error with details can be "
          "measured apart from irqbypassd's work");
ABSL_FLAG(std::string, durable_dir, "",
          "If set (callback API only): append each mutating call's request "
          "to a RocksDB here, synced, before answering it");

namespace irqbypass::bench {
namespace {

// What RegisterProducer answers (--register_error_file; OK by default).
grpc::Status g_register_answer;

absl::Status LoadRegisterAnswer(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("--register_error_file: cannot read ", path));
  }
  std::string bytes((std::istreambuf_iterator<char>(in)),
                    std::istreambuf_iterator<char>());
  v1::RpcStatus parsed;
  if (!parsed.ParseFromString(bytes) || parsed.code() == 0) {
    return absl::InvalidArgumentError(
        "--register_error_file: not a serialized RpcStatus with a code");
  }
  g_register_answer = grpc::Status(static_cast<grpc::StatusCode>(parsed.code()),
                                   parsed.message(), bytes);
  return absl::OkStatus();
}

// A Batch answer of the same shape as irqbypassd's: one empty (OK) result
// per item.
void EmptyResults(const v1::BatchRequest& request,
                  v1::BatchResponse* response) {
  for (int i = 0; i < request.items_size(); ++i) response->add_results();
}

// The synced log of --durable_dir: each call queues its request, as
// received, as one record; one writer thread appends everything queued in
// one synced RocksDB write (keys in increasing order, so each insert lands
// at the memtable's end), then answers those calls. The least a server that
// keeps every request it acknowledged has to write.
class SyncedLog {
 public:
  static std::unique_ptr<SyncedLog> Open(const std::string& dir,
                                         std::string* error) {
    rocksdb::Options options;
    options.create_if_missing = true;
    rocksdb::DB* db = nullptr;
    rocksdb::Status s = rocksdb::DB::Open(options, dir, &db);
    if (!s.ok()) {
      *error = s.ToString();
      return nullptr;
    }
    return std::unique_ptr<SyncedLog>(new SyncedLog(db));
  }

  ~SyncedLog() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    writer_.join();
    delete db_;
  }

  // Appends `record`, then finishes `reactor` (OK once it is on disk).
  void Write(std::string record, grpc::ServerUnaryReactor* reactor) {
    absl::MutexLock lock(&mu_);
    queue_.push_back({std::move(record), reactor});
  }

 private:
  struct Call {
    std::string record;
    grpc::ServerUnaryReactor* reactor;
  };

  explicit SyncedLog(rocksdb::DB* db)
      : db_(db), writer_([this] { WriterLoop(); }) {}

  void WriterLoop() {
    std::deque<Call> taken;
    uint64_t next = 0;
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](SyncedLog* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
              return !self->queue_.empty() || self->stopping_;
            },
            this));
        if (queue_.empty()) return;
        taken.swap(queue_);
      }
      rocksdb::WriteBatch batch;
      for (const Call& call : taken) {
        char key[8];
        for (int i = 0; i < 8; ++i) key[i] = (next >> (56 - 8 * i)) & 0xff;
        ++next;
        batch.Put(rocksdb::Slice(key, sizeof(key)), call.record);
      }
      rocksdb::WriteOptions options;
      options.sync = true;
      const rocksdb::Status s = db_->Write(options, &batch);
      const grpc::Status answer =
          s.ok() ? grpc::Status::OK
                 : grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                "synced write: " + s.ToString());
      for (Call& call : taken) call.reactor->Finish(answer);
      taken.clear();
    }
  }

  rocksdb::DB* const db_;
  absl::Mutex mu_;
  std::deque<Call> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread writer_;
};

// Set by --durable_dir.
SyncedLog* g_log = nullptr;

class EmptyBypassManager final : public v1::BypassManager::Service {
  grpc::Status RegisterProducer(grpc::ServerContext*,
                                const v1::RegisterProducerRequest*,
                                v1::RegisterProducerResponse*) override {
    return g_register_answer;
  }
  grpc::Status RegisterConsumer(grpc::ServerContext*,
                                const v1::RegisterConsumerRequest*,
                                v1::RegisterConsumerResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status UnregisterProducer(grpc::ServerContext*,
                                  const v1::UnregisterProducerRequest*,
                                  v1::UnregisterProducerResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status UnregisterConsumer(grpc::ServerContext*,
                                  const v1::UnregisterConsumerRequest*,
                                  v1::UnregisterConsumerResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status GetBinding(grpc::ServerContext*, const v1::GetBindingRequest*,
                          v1::Binding*) override {
    return grpc::Status::OK;
  }
  grpc::Status ListBindings(grpc::ServerContext*,
                            const v1::ListBindingsRequest*,
                            v1::ListBindingsResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status Batch(grpc::ServerContext*, const v1::BatchRequest* request,
                     v1::BatchResponse* response) override {
    EmptyResults(*request, response);
    return grpc::Status::OK;
  }
};

// The callback-API variant: every unary method finishes at once, inline.
class EmptyCallbackBypassManager final
    : public v1::BypassManager::CallbackService {
  grpc::ServerUnaryReactor* RegisterProducer(
      grpc::CallbackServerContext* context,
      const v1::RegisterProducerRequest* request,
      v1::RegisterProducerResponse*) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    if (g_log != nullptr && g_register_answer.ok()) {
      g_log->Write(request->SerializeAsString(), reactor);
    } else {
      reactor->Finish(g_register_answer);
    }
    return reactor;
  }
  grpc::ServerUnaryReactor* RegisterConsumer(
      grpc::CallbackServerContext* context,
      const v1::RegisterConsumerRequest* request,
      v1::RegisterConsumerResponse*) override {
    return Written(context, *request);
  }
  grpc::ServerUnaryReactor* UnregisterProducer(
      grpc::CallbackServerContext* context,
      const v1::UnregisterProducerRequest* request,
      v1::UnregisterProducerResponse*) override {
    return Written(context, *request);
  }
  grpc::ServerUnaryReactor* UnregisterConsumer(
      grpc::CallbackServerContext* context,
      const v1::UnregisterConsumerRequest* request,
      v1::UnregisterConsumerResponse*) override {
    return Written(context, *request);
  }
  grpc::ServerUnaryReactor* GetBinding(grpc::CallbackServerContext* context,
                                       const v1::GetBindingRequest*,
                                       v1::Binding*) override {
    return Done(context);
  }
  grpc::ServerUnaryReactor* ListBindings(grpc::CallbackServerContext* context,
                                         const v1::ListBindingsRequest*,
                                         v1::ListBindingsResponse*) override {
    return Done(context);
  }

  grpc::ServerUnaryReactor* Batch(grpc::CallbackServerContext* context,
                                  const v1::BatchRequest* request,
                                  v1::BatchResponse* response) override {
    EmptyResults(*request, response);
    return Written(context, *request);
  }

  // Answers once `request` is on disk (--durable_dir), or at once.
  static grpc::ServerUnaryReactor* Written(
      grpc::CallbackServerContext* context,
      const google::protobuf::Message& request) {
    if (g_log == nullptr) return Done(context);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    g_log->Write(request.SerializeAsString(), reactor);
    return reactor;
  }

  static grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

int Main() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const std::string error_file = absl::GetFlag(FLAGS_register_error_file);
  if (!error_file.empty()) {
    if (absl::Status s = LoadRegisterAnswer(error_file); !s.ok()) {
      std::fprintf(stderr, "bare_server: %s\n",
                   std::string(s.message()).c_str());
      return 2;
    }
  }
  const std::string api = absl::GetFlag(FLAGS_api);
  if (api != "callback" && api != "sync") {
    std::fprintf(stderr,
                 "bare_server: --api must be callback or sync, not %s\n",
                 api.c_str());
    return 2;
  }
  std::unique_ptr<SyncedLog> log;
  const std::string durable_dir = absl::GetFlag(FLAGS_durable_dir);
  if (!durable_dir.empty()) {
    if (api != "callback") {
      std::fprintf(stderr, "bare_server: --durable_dir needs --api=callback\n");
      return 2;
    }
    std::string error;
    log = SyncedLog::Open(durable_dir, &error);
    if (log == nullptr) {
      std::fprintf(stderr, "bare_server: --durable_dir: %s\n", error.c_str());
      return 2;
    }
    g_log = log.get();
  }
  EmptyBypassManager sync_service;
  EmptyCallbackBypassManager callback_service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen),
                           grpc::InsecureServerCredentials(), &port);
  if (api == "callback") {
    builder.RegisterService(&callback_service);
  } else {
    builder.RegisterService(&sync_service);
  }
  // The same options as irqbypassd; what it leaves out on purpose is
  // irqbypassd's work: the RPC-metrics interceptor, the health and
  // reflection services and the handlers themselves.
  ApplyServerOptions(builder);
  if (api != "callback") {
    ApplySyncServerOptions(builder, absl::GetFlag(FLAGS_grpc_max_pollers));
  }
  auto server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "bare_server: cannot listen\n");
    return 2;
  }
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) WritePortFile(port_file, port);
  std::fprintf(stderr,
               "bare_server: serving, --api=%s, allocator %s, synced writes "
               "%s\n",
               api.c_str(), AllocatorName().c_str(),
               g_log != nullptr ? durable_dir.c_str() : "none");
  int sig = 0;
  sigwait(&signals, &sig);
  server->Shutdown();
  return 0;
}

}  // namespace
}  // namespace irqbypass::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  // gRPC locks absl::Mutex on every call; the system Abseil is built with
  // deadlock detection on, which costs a lock-graph update per acquisition.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return irqbypass::bench::Main();
}
