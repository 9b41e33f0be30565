#include "common/thread_slot.h"

#include <atomic>

namespace irqbypass::thread_slot_internal {

uint32_t Assign() {
  static std::atomic<uint32_t> next{1};
  uint32_t assigned = next.fetch_add(1, std::memory_order_relaxed);
  if (assigned == 0) assigned = next.fetch_add(1, std::memory_order_relaxed);
  slot = assigned;
  return assigned;
}

}  // namespace irqbypass::thread_slot_internal
