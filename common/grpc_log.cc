#include "common/grpc_log.h"

#include <cstring>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/log_limiter.h"
#include "google/protobuf/stubs/logging.h"
#include "grpc/support/log.h"

namespace irqbypass {

namespace {

// One budget per call site (file:line): a peer that fails handshakes on
// purpose uses up the handshake line's, never another's. Sites are few
// (gRPC's source lines), so the map stays small.
KeyedLogLimiter& Limiters() {
  static auto* limiters = new KeyedLogLimiter(10);
  return *limiters;
}

void OnGrpcLog(gpr_log_func_args* args) {
  const std::string text = args->message != nullptr ? args->message : "";
  const char* file = args->file != nullptr ? args->file : "";
  // Only the file's name: gRPC passes its build path.
  const char* slash = std::strrchr(file, '/');
  const std::string where =
      absl::StrCat(slash != nullptr ? slash + 1 : file, ":", args->line);
  const bool expected =
      absl::StartsWith(text, "No match found for server name");
  if (expected || args->severity == GPR_LOG_SEVERITY_INFO ||
      args->severity == GPR_LOG_SEVERITY_DEBUG) {
    LogDebug("grpc", {{"at", where}, {"text", text}});
    return;
  }
  // A failed assertion is the last line before gRPC aborts: never dropped.
  const bool assertion = absl::StartsWith(text, "assertion failed");
  uint64_t left_out = 0;
  if (!assertion && !Limiters().Allow(where, &left_out)) return;
  // A failed handshake concerns one peer; anything else may be the
  // process's (a certificate that no longer loads, say).
  const bool one_peer = absl::StrContains(text, "Handshake failed") ||
                        absl::StrContains(text, "handshake");
  const std::string not_logged = absl::StrCat(left_out);
  Log(one_peer ? LogLevel::kWarn : LogLevel::kError, "grpc",
      {{"at", where}, {"text", text}, {"lines_not_logged", not_logged}});
}

// Protobuf's: one line per malformed message a peer sends (invalid UTF-8
// in a string field, say) would otherwise go straight to stderr, unbounded.
void OnProtobufLog(google::protobuf::LogLevel level, const char* filename,
                   int line, const std::string& message) {
  const char* file = filename != nullptr ? filename : "";
  const char* slash = std::strrchr(file, '/');
  const std::string where =
      absl::StrCat("protobuf:", slash != nullptr ? slash + 1 : file, ":", line);
  uint64_t left_out = 0;
  if (level != google::protobuf::LOGLEVEL_FATAL &&
      !Limiters().Allow(where, &left_out)) {
    return;
  }
  const std::string not_logged = absl::StrCat(left_out);
  Log(level >= google::protobuf::LOGLEVEL_ERROR ? LogLevel::kWarn
                                                : LogLevel::kInfo,
      "protobuf",
      {{"at", where}, {"text", message}, {"lines_not_logged", not_logged}});
}

}  // namespace

void RouteGrpcLogs() {
  gpr_set_log_function(&OnGrpcLog);
  google::protobuf::SetLogHandler(&OnProtobufLog);
}

}  // namespace irqbypass
