// WatchHub: fans committed binding changes out to WatchBindings streams. It
// is the TokenIndex's ChangeListener; each subscriber has a bounded queue,
// and one that falls too far behind is closed with an overflow flag (its
// stream ends with RESOURCE_EXHAUSTED) rather than slowing registrations.
//
// The commit path (OnCommit) keeps the index's rule that unrelated tokens
// never wait on one another:
//  * The subscriber list is an immutable snapshot behind one atomic
//    pointer, replaced whole (copy-on-write) by Subscribe/Unsubscribe (which
//    are rare) and freed through the epoch domain: a commit loads the
//    pointer (seq_cst: see Publish) and, unless it is the static empty
//    list (then that load is all it does), enters an epoch guard and reads
//    the list, with no lock and no shared reference count.
//    Because a subscription is one exchange, every commit after it (in
//    particular every later commit of a token whose earlier commit reached
//    the new subscriber) reaches it too.
//  * Each subscriber's queue is kSubQueues sub-queues, each with its own
//    mutex; a token always maps to the same one (by hash), so one token's
//    events keep their commit order, while events of different tokens may be
//    delivered in any order.
//
// Bound: each sub-queue holds at most ceil(max_queue / kSubQueues) undelivered
// events; a commit that finds its sub-queue full closes the subscriber with
// kOverflow. So a subscriber never has more than about max_queue events
// queued (tokens spread evenly over the sub-queues, so in practice it
// overflows when roughly max_queue events are pending; events of one token
// all land in one sub-queue).
//
// Lock order: subscriber wait mutex -> sub-queue mutex; hub mutex ->
// subscriber wait mutex. Never two of one kind.
//
// Thread-safe.
#ifndef IRQBYPASS_SERVICE_WATCH_HUB_H_
#define IRQBYPASS_SERVICE_WATCH_HUB_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"
#include "service/token_index.h"

namespace irqbypass {

class WatchHub : public ChangeListener {
 public:
  // Sub-queues per subscriber (see the bound above).
  static constexpr size_t kSubQueues = 16;

  // Called when an event arrives for a subscriber whose reader parked (Poll
  // found nothing), on the committing thread with no lock held, and when
  // the subscriber closes, possibly under the hub's mutex (Subscribe after
  // Shutdown, Unsubscribe, Shutdown). May run on any thread, several at
  // once, and spuriously; it must never call into the hub, and should not
  // block (a commit waits for it).
  using Waker = std::function<void()>;

  // One watch stream's view of the hub. Next() and Poll() are for one
  // reader (the stream's handler or reactor): they must not be called from
  // two threads at once. Everything else about it is internal to the hub.
  class Subscriber {
   public:
    enum class Result { kEvent, kTimeout, kClosed, kOverflow };
    // Waits for the next event until `deadline`. kEvent: *event is set.
    // kTimeout: nothing arrived by `deadline`. kClosed: the hub shut down
    // (events queued before that are delivered first). kOverflow: the
    // subscriber fell behind; queued events are dropped and it stays closed.
    // Never busy-waits: sleeps until an event, a close or the deadline.
    Result Next(v1::BindingEvent* event,
                std::chrono::steady_clock::time_point deadline);
    // For a subscriber with a waker: never waits. As Next, but kTimeout
    // means nothing is queued now, and the reader is then parked: the waker
    // runs when the next event arrives or the subscriber closes (then call
    // Poll again).
    Result Poll(v1::BindingEvent* event);

    // How many events each sub-queue has taken so far; nullopt once the
    // subscriber is closed (later commits skip it, so no mark covers
    // them). Delivered(mark): whether Next has handed out every event
    // queued before the mark was taken (so every change published before
    // then). Reader side, like Next.
    using Mark = std::array<uint64_t, kSubQueues>;
    std::optional<Mark> TakeMark();
    bool Delivered(const Mark& mark) const;

    Subscriber(const Subscriber&) = delete;
    Subscriber& operator=(const Subscriber&) = delete;

   private:
    friend class WatchHub;
    enum State : uint8_t { kOpen = 0, kClosed, kOverflow };
    struct alignas(64) SubQueue {
      Mutex mu;
      std::deque<v1::BindingEvent> events ABSL_GUARDED_BY(mu);
      uint64_t pushed ABSL_GUARDED_BY(mu) = 0;  // ever
    };

    Subscriber(std::string node, size_t capacity, Waker waker)
        : node_(std::move(node)),
          capacity_(capacity),
          waker_(std::move(waker)) {}

