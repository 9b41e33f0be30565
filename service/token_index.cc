#include "service/token_index.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace irqbypass {

namespace {
const std::string kEmptyString;
}  // namespace

const std::string& BindingState::node() const {
  if (producer.has_value()) return producer->node;
  if (consumer.has_value()) return consumer->node;
  return kEmptyString;
}

struct TokenIndex::Slot {
  BindingState committed;  // written only by the op-lock holder, under mu
  bool busy = false;       // the op lock; guarded by the shard's mu
  uint32_t waiters = 0;    // threads waiting for the op lock; shard mu
};

namespace {

// An object key reduced to 128 bits by two unrelated hash functions (Abseil's
// and libstdc++'s), so that each claim costs a fixed 16-byte key instead of a
// heap-allocated string. Two different objects would have to collide in both
// 64-bit hashes at once to be confused (about 2^-128 per pair).
struct ObjectFingerprint {
  uint64_t a = 0;
  uint64_t b = 0;

  static ObjectFingerprint Of(const std::string& key) {
    return {absl::Hash<absl::string_view>{}(key),
            std::hash<std::string>{}(key)};
  }
  bool operator==(const ObjectFingerprint& o) const {
    return a == o.a && b == o.b;
  }
  template <typename H>
  friend H AbslHashValue(H h, const ObjectFingerprint& f) {
    return H::combine(std::move(h), f.a, f.b);
  }
};

}  // namespace

struct TokenIndex::Shard {
  mutable Mutex mu;
  CondVar released;  // signalled when a slot's op lock is released
  uint64_t revision ABSL_GUARDED_BY(mu) = 0;  // last revision handed out
  absl::flat_hash_map<std::string, std::unique_ptr<Slot>> slots
      ABSL_GUARDED_BY(mu);
  // Object (fingerprint of its key) -> token holding it.
  absl::flat_hash_map<ObjectFingerprint, TokenLock::ObjectHolder> objects
      ABSL_GUARDED_BY(mu);
};

const char* LockOpName(LockOp op) {
  switch (op) {
    case LockOp::kRegisterProducer:
      return "register_producer";
    case LockOp::kRegisterConsumer:
      return "register_consumer";
    case LockOp::kUnregisterProducer:
      return "unregister_producer";
    case LockOp::kUnregisterConsumer:
      return "unregister_consumer";
    case LockOp::kReconcile:
      return "reconcile";
    case LockOp::kRead:
      return "read";
    case LockOp::kOther:
      return "other";
  }
  return "other";
}

// A shard-mutex hold that reports its wait to the observer, if any. An
// uncontended acquisition (TryLock succeeds) waited 0 ns and reads no clock;
// only a contended one is timed.
class ABSL_SCOPED_LOCKABLE TokenIndex::TimedLock {
 public:
  TimedLock(const TokenIndex& index, size_t shard, LockOp op)
      ABSL_EXCLUSIVE_LOCK_FUNCTION(index.shards_[shard]->mu)
      : mu_(&index.shards_[shard]->mu) {
    if (index.observer_ == nullptr) {
      mu_->Lock();
      return;
    }
    if (mu_->TryLock()) {
      index.observer_->OnLockWait(op, shard, 0);
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    mu_->Lock();
    index.observer_->OnLockWait(
        op, shard,
        std::chrono::duration_cast<std::chrono::nanoseconds>(
            std::chrono::steady_clock::now() - start)
            .count());
  }
  ~TimedLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  TimedLock(const TimedLock&) = delete;
  TimedLock& operator=(const TimedLock&) = delete;

 private:
  Mutex* const mu_;
};

TokenIndex::TokenIndex(size_t num_shards, ChangeListener* listener,
                       LockWaitObserver* observer)
    : listener_(listener), observer_(observer) {
  if (num_shards == 0) num_shards = 1;
  shards_.reserve(num_shards);
  for (size_t i = 0; i < num_shards; ++i) {
    shards_.push_back(std::make_unique<Shard>());
  }
}

TokenIndex::~TokenIndex() = default;

size_t TokenIndex::ShardIndex(absl::string_view key) const {
  return ShardIndexForHash(absl::Hash<absl::string_view>{}(key));
}

size_t TokenIndex::ShardIndexForHash(uint64_t hash) const {
  // The hash maps inside a shard use the low bits of the same hash; pick the
  // shard from well-mixed high bits so the two do not correlate.
  const uint64_t mixed = hash * 0x9E3779B97F4A7C15ull;
  return static_cast<size_t>((mixed >> 32) % shards_.size());
}

TokenIndex::TokenLock TokenIndex::Lock(absl::string_view token, LockOp op) {
  const size_t shard_index = ShardIndex(token);
  Shard& shard = *shards_[shard_index];
  // Allocate outside the lock (a preempted holder stalls the whole shard),
  // and only when the last spare was used: most operations find their
  // token's slot already there.
  std::string key(token);
  thread_local std::unique_ptr<Slot> spare;
  if (spare == nullptr) spare = std::make_unique<Slot>();
  Slot* slot;
  std::chrono::steady_clock::time_point op_start;
  bool waited = false;
  {
    TimedLock lock(*this, shard_index, op);
    auto [it, inserted] = shard.slots.try_emplace(key, nullptr);
    if (inserted) it->second = std::move(spare);
    slot = it->second.get();
    // The slot cannot be erased while we wait: waiters > 0 keeps it.
    if (slot->busy) {
      waited = true;
      if (observer_ != nullptr) op_start = std::chrono::steady_clock::now();
      while (slot->busy) {
        ++slot->waiters;
        shard.released.Wait(&shard.mu);
        --slot->waiters;
      }
    }
    slot->busy = true;
  }
  if (waited && observer_ != nullptr) {
    observer_->OnLockWait(op, shard_index,
                          std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::steady_clock::now() - op_start)
                              .count());
  }
  return TokenLock(this, shard_index, slot, std::move(key), op);
}

