#include "service/request_log.h"

#include "absl/hash/hash.h"

namespace irqbypass {

RequestLog::RequestLog(Options options)
    : options_(std::move(options)),
      max_per_shard_(std::max<size_t>(1, options_.max_entries / kShards)) {
  shards_.reserve(kShards);
  for (size_t i = 0; i < kShards; ++i) {
    shards_.push_back(std::make_unique<Shard>());
  }
}

int64_t RequestLog::NowUnixMicros() const {
  return absl::ToUnixMicros(options_.now ? options_.now() : absl::Now());
}

RequestLog::Shard& RequestLog::ShardFor(absl::string_view id) {
  return *shards_[absl::Hash<absl::string_view>{}(id) % kShards];
}

void RequestLog::ExpireLocked(Shard& shard, int64_t now) {
  while (!shard.order.empty() && (shard.order.front().first <= now ||
                                  shard.order.size() > max_per_shard_)) {
    auto it = shard.entries.find(shard.order.front().second);
    // Only finished entries are in `order`; one restarted under the same id
    // since has a later expiry and its own place.
    if (it != shard.entries.end() && it->second.done &&
        it->second.record.expires_unix_micros == shard.order.front().first) {
      shard.entries.erase(it);
    }
    shard.order.pop_front();
  }
}

RequestLog::Claim RequestLog::Start(const std::string& id, RequestKind kind,
                                    uint64_t fingerprint,
                                    RequestRecord* first) {
  Shard& shard = ShardFor(id);
  MutexLock lock(&shard.mu);
  ExpireLocked(shard, NowUnixMicros());
  auto [it, inserted] = shard.entries.try_emplace(id);
  Entry& entry = it->second;
  if (inserted) {
    entry.record.id = id;
    entry.record.kind = kind;
    entry.record.fingerprint = fingerprint;
    return Claim::kNew;
  }
  if (entry.record.kind != kind || entry.record.fingerprint != fingerprint) {
    return Claim::kMismatch;
  }
  if (!entry.done) return Claim::kInProgress;
  *first = entry.record;
  return Claim::kDone;
}

RequestRecord RequestLog::NewRecord(const std::string& id, RequestKind kind,
                                    uint64_t fingerprint,
                                    absl::string_view token) const {
  RequestRecord r;
  r.id = id;
  r.kind = kind;
  r.fingerprint = fingerprint;
  r.token = std::string(token);
  r.expires_unix_micros =
      NowUnixMicros() + absl::ToInt64Microseconds(options_.ttl);
  return r;
}

void RequestLog::Finish(const std::string& id, const RequestRecord* outcome) {
  Shard& shard = ShardFor(id);
  MutexLock lock(&shard.mu);
  auto it = shard.entries.find(id);
  if (it == shard.entries.end() || it->second.done) return;
  if (outcome == nullptr) {
    shard.entries.erase(it);
    return;
  }
  it->second.done = true;
  it->second.record = *outcome;
  shard.order.emplace_back(outcome->expires_unix_micros, id);
  ExpireLocked(shard, NowUnixMicros());
}

void RequestLog::Restore(RequestRecord record) {
  Shard& shard = ShardFor(record.id);
  MutexLock lock(&shard.mu);
  const int64_t expires = record.expires_unix_micros;
  std::string id = record.id;
  Entry& entry = shard.entries[id];
  entry.done = true;
  entry.record = std::move(record);
  shard.order.emplace_back(expires, std::move(id));
  ExpireLocked(shard, NowUnixMicros());  // the count bound holds from the start
}

size_t RequestLog::size() const {
  size_t n = 0;
  for (const auto& shard : shards_) {
    MutexLock lock(&shard->mu);
    n += shard->entries.size();
  }
  return n;
}

uint64_t StableFingerprint(absl::string_view bytes) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace irqbypass
