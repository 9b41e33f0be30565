// Benchmark support: an embedded store filled directly with connected
// pairs, as irqbypassd would have written them, so that a benchmark starts
// irqbypassd on a large durable state without registering it pair by pair.
#ifndef IRQBYPASS_BENCH_STORE_FILL_H_
#define IRQBYPASS_BENCH_STORE_FILL_H_

#include <string>

#include "service/binding_state.h"

namespace irqbypass::bench {

// Pair i of the layout below: its token and its connected state.
std::string FilledToken(int i);
BindingState FilledPair(int i, int nodes);

// Writes `pairs` connected pairs into the embedded store in `dir`: token
// "tok-<i>", node "node-<i % nodes>", each node's pairs on distinct devices,
// MSI-X vectors, VMs and GSIs that pass irqbypassd's validation. False (with
// the error on stderr) on failure; `seconds` is how long the writes took.
bool FillEmbeddedStore(const std::string& dir, int pairs, int nodes,
                       double* seconds);

}  // namespace irqbypass::bench

#endif  // IRQBYPASS_BENCH_STORE_FILL_H_