void TokenIndex::Release(size_t shard_index, Slot* slot,
                         const std::string& token, LockOp op) {
  Shard& shard = *shards_[shard_index];
  bool wake = false;
  std::unique_ptr<Slot> dropped;  // freed after the lock is released
  {
    TimedLock lock(*this, shard_index, op);
    slot->busy = false;
    wake = slot->waiters > 0;
    if (!wake && slot->committed.empty()) {
      // Nobody holds or wants it and it records nothing: drop it.
      auto it = shard.slots.find(token);
      if (it != shard.slots.end()) {
        dropped = std::move(it->second);
        shard.slots.erase(it);
      }
    }
  }
  if (wake) shard.released.SignalAll();
}

TokenIndex::TokenLock::TokenLock(TokenLock&& other) noexcept
    : index_(other.index_),
      shard_(other.shard_),
      slot_(other.slot_),
      token_(std::move(other.token_)),
      op_(other.op_) {
  other.slot_ = nullptr;
}

TokenIndex::TokenLock::~TokenLock() {
  if (slot_ != nullptr) index_->Release(shard_, slot_, token_, op_);
}

const std::string& TokenIndex::TokenLock::token() const { return token_; }

const BindingState& TokenIndex::TokenLock::state() const {
  // Only the op-lock holder writes `committed`, so reading it here needs no
  // shard mutex.
  return slot_->committed;
}

void TokenIndex::TokenLock::Commit(BindingState next) {
  BindingState before;
  {
    TimedLock lock(*index_, shard_, op_);
    // From the shard's counter, so a token's revisions keep rising even
    // after it was emptied and its slot dropped.
    next.revision = ++index_->shards_[shard_]->revision;
    before = std::exchange(slot_->committed, std::move(next));
  }
  if (index_->listener_ != nullptr) {
    index_->listener_->OnCommit(token_, before, slot_->committed);
  }
}

std::optional<BindingState> TokenIndex::Get(absl::string_view token) const {
  const size_t shard_index = ShardIndex(token);
  const Shard& shard = *shards_[shard_index];
  TimedLock lock(*this, shard_index, LockOp::kRead);
  auto it = shard.slots.find(token);
  if (it == shard.slots.end() || it->second->committed.empty()) {
    return std::nullopt;
  }
  return it->second->committed;
}

std::optional<TokenIndex::TokenLock::ObjectHolder>
TokenIndex::TokenLock::ClaimObject(const std::string& key, bool tentative) {
  const ObjectFingerprint fp = ObjectFingerprint::Of(key);
  const size_t shard_index = index_->ShardIndexForHash(fp.a);
  Shard& shard = *index_->shards_[shard_index];
  TimedLock lock(*index_, shard_index, op_);
  auto [it, inserted] =
      shard.objects.try_emplace(fp, ObjectHolder{token_, tentative});
  if (inserted || it->second.token == token_) return std::nullopt;
  return it->second;
}

