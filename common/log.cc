#include "common/log.h"

#include <unistd.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/json_string.h"

namespace irqbypass {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<int> g_format{static_cast<int>(LogFormat::kKeyValue)};

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

bool NeedsQuoting(absl::string_view v) {
  if (v.empty()) return true;
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' ||
        static_cast<unsigned char>(c) < 0x20) {
      return true;
    }
  }
  return false;
}

}  // namespace

void SetLogLevel(LogLevel level) { g_level = static_cast<int>(level); }
void SetLogFormat(LogFormat format) { g_format = static_cast<int>(format); }

bool ParseLogLevel(absl::string_view name, LogLevel* level) {
  if (name == "debug")
    *level = LogLevel::kDebug;
  else if (name == "info")
    *level = LogLevel::kInfo;
  else if (name == "warn")
    *level = LogLevel::kWarn;
  else if (name == "error")
    *level = LogLevel::kError;
  else
    return false;
  return true;
}

bool ParseLogFormat(absl::string_view name, LogFormat* format) {
  if (name == "kv")
    *format = LogFormat::kKeyValue;
  else if (name == "json")
    *format = LogFormat::kJson;
  else
    return false;
  return true;
}

bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

void Log(LogLevel level, absl::string_view msg,
         std::initializer_list<LogField> fields) {
  if (!LogEnabled(level)) return;
  const std::string ts = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                                          absl::UTCTimeZone());
  std::string line;
  line.reserve(128);
  if (static_cast<LogFormat>(g_format.load()) == LogFormat::kJson) {
    absl::StrAppend(&line, "{\"ts\":\"", ts, "\",\"level\":\"",
                    LevelName(level), "\",\"msg\":");
    AppendJsonString(&line, msg);
    for (const auto& f : fields) {
      line.push_back(',');
      AppendJsonString(&line, f.first);
      line.push_back(':');
      AppendJsonString(&line, f.second);
    }
    line.append("}\n");
  } else {
    absl::StrAppend(&line, "ts=", ts, " level=", LevelName(level), " msg=");
    if (NeedsQuoting(msg))
      AppendJsonString(&line, msg);
    else
      line.append(msg.data(), msg.size());
    for (const auto& f : fields) {
      absl::StrAppend(&line, " ", f.first, "=");
      if (NeedsQuoting(f.second))
        AppendJsonString(&line, f.second);
      else
        line.append(f.second.data(), f.second.size());
    }
    line.push_back('\n');
  }
  // One write per line so concurrent lines never interleave.
  ssize_t unused = ::write(STDERR_FILENO, line.data(), line.size());
  (void)unused;
}

}  // namespace irqbypass
