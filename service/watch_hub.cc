#include "service/watch_hub.h"

#include <algorithm>
#include <functional>
#include <string_view>
#include <utility>

#include "common/epoch.h"
#include "service/validation.h"

namespace irqbypass {
namespace {

size_t SubQueueOf(absl::string_view token) {
  return std::hash<std::string_view>{}(
             std::string_view(token.data(), token.size())) %
         WatchHub::kSubQueues;
}

}  // namespace

// ---- Subscriber: the commit side ----

void WatchHub::Subscriber::Push(size_t queue, const v1::BindingEvent& event) {
  SubQueue& q = queues_[queue];
  if (state_.load(std::memory_order_relaxed) != kOpen) return;
  v1::BindingEvent copy = event;  // copied before the reader's lock is taken
  std::deque<v1::BindingEvent> dropped;  // freed after the lock is released
  {
    MutexLock lock(&q.mu);
    if (state_.load(std::memory_order_relaxed) != kOpen) return;
    if (q.events.size() < capacity_) {
      q.events.push_back(std::move(copy));
      ++q.pushed;
    } else {
      // Mark the overflow before releasing q.mu, so no later event lands in
      // the emptied sub-queue (the reader would deliver it after a gap).
      uint8_t expected = kOpen;
      state_.compare_exchange_strong(expected, kOverflow,
                                     std::memory_order_acq_rel);
      dropped.swap(q.events);
    }
  }
  if (!dropped.empty()) {
    Close(kOverflow);  // wakes the reader (the state is already set)
    return;
  }
  // The reader sets sleeping_ before it re-checks the sub-queues under their
  // mutexes. Either it saw this event there, or its check came before our
  // push and, through q.mu, its sleeping_ = true is visible here. Only the
  // committer that flips it back to false takes wait_mu_; that waits until
  // the reader is inside its wait, so the signal is not lost.
  if (sleeping_.load(std::memory_order_relaxed) &&
      sleeping_.exchange(false, std::memory_order_acq_rel)) {
    if (waker_) {
      waker_();  // a parked poller (Poll) holds no lock to wait for
      return;
    }
    MutexLock lock(&wait_mu_);
    cv_.Signal();
  }
}

void WatchHub::Subscriber::Close(State state) {
  {
    MutexLock lock(&wait_mu_);
    uint8_t expected = kOpen;
    state_.compare_exchange_strong(expected, state, std::memory_order_acq_rel);
    cv_.SignalAll();
  }
  if (waker_) waker_();  // outside wait_mu_: the waker polls
}

// ---- Subscriber: the reader side ----

void WatchHub::Subscriber::Refill() {
  for (size_t i = 0; i < kSubQueues; ++i) {
    const size_t index = (next_queue_ + i) % kSubQueues;
    SubQueue& q = queues_[index];
    MutexLock lock(&q.mu);
    if (q.events.empty()) continue;
    // ready_ is empty; take the whole sub-queue in its (per-token) order.
    ready_.swap(q.events);
    ready_queue_ = index;
    next_queue_ = (index + 1) % kSubQueues;
    return;
  }
}

std::optional<WatchHub::Subscriber::Mark> WatchHub::Subscriber::TakeMark() {
  Mark mark{};
  for (size_t i = 0; i < kSubQueues; ++i) {
    MutexLock lock(&queues_[i].mu);
    mark[i] = queues_[i].pushed;
  }
  // A commit that skipped this subscriber did so after it was closed, and
  // settled after that: a caller that read the settled revision before
  // this sees the close here.
  if (state_.load(std::memory_order_acquire) != kOpen) return std::nullopt;
  return mark;
}

bool WatchHub::Subscriber::Delivered(const Mark& mark) const {
  for (size_t i = 0; i < kSubQueues; ++i) {
    if (delivered_[i] < mark[i]) return false;
  }
  return true;
}

bool WatchHub::Subscriber::AnyQueued() {
  for (SubQueue& q : queues_) {
    MutexLock lock(&q.mu);
    if (!q.events.empty()) return true;
  }
  return false;
}

void WatchHub::Subscriber::CloseAndDrop() {
  Close(kClosed);
  for (SubQueue& q : queues_) {
    std::deque<v1::BindingEvent> dropped;  // freed outside q.mu
    MutexLock lock(&q.mu);
    dropped.swap(q.events);
  }
}

void WatchHub::Subscriber::DropAll() {
  ready_.clear();
  for (SubQueue& q : queues_) {
    std::deque<v1::BindingEvent> dropped;
    MutexLock lock(&q.mu);
    dropped.swap(q.events);
  }
}

WatchHub::Subscriber::Result WatchHub::Subscriber::Take(
    v1::BindingEvent* event) {
  const uint8_t state = state_.load(std::memory_order_acquire);
  if (state == kOverflow) {
    DropAll();
    return Result::kOverflow;
  }
  if (ready_.empty()) Refill();
  if (!ready_.empty()) {
    *event = std::move(ready_.front());
    ready_.pop_front();
    ++delivered_[ready_queue_];
    return Result::kEvent;
  }
  if (state == kClosed) return Result::kClosed;
  return Result::kTimeout;
}

WatchHub::Subscriber::Result WatchHub::Subscriber::Next(
    v1::BindingEvent* event, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    if (Result r = Take(event); r != Result::kTimeout) return r;
    if (std::chrono::steady_clock::now() >= deadline) return Result::kTimeout;

    MutexLock lock(&wait_mu_);
    sleeping_.store(true, std::memory_order_seq_cst);
    // Re-check after announcing the sleep (see Push); Close changes state_
    // under wait_mu_, so it cannot slip in between either.
    if (state_.load(std::memory_order_relaxed) == kOpen && !AnyQueued()) {
      cv_.WaitUntil(&wait_mu_, deadline);
    }
    sleeping_.store(false, std::memory_order_relaxed);
  }
}

