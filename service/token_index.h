// TokenIndex: the manager's table of what every token holds (a producer, a
// consumer, whether they are connected), sharded so that unrelated tokens
// never wait on one another.
//
// No operation on one token ever waits for an operation on another:
//  * Each shard keeps its tokens, and the physical objects they claim, in
//    lock-free lists (insertion by CAS at the head, removal by marking then
//    unlinking); unlinked nodes and replaced states are freed by epoch
//    reclamation (common/epoch.h) once no reader can still see them. A
//    thread preempted in the middle of an index operation therefore holds
//    nothing that an operation on another token needs.
//  * A per-token "op lock" (TokenLock) serialises the operations on one token
//    (register, unregister, reconcile). It is held across the round trip to
//    a node agent; it is a word in the token's slot, so other tokens, and
//    readers of this token, never wait for it. Only a second operation on
//    the same token sleeps until the first releases it (each waiter on its
//    own condition variable, listed under a per-shard mutex that a release
//    takes only when that token has waiters; the release wakes only the
//    waiter it hands over to). Waiting is fair: a release with waiters hands
//    the lock to the longest-waiting one, so newcomers cannot starve it.
//
// Readers (Get, List, ForEachCommitted) see only committed state: a side
// whose connect is still in flight is invisible until TokenLock::Commit (or
// Stage + Publish), which publishes a new immutable BindingState with one
// atomic exchange. Every state change goes through that one path: first the
// durable Store, if there is one (store.h; it may refuse, and then nothing
// changes), then the readers, then the watch stream (ChangeListener).
// Thread-safe.
#ifndef IRQBYPASS_SERVICE_TOKEN_INDEX_H_
#define IRQBYPASS_SERVICE_TOKEN_INDEX_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/mutex.h"
#include "service/binding_state.h"
#include "service/store.h"

namespace irqbypass {

// Called after every commit, in commit order for a given token, while the
// committing thread still holds that token's op lock.
class ChangeListener {
 public:
  virtual ~ChangeListener() = default;
  virtual void OnCommit(absl::string_view token, const BindingState& before,
                        const BindingState& after) = 0;
};

// Which operation took a token's lock (a metrics label).
enum class LockOp : uint8_t {
  kRegisterProducer = 0,
  kRegisterConsumer,
  kUnregisterProducer,
  kUnregisterConsumer,
  kReconcile,
  kRead,  // Get, List, watch snapshots, gauges
  kOther,
};
inline constexpr int kNumLockOps = 7;
const char* LockOpName(LockOp op);  // "register_producer", ...

// Told how long TokenIndex::Lock waited for the token's op lock: once per
// Lock, 0 when it was free (the index takes no other lock: its shared lists
// are lock-free). Called on the operating thread with no lock held; must be
// cheap and thread-safe (per-shard or per-thread cells, not one shared
// counter).
class LockWaitObserver {
 public:
  virtual ~LockWaitObserver() = default;
  virtual void OnLockWait(LockOp op, size_t shard, int64_t wait_ns) = 0;
};

class TokenIndex {
  struct Shard;
  struct Slot;
  struct ObjectClaim;

 public:
  static constexpr size_t kDefaultShards = 65536;

  // `listener`, `observer` and `store` may be null (no store: state lives
  // in memory only); they must outlive the index.
  explicit TokenIndex(size_t num_shards = kDefaultShards,
                      ChangeListener* listener = nullptr,
                      LockWaitObserver* observer = nullptr,
                      Store* store = nullptr);
  ~TokenIndex();
  TokenIndex(const TokenIndex&) = delete;
  TokenIndex& operator=(const TokenIndex&) = delete;

  // Exclusive hold on one token's operations. Move-only; releases on
  // destruction.
  class TokenLock {
   public:
    TokenLock(TokenLock&& other) noexcept;
    TokenLock& operator=(TokenLock&&) = delete;
    ~TokenLock();

    const std::string& token() const;
    // The committed state (including this holder's own commits). The
    // reference is invalid once this holder commits again: copy what is
    // needed before calling Commit.
    const BindingState& state() const;
    // Makes `next` this token's state: assigns it a new, higher revision and
    // writes it to the store (durably) without publishing it yet. On error
    // (UNAVAILABLE, reason kStoreUnavailable: the store refused) nothing
    // changed. At most one staged state at a time; the holder publishes it
    // with Publish, or the lock does on release (a durable change always
    // becomes visible).
    // With `request`, the outcome of the call making the change is written
    // in the same store write (request_log.h).
    [[nodiscard]] absl::Status Stage(BindingState next,
                                     const RequestRecord* request = nullptr);
    // Stage without waiting for the store: `done` runs once with what Stage
    // would have returned, on this thread or on the store's, after this lock
    // has recorded the outcome. Until `done` runs, the TokenLock must stay
    // where it is (not moved, not destroyed) and must not stage again: an
    // operation that continues in callbacks keeps it in a heap object that
    // `done` reaches.
    using StagedFn = absl::AnyInvocable<void(absl::Status) &&>;
    void StageAsync(BindingState next, const RequestRecord* request,
                    StagedFn done);
    // Publishes the staged state to readers, then tells the listener.
    void Publish();
    // Stage, then Publish.
    [[nodiscard]] absl::Status Commit(BindingState next);

