#include "common/epoch.h"

#include <algorithm>
#include <atomic>
#include <utility>
#include <vector>

#include "common/mutex.h"

namespace irqbypass::epoch {
namespace {

struct Retired {
  void* p;
  void (*deleter)(void*);
  uint64_t epoch;  // the global epoch when it was retired
};

// One per thread (reused after the thread exits). Records are never freed:
// there are about as many as threads ever alive at once.
struct Record {
  // 0 while outside any guard; (epoch << 1) | 1 inside one entered at epoch.
  std::atomic<uint64_t> state{0};
  std::atomic<bool> owned{true};
  std::atomic<size_t> pending{0};  // retired.size(), readable by others
  // The global epoch when `retired` was last collected (readable by others:
  // a record whose owner keeps collecting is left to it).
  std::atomic<uint64_t> last_collect{0};
  Record* next = nullptr;  // immutable once the record is published

  // Owner thread only.
  int depth = 0;

  // What the owner retired. Any collecting thread may free what is safe
  // (try_lock: never waits for the owner), so a thread that goes idle does
  // not keep what it retired until it retires more or exits.
  Mutex mu;
  size_t collect_at ABSL_GUARDED_BY(mu) = 64;
  // The epoch at the last collection.
  uint64_t collected_at_epoch ABSL_GUARDED_BY(mu) = 0;
  std::vector<Retired> retired ABSL_GUARDED_BY(mu);
};

std::atomic<Record*> g_records{nullptr};
std::atomic<uint64_t> g_epoch{1};

Record* AcquireRecord() {
  for (Record* r = g_records.load(); r != nullptr; r = r->next) {
    bool owned = false;
    if (!r->owned.load(std::memory_order_relaxed) &&
        r->owned.compare_exchange_strong(owned, true)) {
      return r;
    }
  }
  auto* r = new Record;
  Record* head = g_records.load();
  do {
    r->next = head;
  } while (!g_records.compare_exchange_weak(head, r));
  return r;
}

void CollectRecord(Record* r);

// The calling thread's record. tls_record and tls_exiting are trivially
// destructible, so they stay usable while the thread's other thread_local
// objects are destroyed; ThreadHandle releases the record at thread exit.
thread_local Record* tls_record = nullptr;
thread_local bool tls_exiting = false;

void ReleaseRecord() {
  Record* r = tls_record;
  tls_record = nullptr;
  CollectRecord(r);
  r->state.store(0);
  // What is still pending stays in the record for its next owner, or for
  // any collector (DrainOthers).
  r->owned.store(false);
}

struct ThreadHandle {
  bool armed = false;
  ~ThreadHandle() {
    tls_exiting = true;
    if (!armed) return;
    if (tls_record != nullptr && tls_record->depth == 0) ReleaseRecord();
  }
};

thread_local ThreadHandle tls_handle;

Record* Mine() {
  if (tls_record == nullptr) {
    tls_record = AcquireRecord();
    // Touching the handle arranges for its destructor to run at thread
    // exit; once it has run (a later thread_local destructor using a
    // guard), the record is released after each use instead.
    if (!tls_exiting) tls_handle.armed = true;
    // An adopted record may hold what its previous thread retired.
    if (tls_record->pending.load(std::memory_order_relaxed) != 0) {
      CollectRecord(tls_record);
    }
  }
  return tls_record;
}

// Moves the global epoch on by one if every thread inside a guard entered it
// at the current epoch.
void TryAdvance() {
  uint64_t e = g_epoch.load();
  for (Record* r = g_records.load(); r != nullptr; r = r->next) {
    const uint64_t s = r->state.load();
    if ((s & 1) != 0 && (s >> 1) != e) return;
  }
  g_epoch.compare_exchange_strong(e, e + 1);
}

// Takes out of `r` what is safe to free at epoch `now`; r->mu held.
std::vector<Retired> TakeReady(Record* r, uint64_t now)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu);

void FreeAll(const std::vector<Retired>& ready) {
  for (const Retired& x : ready) x.deleter(x.p);
}

// Frees what is safe in the records of threads that exited and of threads
// that went idle (not collected for a few epochs), never waiting for an
// owner that is retiring right now. Busy owners' records are left to them:
// taking their locks on every collection would bounce them between cores.
void DrainOthers(Record* mine, uint64_t now) {
  constexpr uint64_t kIdleEpochs = 4;
  for (Record* r = g_records.load(); r != nullptr; r = r->next) {
    if (r == mine || r->pending.load(std::memory_order_relaxed) == 0) continue;
    if (r->owned.load(std::memory_order_relaxed) &&
        r->last_collect.load(std::memory_order_relaxed) + kIdleEpochs > now) {
      continue;
    }
    std::vector<Retired> ready;
    {
      if (!r->mu.TryLock()) continue;
      AdoptedMutexLock unlock(&r->mu);  // also if TakeReady throws
      ready = TakeReady(r, now);
    }
    FreeAll(ready);
  }
}

void CollectRecord(Record* r) {
  TryAdvance();
  const uint64_t now = g_epoch.load();
  std::vector<Retired> ready;
  {
    MutexLock lock(&r->mu);
    ready = TakeReady(r, now);
  }
  // Deleters run outside the lock (they may retire in turn).
  FreeAll(ready);
  DrainOthers(r, now);
}

std::vector<Retired> TakeReady(Record* r, uint64_t now) {
  // What was retired at epoch e was unlinked before the epoch reached
  // e + 1. The epoch reached e + 2 only once every thread then inside a guard
  // had entered it at e + 1 or later, that is after the unlink; a guard
  // entered later still cannot find the node either. So e + 2 <= now is safe.
  std::vector<Retired> ready;
  auto keep =
      std::partition(r->retired.begin(), r->retired.end(),
                     [now](const Retired& x) { return x.epoch + 2 > now; });
  ready.assign(keep, r->retired.end());
  r->retired.erase(keep, r->retired.end());
  // While a guard holds the epoch back, collecting on every retirement would
  // cost O(n) each time: wait for the list to double, or for the epoch to
  // move two steps (everything kept now is then free).
  r->collect_at = std::max<size_t>(64, 2 * r->retired.size());
  r->collected_at_epoch = now;
  r->last_collect.store(now, std::memory_order_relaxed);
  r->pending.store(r->retired.size(), std::memory_order_relaxed);
  return ready;
}

}  // namespace

