// Output and exit codes of irqbypassctl, kept apart from main() so that they
// can be unit-tested: the status -> exit code mapping, the text rendering of
// results, bindings and events, and the JSON rendering (one object per line).
//
// Every Format* function returns complete output: zero or more lines, each
// ending in '\n'.
//
// Thread-safety: all functions are pure and safe to call from any thread.
#ifndef IRQBYPASS_CLIENT_CTL_FORMAT_H_
#define IRQBYPASS_CLIENT_CTL_FORMAT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/irqbypass_client.h"
#include "google/protobuf/message.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

namespace irqbypass::ctl {

// Process exit codes of irqbypassctl. Scripts depend on these values: only
// ever add new ones.
enum ExitCode : int {
  kExitOk = 0,
  kExitError = 1,               // any other or internal error
  kExitUsage = 2,               // INVALID_ARGUMENT, or bad command line
  kExitNotFound = 3,            // NOT_FOUND
  kExitAlreadyExists = 4,       // ALREADY_EXISTS
  kExitConnectFailed = 5,       // FAILED_PRECONDITION, reason CONNECT_FAILED
  kExitFailedPrecondition = 6,  // other FAILED_PRECONDITION (node mismatch,
                                // registration id mismatch)
  kExitUnavailable = 7,         // UNAVAILABLE (server or agent unreachable)
  kExitDeadlineExceeded = 8,    // DEADLINE_EXCEEDED
  kExitDenied = 9,              // PERMISSION_DENIED or UNAUTHENTICATED
};

// The exit code for the outcome of a command; kExitOk for an OK status.
// FAILED_PRECONDITION is split on the ErrorDetail reason.
ExitCode ExitCodeForStatus(const absl::Status& status);

// The exit code table above, as shown by `irqbypassctl --help`.
std::string ExitCodeHelp();

enum class OutputFormat { kText, kJson };

// "text" or "json"; INVALID_ARGUMENT otherwise.
absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view name);

// "msix", "msi" or "intx" (case-insensitive); INVALID_ARGUMENT otherwise.
absl::StatusOr<irqbypass::v1::IrqIndex> ParseIrqIndex(absl::string_view name);

// "msix", "msi", "intx"; IRQ_INDEX_UNSPECIFIED reads "msix" (its meaning).
std::string IrqIndexName(irqbypass::v1::IrqIndex index);

// --- Text output ---

// "registered producer token=t1 registration_id=p-1 connected=true"
// `side` is "producer" or "consumer".
std::string FormatRegisterText(absl::string_view side, absl::string_view token,
                               const client::RegisterResult& result);

// "unregistered producer token=t1 disconnected=true"
std::string FormatUnregisterText(absl::string_view side,
                                 absl::string_view token, bool disconnected);

// A block of "key: value" lines describing one binding (for `get`):
//   token:                    t1
//   node:                     n1
//   connected:                true
//   revision:                 7
//   producer:                 device=0000:3b:00.1 index=msix vector=3
//   producer_registration_id: p-1
//   consumer:                 vm=vm-x gsi=42
//   consumer_registration_id: c-1
// An absent side reads "(none)" and has no registration id line.
std::string FormatBindingText(const irqbypass::v1::Binding& binding);

// A table with a header line (for `list`), columns aligned with spaces:
//   TOKEN  NODE  CONNECTED  PRODUCER             CONSUMER  REVISION
//   t1     n1    true       0000:3b:00.1/msix/3  vm-x/42   7
// PRODUCER is device/index/vector, CONSUMER is vm/gsi, "-" when absent.
std::string FormatBindingTable(
    const std::vector<irqbypass::v1::Binding>& bindings);

// One line per event (for `watch`):
//   UPDATED token=t1 node=n1 connected=true revision=7
//       producer=0000:3b:00.1/msix/3 consumer=vm-x/42      (on one line)
//   SYNCED
std::string FormatEventText(const irqbypass::v1::BindingEvent& event);

// `irqbypassctl nodes`: one row per node (NODE AGENT RECONCILED BACKEND
// PRODUCERS CONSUMERS CONNECTED IN_FLIGHT); `irqbypassctl node`: one
// "key: value" line per field, times in UTC.
std::string FormatNodeTable(const std::vector<irqbypass::v1::Node>& nodes);
std::string FormatNodeText(const irqbypass::v1::Node& node);

// "NOT_FOUND: <DescribeError(status)>" on one line.
std::string FormatErrorText(const absl::Status& status);

// --- JSON output ---

// `message` as proto3 JSON on one line: field names as in the .proto
// (snake_case), enums by name, scalar fields printed even when default (so
// "connected": false is explicit), 64-bit integers as strings.
std::string FormatJson(const google::protobuf::Message& message);

// {"error":{"code":"NOT_FOUND","message":"...","detail":{...ErrorDetail...}}}
// on one line; "detail" is present only when the status carries one.
std::string FormatErrorJson(const absl::Status& status);

}  // namespace irqbypass::ctl

#endif  // IRQBYPASS_CLIENT_CTL_FORMAT_H_