    // Reserves a physical object (see ProducerObjectKey) for this token;
    // `tentative` while the registration still depends on a connect (see
    // ConfirmObject). Returns nullopt when reserved now or already reserved
    // by this token (and then, with `claim`, sets *claim to that
    // reservation); otherwise who holds it.
    struct ObjectHolder {
      std::string token;
      bool tentative = false;  // that registration may still be rolled back
    };
    // This token's reservation of one object, valid while this lock is held
    // and until it is released: confirms and releases it without a second
    // lookup.
    class Claim {
     private:
      friend class TokenLock;
      ObjectClaim* node_ = nullptr;
      std::atomic<uintptr_t>* list_ = nullptr;
    };
    std::optional<ObjectHolder> ClaimObject(const std::string& key,
                                            bool tentative = false,
                                            Claim* claim = nullptr);
    // Makes this token's tentative reservation final.
    void ConfirmObject(const std::string& key);
    void ConfirmObject(const Claim& claim);
    // Releases this token's reservation (no-op if another token holds the
    // object).
    void ReleaseObject(const std::string& key);
    void ReleaseObject(const Claim& claim);

   private:
    friend class TokenIndex;
    TokenLock(TokenIndex* index, size_t shard, Slot* slot)
        : index_(index), shard_(shard), slot_(slot) {}
    // Gives `next` the next revision and lists it as pending; returns the
    // pending slot it is listed in.
    uint32_t Reserve(BindingState& next);
    // `next` (reserved in `slot`) is durable: it becomes the staged state.
    void Adopt(uint32_t slot, BindingState next);
    // Installs a state read back from the store (Restore): no store write,
    // no listener, the stored revision kept.
    void Install(BindingState state);
    // The staged revision is settled (published, or abandoned).
    void Settle();
    // This token's reservation of `key` (empty if none).
    Claim FindOwnClaim(const std::string& key) const;
    TokenIndex* index_;
    size_t shard_;
    Slot* slot_;
    BindingState* staged_ = nullptr;  // owned; written to the store
    // The revision Stage handed out and not yet settled (0: none), and the
    // pending slot it is listed in.
    uint64_t pending_revision_ = 0;
    uint32_t pending_slot_ = 0;
  };

  // Waits until no other TokenLock holds `token`, then takes it. `op` labels
  // the wait for the LockWaitObserver.
  TokenLock Lock(absl::string_view token, LockOp op = LockOp::kOther);
  // Lock for an operation that must not block a thread while it waits (a
  // callback-API RPC): calls `then` with the lock once no other operation
  // holds the token. At once, on this thread, when it is free; otherwise
  // from the release that hands it over, on the releasing thread once that
  // release is done. Threads in Lock and continuations share one queue per
  // token and get the lock in the order they asked for it. `then` must not
  // block: it may start asynchronous work and keep the lock (in a heap
  // object) until that work completes. Continuations that releases hand
  // over run one after another on the releasing thread, never nested.
  using LockedFn = absl::AnyInvocable<void(TokenLock) &&>;
  void LockThen(absl::string_view token, LockOp op, LockedFn then);
  // Runs `fn` on this thread now, or, when this thread is already running
  // a handed-over continuation (or another fn given here), right after it
  // returns. A release inside `fn` queues the continuation it hands the
  // token to behind `fn`, so `fn` finishes (an operation answers its
  // caller) before the token's next operation starts.
  // (A template so that the common case, a thread not inside it, runs `fn`
  // without wrapping and queueing it.)
  template <typename Fn>
  static void RunInOrder(Fn&& fn) {
    if (InRunInOrder()) {
      QueueInOrder(absl::AnyInvocable<void() &&>(std::forward<Fn>(fn)));
      return;
    }
    BeginInOrder();
    std::forward<Fn>(fn)();
    EndInOrder();
  }
  // Whether this thread is inside RunInOrder (or a handed-over
  // continuation) now: it must not wait for an operation to finish.
  static bool InRunInOrder();
  // Takes the token's lock only if no other operation holds it (nullopt
  // otherwise); never waits. For a holder of other tokens' locks, which must
  // not wait for one more (reconciliation).
  std::optional<TokenLock> TryLock(absl::string_view token,
                                   LockOp op = LockOp::kOther);

