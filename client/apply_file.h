// The file `irqbypassctl apply -f` reads: a list of BypassManager.Batch
// items, in YAML or JSON (JSON is YAML too), either as a list at the top
// or as a map with an `items` list (a BatchRequest). Each item is a
// BatchItem in protobuf's JSON mapping, for example
//
//   - register_producer:
//       producer: {token: vm1-q0, node: n1, device: "0000:3b:00.1",
//                  vector: 0, index: msix}
//   - register_consumer:
//       consumer: {token: vm1-q0, node: n1, vm: vm1, gsi: 24}
//   - unregister_producer: {token: vm1-q0}
//
// Field names as in the proto (register_producer) or in lowerCamelCase
// (registerProducer); `index` also takes msix, msi and intx.
#ifndef IRQBYPASS_CLIENT_APPLY_FILE_H_
#define IRQBYPASS_CLIENT_APPLY_FILE_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

namespace irqbypass::ctl {

// The items of `text`, in order. INVALID_ARGUMENT naming the line (YAML
// syntax) or the item (items[i]: what protobuf's JSON parser said) when it
// is not such a file.
absl::StatusOr<std::vector<irqbypass::v1::BatchItem>> ParseApplyFile(
    absl::string_view text);

// A one-line text form of item `i`'s result: what it did and how it went.
std::string FormatBatchResultText(int i, const irqbypass::v1::BatchItem& item,
                                  const irqbypass::v1::BatchResult& result);

}  // namespace irqbypass::ctl

#endif  // IRQBYPASS_CLIENT_APPLY_FILE_H_