    // Commit path: appends `event` to sub-queue `queue`, or closes the
    // subscriber with kOverflow when that sub-queue is full; wakes the reader
    // if it sleeps.
    void Push(size_t queue, const v1::BindingEvent& event);
    // Leaves kOpen for `state` (no-op if already closed) and wakes the reader.
    void Close(State state);
    // Reader side: the next event without waiting (Next and Poll share it);
    // kTimeout when none is queued.
    Result Take(v1::BindingEvent* event);
    // Reader side: moves one non-empty sub-queue (round robin) into ready_.
    void Refill();
    // Reader side: whether any sub-queue holds an event.
    bool AnyQueued();
    // Reader side: frees everything queued (after an overflow).
    void DropAll();
    // Any thread (Unsubscribe): closes and frees what the sub-queues hold,
    // so an unsubscribed subscriber that a retired list still names keeps
    // no events.
    void CloseAndDrop();

    const std::string node_;
    const size_t capacity_;  // per sub-queue
    const Waker waker_;      // null: the reader waits in Next
    SubQueue queues_[kSubQueues];

    // Leaves kOpen at most once; written under wait_mu_ (so a reader about
    // to sleep cannot miss it), read lock-free by committers.
    alignas(64) std::atomic<uint8_t> state_{kOpen};
    // Set by the reader (under wait_mu_) just before it re-checks the
    // sub-queues and sleeps; a committer that pushed afterwards sees it and
    // signals (an eventcount: no lost wakeups, no lock when nobody sleeps).
    std::atomic<bool> sleeping_{false};
    Mutex wait_mu_;
    CondVar cv_;

    // Reader-only state (touched only by the one reader: Next, Poll,
    // TakeMark, Delivered).
    std::deque<v1::BindingEvent> ready_;
    size_t ready_queue_ = 0;  // the sub-queue ready_ was taken from
    size_t next_queue_ = 0;
    Mark delivered_{};  // per sub-queue, handed out by Next
  };

  explicit WatchHub(size_t max_queue = 10000);
  ~WatchHub();
  WatchHub(const WatchHub&) = delete;
  WatchHub& operator=(const WatchHub&) = delete;

  // Events for `node` only (empty: all). After Shutdown the subscriber is
  // closed at once (its Next returns kClosed). With a `waker`, the reader
  // polls (Poll) instead of waiting (Next).
  std::shared_ptr<Subscriber> Subscribe(const std::string& node,
                                        Waker waker = nullptr);
  // Stops delivery to `subscriber`: commits that start after this returns
  // do not add to it (one already running may still; the subscriber lives
  // until it is done). It is closed and what it had queued is dropped (its
  // Next returns kClosed). No-op for a subscriber that is not subscribed.
  void Unsubscribe(const std::shared_ptr<Subscriber>& subscriber);
  // Closes every subscriber (their streams end) and every later one; used at
  // shutdown.
  void Shutdown();

  // Called by the TokenIndex on the committing thread (see ChangeListener).
  void OnCommit(absl::string_view token, const BindingState& before,
                const BindingState& after) override;

  // Resuming a watch from a revision (WatchBindingsRequest.start_revision):
  // the hub remembers the last kRemovals removals (token, node, revision),
  // since a removed token leaves nothing in the index to list.
  static constexpr size_t kRemovals = 65536;
  struct Removal {
    std::string token;
    std::string node;
    uint64_t revision = 0;
  };
  // The removals on `node` (empty: all) with a revision above `after`, or
  // false when some of them may be forgotten (`after` is below
  // ResumeFloor()).
  bool RemovalsAfter(uint64_t after, const std::string& node,
                     std::vector<Removal>* out) const;
  // The oldest revision a watch can resume from: the revision this process
  // started at (SetResumeFloor), raised past every removal forgotten since.
  uint64_t ResumeFloor() const { return floor_.load(); }
  void SetResumeFloor(uint64_t revision);

 private:
  using SubscriberList = std::vector<std::shared_ptr<Subscriber>>;

  // Makes `list` the current one (one atomic exchange, so every commit
  // after it sees it) and retires the old one through the epoch domain.
  void Publish(const SubscriberList* list) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t sub_queue_capacity_;
  // Serialises Subscribe, Unsubscribe and Shutdown; never taken by OnCommit.
  Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // The current subscribers: immutable, replaced whole under mu_, read by
  // commits inside an epoch guard (no lock, no reference count). Owned.
  std::atomic<const SubscriberList*> subscribers_;
  static const SubscriberList kNoSubscribers;

  // A ring of removals; a removal takes the next slot (its own mutex, so
  // two removals contend only when they land kRemovals apart).
  struct RemovalSlot {
    mutable Mutex mu;
    Removal removal ABSL_GUARDED_BY(mu);
  };
  void RecordRemoval(absl::string_view token, const std::string& node,
                     uint64_t revision);
  std::unique_ptr<RemovalSlot[]> removals_{new RemovalSlot[kRemovals]};
  std::atomic<uint64_t> next_removal_{0};
  std::atomic<uint64_t> floor_{0};
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_WATCH_HUB_H_
