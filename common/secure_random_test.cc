#include "common/secure_random.h"

#include <bitset>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace irqbypass {
namespace {

TEST(SecureRandomTest, DistinctAcrossBlocksAndThreads) {
  std::set<uint64_t> seen;
  for (int i = 0; i < 10000; ++i) seen.insert(SecureRandom64());
  std::vector<uint64_t> other(1000);
  std::thread t([&] {
    for (uint64_t& v : other) v = SecureRandom64();
  });
  t.join();
  seen.insert(other.begin(), other.end());
  EXPECT_EQ(seen.size(), 11000u);  // a repeat in 2^64 would be a bug
}

TEST(SecureRandomTest, BitsAreBalanced) {
  // 64,000 bits: about half set; 31,000..33,000 is over 11 standard
  // deviations wide, so only a broken source (a constant, a counter, a
  // zeroed block) falls outside.
  size_t ones = 0;
  for (int i = 0; i < 1000; ++i)
    ones += std::bitset<64>(SecureRandom64()).count();
  EXPECT_GT(ones, 31000u);
  EXPECT_LT(ones, 33000u);
}

}  // namespace
}  // namespace irqbypass