WatchHub::Subscriber::Result WatchHub::Subscriber::Poll(
    v1::BindingEvent* event) {
  for (;;) {
    if (Result r = Take(event); r != Result::kTimeout) return r;
    MutexLock lock(&wait_mu_);
    sleeping_.store(true, std::memory_order_seq_cst);
    // As in Next: a push after this sees sleeping_ and runs the waker; a
    // push before it is found here. Close runs the waker in any case.
    if (state_.load(std::memory_order_relaxed) == kOpen && !AnyQueued()) {
      return Result::kTimeout;  // parked
    }
    sleeping_.store(false, std::memory_order_relaxed);
  }
}

// ---- WatchHub ----

WatchHub::WatchHub(size_t max_queue)
    : sub_queue_capacity_(
          std::max<size_t>(1, (max_queue + kSubQueues - 1) / kSubQueues)),
      subscribers_(&kNoSubscribers) {}

// Never freed: with no subscribers, a commit loads its address and stops.
const WatchHub::SubscriberList WatchHub::kNoSubscribers;

WatchHub::~WatchHub() {
  // No commit runs any more (the index that calls OnCommit is gone first).
  const SubscriberList* list = subscribers_.load();
  if (list != &kNoSubscribers) delete list;
}

void WatchHub::Publish(const SubscriberList* list) {
  // seq_cst, as is OnCommit's load: with a commit's seq_cst exchange of the
  // token's state (TokenLock::Publish) and a new subscriber's seq_cst loads
  // of it (its snapshot, after Subscribe returns), this is the store-buffer
  // pattern. Only a single total order over all four makes sure that either
  // the commit finds the new list here or the snapshot finds the commit.
  if (list->empty() && list != &kNoSubscribers) {
    delete list;
    list = &kNoSubscribers;
  }
  const SubscriberList* old =
      subscribers_.exchange(list, std::memory_order_seq_cst);
  // Commits that loaded it may still be delivering: freed after them.
  if (old != &kNoSubscribers) {
    epoch::RetireObject(const_cast<SubscriberList*>(old));
  }
}

