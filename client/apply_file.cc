#include "client/apply_file.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/json_string.h"
#include "google/protobuf/util/json_util.h"
#include "yaml-cpp/yaml.h"

namespace irqbypass::ctl {
namespace {

// The `index` values the command line takes, as the enum's names.
std::string IndexName(const std::string& value) {
  const std::string lower = absl::AsciiStrToLower(value);
  if (lower == "msix") return "IRQ_INDEX_MSIX";
  if (lower == "msi") return "IRQ_INDEX_MSI";
  if (lower == "intx") return "IRQ_INDEX_INTX";
  return value;
}

// `node` as JSON. Scalars become JSON strings (protobuf's JSON parser takes
// numbers as strings too), except null.
absl::Status ToJson(const YAML::Node& node, absl::string_view key,
                    std::string* out) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      out->append("null");
      return absl::OkStatus();
    case YAML::NodeType::Scalar:
      AppendJsonString(
          out, key == "index" ? IndexName(node.Scalar()) : node.Scalar());
      return absl::OkStatus();
    case YAML::NodeType::Sequence: {
      out->push_back('[');
      bool first = true;
      for (const YAML::Node& element : node) {
        if (!first) out->push_back(',');
        first = false;
        if (absl::Status s = ToJson(element, "", out); !s.ok()) return s;
      }
      out->push_back(']');
      return absl::OkStatus();
    }
    case YAML::NodeType::Map: {
      out->push_back('{');
      bool first = true;
      for (const auto& kv : node) {
        if (!kv.first.IsScalar()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "line ", kv.first.Mark().line + 1, ": a key must be a name"));
        }
        if (!first) out->push_back(',');
        first = false;
        AppendJsonString(out, kv.first.Scalar());
        out->push_back(':');
        if (absl::Status s = ToJson(kv.second, kv.first.Scalar(), out);
            !s.ok()) {
          return s;
        }
      }
      out->push_back('}');
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError("unknown YAML node");
}

const char* OpName(const v1::BatchItem& item) {
  switch (item.op_case()) {
    case v1::BatchItem::kRegisterProducer:
      return "register_producer";
    case v1::BatchItem::kRegisterConsumer:
      return "register_consumer";
    case v1::BatchItem::kUnregisterProducer:
      return "unregister_producer";
    case v1::BatchItem::kUnregisterConsumer:
      return "unregister_consumer";
    case v1::BatchItem::OP_NOT_SET:
      break;
  }
  return "(no op)";
}

const std::string& TokenOf(const v1::BatchItem& item) {
  switch (item.op_case()) {
    case v1::BatchItem::kRegisterProducer:
      return item.register_producer().producer().token();
    case v1::BatchItem::kRegisterConsumer:
      return item.register_consumer().consumer().token();
    case v1::BatchItem::kUnregisterProducer:
      return item.unregister_producer().token();
    case v1::BatchItem::kUnregisterConsumer:
      return item.unregister_consumer().token();
    case v1::BatchItem::OP_NOT_SET:
      break;
  }
  static const std::string* const kNone = new std::string;
  return *kNone;
}

}  // namespace

absl::StatusOr<std::vector<v1::BatchItem>> ParseApplyFile(
    absl::string_view text) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "line ", e.mark.line + 1, ", column ", e.mark.column + 1, ": ", e.msg));
  }
  YAML::Node list = root;
  if (root.IsMap()) {
    if (root.size() != 1 || !root["items"]) {
      return absl::InvalidArgumentError(
          "expected a list of items, or a map with only an `items` list");
    }
    list = root["items"];
  }
  if (!list.IsSequence()) {
    return absl::InvalidArgumentError(
        "expected a list of items, or a map with only an `items` list");
  }
  std::vector<v1::BatchItem> items;
  items.reserve(list.size());
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node& element = list[i];
    const std::string where =
        absl::StrCat("items[", i, "] (line ", element.Mark().line + 1, ")");
    if (!element.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where,
                       ": expected a map with one of register_producer, "
                       "register_consumer, unregister_producer, "
                       "unregister_consumer"));
    }
    std::string json;
    if (absl::Status s = ToJson(element, "", &json); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", s.message()));
    }
    v1::BatchItem item;
    if (auto s =
            google::protobuf::util::JsonStringToMessage(json, &item, options);
        !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", s.message().as_string()));
    }
    if (item.op_case() == v1::BatchItem::OP_NOT_SET) {
      return absl::InvalidArgumentError(
          absl::StrCat(where,
                       ": one of register_producer, register_consumer, "
                       "unregister_producer, unregister_consumer is "
                       "required"));
    }
    items.push_back(std::move(item));
  }
  if (items.empty()) return absl::InvalidArgumentError("no items");
  return items;
}

std::string FormatBatchResultText(int i, const v1::BatchItem& item,
                                  const v1::BatchResult& result) {
  std::string line =
      absl::StrCat("items[", i, "] ", OpName(item), " ", TokenOf(item), ": ");
  if (result.status().code() != 0) {
    absl::StrAppend(&line, "error ",
                    absl::StatusCodeToString(
                        static_cast<absl::StatusCode>(result.status().code())),
                    ": ", result.status().message(), "\n");
    return line;
  }
  switch (result.response_case()) {
    case v1::BatchResult::kRegisterProducer:
      absl::StrAppend(
          &line, "registered ", result.register_producer().registration_id(),
          result.register_producer().connected() ? ", connected" : "");
      break;
    case v1::BatchResult::kRegisterConsumer:
      absl::StrAppend(
          &line, "registered ", result.register_consumer().registration_id(),
          result.register_consumer().connected() ? ", connected" : "");
      break;
    case v1::BatchResult::kUnregisterProducer:
      absl::StrAppend(
          &line, "unregistered",
          result.unregister_producer().disconnected() ? ", disconnected" : "");
      break;
    case v1::BatchResult::kUnregisterConsumer:
      absl::StrAppend(
          &line, "unregistered",
          result.unregister_consumer().disconnected() ? ", disconnected" : "");
      break;
    case v1::BatchResult::RESPONSE_NOT_SET:
      absl::StrAppend(&line, "ok");
      break;
  }
  line.push_back('\n');
  return line;
}

}  // namespace irqbypass::ctl
