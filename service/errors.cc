#include "service/errors.h"

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace irqbypass {
namespace {

constexpr char kReason[] = "irqbypass/reason";
constexpr char kField[] = "irqbypass/field";
constexpr char kToken[] = "irqbypass/token";
constexpr char kNode[] = "irqbypass/node";
constexpr char kStep[] = "irqbypass/step";
constexpr char kErrno[] = "irqbypass/errno";
constexpr char kAgentMessage[] = "irqbypass/agent_message";
constexpr char kOtherToken[] = "irqbypass/other_token";
constexpr char kLeader[] = "irqbypass/leader";

void SetIfNotEmpty(absl::Status* s, const char* key, const std::string& v) {
  if (!v.empty()) s->SetPayload(key, absl::Cord(v));
}

std::string GetString(const absl::Status& s, const char* key) {
  auto p = s.GetPayload(key);
  return p.has_value() ? std::string(*p) : std::string();
}

}  // namespace

absl::Status MakeError(absl::StatusCode code, ErrorReason reason,
                       absl::string_view message, const ErrorContext& ctx) {
  absl::Status s(code, message);
  s.SetPayload(kReason, absl::Cord(absl::StrCat(static_cast<int>(reason))));
  SetIfNotEmpty(&s, kField, ctx.field);
  SetIfNotEmpty(&s, kToken, ctx.token);
  SetIfNotEmpty(&s, kNode, ctx.node);
  SetIfNotEmpty(&s, kStep, ctx.step);
  if (ctx.err != 0) s.SetPayload(kErrno, absl::Cord(absl::StrCat(ctx.err)));
  SetIfNotEmpty(&s, kAgentMessage, ctx.agent_message);
  SetIfNotEmpty(&s, kOtherToken, ctx.other_token);
  SetIfNotEmpty(&s, kLeader, ctx.leader);
  return s;
}

absl::Status InvalidField(absl::string_view field, absl::string_view message) {
  ErrorContext ctx;
  ctx.field = std::string(field);
  return MakeError(absl::StatusCode::kInvalidArgument,
                   ErrorReason::kInvalidField, message, ctx);
}

ErrorReason GetErrorReason(const absl::Status& status) {
  int v = 0;
  if (!absl::SimpleAtoi(GetString(status, kReason), &v)) {
    return ErrorReason::kUnspecified;
  }
  return static_cast<ErrorReason>(v);
}

ErrorContext GetErrorContext(const absl::Status& status) {
  ErrorContext ctx;
  ctx.field = GetString(status, kField);
  ctx.token = GetString(status, kToken);
  ctx.node = GetString(status, kNode);
  ctx.step = GetString(status, kStep);
  int err = 0;
  if (absl::SimpleAtoi(GetString(status, kErrno), &err)) ctx.err = err;
  ctx.agent_message = GetString(status, kAgentMessage);
  ctx.other_token = GetString(status, kOtherToken);
  ctx.leader = GetString(status, kLeader);
  return ctx;
}

}  // namespace irqbypass
