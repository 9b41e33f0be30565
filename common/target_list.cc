#include "common/target_list.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"

namespace irqbypass {

std::vector<std::string> SplitTargetList(absl::string_view list) {
  if (absl::StrContains(list, "://") || absl::StartsWith(list, "ipv4:") ||
      absl::StartsWith(list, "ipv6:") || absl::StartsWith(list, "unix:") ||
      absl::StartsWith(list, "dns:")) {
    return {std::string(list)};
  }
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(list, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (!part.empty()) out.emplace_back(part);
  }
  return out;
}

}  // namespace irqbypass
