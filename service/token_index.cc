#include "service/token_index.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/epoch.h"
#include "common/lockfree_list.h"
#include "common/thread_slot.h"

namespace irqbypass {

namespace {

using lockfree_list::FindInList;
using lockfree_list::ForEachInList;
using lockfree_list::kRemoved;
using lockfree_list::LinkOf;
using lockfree_list::NodeOf;
using lockfree_list::RemoveFromList;

const BindingState kEmptyState;

// RunInOrder's state on this thread: whether it is running in order, and
// what was queued behind what runs (a release inside a continuation that
// hands the token to the next one queues it here instead of nesting it, so
// a long queue of waiters costs no stack depth).
thread_local bool draining = false;
thread_local std::deque<absl::AnyInvocable<void() &&>> in_order;

}  // namespace

bool TokenIndex::InRunInOrder() { return draining; }

void TokenIndex::QueueInOrder(absl::AnyInvocable<void() &&> fn) {
  in_order.push_back(std::move(fn));
}

void TokenIndex::BeginInOrder() { draining = true; }

void TokenIndex::EndInOrder() {
  while (!in_order.empty()) {
    absl::AnyInvocable<void()&&> next = std::move(in_order.front());
    in_order.pop_front();
    std::move(next)();
  }
  draining = false;
}

namespace {

// An object key reduced to 128 bits by two unrelated hash functions (Abseil's
// and libstdc++'s), so that each claim costs a fixed 16-byte key instead of
// the whole key string. Two different objects would have to collide in both
// 64-bit hashes at once to be confused (about 2^-128 per pair).
struct ObjectFingerprint {
  uint64_t a = 0;
  uint64_t b = 0;

  static ObjectFingerprint Of(const std::string& key) {
    return {absl::Hash<absl::string_view>{}(key),
            std::hash<std::string>{}(key)};
  }
  bool operator==(const ObjectFingerprint& o) const {
    return a == o.a && b == o.b;
  }
};

}  // namespace

// One token with state or an operation in flight.
struct TokenIndex::Slot {
  // The op lock and its waiters in one word, so that a slot with waiters can
  // never be declared dead: bits 0-1 are kFree, kHeld or kDead (released
  // empty and being removed: never taken again), the rest count waiters.
  static constexpr uint32_t kFree = 0;
  static constexpr uint32_t kHeld = 1;
  static constexpr uint32_t kDead = 2;
  static constexpr uint32_t kStateMask = 3;
  static constexpr uint32_t kOneWaiter = 4;

  std::atomic<uintptr_t> next{0};
  uint64_t hash = 0;
  std::string token;  // immutable once the slot is published
  std::atomic<uint32_t> lock{kHeld};
  // Replaced (never modified) by the op-lock holder's Commit; null until
  // the first. Readers copy it inside an epoch guard.
  std::atomic<const BindingState*> committed{nullptr};
  // Fair waiting, under the shard's mu: a waiter takes the next ticket; a
  // release that finds waiters hands the lock over (it stays kHeld, one
  // waiter fewer) and grants one more ticket; ticket t owns the lock once
  // granted > t. So waiters get the lock in ticket order, and a newcomer
  // never barges past them (it finds kHeld and queues).
  uint64_t next_ticket = 0;
  uint64_t granted = 0;

  ~Slot() { delete committed.load(std::memory_order_relaxed); }
  bool dead() const { return (lock.load() & kStateMask) == kDead; }
};

// Who holds a physical object.
struct TokenIndex::ObjectClaim {
  std::atomic<uintptr_t> next{0};
  ObjectFingerprint fingerprint;
  std::string token;  // immutable
  std::atomic<bool> tentative{false};
};

struct TokenIndex::Shard {
  // A few lists per shard keep each one short (a walk is a pointer chase):
  // under one slot and two object claims per shard-list at 262,144 tokens
  // with the default shard count.
  static constexpr size_t kSlotLists = 4;
  static constexpr size_t kObjectLists = 8;
  std::atomic<uintptr_t> slots[kSlotLists] = {};      // lists of Slot
  std::atomic<uintptr_t> objects[kObjectLists] = {};  // lists of ObjectClaim

