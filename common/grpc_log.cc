#include "common/grpc_log.h"

#include <cstring>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/log_limiter.h"
#include "grpc/support/log.h"

namespace irqbypass {

namespace {

LogLimiter& Limiter() {
  static LogLimiter* limiter = new LogLimiter(10);
  return *limiter;
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
  uint64_t left_out = 0;
  if (!Limiter().Allow(&left_out)) return;
  LogWarn("grpc", {{"at", where},
                   {"text", text},
                   {"lines_not_logged", absl::StrCat(left_out)}});
}

}  // namespace

void RouteGrpcLogs() { gpr_set_log_function(&OnGrpcLog); }

}  // namespace irqbypass