  // Fills an empty index from `store` (start-up, before serving): every
  // stored binding with its object claims, and the revision counter past
  // everything the store has written. Not concurrent with other operations.
  // DATA_LOSS from the store, or when two stored tokens claim one object.
  // Reads the store on the calling thread and builds the index on
  // `threads` workers.
  [[nodiscard]] absl::Status Restore(Store& store, int threads = 2);
  // The same from any source with Store::Load's signature (a standby's warm
  // copy: etcd_mirror.h).
  using LoadFn = std::function<absl::StatusOr<uint64_t>(
      const std::function<absl::Status(std::string, BindingState)>&)>;
  [[nodiscard]] absl::Status Restore(const LoadFn& load, int threads = 2);

  // The last revision handed out.
  uint64_t revision() const { return revision_.load(); }
  // The highest revision R such that every revision up to R is settled:
  // published (the listener has returned from its OnCommit) or abandoned
  // (its store write failed, or a second Stage replaced it). Changes are
  // published out of revision order (a revision is handed out before the
  // store write, and an unregister publishes only after its disconnect), so
  // a watcher that has received everything published up to a moment holds
  // every change up to the settled revision read before that moment, and
  // not necessarily more (WatchBindings' PROGRESS events).
  uint64_t settled_revision() const;
  // Hands out one revision that no change gets (before serving, after
  // Restore): no revision of this process equals one an earlier process
  // handed out, so a watcher's resume point from before a restart is
  // always below the new process's resume floor.
  void SkipRevision();

  // Committed state of `token`; nullopt when it holds neither side.
  std::optional<BindingState> Get(absl::string_view token) const;
  // As Get without the copy: calls `fn` with the committed state, inside an
  // epoch guard (fn must not keep references to it, nor lock the token);
  // false, without calling fn, when the token holds neither side.
  bool Read(absl::string_view token,
            absl::FunctionRef<void(const BindingState&)> fn) const;

  static std::string ProducerObjectKey(const ProducerRecord& p);
  static std::string ConsumerObjectKey(const ConsumerRecord& c);

  struct Page {
    std::vector<std::pair<std::string, BindingState>> items;
    std::string next_page_token;  // empty at the end
  };
  // Committed bindings, optionally on one node, `page_size` at a time.
  // INVALID_ARGUMENT for a malformed page_token.
  absl::StatusOr<Page> List(absl::string_view node, size_t page_size,
                            absl::string_view page_token) const;

  // Calls fn(token, state) for every committed binding (each shard is
  // copied first; fn runs outside the index).
  void ForEachCommitted(
      const std::function<void(const std::string&, const BindingState&)>& fn)
      const;

  struct Counts {
    size_t tokens = 0;
    size_t producers = 0;
    size_t consumers = 0;
    size_t connected = 0;
  };
  // Totals; with `by_node`, also per node (one pass over every shard).
  Counts CountAll(
      absl::flat_hash_map<std::string, Counts>* by_node = nullptr) const;
  size_t num_shards() const { return shards_.size(); }

  // How many times index operations on the calling thread lost a CAS race
  // on a shared list (or found a slot being removed) and looked again: the
  // lock-free structure's measure of contention (benchmarks).
  static uint64_t RetriesOnThisThread();

 private:
  // RunInOrder's parts: queue `fn` behind what this thread runs now; mark
  // this thread as running in order; run what was queued meanwhile, in
  // order, then unmark it.
  static void QueueInOrder(absl::AnyInvocable<void() &&> fn);
  static void BeginInOrder();
  static void EndInOrder();
  static uint64_t HashOf(absl::string_view key);
  size_t ShardIndexForHash(uint64_t hash) const;
  void Release(size_t shard, Slot* slot);
  // Takes the lock, or (wait) queues for it: a thread waiter (then null)
  // sleeps here until it is handed over; a continuation (then set) is
  // queued and LockImpl returns nullopt at once (`then` runs later).
  std::optional<TokenLock> LockImpl(absl::string_view token, LockOp op,
                                    bool wait, LockedFn* then = nullptr);
  void ObserveWait(LockOp op, size_t shard,
                   std::chrono::steady_clock::time_point since) const;
  absl::Status RestoreOne(std::string token, BindingState state);
  void SettleRevision(uint32_t slot, uint64_t revision);

  std::vector<std::unique_ptr<Shard>> shards_;
  ChangeListener* const listener_;
  LockWaitObserver* const observer_;
  Store* const store_;
  // Last revision handed out (one counter, so a revision orders commits
  // across tokens as the store saw them; on its own cache line).
  alignas(64) std::atomic<uint64_t> revision_{0};
  // Revisions handed out and not yet settled, spread over slots by thread.
  // A revision is handed out and listed under the same slot lock, so a
  // reader that loads revision_ and then locks every slot finds every
  // unsettled revision up to what it loaded (settled_revision).
  static constexpr size_t kPendingSlots = 64;
  struct alignas(64) PendingSlot {
    mutable Mutex mu;
    std::vector<uint64_t> revisions ABSL_GUARDED_BY(mu);
  };
  PendingSlot pending_[kPendingSlots];
};

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_TOKEN_INDEX_H_