  // The shard was chosen from the high bits of the (mixed) hash; the list
  // within it comes from other bits.
  std::atomic<uintptr_t>& SlotList(uint64_t hash) {
    return slots[(hash >> 20) % kSlotLists];
  }
  const std::atomic<uintptr_t>& SlotList(uint64_t hash) const {
    return slots[(hash >> 20) % kSlotLists];
  }
  std::atomic<uintptr_t>& ObjectList(const ObjectFingerprint& fp) {
    return objects[fp.b % kObjectLists];
  }
  // An operation waiting on a busy op lock (another operation on the same
  // token): a thread in Lock, with its own condition variable, or a
  // continuation (LockThen), on the heap. A release hands over to exactly
  // one waiter: it wakes that thread alone (with many callers on one hot
  // token, waking them all made each hand-over cost a wake-up per waiter),
  // or it unlists that continuation and runs it.
  struct Waiter {
    const Slot* slot;
    uint64_t ticket;
    CondVar wake;                // a thread
    LockedFn then;               // a continuation
    LockOp op = LockOp::kOther;  // for the wait observer (continuation)
    std::chrono::steady_clock::time_point since;
    Waiter* next = nullptr;
  };
  // Only for operations waiting on a busy op lock; the lists never take it.
  Mutex mu;
  // Oldest first: waiters are appended as they take their tickets, so a
  // token's waiters are listed in ticket order, and the one a release
  // grants is its token's first (with 65,536 shards, a shard's list rarely
  // holds another token's waiters): a hand-over finds it at once, however
  // many wait.
  Waiter* waiters ABSL_GUARDED_BY(mu) = nullptr;
  Waiter* waiters_tail ABSL_GUARDED_BY(mu) = nullptr;

  void Append(Waiter* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    w->next = nullptr;
    if (waiters_tail == nullptr) {
      waiters = w;
    } else {
      waiters_tail->next = w;
    }
    waiters_tail = w;
  }
  // Unlinks *link (whose predecessor is `prev`, null at the head).
  void Unlink(Waiter** link, Waiter* prev) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Waiter* w = *link;
    *link = w->next;
    if (waiters_tail == w) waiters_tail = prev;
  }
};

const char* LockOpName(LockOp op) {
  switch (op) {
    case LockOp::kRegisterProducer:
      return "register_producer";
    case LockOp::kRegisterConsumer:
      return "register_consumer";
    case LockOp::kUnregisterProducer:
      return "unregister_producer";
    case LockOp::kUnregisterConsumer:
      return "unregister_consumer";
    case LockOp::kReconcile:
      return "reconcile";
    case LockOp::kRead:
      return "read";
    case LockOp::kOther:
      return "other";
  }
  return "other";
}

TokenIndex::TokenIndex(size_t num_shards, ChangeListener* listener,
                       LockWaitObserver* observer, Store* store)
    : listener_(listener), observer_(observer), store_(store) {
  if (num_shards == 0) num_shards = 1;
  shards_.reserve(num_shards);
  for (size_t i = 0; i < num_shards; ++i) {
    shards_.push_back(std::make_unique<Shard>());
  }
}

TokenIndex::~TokenIndex() {
  // No thread may use the index any more; nodes still linked are freed here,
  // those already unlinked belong to epoch reclamation.
  for (auto& shard : shards_) {
    for (auto& list : shard->slots) {
      for (uintptr_t link = list.load(); link != 0;) {
        Slot* slot = NodeOf<Slot>(link);
        link = slot->next.load() & ~kRemoved;
        delete slot;
      }
    }
    for (auto& list : shard->objects) {
      for (uintptr_t link = list.load(); link != 0;) {
        ObjectClaim* claim = NodeOf<ObjectClaim>(link);
        link = claim->next.load() & ~kRemoved;
        delete claim;
      }
    }
  }
}

uint64_t TokenIndex::RetriesOnThisThread() { return lockfree_list::retries; }

