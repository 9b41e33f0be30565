// Structured, levelled logging: one line per event, to stderr.
//
//   LogInfo("registered", {{"token", token}, {"node", node}});
//   -> ts=2026-11-25T16:40:01.123Z level=info msg=registered token=t1 node=n1
//
// Format is key=value by default, JSON with SetLogFormat(LogFormat::kJson).
// Lines about a registration carry token= and node=. Thread-safe: each line
// is written with a single write(2).
#ifndef IRQBYPASS_COMMON_LOG_H_
#define IRQBYPASS_COMMON_LOG_H_

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace irqbypass {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
enum class LogFormat { kKeyValue, kJson };

// Process-wide settings; set once at start-up, before threads log.
void SetLogLevel(LogLevel level);
void SetLogFormat(LogFormat format);
// Parses "debug|info|warn|error" and "kv|json"; false on an unknown name.
bool ParseLogLevel(absl::string_view name, LogLevel* level);
bool ParseLogFormat(absl::string_view name, LogFormat* format);
bool LogEnabled(LogLevel level);

// Values are views: a temporary passed as a value (absl::StrCat(...),
// std::string(token)) lives until the end of the logging call, and nothing
// is copied for a line below the level.
using LogField = std::pair<absl::string_view, absl::string_view>;

void Log(LogLevel level, absl::string_view msg,
         std::initializer_list<LogField> fields = {});

inline void LogDebug(absl::string_view msg,
                     std::initializer_list<LogField> fields = {}) {
  Log(LogLevel::kDebug, msg, fields);
}
inline void LogInfo(absl::string_view msg,
                    std::initializer_list<LogField> fields = {}) {
  Log(LogLevel::kInfo, msg, fields);
}
inline void LogWarn(absl::string_view msg,
                    std::initializer_list<LogField> fields = {}) {
  Log(LogLevel::kWarn, msg, fields);
}

}  // namespace irqbypass

#endif  // IRQBYPASS_COMMON_LOG_H_
