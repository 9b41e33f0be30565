// The memory allocator a binary runs on.
//
// irqbypassd, the agent and the benchmark's servers link jemalloc (Debian's
// libjemalloc, 5.3): a registration allocates its operation, closures,
// statuses and protobuf messages on one thread and frees many of them on
// another, which glibc's malloc serves from contended arenas with frequent
// consolidation. With jemalloc the batch workload ran 23-42% faster and a
// million registered pairs took 454 bytes each instead of 634
// (docs/performance.md, "The allocator and the agent's wake-ups").
//
// Builds with a sanitizer (--config=asan, tsan, fuzz) define
// allocator=system and keep glibc's malloc, which the sanitizer replaces
// with its own.
#ifndef IRQBYPASS_COMMON_ALLOCATOR_H_
#define IRQBYPASS_COMMON_ALLOCATOR_H_

#include <cstdint>
#include <optional>
#include <string>

namespace irqbypass {

// "jemalloc 5.3.0-0-g54eaed1d8b56b1aa528be3bdd1877e59c56fa90c" (the
// library's own version string), or "system" (glibc's malloc). Logged at
// start-up.
std::string AllocatorName();

// Bytes this thread has allocated so far, as jemalloc counts them; nullopt
// when running on the system allocator. For the test that proves malloc
// reaches jemalloc.
std::optional<uint64_t> ThreadAllocatedBytes();

}  // namespace irqbypass

#endif  // IRQBYPASS_COMMON_ALLOCATOR_H_