uint64_t TokenIndex::HashOf(absl::string_view key) {
  return absl::Hash<absl::string_view>{}(key);
}

size_t TokenIndex::ShardIndexForHash(uint64_t hash) const {
  // Pick the shard from well-mixed high bits of the hash.
  const uint64_t mixed = hash * 0x9E3779B97F4A7C15ull;
  return static_cast<size_t>((mixed >> 32) % shards_.size());
}

TokenIndex::TokenLock TokenIndex::Lock(absl::string_view token, LockOp op) {
  return *LockImpl(token, op, /*wait=*/true);
}

std::optional<TokenIndex::TokenLock> TokenIndex::TryLock(
    absl::string_view token, LockOp op) {
  return LockImpl(token, op, /*wait=*/false);
}

void TokenIndex::LockThen(absl::string_view token, LockOp op, LockedFn then) {
  std::optional<TokenLock> lock = LockImpl(token, op, /*wait=*/true, &then);
  if (lock.has_value()) std::move(then)(*std::move(lock));
}

void TokenIndex::ObserveWait(
    LockOp op, size_t shard,
    std::chrono::steady_clock::time_point since) const {
  if (observer_ == nullptr) return;
  observer_->OnLockWait(
      op, shard,
      since == std::chrono::steady_clock::time_point()
          ? 0
          : std::chrono::duration_cast<std::chrono::nanoseconds>(
                std::chrono::steady_clock::now() - since)
                .count());
}

std::optional<TokenIndex::TokenLock> TokenIndex::LockImpl(
    absl::string_view token, LockOp op, bool wait, LockedFn* then) {
  const uint64_t hash = HashOf(token);
  const size_t shard_index = ShardIndexForHash(hash);
  Shard& shard = *shards_[shard_index];
  std::atomic<uintptr_t>& list = shard.SlotList(hash);
  // A new slot is prepared outside any shared structure and published with
  // one CAS; the thread's spare is reused when a CAS loses or the token's
  // slot is already there.
  thread_local std::unique_ptr<Slot> spare;
  Slot* slot = nullptr;
  Slot* waiting_on = nullptr;
  while (slot == nullptr) {
    epoch::Guard guard;
    uintptr_t first;
    Slot* found = FindInList<Slot>(
        list,
        [&](const Slot& s) {
          return s.hash == hash && s.token == token && !s.dead();
        },
        &first);
    if (found == nullptr) {
      if (spare == nullptr) spare = std::make_unique<Slot>();
      spare->hash = hash;
      spare->token.assign(token.data(), token.size());
      spare->lock.store(Slot::kHeld, std::memory_order_relaxed);
      spare->next.store(first, std::memory_order_relaxed);
      if (list.compare_exchange_strong(first, LinkOf(spare.get()))) {
        slot = spare.release();
      } else {
        ++lockfree_list::retries;
      }
      continue;
    }
    // Take the op lock if free; otherwise count ourselves as a waiter,
    // which keeps the slot alive (a slot with waiters is never declared
    // dead) after the guard ends.
    uint32_t word = found->lock.load();
    while (true) {
      const uint32_t state = word & Slot::kStateMask;
      if (state == Slot::kDead) {  // being removed: look again
        ++lockfree_list::retries;
        break;
      }
      if (state == Slot::kFree) {
        if (found->lock.compare_exchange_weak(word, word | Slot::kHeld)) {
          slot = found;
          break;
        }
        continue;
      }
      if (!wait) return std::nullopt;  // held by another operation
      if (found->lock.compare_exchange_weak(word, word + Slot::kOneWaiter)) {
        waiting_on = found;
        break;
      }
    }
    if (waiting_on != nullptr) break;
  }
  std::chrono::steady_clock::time_point since;
  if (waiting_on != nullptr) {
    // Another operation holds this token (say across an agent round trip).
    // No epoch guard is held meanwhile (being counted as a waiter keeps the
    // slot alive). A release grants tickets in order; the waiter of a
    // granted ticket owns the lock (it may take its ticket only after the
    // grant: then it owns the lock at once).
    if (observer_ != nullptr) since = std::chrono::steady_clock::now();
    if (then != nullptr) {
      auto me = std::make_unique<Shard::Waiter>();
      me->slot = waiting_on;
      me->then = std::move(*then);
      me->op = op;
      me->since = since;
      {
        MutexLock lock(&shard.mu);
        me->ticket = waiting_on->next_ticket++;
        if (waiting_on->granted <= me->ticket) {
          // Queued: the release that grants this ticket runs it.
          shard.Append(me.release());
          return std::nullopt;
        }
      }
      *then = std::move(me->then);  // granted already: run it here
    } else {
      MutexLock lock(&shard.mu);
      Shard::Waiter me{waiting_on, waiting_on->next_ticket++};
      if (waiting_on->granted <= me.ticket) {
        shard.Append(&me);
        while (waiting_on->granted <= me.ticket) me.wake.Wait(&shard.mu);
        Shard::Waiter** link = &shard.waiters;
        Shard::Waiter* prev = nullptr;
        while (*link != &me) {
          prev = *link;
          link = &(*link)->next;
        }
        shard.Unlink(link, prev);
      }
    }
    slot = waiting_on;
  }
  ObserveWait(op, shard_index, since);
  return TokenLock(this, shard_index, slot);
}

