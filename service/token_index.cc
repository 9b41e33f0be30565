#include "service/token_index.h"

#include <algorithm>
#include <chrono>
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

struct TokenIndex::Shard {
  mutable Mutex mu;
  CondVar released;  // signalled when a slot's op lock is released
  absl::flat_hash_map<std::string, std::unique_ptr<Slot>> slots
      ABSL_GUARDED_BY(mu);
  // Object key -> token holding it.
  absl::flat_hash_map<std::string, std::string> objects ABSL_GUARDED_BY(mu);
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
    case LockOp::kOther:
      return "other";
  }
  return "other";
}

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
  // The hash maps inside a shard use the low bits of the same hash; pick the
  // shard from well-mixed high bits so the two do not correlate.
  const uint64_t h = absl::Hash<absl::string_view>{}(key);
  const uint64_t mixed = h * 0x9E3779B97F4A7C15ull;
  return static_cast<size_t>((mixed >> 32) % shards_.size());
}

TokenIndex::Shard& TokenIndex::ShardFor(absl::string_view key) const {
  return *shards_[ShardIndex(key)];
}

TokenIndex::TokenLock TokenIndex::Lock(absl::string_view token, LockOp op) {
  const size_t shard_index = ShardIndex(token);
  Shard& shard = *shards_[shard_index];
  const bool timed = observer_ != nullptr;
  std::chrono::steady_clock::time_point start;
  if (timed) start = std::chrono::steady_clock::now();
  int64_t wait_ns = 0;
  Slot* slot;
  {
    MutexLock lock(&shard.mu);
    if (timed) {
      wait_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                    std::chrono::steady_clock::now() - start)
                    .count();
    }
    auto it = shard.slots.find(token);
    if (it == shard.slots.end()) {
      it = shard.slots.emplace(std::string(token), std::make_unique<Slot>())
               .first;
    }
    slot = it->second.get();
    // The slot cannot be erased while we wait: waiters > 0 keeps it.
    if (slot->busy) {
      std::chrono::steady_clock::time_point op_start;
      if (timed) op_start = std::chrono::steady_clock::now();
      while (slot->busy) {
        ++slot->waiters;
        shard.released.Wait(&shard.mu);
        --slot->waiters;
      }
      if (timed) {
        wait_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::steady_clock::now() - op_start)
                       .count();
      }
    }
    slot->busy = true;
  }
  if (timed) observer_->OnLockWait(op, shard_index, wait_ns);
  return TokenLock(this, &shard, slot, std::string(token));
}

void TokenIndex::Release(Shard* shard, Slot* slot, const std::string& token) {
  bool wake = false;
  {
    MutexLock lock(&shard->mu);
    slot->busy = false;
    wake = slot->waiters > 0;
    if (!wake && slot->committed.empty()) {
      // Nobody holds or wants it and it records nothing: drop it.
      shard->slots.erase(token);
    }
  }
  if (wake) shard->released.SignalAll();
}

TokenIndex::TokenLock::TokenLock(TokenLock&& other) noexcept
    : index_(other.index_),
      shard_(other.shard_),
      slot_(other.slot_),
      token_(std::move(other.token_)) {
  other.slot_ = nullptr;
}

TokenIndex::TokenLock::~TokenLock() {
  if (slot_ != nullptr) index_->Release(shard_, slot_, token_);
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
    MutexLock lock(&shard_->mu);
    next.revision = slot_->committed.revision + 1;
    before = std::exchange(slot_->committed, std::move(next));
  }
  if (index_->listener_ != nullptr) {
    index_->listener_->OnCommit(token_, before, slot_->committed);
  }
}

std::optional<BindingState> TokenIndex::Get(absl::string_view token) const {
  Shard& shard = ShardFor(token);
  MutexLock lock(&shard.mu);
  auto it = shard.slots.find(token);
  if (it == shard.slots.end() || it->second->committed.empty()) {
    return std::nullopt;
  }
  return it->second->committed;
}

std::optional<std::string> TokenIndex::ClaimObject(const std::string& key,
                                                   absl::string_view token) {
  Shard& shard = ShardFor(key);
  MutexLock lock(&shard.mu);
  auto [it, inserted] = shard.objects.try_emplace(key, std::string(token));
  if (inserted || it->second == token) return std::nullopt;
  return it->second;
}

void TokenIndex::ReleaseObject(const std::string& key,
                               absl::string_view token) {
  Shard& shard = ShardFor(key);
  MutexLock lock(&shard.mu);
  auto it = shard.objects.find(key);
  if (it != shard.objects.end() && it->second == token) {
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

// Page tokens are "<shard>/<last token returned from that shard>": tokens
// never contain '/', see validation.
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
      MutexLock lock(&shard.mu);
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
  for (const auto& shard_ptr : shards_) {
    std::vector<std::pair<std::string, BindingState>> found;
    {
      MutexLock lock(&shard_ptr->mu);
      for (const auto& [token, slot] : shard_ptr->slots) {
        if (!slot->committed.empty()) found.emplace_back(token, slot->committed);
      }
    }
    for (const auto& [token, st] : found) fn(token, st);
  }
}

TokenIndex::Counts TokenIndex::CountAll() const {
  Counts c;
  for (const auto& shard_ptr : shards_) {
    MutexLock lock(&shard_ptr->mu);
    for (const auto& [token, slot] : shard_ptr->slots) {
      const BindingState& st = slot->committed;
      if (st.empty()) continue;
      ++c.tokens;
      if (st.producer) ++c.producers;
      if (st.consumer) ++c.consumers;
      if (st.connected) ++c.connected;
    }
  }
  return c;
}

}  // namespace irqbypass
