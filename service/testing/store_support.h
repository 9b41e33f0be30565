// Test support for the durable stores' tests (embedded, etcd, the etcd
// standby copy): a connected binding to write, and a full Load.
#ifndef IRQBYPASS_SERVICE_TESTING_STORE_SUPPORT_H_
#define IRQBYPASS_SERVICE_TESTING_STORE_SUPPORT_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "service/binding_state.h"
#include "service/store.h"

namespace irqbypass::testing {

// A connected pair on `node`, distinct for each n (device, vector, VM, GSI
// and registration ids derive from it), at `revision`.
inline BindingState PairedState(uint32_t n, uint64_t revision,
                                const std::string& node = "n1") {
  BindingState st;
  ProducerRecord& p = st.producer.emplace();
  p.node = node;
  p.device = "0000:3b:00." + std::to_string(n % 8);
  p.vector = n % 2048;
  p.registration_id = 1000 + n;
  ConsumerRecord& c = st.consumer.emplace();
  c.node = node;
  c.vm = "vm-" + std::to_string(n);
  c.gsi = n % 4096;
  c.registration_id = 2000 + n;
  st.connected = true;
  st.revision = revision;
  return st;
}

// Everything `store` loads, by token; *last (if given) gets the revision
// high-water mark, 0 on failure (which also fails the test).
inline std::map<std::string, BindingState> LoadAll(Store& store,
                                                   uint64_t* last) {
  std::map<std::string, BindingState> loaded;
  auto r = store.Load([&](std::string token, BindingState st) {
    loaded[token] = std::move(st);
    return absl::OkStatus();
  });
  EXPECT_TRUE(r.ok()) << r.status();
  if (last != nullptr) *last = r.ok() ? *r : 0;
  return loaded;
}

}  // namespace irqbypass::testing

#endif  // IRQBYPASS_SERVICE_TESTING_STORE_SUPPORT_H_