void TokenIndex::Release(size_t shard_index, Slot* slot) {
  Shard& shard = *shards_[shard_index];
  const BindingState* committed = slot->committed.load();
  const bool empty = committed == nullptr || committed->empty();
  uint32_t word = slot->lock.load();
  uint32_t next;
  do {
    if (word >= Slot::kOneWaiter) {
      // Hand over to the next waiter: still held, one waiter fewer.
      next = word - Slot::kOneWaiter;
    } else {
      // Nobody waits and it records nothing: declare it dead and remove it.
      // So a dead slot is always empty (and never taken again: a finder
      // that sees kDead looks again, and inserts a fresh slot), which is
      // why readers may skip dead slots and Lock never revives one.
      next = empty ? Slot::kDead : Slot::kFree;
    }
  } while (!slot->lock.compare_exchange_weak(word, next));
  if (next == Slot::kDead) {
    epoch::Guard guard;
    RemoveFromList(shard.SlotList(slot->hash), slot);
    return;
  }
  if (word >= Slot::kOneWaiter) {
    // The waiter may not have taken its ticket yet: the grant counts either
    // way (it then finds granted > its ticket at once and never sleeps).
    // Otherwise it is in the shard's list: a thread is woken alone, under
    // the mutex (it cannot leave the list, and so free its Waiter, before
    // we unlock); a continuation is unlisted and run once we unlock.
    std::unique_ptr<Shard::Waiter> continuation;
    {
      MutexLock lock(&shard.mu);
      const uint64_t ticket = slot->granted++;
      Shard::Waiter* prev = nullptr;
      for (Shard::Waiter** link = &shard.waiters; *link != nullptr;
           prev = *link, link = &(*link)->next) {
        Shard::Waiter* w = *link;
        if (w->slot != slot || w->ticket != ticket) continue;
        if (w->then) {
          shard.Unlink(link, prev);
          continuation.reset(w);
        } else {
          w->wake.Signal();
        }
        break;
      }
    }
    if (continuation != nullptr) {
      RunInOrder(
          [this, shard_index, slot, w = std::move(continuation)]() mutable {
            ObserveWait(w->op, shard_index, w->since);
            std::move(w->then)(TokenLock(this, shard_index, slot));
          });
    }
  }
}

TokenIndex::TokenLock::TokenLock(TokenLock&& other) noexcept
    : index_(other.index_),
      shard_(other.shard_),
      slot_(other.slot_),
      staged_(other.staged_),
      pending_revision_(other.pending_revision_),
      pending_slot_(other.pending_slot_) {
  other.slot_ = nullptr;
  other.staged_ = nullptr;
  other.pending_revision_ = 0;
}

TokenIndex::TokenLock::~TokenLock() {
  if (slot_ == nullptr) return;
  Publish();  // the store holds it already: readers must see it too
  index_->Release(shard_, slot_);
}

