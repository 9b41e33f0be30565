// A string as a JSON string literal: quoted, with JSON's escapes.
#ifndef IRQBYPASS_COMMON_JSON_STRING_H_
#define IRQBYPASS_COMMON_JSON_STRING_H_

#include <string>

#include "absl/strings/string_view.h"

namespace irqbypass {

// Appends `v` to `out` as a JSON string: in double quotes, with `"` and `\`
// escaped and control characters as \n, \t or \u00XX.
void AppendJsonString(std::string* out, absl::string_view v);

}  // namespace irqbypass

#endif  // IRQBYPASS_COMMON_JSON_STRING_H_
