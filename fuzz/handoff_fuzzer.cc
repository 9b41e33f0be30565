// The handoff socket's wire parser (agent/handoff/handoff.h), fed what a
// hostile VMM may send: every parser must answer (a value or an error),
// never crash, and what parses must encode back to what parses the same.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "agent/handoff/handoff.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  using namespace irqbypass::agent;  // NOLINT
  (void)ParseHandoffRequest(text);
  (void)ParseHandoffReply(text);
  (void)IsIrqfdRequest(text);
  (void)IsIrqfdReply(text);
  if (auto r = ParseIrqfdRequest(text); r.ok()) {
    auto again = ParseIrqfdRequest(r->Encode());
    if (!again.ok() || again->id != r->id || again->gsi != r->gsi ||
        again->deassign != r->deassign || again->vm != r->vm) {
      std::abort();  // encode/parse disagree
    }
  }
  if (auto r = ParseIrqfdReply(text); r.ok()) {
    auto again = ParseIrqfdReply(r->Encode());
    if (!again.ok() || again->id != r->id ||
        again->errno_value != r->errno_value) {
      std::abort();
    }
  }
  return 0;
}