const std::string& TokenIndex::TokenLock::token() const { return slot_->token; }

const BindingState& TokenIndex::TokenLock::state() const {
  // Only the op-lock holder replaces `committed`, so what it points to stays
  // valid until this holder's next Commit.
  const BindingState* committed = slot_->committed.load();
  return committed != nullptr ? *committed : kEmptyState;
}

uint32_t TokenIndex::TokenLock::Reserve(BindingState& next) {
  // From the index's counter, so a token's revisions keep rising even after
  // it was emptied and its slot dropped; listed as pending in the same
  // critical section (settled_revision).
  const uint32_t slot = ThreadSlot() % kPendingSlots;
  PendingSlot& pending = index_->pending_[slot];
  MutexLock lock(&pending.mu);
  next.revision = index_->revision_.fetch_add(1) + 1;
  pending.revisions.push_back(next.revision);
  return slot;
}

void TokenIndex::TokenLock::Adopt(uint32_t slot, BindingState next) {
  // A second Stage replaces an unpublished one, whose revision is then
  // abandoned (only now: until this write, the first was what would be
  // published).
  Settle();
  pending_slot_ = slot;
  pending_revision_ = next.revision;
  delete staged_;
  staged_ = new BindingState(std::move(next));
}

absl::Status TokenIndex::TokenLock::Stage(BindingState next,
                                          const RequestRecord* request) {
  const uint32_t slot = Reserve(next);
  if (index_->store_ != nullptr) {
    absl::Status written =
        index_->store_->WriteAndWait(StoreChange{slot_->token, next, request});
    if (!written.ok()) {
      // Abandoned; an earlier staged state (still to be published) keeps
      // its own revision pending.
      index_->SettleRevision(slot, next.revision);
      return written;
    }
  }
  Adopt(slot, std::move(next));
  return absl::OkStatus();
}

void TokenIndex::TokenLock::StageAsync(BindingState next,
                                       const RequestRecord* request,
                                       StagedFn done) {
  const uint32_t slot = Reserve(next);
  if (index_->store_ == nullptr) {
    Adopt(slot, std::move(next));
    std::move(done)(absl::OkStatus());
    return;
  }
  // The store's callback is a std::function (copyable): it shares the
  // write's state. The store reads the change before it calls back.
  struct Write {
    TokenLock* lock;
    uint32_t slot;
    BindingState next;
    StagedFn done;
  };
  auto write = std::make_shared<Write>(
      Write{this, slot, std::move(next), std::move(done)});
  const StoreChange change{slot_->token, write->next, request};
  index_->store_->Write(
      absl::MakeConstSpan(&change, 1), [write](absl::Status written) {
        if (written.ok()) {
          write->lock->Adopt(write->slot, std::move(write->next));
        } else {
          write->lock->index_->SettleRevision(write->slot,
                                              write->next.revision);
        }
        std::move(write->done)(std::move(written));
      });
}

void TokenIndex::TokenLock::Settle() {
  if (pending_revision_ == 0) return;
  index_->SettleRevision(pending_slot_, pending_revision_);
  pending_revision_ = 0;
}

void TokenIndex::SettleRevision(uint32_t slot, uint64_t revision) {
  PendingSlot& pending = pending_[slot];
  MutexLock lock(&pending.mu);
  auto it =
      std::find(pending.revisions.begin(), pending.revisions.end(), revision);
  if (it != pending.revisions.end()) {
    *it = pending.revisions.back();
    pending.revisions.pop_back();
  }
}

void TokenIndex::SkipRevision() { revision_.fetch_add(1); }

uint64_t TokenIndex::settled_revision() const {
  // Loaded first: every revision up to `latest` was listed before this
  // load, so it is still listed below unless it was settled.
  const uint64_t latest = revision_.load();
  uint64_t settled = latest;
  for (const PendingSlot& pending : pending_) {
    MutexLock lock(&pending.mu);
    for (uint64_t r : pending.revisions) settled = std::min(settled, r - 1);
  }
  return settled;
}