void TokenIndex::TokenLock::ConfirmObject(const std::string& key) {
  const ObjectFingerprint fp = ObjectFingerprint::Of(key);
  const size_t shard_index = index_->ShardIndexForHash(fp.a);
  Shard& shard = *index_->shards_[shard_index];
  TimedLock lock(*index_, shard_index, op_);
  auto it = shard.objects.find(fp);
  if (it != shard.objects.end() && it->second.token == token_) {
    it->second.tentative = false;
  }
}

void TokenIndex::TokenLock::ReleaseObject(const std::string& key) {
  const ObjectFingerprint fp = ObjectFingerprint::Of(key);
  const size_t shard_index = index_->ShardIndexForHash(fp.a);
  Shard& shard = *index_->shards_[shard_index];
  TimedLock lock(*index_, shard_index, op_);
  auto it = shard.objects.find(fp);
  if (it != shard.objects.end() && it->second.token == token_) {
    shard.objects.erase(it);
  }
}

std::string TokenIndex::ProducerObjectKey(const ProducerRecord& p) {
  // '\n' cannot appear in validated names, so keys cannot collide.
  return absl::StrCat("p\n", p.node, "\n", p.device, "\n", p.irq_index, "\n",
                      p.vector);
}

std::string TokenIndex::ConsumerObjectKey(const ConsumerRecord& c) {
  return absl::StrCat("c\n", c.node, "\n", c.vm, "\n", c.gsi);
}

// Page tokens are "<shard>/<last token returned from that shard>"; the
// shard is parsed up to the first '/', so tokens may contain '/' too.
absl::StatusOr<TokenIndex::Page> TokenIndex::List(
    absl::string_view node, size_t page_size,
    absl::string_view page_token) const {
  size_t start_shard = 0;
  std::string after;
  if (!page_token.empty()) {
    const size_t slash = page_token.find('/');
    uint64_t shard_index = 0;
    if (slash == absl::string_view::npos ||
        !absl::SimpleAtoi(page_token.substr(0, slash), &shard_index) ||
        shard_index >= shards_.size() || slash + 1 >= page_token.size()) {
      return absl::InvalidArgumentError(
          "page_token: malformed (pass next_page_token from the previous "
          "response)");
    }
    start_shard = static_cast<size_t>(shard_index);
    after = std::string(page_token.substr(slash + 1));
  }
  Page page;
  if (page_size == 0) return page;
  for (size_t s = start_shard; s < shards_.size(); ++s) {
    std::vector<std::pair<std::string, BindingState>> found;
    {
      const Shard& shard = *shards_[s];
      TimedLock lock(*this, s, LockOp::kRead);
      for (const auto& [token, slot] : shard.slots) {
        const BindingState& st = slot->committed;
        if (st.empty()) continue;
        if (!node.empty() && st.node() != node) continue;
        if (s == start_shard && !after.empty() && token <= after) continue;
        found.emplace_back(token, st);
      }
    }
    std::sort(found.begin(), found.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& item : found) {
      if (page.items.size() == page_size) {
        const auto& last = page.items.back();
        page.next_page_token =
            absl::StrCat(ShardIndex(last.first), "/", last.first);
        return page;
      }
      page.items.push_back(std::move(item));
    }
  }
  return page;
}

void TokenIndex::ForEachCommitted(
    const std::function<void(const std::string&, const BindingState&)>& fn)
    const {
  for (size_t s = 0; s < shards_.size(); ++s) {
    const auto& shard_ptr = shards_[s];
    std::vector<std::pair<std::string, BindingState>> found;
    {
      TimedLock lock(*this, s, LockOp::kRead);
      for (const auto& [token, slot] : shard_ptr->slots) {
        if (!slot->committed.empty())
          found.emplace_back(token, slot->committed);
      }
    }
    for (const auto& [token, st] : found) fn(token, st);
  }
}

TokenIndex::Counts TokenIndex::CountAll(
    absl::flat_hash_map<std::string, Counts>* by_node) const {
  Counts c;
  auto add = [](Counts& to, const BindingState& st) {
    ++to.tokens;
    if (st.producer) ++to.producers;
    if (st.consumer) ++to.consumers;
    if (st.connected) ++to.connected;
  };
  // Not reported to the observer: a scrape of the gauges would otherwise add
  // one "read" observation per shard.
  for (const auto& shard_ptr : shards_) {
    MutexLock lock(&shard_ptr->mu);
    for (const auto& [token, slot] : shard_ptr->slots) {
      const BindingState& st = slot->committed;
      if (st.empty()) continue;
      add(c, st);
      if (by_node != nullptr) add((*by_node)[st.node()], st);
    }
  }
  return c;
}

}  // namespace irqbypass
