#include "common/allocator.h"

#ifdef IRQBYPASS_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

namespace irqbypass {

std::string AllocatorName() {
#ifdef IRQBYPASS_JEMALLOC
  const char* version = nullptr;
  size_t len = sizeof(version);
  if (mallctl("version", &version, &len, nullptr, 0) == 0 &&
      version != nullptr) {
    return std::string("jemalloc ") + version;
  }
  return "jemalloc";
#else
  return "system";
#endif
}

std::optional<uint64_t> ThreadAllocatedBytes() {
#ifdef IRQBYPASS_JEMALLOC
  uint64_t allocated = 0;
  size_t len = sizeof(allocated);
  if (mallctl("thread.allocated", &allocated, &len, nullptr, 0) == 0) {
    return allocated;
  }
#endif
  return std::nullopt;
}

}  // namespace irqbypass
