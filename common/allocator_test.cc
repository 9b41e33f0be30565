#include "common/allocator.h"

#include <cstdlib>
#include <cstring>
#include <memory>

#include "gtest/gtest.h"

namespace irqbypass {
namespace {

#ifdef IRQBYPASS_JEMALLOC

TEST(AllocatorTest, NamesJemalloc) {
  EXPECT_EQ(AllocatorName().rfind("jemalloc 5.", 0), 0u) << AllocatorName();
}

// Linking the library is not enough: malloc, operator new and what other
// libraries allocate must be jemalloc's, not glibc's.
TEST(AllocatorTest, MallocAndNewAreServedByJemalloc) {
  const std::optional<uint64_t> before = ThreadAllocatedBytes();
  ASSERT_TRUE(before.has_value());
  constexpr size_t kSize = 1 << 20;
  void* p = std::malloc(kSize);
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, kSize);
  auto q = std::make_unique<char[]>(kSize);
  const std::optional<uint64_t> after = ThreadAllocatedBytes();
  std::free(p);
  ASSERT_TRUE(after.has_value());
  EXPECT_GE(*after - *before, 2 * kSize);
}

#else

TEST(AllocatorTest, SanitizerBuildsUseTheSystemAllocator) {
  EXPECT_EQ(AllocatorName(), "system");
  EXPECT_FALSE(ThreadAllocatedBytes().has_value());
}

#endif

}  // namespace
}  // namespace irqbypass