std::shared_ptr<WatchHub::Subscriber> WatchHub::Subscribe(
    const std::string& node, Waker waker) {
  std::shared_ptr<Subscriber> sub(
      new Subscriber(node, sub_queue_capacity_, std::move(waker)));
  MutexLock lock(&mu_);
  if (shut_down_) {
    // Arrived after Shutdown: closed from the start, so its stream ends now.
    sub->Close(Subscriber::kClosed);
    return sub;
  }
  // Under mu_ the current list is stable (only this holder replaces it).
  auto* next = new SubscriberList(*subscribers_.load());
  next->push_back(sub);
  Publish(next);
  return sub;
}

void WatchHub::Unsubscribe(const std::shared_ptr<Subscriber>& subscriber) {
  MutexLock lock(&mu_);
  const SubscriberList* current = subscribers_.load();
  auto it = std::find(current->begin(), current->end(), subscriber);
  if (it == current->end()) return;
  auto* next = new SubscriberList(*current);
  next->erase(next->begin() + (it - current->begin()));
  Publish(next);
  // A commit that loaded the old list may still push to it; the queued
  // events go now rather than when the epoch frees that list.
  subscriber->CloseAndDrop();
}

void WatchHub::Shutdown() {
  MutexLock lock(&mu_);
  shut_down_ = true;
  for (const auto& sub : *subscribers_.load()) sub->Close(Subscriber::kClosed);
  // Closed subscribers take no events: drop them so commits go back to the
  // fast path.
  Publish(new SubscriberList());
}

void WatchHub::SetResumeFloor(uint64_t revision) {
  uint64_t seen = floor_.load();
  while (revision > seen && !floor_.compare_exchange_weak(seen, revision)) {
  }
}

void WatchHub::RecordRemoval(absl::string_view token, const std::string& node,
                             uint64_t revision) {
  RemovalSlot& slot = removals_[next_removal_.fetch_add(1) % kRemovals];
  MutexLock lock(&slot.mu);
  // The removal this one overwrites is forgotten: no watch can resume from
  // before it any more.
  SetResumeFloor(slot.removal.revision);
  slot.removal.token.assign(token.data(), token.size());
  slot.removal.node = node;
  slot.removal.revision = revision;
}

bool WatchHub::RemovalsAfter(uint64_t after, const std::string& node,
                             std::vector<Removal>* out) const {
  if (after < floor_.load()) return false;
  for (size_t i = 0; i < kRemovals; ++i) {
    const RemovalSlot& slot = removals_[i];
    MutexLock lock(&slot.mu);
    if (slot.removal.revision <= after) continue;
    if (!node.empty() && slot.removal.node != node) continue;
    out->push_back(slot.removal);
  }
  // A removal overwritten while we read may have been one we needed.
  return after >= floor_.load();
}

void WatchHub::OnCommit(absl::string_view token, const BindingState& before,
                        const BindingState& after) {
  if (after.empty()) RecordRemoval(token, before.node(), after.revision);
  // seq_cst: see Publish. (A plain load on x86 and ARMv8.) This load is the
  // commit's side of that argument; the one in the guard may only be newer.
  if (subscribers_.load(std::memory_order_seq_cst) == &kNoSubscribers) return;
  epoch::Guard guard;  // keeps the list loaded below alive
  const SubscriberList* list = subscribers_.load(std::memory_order_seq_cst);
  if (list->empty()) return;
  v1::BindingEvent event;
  if (after.empty()) {
    event.set_type(v1::BindingEvent::REMOVED);
    event.mutable_binding()->set_token(std::string(token));
    event.mutable_binding()->set_node(before.node());
    event.mutable_binding()->set_revision(after.revision);
  } else {
    event.set_type(v1::BindingEvent::UPDATED);
    BindingToProto(token, after, event.mutable_binding());
  }
  const std::string& node = event.binding().node();
  const size_t queue = SubQueueOf(token);
  for (const auto& sub : *list) {
    if (!sub->node_.empty() && sub->node_ != node) continue;
    sub->Push(queue, event);
  }
}

}  // namespace irqbypass
