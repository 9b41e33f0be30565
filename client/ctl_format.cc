#include "client/ctl_format.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "client/error_detail.h"
#include "google/protobuf/util/json_util.h"

namespace irqbypass::ctl {
namespace {

using ::irqbypass::v1::Binding;
using ::irqbypass::v1::BindingEvent;
using ::irqbypass::v1::Consumer;
using ::irqbypass::v1::ErrorDetail;
using ::irqbypass::v1::Producer;

const char* BoolText(bool value) { return value ? "true" : "false"; }

// "0000:3b:00.1/msix/3"
std::string ProducerCell(const Producer& producer) {
  return absl::StrCat(producer.device(), "/", IrqIndexName(producer.index()),
                      "/", producer.vector());
}

// "vm-x/42"
std::string ConsumerCell(const Consumer& consumer) {
  return absl::StrCat(consumer.vm(), "/", consumer.gsi());
}

// A JSON string literal for `text` (quotes included). Bytes >= 0x80 pass
// through unchanged: server messages are UTF-8.
std::string JsonQuote(absl::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  out += "\"";
  return out;
}

// FormatJson without the trailing newline; "{}" if printing fails (it only
// fails for malformed Any or invalid UTF-8, which the API never carries).
std::string JsonObject(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  options.always_print_primitive_fields = true;
  options.always_print_enums_as_ints = false;
  options.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options)
           .ok()) {
    return "{}";
  }
  return out;
}

}  // namespace

ExitCode ExitCodeForStatus(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kInvalidArgument:
      return kExitUsage;
    case absl::StatusCode::kNotFound:
      return kExitNotFound;
    case absl::StatusCode::kAlreadyExists:
      return kExitAlreadyExists;
    case absl::StatusCode::kFailedPrecondition: {
      std::optional<ErrorDetail> detail = client::GetErrorDetail(status);
      if (detail.has_value() &&
          detail->reason() == ErrorDetail::CONNECT_FAILED) {
        return kExitConnectFailed;
      }
      return kExitFailedPrecondition;
    }
    case absl::StatusCode::kUnavailable:
      return kExitUnavailable;
    case absl::StatusCode::kDeadlineExceeded:
      return kExitDeadlineExceeded;
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
      return kExitDenied;
    default:
      return kExitError;
  }
}

std::string ExitCodeHelp() {
  return "Exit codes:\n"
         "  0  success\n"
         "  1  other or internal error\n"
         "  2  invalid arguments (INVALID_ARGUMENT, or bad command line)\n"
         "  3  not found (NOT_FOUND)\n"
         "  4  already exists (ALREADY_EXISTS)\n"
         "  5  connect failed (FAILED_PRECONDITION, reason CONNECT_FAILED)\n"
         "  6  other failed precondition (node mismatch, registration id "
         "mismatch)\n"
         "  7  unavailable (UNAVAILABLE: server or node agent unreachable)\n"
         "  8  deadline exceeded (DEADLINE_EXCEEDED)\n"
         "  9  refused: this caller may not (PERMISSION_DENIED), or has no "
         "identity (UNAUTHENTICATED)\n";
}

absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view name) {
  if (name == "text") return OutputFormat::kText;
  if (name == "json") return OutputFormat::kJson;
  return absl::InvalidArgumentError(absl::StrCat(
      "--output must be \"text\" or \"json\", got \"", name, "\""));
}

absl::StatusOr<v1::IrqIndex> ParseIrqIndex(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "msix") return v1::IRQ_INDEX_MSIX;
  if (lower == "msi") return v1::IRQ_INDEX_MSI;
  if (lower == "intx") return v1::IRQ_INDEX_INTX;
  return absl::InvalidArgumentError(absl::StrCat(
      "--index must be one of msix, msi, intx; got \"", name, "\""));
}

std::string IrqIndexName(v1::IrqIndex index) {
  switch (index) {
    case v1::IRQ_INDEX_INTX:
      return "intx";
    case v1::IRQ_INDEX_MSI:
      return "msi";
    case v1::IRQ_INDEX_MSIX:
    case v1::IRQ_INDEX_UNSPECIFIED:
      return "msix";
    default:
      return absl::StrCat("index", static_cast<int>(index));
  }
}

