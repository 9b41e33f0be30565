// The lock-free list on its own: inserts at the head racing walkers that
// unlink the head node (the case the epoch proof's orderings are about),
// removals by owners, and readers; under ASan/TSan a freed node touched or a
// lost insertion fails.
#include "common/lockfree_list.h"

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace irqbypass::lockfree_list {
namespace {

struct Node {
  std::atomic<uintptr_t> next{0};
  int value = 0;
};

// Inserts `node` at the head, as TokenIndex does: walk, then CAS from the
// head link the walk returned; a lost CAS walks again.
void Insert(std::atomic<uintptr_t>& head, Node* node) {
  while (true) {
    epoch::Guard guard;
    uintptr_t first;
    FindInList<Node>(
        head, [](const Node&) { return false; }, &first);
    node->next.store(first, std::memory_order_relaxed);
    if (head.compare_exchange_strong(first, LinkOf(node))) return;
  }
}

std::set<int> LiveValues(const std::atomic<uintptr_t>& head) {
  std::set<int> values;
  epoch::Guard guard;
  ForEachInList<Node>(head, [&](const Node& n) { values.insert(n.value); });
  return values;
}

TEST(LockFreeListTest, InsertRemoveFind_Sequential) {
  std::atomic<uintptr_t> head{0};
  std::vector<Node*> nodes;
  for (int i = 0; i < 5; ++i) {
    nodes.push_back(new Node);
    nodes.back()->value = i;
    Insert(head, nodes.back());
  }
  EXPECT_EQ(LiveValues(head), (std::set<int>{0, 1, 2, 3, 4}));
  {
    epoch::Guard guard;
    RemoveFromList(head, nodes[4]);  // the head
    RemoveFromList(head, nodes[2]);  // a middle one
  }
  EXPECT_EQ(LiveValues(head), (std::set<int>{0, 1, 3}));
  epoch::Guard guard;
  uintptr_t first;
  Node* found = FindInList<Node>(
      head, [](const Node& n) { return n.value == 1; }, &first);
  ASSERT_NE(found, nullptr);
  EXPECT_EQ(found->value, 1);
  EXPECT_EQ(NodeOf<Node>(first)->value, 3);  // the new head
  for (int i : {0, 1, 3}) RemoveFromList(head, nodes[i]);
  EXPECT_EQ(head.load(), 0u);
}

// Each remover owns the node it inserted and removes it while it is (very
// likely) the head; inserters push new heads at the same time. Every node
// inserted and not removed must be live at the end, and no other.
TEST(LockFreeListTest, HeadInsertsRacingHeadUnlinks_NothingLostNothingRevived) {
  std::atomic<uintptr_t> head{0};
  constexpr int kThreads = 4;
  constexpr int kPerThread = 3000;
  std::vector<std::vector<int>> kept(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        auto* node = new Node;
        node->value = t * kPerThread + i;
        Insert(head, node);
        if (i % 3 != 0) {
          // Remove at once: the node is at or near the head, and another
          // thread may be inserting in front of it right now.
          epoch::Guard guard;
          RemoveFromList(head, node);
        } else {
          kept[t].push_back(node->value);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<int> want;
  for (const auto& k : kept) want.insert(k.begin(), k.end());
  EXPECT_EQ(LiveValues(head), want);
  // And the list holds no marked node a walk would not unlink.
  epoch::Guard guard;
  uintptr_t first;
  FindInList<Node>(
      head, [](const Node&) { return false; }, &first);
  size_t linked = 0;
  for (uintptr_t link = head.load(); link != 0;
       link = NodeOf<Node>(link)->next.load() & ~kRemoved) {
    EXPECT_EQ(NodeOf<Node>(link)->next.load() & kRemoved, 0u);
    ++linked;
  }
  EXPECT_EQ(linked, want.size());
  // Clean up: remove what is left (retired, freed by later collections).
  std::vector<Node*> left;
  ForEachInList<Node>(
      head, [&](const Node& n) { left.push_back(const_cast<Node*>(&n)); });
  for (Node* n : left) RemoveFromList(head, n);
  EXPECT_EQ(head.load(), 0u);
}

}  // namespace
}  // namespace irqbypass::lockfree_list
