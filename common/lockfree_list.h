// LockFreeList: the singly linked lists behind TokenIndex's shards (token
// slots and object claims): insert at the head with one CAS, remove by
// marking a node's own link, and unlink marked nodes as walkers pass them,
// freeing them through epoch reclamation (common/epoch.h). Header-only
// templates over any Node with `std::atomic<uintptr_t> next`.
//
// A link is a node pointer whose low bit, when set, marks the node holding
// the link as removed. The orderings the epoch proof relies on, stated where
// they are used below and by callers:
//  * the unlink CAS (FindInList) is sequentially consistent: a walker that
//    entered its guard after a node was retired cannot reach it, because
//    the retirement follows the CAS that made it unreachable, and the
//    epoch cannot move two steps past that while the walker's guard (a
//    seq_cst fence after announcing itself) could still see the old link;
//  * the head-insert CAS (callers: compare_exchange_strong on the head from
//    the `first` a walk returned) is sequentially consistent and fails if
//    the head moved, in particular if a walker unlinked the head node in the
//    meantime: an insertion never links a new node in front of a node that
//    was already unlinked (the insert-racing-a-head-unlink case, tested in
//    lockfree_list_test);
//  * marking (RemoveFromList) happens before the unlink; a marked node is
//    never unmarked, so every walker that finds it marked agrees it is gone.
// Thread-safe for any mix of walkers, inserters and removers.
#ifndef IRQBYPASS_COMMON_LOCKFREE_LIST_H_
#define IRQBYPASS_COMMON_LOCKFREE_LIST_H_

#include <atomic>
#include <cstdint>

#include "common/epoch.h"

namespace irqbypass::lockfree_list {

inline constexpr uintptr_t kRemoved = 1;

// CAS attempts on this thread that lost a race and had to look again (the
// structure's measure of contention).
inline thread_local uint64_t retries = 0;

template <typename Node>
Node* NodeOf(uintptr_t link) {
  return reinterpret_cast<Node*>(link & ~kRemoved);
}

template <typename Node>
uintptr_t LinkOf(Node* node) {
  return reinterpret_cast<uintptr_t>(node);
}

// Walks a list from `head` inside an epoch guard, unlinking and retiring
// nodes marked removed on the way, and returns the first live node for
// which pred(node) holds (nullptr if none). `*first` is set to the head
// link the (last) walk started from: a node inserted at the head with a
// seq_cst CAS from *first is known not to race an insertion the walk
// missed, nor an unlink of the head node.
template <typename Node, typename Pred>
Node* FindInList(std::atomic<uintptr_t>& head, const Pred& pred,
                 uintptr_t* first) {
retry:
  std::atomic<uintptr_t>* prev = &head;
  uintptr_t curr_link = prev->load(std::memory_order_acquire);
  *first = curr_link;
  while (curr_link != 0) {
    Node* curr = NodeOf<Node>(curr_link);
    const uintptr_t next_link = curr->next.load(std::memory_order_acquire);
    if ((next_link & kRemoved) != 0) {
      uintptr_t expected = curr_link;
      // seq_cst (the default): see the header.
      if (!prev->compare_exchange_strong(expected, next_link & ~kRemoved)) {
        ++retries;
        goto retry;  // prev changed (or was itself removed): start over
      }
      if (prev == &head) *first = next_link & ~kRemoved;
      epoch::RetireObject(curr);
      curr_link = next_link & ~kRemoved;
      continue;
    }
    if (pred(*curr)) return curr;
    prev = &curr->next;
    curr_link = next_link;
  }
  return nullptr;
}

// Marks `node` removed and unlinks it (here or by the next walker). Only
// the node's owner may call it, once, inside an epoch guard.
template <typename Node>
void RemoveFromList(std::atomic<uintptr_t>& head, Node* node) {
  uintptr_t link = node->next.load();
  while ((link & kRemoved) == 0 &&
         !node->next.compare_exchange_weak(link, link | kRemoved)) {
  }
  uintptr_t first;
  FindInList<Node>(
      head, [](const Node&) { return false; }, &first);
}

// Calls fn(node) for each live node, without unlinking anything (readers);
// inside an epoch guard.
template <typename Node, typename Fn>
void ForEachInList(const std::atomic<uintptr_t>& head, const Fn& fn) {
  uintptr_t link = head.load(std::memory_order_acquire);
  while (link != 0) {
    const Node* node = NodeOf<Node>(link);
    const uintptr_t next_link = node->next.load(std::memory_order_acquire);
    if ((next_link & kRemoved) == 0) fn(*node);
    link = next_link & ~kRemoved;
  }
}

}  // namespace irqbypass::lockfree_list

#endif  // IRQBYPASS_COMMON_LOCKFREE_LIST_H_
