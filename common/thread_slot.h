// ThreadSlot: a small per-thread number handed out round robin on a thread's
// first call (1, 2, 3, ...; never 0), for spreading per-thread state over a
// fixed array of cells so that up to N threads never share one
// (ThreadSlot() % N). A zero-initialised thread_local: no TLS guard on the
// fast path. Thread-safe.
#ifndef IRQBYPASS_COMMON_THREAD_SLOT_H_
#define IRQBYPASS_COMMON_THREAD_SLOT_H_

#include <cstdint>

namespace irqbypass {

namespace thread_slot_internal {
inline thread_local uint32_t slot = 0;  // 0 until the first call
uint32_t Assign();
}  // namespace thread_slot_internal

inline uint32_t ThreadSlot() {
  const uint32_t slot = thread_slot_internal::slot;
  return slot != 0 ? slot : thread_slot_internal::Assign();
}

}  // namespace irqbypass

#endif  // IRQBYPASS_COMMON_THREAD_SLOT_H_