absl::Status TokenIndex::TokenLock::Commit(BindingState next) {
  absl::Status staged = Stage(std::move(next));
  if (staged.ok()) Publish();
  return staged;
}

void TokenIndex::TokenLock::Install(BindingState state) {
  delete slot_->committed.exchange(new BindingState(std::move(state)));
}

void TokenIndex::TokenLock::Publish() {
  if (staged_ == nullptr) return;
  BindingState* fresh = staged_;
  staged_ = nullptr;
  // seq_cst: the epoch proof and the watch hub's no-subscriber check rely
  // on this exchange being sequentially consistent.
  const BindingState* before = slot_->committed.exchange(fresh);
  if (index_->listener_ != nullptr) {
    index_->listener_->OnCommit(
        slot_->token, before != nullptr ? *before : kEmptyState, *fresh);
  }
  Settle();  // after the listener: watchers have it queued
  // Readers may still be copying it.
  epoch::RetireObject(const_cast<BindingState*>(before));
}

absl::Status TokenIndex::RestoreOne(std::string token, BindingState state) {
  if (state.empty()) return absl::OkStatus();
  TokenLock lock = Lock(token, LockOp::kOther);
  auto claim = [&](const std::string& key) -> absl::Status {
    if (auto holder = lock.ClaimObject(key)) {
      return absl::DataLossError(absl::StrCat(
          "store: tokens \"", holder->token, "\" and \"", token,
          "\" both hold one ", key[0] == 'p' ? "producer" : "consumer",
          "; the store is inconsistent"));
    }
    return absl::OkStatus();
  };
  if (state.producer) {
    absl::Status s = claim(ProducerObjectKey(*state.producer));
    if (!s.ok()) return s;
  }
  if (state.consumer) {
    absl::Status s = claim(ConsumerObjectKey(*state.consumer));
    if (!s.ok()) return s;
  }
  uint64_t seen = revision_.load();
  while (state.revision > seen &&
         !revision_.compare_exchange_weak(seen, state.revision)) {
  }
  lock.Install(std::move(state));
  return absl::OkStatus();
}

absl::Status TokenIndex::Restore(Store& store, int threads) {
  return Restore(
      [&store](
          const std::function<absl::Status(std::string, BindingState)>& fn) {
        return store.Load(fn);
      },
      threads);
}

absl::Status TokenIndex::Restore(const LoadFn& load, int threads) {
  // The store is read on this thread; `threads` workers build the index
  // from batches of what it read (the index takes concurrent inserts, and
  // filling it is most of the work: allocation and cache misses).
  using Batch = std::vector<std::pair<std::string, BindingState>>;
  constexpr size_t kBatch = 2048;
  constexpr size_t kMaxQueued = 16;
  Mutex mu;
  CondVar changed;
  std::deque<Batch> queue;  // guarded by mu
  bool done = false;        // guarded by mu
  absl::Status failed;      // guarded by mu
  auto worker = [&] {
    while (true) {
      Batch batch;
      {
        MutexLock lock(&mu);
        while (queue.empty() && !done) changed.Wait(&mu);
        if (queue.empty()) return;
        batch = std::move(queue.front());
        queue.pop_front();
        changed.SignalAll();
      }
      for (auto& [token, state] : batch) {
        absl::Status s = RestoreOne(std::move(token), std::move(state));
        if (!s.ok()) {
          MutexLock lock(&mu);
          if (failed.ok()) failed = s;
          changed.SignalAll();  // the reader may be waiting for room
          return;
        }
      }
    }
  };
  std::vector<std::thread> workers;
  for (int i = 0; i < std::max(1, threads); ++i) workers.emplace_back(worker);
  Batch batch;
  auto flush = [&]() -> absl::Status {
    MutexLock lock(&mu);
    while (queue.size() >= kMaxQueued && failed.ok()) changed.Wait(&mu);
    if (!failed.ok()) return failed;
    queue.push_back(std::move(batch));
    batch = Batch();
    batch.reserve(kBatch);
    changed.SignalAll();
    return absl::OkStatus();
  };
  batch.reserve(kBatch);
  absl::StatusOr<uint64_t> last =
      load([&](std::string token, BindingState state) -> absl::Status {
        batch.emplace_back(std::move(token), std::move(state));
        return batch.size() < kBatch ? absl::OkStatus() : flush();
      });
  absl::Status flushed =
      last.ok() && !batch.empty() ? flush() : absl::OkStatus();
  {
    MutexLock lock(&mu);
    done = true;
    changed.SignalAll();
  }
  for (auto& t : workers) t.join();
  if (!failed.ok()) return failed;
  if (!last.ok()) return last.status();
  if (!flushed.ok()) return flushed;
  if (*last > revision_.load()) revision_.store(*last);
  return absl::OkStatus();
}

