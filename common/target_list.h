// The address list that irqbypass-agent --manager, irqbypassctl --server and
// the client library take: several replicas' "host:port", comma-separated.
#ifndef IRQBYPASS_COMMON_TARGET_LIST_H_
#define IRQBYPASS_COMMON_TARGET_LIST_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace irqbypass {

// "a:1, b:2,,c:3" -> {"a:1", "b:2", "c:3"}. A gRPC target with a scheme
// ("ipv4:a,b", "dns:///x", "unix:...") is one entry, commas and all.
std::vector<std::string> SplitTargetList(absl::string_view list);

}  // namespace irqbypass

#endif  // IRQBYPASS_COMMON_TARGET_LIST_H_
