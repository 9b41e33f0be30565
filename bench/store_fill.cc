#include "bench/store_fill.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/binding_state.h"
#include "service/rocksdb_store.h"
#include "service/store.h"

namespace irqbypass::bench {

std::string FilledToken(int i) { return absl::StrCat("tok-", i); }

BindingState FilledPair(int i, int nodes) {
  // The k-th pair of its node: 2,048 vectors per device, 4,000 GSIs per VM.
  const int k = i / nodes;
  const int device = k / 2048;
  BindingState st;
  const std::string node = absl::StrCat("node-", i % nodes);
  ProducerRecord& p = st.producer.emplace();
  p.node = node;
  p.device = absl::StrFormat("0000:%02x:%02x.%x", device / 256 % 256,
                             device / 8 % 32, device % 8);
  p.vector = static_cast<uint32_t>(k % 2048);
  p.registration_id = 0x1000000000ull + i;
  ConsumerRecord& c = st.consumer.emplace();
  c.node = node;
  c.vm = absl::StrCat("vm-", k / 4000);
  c.gsi = static_cast<uint32_t>(k % 4000);
  c.registration_id = 0x2000000000ull + i;
  st.connected = true;
  st.revision = static_cast<uint64_t>(i) + 1;
  return st;
}

bool FillEmbeddedStore(const std::string& dir, int pairs, int nodes,
                       double* seconds) {
  RocksDbStoreOptions options;
  options.dir = dir;
  auto store = RocksDbStore::Open(options);
  if (!store.ok()) {
    std::fprintf(stderr, "%s\n", store.status().ToString().c_str());
    return false;
  }
  const auto t0 = std::chrono::steady_clock::now();
  constexpr int kBatch = 5000;
  std::vector<std::string> tokens;
  std::vector<BindingState> states;
  for (int start = 0; start < pairs; start += kBatch) {
    const int n = std::min(kBatch, pairs - start);
    tokens.clear();
    states.clear();
    for (int i = start; i < start + n; ++i) {
      tokens.push_back(FilledToken(i));
      states.push_back(FilledPair(i, nodes));
    }
    std::vector<StoreChange> changes;
    changes.reserve(n);
    for (int i = 0; i < n; ++i) changes.push_back({tokens[i], states[i]});
    absl::Status s = (*store)->WriteAndWait(changes);
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return false;
    }
  }
  absl::Status closed = (*store)->Close();
  *seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  if (!closed.ok()) std::fprintf(stderr, "%s\n", closed.ToString().c_str());
  return closed.ok();
}

}  // namespace irqbypass::bench
