#include "service/watch_slots.h"

#include <vector>

#include "gtest/gtest.h"

namespace irqbypass {
namespace {

TEST(WatchSlotsTest, PerIdentityAndTotal_RefusedNamingTheLimit_FreedOnRelease) {
  WatchSlots slots(/*per_identity=*/2, /*total=*/3);
  std::vector<std::unique_ptr<WatchSlots::Slot>> held;
  for (int i = 0; i < 2; ++i) {
    auto s = slots.Take("a");
    ASSERT_TRUE(s.ok());
    held.push_back(*std::move(s));
  }
  auto third = slots.Take("a");
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(third.status().message().find("--max_watches_per_identity"),
            std::string::npos);
  auto b = slots.Take("b");
  ASSERT_TRUE(b.ok());
  held.push_back(*std::move(b));
  auto c = slots.Take("c");  // 3 open in all
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(c.status().message().find("--max_watches)"), std::string::npos);
  EXPECT_EQ(slots.open(), 3);
  held.erase(held.begin());  // one of a's ends
  EXPECT_EQ(slots.open(), 2);
  EXPECT_TRUE(slots.Take("c").ok());  // (and gives it straight back)
  EXPECT_TRUE(slots.Take("a").ok());
  held.clear();
  EXPECT_EQ(slots.open(), 0);
}

}  // namespace
}  // namespace irqbypass