std::optional<BindingState> TokenIndex::Get(absl::string_view token) const {
  std::optional<BindingState> result;
  Read(token, [&](const BindingState& st) { result = st; });
  return result;
}

bool TokenIndex::Read(absl::string_view token,
                      absl::FunctionRef<void(const BindingState&)> fn) const {
  const uint64_t hash = HashOf(token);
  const Shard& shard = *shards_[ShardIndexForHash(hash)];
  epoch::Guard guard;
  bool found = false;
  ForEachInList<Slot>(shard.SlotList(hash), [&](const Slot& s) {
    if (found || s.hash != hash || s.token != token) return;
    const BindingState* committed = s.committed.load();
    if (committed != nullptr && !committed->empty()) {
      found = true;
      fn(*committed);
    }
  });
  return found;
}

std::optional<TokenIndex::TokenLock::ObjectHolder>
TokenIndex::TokenLock::ClaimObject(const std::string& key, bool tentative,
                                   Claim* claim) {
  const ObjectFingerprint fp = ObjectFingerprint::Of(key);
  Shard& shard = *index_->shards_[index_->ShardIndexForHash(fp.a)];
  std::atomic<uintptr_t>& list = shard.ObjectList(fp);
  epoch::Guard guard;
  std::unique_ptr<ObjectClaim> fresh;
  while (true) {
    uintptr_t first;
    ObjectClaim* found = FindInList<ObjectClaim>(
        list, [&](const ObjectClaim& c) { return c.fingerprint == fp; },
        &first);
    if (found != nullptr && found->token != slot_->token) {
      return ObjectHolder{found->token, found->tentative.load()};
    }
    if (found == nullptr) {
      if (fresh == nullptr) {
        fresh = std::make_unique<ObjectClaim>();
        fresh->fingerprint = fp;
        fresh->token = slot_->token;
        fresh->tentative.store(tentative, std::memory_order_relaxed);
      }
      fresh->next.store(first, std::memory_order_relaxed);
      if (!list.compare_exchange_strong(first, LinkOf(fresh.get()))) {
        ++lockfree_list::retries;
        continue;
      }
      found = fresh.release();
    }
    // Only this token's op-lock holder removes this token's claims, so the
    // node stays valid for *claim while the lock is held.
    if (claim != nullptr) {
      claim->node_ = found;
      claim->list_ = &list;
    }
    return std::nullopt;
  }
}

TokenIndex::TokenLock::Claim TokenIndex::TokenLock::FindOwnClaim(
    const std::string& key) const {
  const ObjectFingerprint fp = ObjectFingerprint::Of(key);
  Claim claim;
  claim.list_ =
      &index_->shards_[index_->ShardIndexForHash(fp.a)]->ObjectList(fp);
  epoch::Guard guard;
  uintptr_t first;
  claim.node_ = FindInList<ObjectClaim>(
      *claim.list_,
      [&](const ObjectClaim& c) {
        return c.fingerprint == fp && c.token == slot_->token;
      },
      &first);
  return claim;
}

void TokenIndex::TokenLock::ConfirmObject(const std::string& key) {
  ConfirmObject(FindOwnClaim(key));
}

void TokenIndex::TokenLock::ConfirmObject(const Claim& claim) {
  if (claim.node_ != nullptr) claim.node_->tentative.store(false);
}

void TokenIndex::TokenLock::ReleaseObject(const std::string& key) {
  ReleaseObject(FindOwnClaim(key));
}

