#include "service/watch_stream.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "service/bypass_service.h"
#include "service/validation.h"

namespace irqbypass {

// ---- ProgressTicker ----

ProgressTicker::ProgressTicker(std::chrono::milliseconds interval)
    : interval_(interval) {
  thread_ = std::thread([this] { Loop(); });
}

ProgressTicker::~ProgressTicker() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
    cv_.Signal();
  }
  thread_.join();
}

void ProgressTicker::Add(std::weak_ptr<WatchStream> stream) {
  MutexLock lock(&mu_);
  streams_.push_back(std::move(stream));
}

void ProgressTicker::Loop() {
  std::vector<std::shared_ptr<WatchStream>> live;
  auto next = std::chrono::steady_clock::now() + interval_;
  while (true) {
    {
      MutexLock lock(&mu_);
      while (!stop_ && std::chrono::steady_clock::now() < next) {
        cv_.WaitUntil(&mu_, next);
      }
      if (stop_) return;
      // Streams that ended are dropped here.
      auto gone =
          std::remove_if(streams_.begin(), streams_.end(),
                         [&live](const std::weak_ptr<WatchStream>& weak) {
                           std::shared_ptr<WatchStream> stream = weak.lock();
                           if (stream == nullptr) return true;
                           live.push_back(std::move(stream));
                           return false;
                         });
      streams_.erase(gone, streams_.end());
    }
    next = std::chrono::steady_clock::now() + interval_;
    for (const auto& stream : live) stream->Tick();
    live.clear();  // a stream's last reference may go here, outside mu_
  }
}

// ---- WatchStream ----

// mu_ for a scope; on leaving it, the wakes that found it held are pumped.
class ABSL_SCOPED_LOCKABLE WatchStream::Locked {
 public:
  explicit Locked(WatchStream* stream) ABSL_EXCLUSIVE_LOCK_FUNCTION(stream->mu_)
      : stream_(stream) {
    stream_->mu_.Lock();
  }
  ~Locked() ABSL_UNLOCK_FUNCTION() {
    stream_->mu_.Unlock();
    stream_->Drain();
  }
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;

 private:
  WatchStream* const stream_;
};

WatchStream::WatchStream(const v1::WatchBindingsRequest& request,
                         const TokenIndex& index, WatchHub& hub)
    : index_(index),
      hub_(hub),
      node_(request.node()),
      start_revision_(request.start_revision()),
      include_existing_(request.include_existing()),
      progress_notify_(request.progress_notify()) {}

WatchStream* WatchStream::Start(const v1::WatchBindingsRequest& request,
                                const TokenIndex& index, WatchHub& hub,
                                const Leadership* leadership,
                                ProgressTicker& ticker, grpc::Status refusal,
                                std::unique_ptr<WatchSlots::Slot> slot) {
  auto stream = std::make_shared<WatchStream>(request, index, hub);
  WatchStream* raw = stream.get();
  raw->slot_ = std::move(slot);
  raw->self_ = std::move(stream);
  raw->Begin(leadership, ticker, std::move(refusal));
  return raw;
}

void WatchStream::Begin(const Leadership* leadership, ProgressTicker& ticker,
                        grpc::Status refusal) {
  grpc::Status invalid = std::move(refusal);
  if (invalid.ok() && leadership != nullptr) {
    if (absl::Status s = leadership->Check(); !s.ok())
      invalid = ToGrpcStatus(s);
  }
  if (invalid.ok() && !node_.empty()) {
    if (auto s = ValidateNode("node", node_); !s.ok())
      invalid = ToGrpcStatus(s);
  }
  if (!invalid.ok()) {
    Locked lock(this);
    return FinishLocked(std::move(invalid));
  }
  // Every change up to `settled` is published before the subscription, so
  // the listing (or the resume) holds it: SYNCED can name it as the place
  // to resume from.
  const uint64_t settled = index_.settled_revision();
  // Subscribed before listing so that nothing committed after the listing
  // is missed. Not under mu_ (the lock order puts the hub's first); the
  // waker may run before sub_ is set, and Pump below catches up.
  std::weak_ptr<WatchStream> weak = self_;
  std::shared_ptr<WatchHub::Subscriber> sub = hub_.Subscribe(node_, [weak] {
    if (std::shared_ptr<WatchStream> stream = weak.lock()) stream->Wake();
  });
  // A plain watch (no listing) covers only what its subscription delivers:
  // every change that missed the subscription took its revision before
  // Subscribe returned, so it is at or below this.
  const uint64_t latest = index_.revision();
  Locked lock(this);
  settled_ = settled;
  sub_ = std::move(sub);
  resume_from_ = latest;
  if (start_revision_ > 0) {
    if (start_revision_ > latest) {
      return FinishLocked(grpc::Status(
          grpc::StatusCode::OUT_OF_RANGE,
          absl::StrCat("start_revision: ", start_revision_,
                       " is newer than this manager's latest revision (",
                       latest,
                       "; a manager without its store?): list and watch "
                       "again")));
    }
    if (!hub_.RemovalsAfter(start_revision_, node_, &removals_)) {
      return FinishLocked(grpc::Status(
          grpc::StatusCode::OUT_OF_RANGE,
          absl::StrCat("start_revision: ", start_revision_,
                       " is older than this manager can resume from (",
                       hub_.ResumeFloor(),
                       "): list (or watch with include_existing) and watch "
                       "again")));
    }
    phase_ = Phase::kListing;
  } else if (include_existing_) {
    phase_ = Phase::kListing;
  }
  if (progress_notify_) ticker.Add(self_);
  Pump();
}