Guard::Guard() {
  Record* r = Mine();
  if (r->depth++ == 0) {
    r->state.store((g_epoch.load() << 1) | 1, std::memory_order_relaxed);
    // Loads of shared pointers after this point must not move before the
    // announcement: one full fence (the store itself need not be one).
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
}

Guard::~Guard() {
  Record* r = Mine();
  if (--r->depth == 0) {
    r->state.store(0, std::memory_order_release);
    if (tls_exiting) ReleaseRecord();
  }
}

void Retire(void* p, void (*deleter)(void*)) {
  if (p == nullptr) return;
  Record* r = Mine();
  const uint64_t now = g_epoch.load();
  bool collect = false;
  {
    MutexLock lock(&r->mu);
    r->retired.push_back({p, deleter, now});
    r->pending.store(r->retired.size(), std::memory_order_relaxed);
    collect = r->retired.size() >= r->collect_at ||
              (r->retired.size() >= 64 && now >= r->collected_at_epoch + 2);
  }
  if (collect) CollectRecord(r);
  if (tls_exiting && r->depth == 0) ReleaseRecord();
}

size_t Collect() {
  Record* r = Mine();
  CollectRecord(r);
  const size_t pending = r->pending.load(std::memory_order_relaxed);
  if (tls_exiting && r->depth == 0) ReleaseRecord();
  return pending;
}

size_t PendingApprox() {
  size_t n = 0;
  for (Record* r = g_records.load(); r != nullptr; r = r->next) {
    n += r->pending.load(std::memory_order_relaxed);
  }
  return n;
}

}  // namespace irqbypass::epoch