std::string FormatRegisterText(absl::string_view side, absl::string_view token,
                               const client::RegisterResult& result) {
  return absl::StrCat("registered ", side, " token=", token,
                      " registration_id=", result.registration_id,
                      " connected=", BoolText(result.connected), "\n");
}

std::string FormatUnregisterText(absl::string_view side,
                                 absl::string_view token, bool disconnected) {
  return absl::StrCat("unregistered ", side, " token=", token,
                      " disconnected=", BoolText(disconnected), "\n");
}

std::string FormatBindingText(const Binding& binding) {
  std::string out;
  auto line = [&out](absl::string_view key, absl::string_view value) {
    absl::StrAppendFormat(&out, "%-26s%s\n", absl::StrCat(key, ":"), value);
  };
  line("token", binding.token());
  line("node", binding.node());
  line("connected", BoolText(binding.connected()));
  line("revision", absl::StrCat(binding.revision()));
  if (binding.has_producer()) {
    const Producer& p = binding.producer();
    line("producer",
         absl::StrCat("device=", p.device(), " index=", IrqIndexName(p.index()),
                      " vector=", p.vector()));
    line("producer_registration_id", binding.producer_registration_id());
  } else {
    line("producer", "(none)");
  }
  if (binding.has_consumer()) {
    const Consumer& c = binding.consumer();
    line("consumer", absl::StrCat("vm=", c.vm(), " gsi=", c.gsi()));
    line("consumer_registration_id", binding.consumer_registration_id());
  } else {
    line("consumer", "(none)");
  }
  return out;
}