void WatchStream::ListPage() {
  absl::StatusOr<TokenIndex::Page> page =
      index_.List(node_, kPageSize, page_token_);
  if (!page.ok()) {  // our own token: cannot be malformed
    return FinishLocked(grpc::Status(grpc::StatusCode::INTERNAL,
                                     std::string(page.status().message())));
  }
  for (const auto& [token, st] : page->items) {
    // Resuming: only what changed since.
    if (start_revision_ > 0 && st.revision <= start_revision_) continue;
    v1::BindingEvent& event = ready_.emplace_back();
    event.set_type(start_revision_ > 0 ? v1::BindingEvent::UPDATED
                                       : v1::BindingEvent::EXISTING);
    BindingToProto(token, st, event.mutable_binding());
  }
  page_token_ = std::move(page->next_page_token);
  if (!page_token_.empty()) return;
  if (start_revision_ > 0) {
    phase_ = Phase::kRemovals;
  } else {
    QueueSynced();
  }
}

void WatchStream::QueueRemovals() {
  for (const WatchHub::Removal& r : removals_) {
    // Registered again since: its UPDATED in the listing is newer.
    std::optional<BindingState> now = index_.Get(r.token);
    if (now.has_value() && now->revision > r.revision) continue;
    v1::BindingEvent& event = ready_.emplace_back();
    event.set_type(v1::BindingEvent::REMOVED);
    event.mutable_binding()->set_token(r.token);
    event.mutable_binding()->set_node(r.node);
    event.mutable_binding()->set_revision(r.revision);
  }
  removals_.clear();
  removals_.shrink_to_fit();
  QueueSynced();
}

void WatchStream::QueueSynced() {
  resume_from_ =
      start_revision_ > 0 ? std::max(start_revision_, settled_) : settled_;
  v1::BindingEvent& synced = ready_.emplace_back();
  synced.set_type(v1::BindingEvent::SYNCED);
  synced.set_resume_revision(resume_from_);
  phase_ = Phase::kLive;
}

void WatchStream::Pump() {
  // Before Begin subscribed, a waker's Wake finds nothing to do.
  while (!writing_ && !finished_ && sub_ != nullptr) {
    if (cancelled_) return FinishLocked(grpc::Status::CANCELLED);
    if (!ready_.empty()) {
      out_ = std::move(ready_.front());
      ready_.pop_front();
      return WriteLocked();
    }
    if (phase_ == Phase::kListing) {
      ListPage();
      continue;
    }
    if (phase_ == Phase::kRemovals) {
      QueueRemovals();
      continue;
    }
    if (candidate_.has_value() && sub_->Delivered(candidate_->mark)) {
      out_.Clear();
      out_.set_type(v1::BindingEvent::PROGRESS);
      out_.set_resume_revision(candidate_->revision);
      resume_from_ = candidate_->revision;
      candidate_.reset();
      return WriteLocked();
    }
    switch (sub_->Poll(&out_)) {
      case WatchHub::Subscriber::Result::kEvent:
        return WriteLocked();
      case WatchHub::Subscriber::Result::kTimeout:
        return;  // parked: the hub's waker calls Wake
      case WatchHub::Subscriber::Result::kClosed:
        return FinishLocked(
            grpc::Status(grpc::StatusCode::UNAVAILABLE,
                         "manager is shutting down; watch again"));
      case WatchHub::Subscriber::Result::kOverflow:
        return FinishLocked(
            grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                         "watcher fell too far behind; list and watch "
                         "again"));
    }
  }
}

void WatchStream::WriteLocked() {
  writing_ = true;
  // gRPC never runs OnWriteDone on this stack, so this is safe under mu_.
  StartWrite(&out_);
}

void WatchStream::FinishLocked(grpc::Status status) {
  finished_ = true;
  // OnDone never runs on this stack either.
  Finish(std::move(status));
}

void WatchStream::OnWriteDone(bool ok) {
  Locked lock(this);
  writing_ = false;
  if (!ok) return FinishLocked(grpc::Status::OK);  // the stream is gone
  Pump();
}

void WatchStream::OnCancel() {
  Locked lock(this);
  cancelled_ = true;
  Pump();  // finishes now unless a write is in flight (then after it)
}

void WatchStream::Wake() {
  wake_.store(true, std::memory_order_relaxed);
  Drain();
}

void WatchStream::Drain() {
  // The fence pairs a waker's store of wake_ before its TryLock with a
  // holder's unlock before its load of wake_ (the store-buffer pattern):
  // either the waker's TryLock succeeds, or the holder sees wake_ and
  // pumps. (TryLock fails only while the mutex is held: POSIX allows
  // pthread_mutex_trylock EBUSY only then, and glibc's is a strong CAS.)
  // wake_ is cleared before Pump, so a wake that Pump's poll missed (it
  // parked first) sets it again after, and is seen by the load below.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  while (wake_.load(std::memory_order_relaxed)) {
    if (!mu_.TryLock()) return;  // its holder drains when it unlocks
    {
      AdoptedMutexLock lock(&mu_);
      wake_.store(false, std::memory_order_relaxed);
      Pump();
    }
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
}

void WatchStream::Tick() {
  Locked lock(this);
  if (finished_ || phase_ != Phase::kLive || candidate_.has_value()) return;
  const uint64_t at = index_.settled_revision();  // before the mark
  if (at <= resume_from_) return;
  if (auto mark = sub_->TakeMark()) candidate_ = Candidate{at, *mark};
  Pump();
}

void WatchStream::OnDone() {
  std::shared_ptr<WatchHub::Subscriber> sub;
  {
    Locked lock(this);
    sub = std::move(sub_);
  }
  // Outside mu_: Unsubscribe closes the subscriber, which runs the waker.
  if (sub != nullptr) hub_.Unsubscribe(sub);
  std::shared_ptr<WatchStream> self = std::move(self_);
  // Freed here, or by the last waker or tick holding it.
}

}  // namespace irqbypass