void TokenIndex::TokenLock::ReleaseObject(const Claim& claim) {
  if (claim.node_ == nullptr) return;
  epoch::Guard guard;
  RemoveFromList(*claim.list_, claim.node_);
}

std::string TokenIndex::ProducerObjectKey(const ProducerRecord& p) {
  // '\n' cannot appear in validated names, so keys cannot collide.
  return absl::StrCat("p\n", p.node, "\n", p.device, "\n", p.irq_index, "\n",
                      p.vector);
}

std::string TokenIndex::ConsumerObjectKey(const ConsumerRecord& c) {
  return absl::StrCat("c\n", c.node, "\n", c.vm, "\n", c.gsi);
}

// Page tokens are "<shard>/<last token returned from that shard>"; the
// shard is parsed up to the first '/', so tokens may contain '/' too.
absl::StatusOr<TokenIndex::Page> TokenIndex::List(
    absl::string_view node, size_t page_size,
    absl::string_view page_token) const {
  size_t start_shard = 0;
  std::string after;
  if (!page_token.empty()) {
    const size_t slash = page_token.find('/');
    uint64_t shard_index = 0;
    if (slash == absl::string_view::npos ||
        !absl::SimpleAtoi(page_token.substr(0, slash), &shard_index) ||
        shard_index >= shards_.size() || slash + 1 >= page_token.size()) {
      return absl::InvalidArgumentError(
          "page_token: malformed (pass next_page_token from the previous "
          "response)");
    }
    start_shard = static_cast<size_t>(shard_index);
    after = std::string(page_token.substr(slash + 1));
  }
  Page page;
  if (page_size == 0) return page;
  for (size_t s = start_shard; s < shards_.size(); ++s) {
    std::vector<std::pair<std::string, BindingState>> found;
    {
      epoch::Guard guard;
      for (const auto& list : shards_[s]->slots) {
        ForEachInList<Slot>(list, [&](const Slot& slot) {
          const BindingState* st = slot.committed.load();
          if (st == nullptr || st->empty()) return;
          if (!node.empty() && st->node() != node) return;
          if (s == start_shard && !after.empty() && slot.token <= after) {
            return;
          }
          found.emplace_back(slot.token, *st);
        });
      }
    }
    std::sort(found.begin(), found.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& item : found) {
      if (page.items.size() == page_size) {
        const auto& last = page.items.back();
        page.next_page_token = absl::StrCat(
            ShardIndexForHash(HashOf(last.first)), "/", last.first);
        return page;
      }
      page.items.push_back(std::move(item));
    }
  }
  return page;
}

void TokenIndex::ForEachCommitted(
    const std::function<void(const std::string&, const BindingState&)>& fn)
    const {
  for (const auto& shard : shards_) {
    std::vector<std::pair<std::string, BindingState>> found;
    {
      epoch::Guard guard;
      for (const auto& list : shard->slots) {
        ForEachInList<Slot>(list, [&](const Slot& slot) {
          const BindingState* st = slot.committed.load();
          if (st != nullptr && !st->empty()) {
            found.emplace_back(slot.token, *st);
          }
        });
      }
    }
    for (const auto& [token, st] : found) fn(token, st);
  }
}

TokenIndex::Counts TokenIndex::CountAll(
    absl::flat_hash_map<std::string, Counts>* by_node) const {
  Counts c;
  auto add = [](Counts& to, const BindingState& st) {
    ++to.tokens;
    if (st.producer) ++to.producers;
    if (st.consumer) ++to.consumers;
    if (st.connected) ++to.connected;
  };
  for (const auto& shard : shards_) {
    epoch::Guard guard;
    for (const auto& list : shard->slots) {
      ForEachInList<Slot>(list, [&](const Slot& slot) {
        const BindingState* st = slot.committed.load();
        if (st == nullptr || st->empty()) return;
        add(c, *st);
        if (by_node != nullptr) add((*by_node)[st->node()], *st);
      });
    }
  }
  return c;
}

}  // namespace irqbypass