std::string FormatBindingTable(const std::vector<Binding>& bindings) {
  constexpr size_t kColumns = 6;
  using Row = std::array<std::string, kColumns>;
  std::vector<Row> rows;
  rows.reserve(bindings.size() + 1);
  rows.push_back(
      {"TOKEN", "NODE", "CONNECTED", "PRODUCER", "CONSUMER", "REVISION"});
  for (const Binding& b : bindings) {
    rows.push_back({b.token(), b.node().empty() ? "-" : b.node(),
                    BoolText(b.connected()),
                    b.has_producer() ? ProducerCell(b.producer()) : "-",
                    b.has_consumer() ? ConsumerCell(b.consumer()) : "-",
                    absl::StrCat(b.revision())});
  }
  std::array<size_t, kColumns> widths{};
  for (const Row& row : rows) {
    for (size_t i = 0; i < kColumns; ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  std::string out;
  for (const Row& row : rows) {
    for (size_t i = 0; i + 1 < kColumns; ++i) {
      absl::StrAppendFormat(&out, "%-*s  ", static_cast<int>(widths[i]),
                            row[i]);
    }
    absl::StrAppend(&out, row[kColumns - 1], "\n");
  }
  return out;
}

namespace {

// Unix microseconds as RFC 3339 in UTC ("-" for 0).
std::string TimeCell(int64_t unix_micros) {
  if (unix_micros == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ",
                          absl::FromUnixMicros(unix_micros),
                          absl::UTCTimeZone());
}

std::string ReconcileCell(const irqbypass::v1::Node& node) {
  if (!node.has_last_reconciliation()) return "-";
  const irqbypass::v1::Reconciliation& r = node.last_reconciliation();
  return absl::StrCat("kept=", r.kept(), " disconnected=", r.disconnected(),
                      " reconnected=", r.reconnected(), " failed=", r.failed(),
                      " refused=", r.refused(), " in ", r.duration_ms(), "ms");
}

}  // namespace

std::string FormatNodeTable(const std::vector<irqbypass::v1::Node>& nodes) {
  constexpr size_t kColumns = 8;
  using Row = std::array<std::string, kColumns>;
  std::vector<Row> rows;
  rows.reserve(nodes.size() + 1);
  rows.push_back({"NODE", "AGENT", "RECONCILED", "BACKEND", "PRODUCERS",
                  "CONSUMERS", "CONNECTED", "IN_FLIGHT"});
  for (const irqbypass::v1::Node& n : nodes) {
    rows.push_back({n.name(), n.agent_connected() ? "connected" : "absent",
                    BoolText(n.reconciled()),
                    n.backend().empty() ? "-" : n.backend(),
                    absl::StrCat(n.producers()), absl::StrCat(n.consumers()),
                    absl::StrCat(n.connected_pairs()),
                    absl::StrCat(n.commands_in_flight())});
  }
  std::array<size_t, kColumns> widths{};
  for (const Row& row : rows) {
    for (size_t i = 0; i < kColumns; ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  std::string out;
  for (const Row& row : rows) {
    for (size_t i = 0; i + 1 < kColumns; ++i) {
      absl::StrAppendFormat(&out, "%-*s  ", static_cast<int>(widths[i]),
                            row[i]);
    }
    absl::StrAppend(&out, row[kColumns - 1], "\n");
  }
  return out;
}

std::string FormatNodeText(const irqbypass::v1::Node& node) {
  std::string out;
  auto line = [&out](absl::string_view key, absl::string_view value) {
    absl::StrAppendFormat(&out, "%-22s%s\n", absl::StrCat(key, ":"), value);
  };
  line("node", node.name());
  line("agent", node.agent_connected() ? "connected" : "absent");
  line("reconciled", BoolText(node.reconciled()));
  line("backend", node.backend().empty() ? "-" : node.backend());
  line("agent_version",
       node.agent_version().empty() ? "-" : node.agent_version());
  line("peer", node.peer().empty() ? "-" : node.peer());
  line("session_started", TimeCell(node.session_started_unix_micros()));
  if (!node.agent_connected()) {
    line("session_ended", TimeCell(node.session_ended_unix_micros()));
  }
  line("producers", absl::StrCat(node.producers()));
  line("consumers", absl::StrCat(node.consumers()));
  line("connected_pairs", absl::StrCat(node.connected_pairs()));
  line("commands_in_flight", absl::StrCat(node.commands_in_flight()));
  line("last_reconciliation", ReconcileCell(node));
  return out;
}

std::string FormatEventText(const BindingEvent& event) {
  std::string out = BindingEvent::Type_Name(event.type());
  if (out.empty()) out = absl::StrCat("TYPE_", static_cast<int>(event.type()));
  if ((event.type() == BindingEvent::SYNCED ||
       event.type() == BindingEvent::PROGRESS) &&
      !event.has_binding()) {
    if (event.resume_revision() != 0) {
      absl::StrAppend(&out, " resume_revision=", event.resume_revision());
    }
    return absl::StrCat(out, "\n");
  }
  const Binding& b = event.binding();
  absl::StrAppend(&out, " token=", b.token());
  if (event.type() != BindingEvent::REMOVED) {
    absl::StrAppend(&out, " node=", b.node().empty() ? "-" : b.node(),
                    " connected=", BoolText(b.connected()));
  }
  absl::StrAppend(&out, " revision=", b.revision());
  if (event.type() != BindingEvent::REMOVED) {
    absl::StrAppend(
        &out, " producer=", b.has_producer() ? ProducerCell(b.producer()) : "-",
        " consumer=", b.has_consumer() ? ConsumerCell(b.consumer()) : "-");
  }
  return absl::StrCat(out, "\n");
}

std::string FormatErrorText(const absl::Status& status) {
  return absl::StrCat(absl::StatusCodeToString(status.code()), ": ",
                      client::DescribeError(status), "\n");
}

std::string FormatJson(const google::protobuf::Message& message) {
  return absl::StrCat(JsonObject(message), "\n");
}

std::string FormatErrorJson(const absl::Status& status) {
  std::string out =
      absl::StrCat("{\"error\":{\"code\":",
                   JsonQuote(absl::StatusCodeToString(status.code())),
                   ",\"message\":", JsonQuote(status.message()));
  if (std::optional<ErrorDetail> detail = client::GetErrorDetail(status)) {
    absl::StrAppend(&out, ",\"detail\":", JsonObject(*detail));
  }
  absl::StrAppend(&out, "}}\n");
  return out;
}

}  // namespace irqbypass::ctl
