#include "service/validation.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/errors.h"

namespace irqbypass {
namespace {

bool IsPrintableNoSpace(absl::string_view s) {
  for (char c : s) {
    if (c <= 0x20 || c > 0x7e) return false;
  }
  return true;
}

absl::Status Required(absl::string_view field, absl::string_view value,
                      size_t max_bytes) {
  if (value.empty()) {
    return InvalidField(field, absl::StrCat(field, ": required"));
  }
  if (value.size() > max_bytes) {
    return InvalidField(field, absl::StrCat(field, ": ", value.size(),
                                            " bytes, at most ", max_bytes));
  }
  return absl::OkStatus();
}

bool IsHex(absl::string_view s) {
  for (char c : s) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// "DDDD:BB:DD.F": domain, bus, device (< 0x20), function (0..7).
bool IsPciAddress(absl::string_view s) {
  if (s.size() != 12 || s[4] != ':' || s[7] != ':' || s[10] != '.') {
    return false;
  }
  if (!IsHex(s.substr(0, 4)) || !IsHex(s.substr(5, 2)) ||
      !IsHex(s.substr(8, 2))) {
    return false;
  }
  uint32_t dev = 0;
  if (!absl::SimpleHexAtoi(s.substr(8, 2), &dev) || dev >= 0x20) return false;
  return s[11] >= '0' && s[11] <= '7';
}

// Required, at most `max` bytes, printable ASCII without spaces.
absl::Status ValidatePrintable(absl::string_view field, absl::string_view value,
                               size_t max) {
  if (auto s = Required(field, value, max); !s.ok()) return s;
  if (!IsPrintableNoSpace(value)) {
    return InvalidField(
        field, absl::StrCat(field, ": only printable ASCII without spaces"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateToken(absl::string_view field, absl::string_view token) {
  return ValidatePrintable(field, token, kMaxTokenBytes);
}

absl::Status ValidateRequestId(absl::string_view field, absl::string_view id) {
  if (id.empty()) return absl::OkStatus();
  return ValidatePrintable(field, id, kMaxRequestIdBytes);
}

absl::Status ValidateNode(absl::string_view field, absl::string_view node) {
  if (auto s = Required(field, node, kMaxNodeBytes); !s.ok()) return s;
  for (char c : node) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' &&
        c != '.' && c != '_') {
      return InvalidField(
          field, absl::StrCat(field, ": only letters, digits, '-', '.', '_'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ProducerRecord> ProducerFromProto(const v1::Producer& p) {
  if (auto s = ValidateToken("producer.token", p.token()); !s.ok()) return s;
  if (auto s = ValidateNode("producer.node", p.node()); !s.ok()) return s;
  if (p.device().empty()) {
    return InvalidField("producer.device", "producer.device: required");
  }
  if (!IsPciAddress(p.device())) {
    return InvalidField(
        "producer.device",
        "producer.device: not a PCI address of the form 0000:3b:00.1");
  }
  ProducerRecord r;
  r.node = p.node();
  r.device = absl::AsciiStrToLower(p.device());
  r.vector = p.vector();
  switch (p.index()) {
    case v1::IRQ_INDEX_UNSPECIFIED:
    case v1::IRQ_INDEX_MSIX:
      r.irq_index = v1::IRQ_INDEX_MSIX;
      if (r.vector > kMaxMsixVector) {
        return InvalidField(
            "producer.vector",
            absl::StrCat("producer.vector: ", r.vector,
                         " exceeds the MSI-X maximum ", kMaxMsixVector));
      }
      break;
    case v1::IRQ_INDEX_MSI:
      r.irq_index = v1::IRQ_INDEX_MSI;
      if (r.vector > kMaxMsiVector) {
        return InvalidField(
            "producer.vector",
            absl::StrCat("producer.vector: ", r.vector,
                         " exceeds the MSI maximum ", kMaxMsiVector));
      }
      break;
    case v1::IRQ_INDEX_INTX:
      r.irq_index = v1::IRQ_INDEX_INTX;
      if (r.vector != 0) {
        return InvalidField("producer.vector",
                            "producer.vector: must be 0 for INTx");
      }
      break;
    default:
      return InvalidField("producer.index",
                          absl::StrCat("producer.index: unknown value ",
                                       static_cast<int>(p.index())));
  }
  return r;
}

absl::StatusOr<ConsumerRecord> ConsumerFromProto(const v1::Consumer& c) {
  if (auto s = ValidateToken("consumer.token", c.token()); !s.ok()) return s;
  if (auto s = ValidateNode("consumer.node", c.node()); !s.ok()) return s;
  if (auto s = ValidatePrintable("consumer.vm", c.vm(), kMaxVmBytes); !s.ok()) {
    return s;
  }
  if (c.gsi() > kMaxGsi) {
    return InvalidField("consumer.gsi",
                        absl::StrCat("consumer.gsi: ", c.gsi(),
                                     " exceeds the maximum ", kMaxGsi));
  }
  ConsumerRecord r;
  r.node = c.node();
  r.vm = c.vm();
  r.gsi = c.gsi();
  return r;
}

void ProducerToProto(absl::string_view token, const ProducerRecord& r,
                     v1::Producer* out) {
  out->set_token(std::string(token));
  out->set_node(r.node);
  out->set_device(r.device);
  out->set_vector(r.vector);
  out->set_index(static_cast<v1::IrqIndex>(r.irq_index));
}

void ConsumerToProto(absl::string_view token, const ConsumerRecord& r,
                     v1::Consumer* out) {
  out->set_token(std::string(token));
  out->set_node(r.node);
  out->set_vm(r.vm);
  out->set_gsi(r.gsi);
}

void BindingToProto(absl::string_view token, const BindingState& st,
                    v1::Binding* out) {
  out->set_token(std::string(token));
  if (st.producer) {
    ProducerToProto(token, *st.producer, out->mutable_producer());
    out->set_producer_registration_id(
        FormatRegistrationId('p', st.producer->registration_id));
  }
  if (st.consumer) {
    ConsumerToProto(token, *st.consumer, out->mutable_consumer());
    out->set_consumer_registration_id(
        FormatRegistrationId('c', st.consumer->registration_id));
  }
  out->set_connected(st.connected);
  out->set_node(st.node());
  out->set_revision(st.revision);
}

std::string FormatRegistrationId(char side, uint64_t id) {
  return absl::StrFormat("%c-%016x", side, id);
}

absl::StatusOr<uint64_t> ParseRegistrationId(absl::string_view field, char side,
                                             absl::string_view id) {
  if (id.empty()) return 0;
  uint64_t value = 0;
  if (id.size() != 18 || id[0] != side || id[1] != '-' ||
      !IsHex(id.substr(2)) || !absl::SimpleHexAtoi(id.substr(2), &value) ||
      value == 0) {
    return InvalidField(
        field,
        absl::StrCat(field, ": malformed; expected \"", std::string(1, side),
                     "-\" and 16 hex digits as returned by Register",
                     side == 'p' ? "Producer" : "Consumer"));
  }
  return value;
}

}  // namespace irqbypass
