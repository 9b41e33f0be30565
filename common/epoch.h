// Epoch-based reclamation for lock-free structures: a node unlinked from a
// shared structure may still be read by threads that found it a moment
// earlier, so it is not freed at once but "retired", and freed once every
// thread that could have seen it has left its read section.
//
//   {
//     epoch::Guard guard;        // a read section: nodes seen stay valid
//     ... load pointers, read nodes, CAS ...
//     epoch::Retire(unlinked);   // freed later, once no guard can see it
//   }
//
// Guards nest and are cheap (two stores and a load); they never block, and a
// thread stuck inside one only delays reclamation, never other threads'
// progress. One process-wide domain; every thread gets a record on first use,
// reused by later threads once it exits (what it had retired is freed by
// whichever thread collects next, so nothing is lost). Usable from
// thread_local destructors too. Thread-safe.
#ifndef IRQBYPASS_COMMON_EPOCH_H_
#define IRQBYPASS_COMMON_EPOCH_H_

#include <cstddef>
#include <cstdint>

namespace irqbypass::epoch {

class Guard {
 public:
  Guard();
  ~Guard();
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
};

// Frees `p` with `deleter(p)` once no guard entered before this call is
// still active. Callable with or without a guard held. The deleter may run
// on any thread (what an idle thread retired is freed by the next thread
// that collects), inside any Retire or Collect call and under whatever
// locks that caller holds: it must not lock or block. Freeing needs some
// thread to retire or Collect: in a process where none does, what is
// retired waits.
void Retire(void* p, void (*deleter)(void*));

template <typename T>
void RetireObject(T* p) {
  if (p == nullptr) return;
  Retire(p, [](void* q) { delete static_cast<T*>(q); });
}

// Tries to advance the epoch and frees what the calling thread retired that
// is now safe (tests and shutdown paths; normal operation does this every
// few dozen retirements). Returns how many of the calling thread's
// retirements are still pending.
size_t Collect();

// Retirements of every thread not yet freed (for tests and metrics; a
// snapshot, racy by nature).
size_t PendingApprox();

}  // namespace irqbypass::epoch

#endif  // IRQBYPASS_COMMON_EPOCH_H_
