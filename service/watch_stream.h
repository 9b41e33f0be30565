// WatchStream: one WatchBindings call on gRPC's callback API. No thread is
// held while it lives: it writes one event at a time, and when it has
// nothing to write it parks on its WatchHub subscriber, whose waker starts
// the next write from the committing thread (or, for PROGRESS, from the
// shared ProgressTicker's thread).
//
// What it sends, in order: with include_existing, every binding as EXISTING
// (listed a page at a time, after subscribing, so nothing committed after
// the listing is missed; an item may then appear as EXISTING and UPDATED,
// revisions order them) and SYNCED; with start_revision, every binding
// changed since as UPDATED, every removal since as REMOVED, and SYNCED;
// then the subscription's events as they commit, with PROGRESS about once a
// second when progress_notify is set. It ends UNAVAILABLE when the manager
// shuts down and RESOURCE_EXHAUSTED when it falls too far behind.
//
// Thread-safe. Lock order: hub mutex -> stream mutex -> subscriber mutexes.
#ifndef IRQBYPASS_SERVICE_WATCH_STREAM_H_
#define IRQBYPASS_SERVICE_WATCH_STREAM_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"
#include "grpcpp/grpcpp.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"
#include "service/leadership.h"
#include "service/token_index.h"
#include "service/watch_hub.h"
#include "service/watch_slots.h"

namespace irqbypass {

class WatchStream;

// One thread for every progress_notify watcher: each interval, each live
// one is told to consider a PROGRESS event.
class ProgressTicker {
 public:
  explicit ProgressTicker(std::chrono::milliseconds interval);
  ~ProgressTicker();  // stops and joins the thread
  ProgressTicker(const ProgressTicker&) = delete;
  ProgressTicker& operator=(const ProgressTicker&) = delete;

  void Add(std::weak_ptr<WatchStream> stream);

 private:
  void Loop();

  const std::chrono::milliseconds interval_;
  Mutex mu_;
  CondVar cv_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::weak_ptr<WatchStream>> streams_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

class WatchStream final : public grpc::ServerWriteReactor<v1::BindingEvent> {
 public:
  // The reactor for one call, already started (it may have finished with
  // an error). None of the references is owned; all must outlive the call.
  // `leadership` may be null (always serving). `refusal` not OK: the
  // caller may not watch; the stream ends with it at once.
  static WatchStream* Start(const v1::WatchBindingsRequest& request,
                            const TokenIndex& index, WatchHub& hub,
                            const Leadership* leadership,
                            ProgressTicker& ticker,
                            grpc::Status refusal = grpc::Status::OK,
                            std::unique_ptr<WatchSlots::Slot> slot = nullptr);

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_);
  void OnCancel() override ABSL_LOCKS_EXCLUDED(mu_);
  void OnDone() override ABSL_LOCKS_EXCLUDED(mu_);

  // The hub's waker: an event arrived or the subscriber closed. Never
  // blocks (a commit runs it): if another thread holds the stream, that
  // thread pumps for it when it lets go.
  void Wake() ABSL_LOCKS_EXCLUDED(mu_);
  // The ticker's: a PROGRESS event may be due.
  void Tick() ABSL_LOCKS_EXCLUDED(mu_);

  // Events listed per page of the snapshot.
  static constexpr size_t kPageSize = 256;

  WatchStream(const v1::WatchBindingsRequest& request, const TokenIndex& index,
              WatchHub& hub);

 private:
  enum class Phase { kListing, kRemovals, kLive };
  class ABSL_SCOPED_LOCKABLE Locked;

  // Pumps for every Wake that found mu_ held, unless another thread holds
  // it now (which then does). Called with mu_ released.
  void Drain() ABSL_LOCKS_EXCLUDED(mu_);

  // Validates, subscribes and starts writing (or finishes with an error).
  void Begin(const Leadership* leadership, ProgressTicker& ticker,
             grpc::Status refusal) ABSL_LOCKS_EXCLUDED(mu_);
  // Starts the next write, or finishes, or parks; no-op while a write is in
  // flight.
  void Pump() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One page of the listing into ready_; at its end, what follows it.
  void ListPage() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void QueueRemovals() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void QueueSynced() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishLocked(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const TokenIndex& index_;
  WatchHub& hub_;
  const std::string node_;
  const uint64_t start_revision_;
  const bool include_existing_;
  const bool progress_notify_;
  // Keeps this alive from Start to OnDone (the hub's waker and the ticker
  // hold weak references).
  // Its place among the open watches (null: not counted); given back
  // when this object is freed.
  std::unique_ptr<WatchSlots::Slot> slot_;
  std::shared_ptr<WatchStream> self_;

  Mutex mu_;
  // A Wake not yet pumped for (set before its TryLock; see Drain).
  std::atomic<bool> wake_{false};
  std::shared_ptr<WatchHub::Subscriber> sub_ ABSL_GUARDED_BY(mu_);
  Phase phase_ ABSL_GUARDED_BY(mu_) = Phase::kLive;
  std::string page_token_ ABSL_GUARDED_BY(mu_);
  std::vector<WatchHub::Removal> removals_ ABSL_GUARDED_BY(mu_);
  // Written before anything from the subscription.
  std::deque<v1::BindingEvent> ready_ ABSL_GUARDED_BY(mu_);
  // SYNCED names this revision (see Begin).
  uint64_t settled_ ABSL_GUARDED_BY(mu_) = 0;
  // Where a watcher could resume from, as last told (SYNCED, PROGRESS).
  uint64_t resume_from_ ABSL_GUARDED_BY(mu_) = 0;
  // PROGRESS: once the changes queued when the settled revision was read
  // have all been written, every change up to it has been sent.
  struct Candidate {
    uint64_t revision;
    WatchHub::Subscriber::Mark mark;
  };
  std::optional<Candidate> candidate_ ABSL_GUARDED_BY(mu_);
  v1::BindingEvent out_ ABSL_GUARDED_BY(mu_);  // the write in flight
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_WATCH_STREAM_H_
