// EtcdMirror: a standby irqbypassd's warm copy of what the leader keeps in
// etcd (EtcdStore's layout under one prefix: bindings, request outcomes,
// the revision mark), kept from an etcd Watch so that taking over needs no
// read of the whole state from etcd.
//
// A thread lists the prefix once at one etcd revision, then watches it from
// the next revision on, applying each event to the copy (bindings decoded
// as they arrive). When etcd has compacted past the revision the copy
// needs (the watch is cancelled with a compact_revision), or the stream
// breaks, it lists again or resumes where it was: the copy is always
// exactly etcd's state at `revision()`. etcd unreachable: it retries with
// backoff, and the copy stays what it was.
//
// At election, Take(E) waits until the copy has reached the election's
// revision E (the leader key's creation, which the watch also delivers):
// every write of an earlier leader was applied before its key went, so the
// copy then holds everything any leader wrote. Take stops the thread and
// hands the copy over; the mirror is spent.
#ifndef IRQBYPASS_SERVICE_ETCD_MIRROR_H_
#define IRQBYPASS_SERVICE_ETCD_MIRROR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "grpcpp/grpcpp.h"
#include "protos/etcd/rpc.grpc.pb.h"
#include "service/binding_state.h"

namespace irqbypass {

struct EtcdMirrorOptions {
  std::vector<std::string> endpoints;                     // as EtcdStoreOptions
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // likewise
  std::string prefix = "/irqbypass/";
  absl::Duration timeout = absl::Seconds(5);  // each Range page
};

// What a mirror hands over (the same content EtcdStore::Load and
// LoadRequests would read at `etcd_revision`).
struct MirrorCopy {
  int64_t etcd_revision = 0;
  // The highest irqbypass revision ever written (the mark and the stored
  // bindings' own), as Store::Load returns it.
  uint64_t last_revision = 0;
  std::vector<std::pair<std::string, BindingState>> bindings;
  std::vector<RequestRecord> requests;
};

class EtcdMirror {
 public:
  // Starts the thread. INVALID_ARGUMENT for bad endpoints; never waits for
  // etcd.
  static absl::StatusOr<std::unique_ptr<EtcdMirror>> Start(
      EtcdMirrorOptions options);
  ~EtcdMirror();  // stops the thread

  // Waits (up to `timeout`) until the copy holds etcd's state at
  // `etcd_revision` or later, then stops and hands it over. DEADLINE_EXCEEDED
  // when it did not get there (etcd unreachable); DATA_LOSS naming the key
  // when a record could not be decoded. Call once.
  // FAILED_PRECONDITION at once when the copy has not been listed yet
  // (reading etcd directly is no slower then). Request outcomes come in
  // expiry order, as LoadRequests gives them.
  absl::StatusOr<MirrorCopy> Take(int64_t etcd_revision,
                                  absl::Duration timeout);
  // Makes a waiting (or later) Take give up (CANCELLED) and stops the
  // thread; for shutdown. Thread-safe.
  void Cancel();
  // Cancel, then wait for the thread and free the copy (after a Take that
  // failed). Not concurrent with Take or the destructor.
  void Release();

  // The etcd revision the copy is at (0 before the first list).
  int64_t revision() const;
  // How many times the copy was listed from scratch (the first time
  // included): more than one means etcd compacted past the watch.
  int lists() const;
  size_t bindings() const;

  // Tests: stop applying (the watch is closed) until Resume, so that etcd
  // can move on and compact past the copy.
  void PauseForTest();
  void ResumeForTest();

 private:
  explicit EtcdMirror(EtcdMirrorOptions options);
  void Run();
  // Lists the whole prefix at one revision into fresh maps. False if etcd
  // failed (or compacted mid-list): try again.
  bool List();
  // Watches from revision() + 1 until the stream ends. True when it ended
  // because etcd compacted past it (list again).
  bool Watch();
  // One key (without the prefix) put (`value` set) or deleted.
  void ApplyLocked(const std::string& key, const std::string* value)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Stopping() const;

  const EtcdMirrorOptions options_;
  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
  std::unique_ptr<etcdserverpb::Watch::Stub> watch_;

  mutable Mutex mu_;
  absl::flat_hash_map<std::string, BindingState> bindings_ ABSL_GUARDED_BY(mu_);
  // Keyed by their etcd key ("r/<expiry>/<id>").
  absl::flat_hash_map<std::string, RequestRecord> requests_
      ABSL_GUARDED_BY(mu_);
  uint64_t mark_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t revision_ ABSL_GUARDED_BY(mu_) = 0;
  int lists_ ABSL_GUARDED_BY(mu_) = 0;
  // Keys whose current value could not be decoded (a later put or delete
  // of the key clears it).
  absl::flat_hash_map<std::string, std::string> bad_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  // The open watch's context, to cancel it from Take/Pause/the destructor.
  grpc::ClientContext* watching_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::thread thread_;
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_ETCD_MIRROR_H_
