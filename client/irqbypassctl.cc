// irqbypassctl: command-line front end to irqbypassd (service
// irqbypass.v1.BypassManager), built on irqbypass::client::Client.
//
//   irqbypassctl [--server=HOST:PORT] [--output=text|json] [--timeout=10s]
//                <command> [command flags]
//
// Commands: register-producer, register-consumer, unregister-producer,
// unregister-consumer, get, list, watch (see kUsage below or --help).
//
// All commands share one absl flag namespace. The command line is parsed here
// rather than by absl::ParseCommandLine so that every usage error (unknown
// flag, bad value, a flag that does not belong to the command, a missing
// required flag) exits with code 2 before any server is contacted.
//
// Output: text by default; with --output=json one JSON object per line on
// stdout, errors included ({"error":{...}}). In text mode errors go to stderr.
//
// Exit codes (ctl_format.h, ExitCodeForStatus):
//   0 ok; 1 other/internal error; 2 invalid arguments (INVALID_ARGUMENT or
//   bad command line); 3 NOT_FOUND; 4 ALREADY_EXISTS; 5 connect failed
//   (FAILED_PRECONDITION, reason CONNECT_FAILED); 6 other FAILED_PRECONDITION
//   (node mismatch, registration id mismatch); 7 UNAVAILABLE; 8
//   DEADLINE_EXCEEDED; 9 PERMISSION_DENIED or UNAUTHENTICATED.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/apply_file.h"
#include "client/ctl_format.h"
#include "client/irqbypass_client.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"
#include "security/tls.h"
#include "security/tls_flags.h"

// Global flags.
ABSL_FLAG(std::string, server, "127.0.0.1:50051",
          "irqbypassd address HOST:PORT (env IRQBYPASS_SERVER when the flag "
          "is not given)");
ABSL_FLAG(std::string, output, "text", "Output format: text or json");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(10),
          "Deadline of each call, e.g. 10s or 500ms; for watch it bounds the "
          "whole watch, and only when given");

// Command flags.
ABSL_FLAG(std::string, token, "", "Pairing token");
ABSL_FLAG(std::string, node, "", "Node (agent --node name)");
ABSL_FLAG(std::string, device, "", "PCI address of the VFIO device");
ABSL_FLAG(uint32_t, vector, 0, "Vector within the interrupt index (default 0)");
ABSL_FLAG(std::string, index, "msix", "Interrupt index: msix, msi or intx");
ABSL_FLAG(std::string, vm, "", "VM name as the node agent knows it");
ABSL_FLAG(uint32_t, gsi, 0, "Guest GSI");
ABSL_FLAG(std::string, registration_id, "",
          "Only unregister this registration");
ABSL_FLAG(std::string, request_id, "",
          "Request id of a register/unregister (default: a fresh random one); "
          "give the same one to retry a call whose outcome you did not see");
ABSL_FLAG(int32_t, attempts, 4,
          "register/unregister: attempts in all when the server is "
          "unavailable (same request id each time; 1: no retry)");
ABSL_FLAG(int32_t, page_size, 0,
          "Bindings per ListBindings page (0: server "
          "default)");
ABSL_FLAG(bool, include_existing, false,
          "watch: first report every current binding");
ABSL_FLAG(uint64_t, start_revision, 0,
          "watch: resume after this revision (the resume_revision of the "
          "last SYNCED or PROGRESS event)");
ABSL_FLAG(bool, progress, false,
          "watch: also print PROGRESS events (where to resume from), about "
          "once a second while it moves on");
ABSL_FLAG(int64_t, max_events, 0,
          "watch: exit after this many events "
          "(0: no limit)");
ABSL_FLAG(std::string, f, "",
          "apply: the file of items (YAML or JSON; - for standard input)");

namespace irqbypass::ctl {
namespace {

constexpr char kProgram[] = "irqbypassctl";
constexpr char kServerEnv[] = "IRQBYPASS_SERVER";

constexpr char kUsage[] =
    R"(Usage: irqbypassctl [global flags] <command> [command flags]

Calls irqbypassd, the IRQ bypass manager (irqbypass.v1.BypassManager).

Commands:
  register-producer --token=T --node=N --device=BDF [--vector=V]
                    [--index=msix|msi|intx]
  register-consumer --token=T --node=N --vm=NAME --gsi=G
  unregister-producer --token=T [--registration_id=ID]
  unregister-consumer --token=T [--registration_id=ID]
      (the four above also take [--request_id=ID] [--attempts=N]: each
       call carries a request id, a fresh one unless given, and is retried
       with it while the server is unavailable, up to N attempts (default
       4); irqbypassd answers a retry of a call that took effect with the
       first outcome)
  apply -f FILE                            (many registrations and
                                            unregistrations in one call;
                                            FILE: YAML or JSON, - for stdin;
                                            one line per item; the exit code
                                            is the first failed item's)
  get --token=T
  list [--node=N] [--page_size=N]          (follows all pages)
  watch [--node=N] [--include_existing] [--max_events=N]
        [--start_revision=R] [--progress]
                                           (one line per event)
  nodes                                    (every node: agent, counts)
  node NAME  (or --node=NAME)              (one node, with its agent
                                            session and last reconciliation)

Global flags:
  --server=HOST:PORT   irqbypassd address (default 127.0.0.1:50051; the
                       environment variable IRQBYPASS_SERVER is used when the
                       flag is not given); several replicas comma-separated
                       (HOST:PORT,HOST:PORT): calls find the leader and
                       follow a failover
  --output=text|json   text (default), or one JSON object per line on stdout,
                       errors included as {"error":{"code","message","detail"}}
  --timeout=DURATION   deadline of each call, e.g. 10s, 500ms (default 10s);
                       for watch it bounds the whole watch, and only if given
  --tls_cert=PEM --tls_key=PEM --tls_ca=PEM
                       this client's certificate (an orchestrator's, a
                       reader's or an admin's), its key, and the CA bundle
                       irqbypassd is verified against (mutual TLS, the
                       default; from IRQBYPASS_TLS_CERT, IRQBYPASS_TLS_KEY
                       and IRQBYPASS_TLS_CA when not given)
  --trust_domain=D     of the identities (default irqbypass.local)
  --insecure           plaintext, for an irqbypassd started with --insecure
                       (or IRQBYPASS_INSECURE=1)

Flags may come before or after the command; "--flag value" and "--flag=value"
both work; boolean flags also take --noflag. A flag that does not belong to
the command is an error.

)";

// Flags every command accepts.
const std::vector<absl::string_view>& GlobalFlags() {
  static const auto* const kFlags = new std::vector<absl::string_view>{
      "server", "output",       "timeout",     "tls_cert", "tls_key",
      "tls_ca", "trust_domain", "tls_refresh", "insecure"};
  return *kFlags;
}

// What a command needs, once the command line has been checked.
struct Invocation {
  OutputFormat output = OutputFormat::kText;
  const client::Client* client = nullptr;
};

void Print(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

void PrintError(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

// --- Commands ---

absl::Status RunRegisterProducer(const Invocation& inv) {
  absl::StatusOr<v1::IrqIndex> index =
      ParseIrqIndex(absl::GetFlag(FLAGS_index));
  if (!index.ok()) return index.status();
  v1::Producer producer;
  producer.set_token(absl::GetFlag(FLAGS_token));
  producer.set_node(absl::GetFlag(FLAGS_node));
  producer.set_device(absl::GetFlag(FLAGS_device));
  producer.set_vector(absl::GetFlag(FLAGS_vector));
  producer.set_index(*index);
  absl::StatusOr<client::RegisterResult> result =
      inv.client->RegisterProducer(producer, absl::GetFlag(FLAGS_request_id));
  if (!result.ok()) return result.status();
  if (inv.output == OutputFormat::kJson) {
    v1::RegisterProducerResponse response;
    response.set_registration_id(result->registration_id);
    response.set_connected(result->connected);
    Print(FormatJson(response));
  } else {
    Print(FormatRegisterText("producer", producer.token(), *result));
  }
  return absl::OkStatus();
}

absl::Status RunRegisterConsumer(const Invocation& inv) {
  v1::Consumer consumer;
  consumer.set_token(absl::GetFlag(FLAGS_token));
  consumer.set_node(absl::GetFlag(FLAGS_node));
  consumer.set_vm(absl::GetFlag(FLAGS_vm));
  consumer.set_gsi(absl::GetFlag(FLAGS_gsi));
  absl::StatusOr<client::RegisterResult> result =
      inv.client->RegisterConsumer(consumer, absl::GetFlag(FLAGS_request_id));
  if (!result.ok()) return result.status();
  if (inv.output == OutputFormat::kJson) {
    v1::RegisterConsumerResponse response;
    response.set_registration_id(result->registration_id);
    response.set_connected(result->connected);
    Print(FormatJson(response));
  } else {
    Print(FormatRegisterText("consumer", consumer.token(), *result));
  }
  return absl::OkStatus();
}

absl::Status RunUnregisterProducer(const Invocation& inv) {
  const std::string token = absl::GetFlag(FLAGS_token);
  absl::StatusOr<bool> disconnected = inv.client->UnregisterProducer(
      token, absl::GetFlag(FLAGS_registration_id),
      absl::GetFlag(FLAGS_request_id));
  if (!disconnected.ok()) return disconnected.status();
  if (inv.output == OutputFormat::kJson) {
    v1::UnregisterProducerResponse response;
    response.set_disconnected(*disconnected);
    Print(FormatJson(response));
  } else {
    Print(FormatUnregisterText("producer", token, *disconnected));
  }
  return absl::OkStatus();
}

absl::Status RunUnregisterConsumer(const Invocation& inv) {
  const std::string token = absl::GetFlag(FLAGS_token);
  absl::StatusOr<bool> disconnected = inv.client->UnregisterConsumer(
      token, absl::GetFlag(FLAGS_registration_id),
      absl::GetFlag(FLAGS_request_id));
  if (!disconnected.ok()) return disconnected.status();
  if (inv.output == OutputFormat::kJson) {
    v1::UnregisterConsumerResponse response;
    response.set_disconnected(*disconnected);
    Print(FormatJson(response));
  } else {
    Print(FormatUnregisterText("consumer", token, *disconnected));
  }
  return absl::OkStatus();
}

absl::Status RunGet(const Invocation& inv) {
  absl::StatusOr<v1::Binding> binding =
      inv.client->GetBinding(absl::GetFlag(FLAGS_token));
  if (!binding.ok()) return binding.status();
  Print(inv.output == OutputFormat::kJson ? FormatJson(*binding)
                                          : FormatBindingText(*binding));
  return absl::OkStatus();
}

absl::Status RunNodes(const Invocation& inv) {
  absl::StatusOr<std::vector<v1::Node>> nodes = inv.client->ListNodes();
  if (!nodes.ok()) return nodes.status();
  if (inv.output == OutputFormat::kJson) {
    v1::ListNodesResponse response;
    for (v1::Node& node : *nodes) *response.add_nodes() = std::move(node);
    Print(FormatJson(response));
  } else {
    Print(FormatNodeTable(*nodes));
  }
  return absl::OkStatus();
}

absl::Status RunNode(const Invocation& inv) {
  absl::StatusOr<v1::Node> node =
      inv.client->GetNode(absl::GetFlag(FLAGS_node));
  if (!node.ok()) return node.status();
  Print(inv.output == OutputFormat::kJson ? FormatJson(*node)
                                          : FormatNodeText(*node));
  return absl::OkStatus();
}

// Most items in one Batch call (irqbypassd's limit).
constexpr size_t kBatchItems = 4096;

absl::StatusOr<std::string> ReadInput(const std::string& path) {
  std::FILE* f = path == "-" ? stdin : std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("-f: cannot open ", path, ": ", std::strerror(errno)));
  }
  std::string text;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  if (f != stdin) std::fclose(f);
  if (failed) {
    return absl::InvalidArgumentError(absl::StrCat("-f: cannot read ", path));
  }
  return text;
}

absl::Status RunApply(const Invocation& inv) {
  const std::string path = absl::GetFlag(FLAGS_f);
  absl::StatusOr<std::string> text = ReadInput(path);
  if (!text.ok()) return text.status();
  absl::StatusOr<std::vector<v1::BatchItem>> items = ParseApplyFile(*text);
  if (!items.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", items.status().message()));
  }
  // In calls of at most kBatchItems, one after another, so items on one
  // token keep their order across calls too.
  size_t failed = 0;
  std::optional<absl::Status> first_failure;
  for (size_t start = 0; start < items->size(); start += kBatchItems) {
    const size_t end = std::min(items->size(), start + kBatchItems);
    v1::BatchRequest request;
    for (size_t i = start; i < end; ++i) *request.add_items() = (*items)[i];
    absl::StatusOr<v1::BatchResponse> response =
        inv.client->Batch(std::move(request));
    if (!response.ok()) {
      if (start == 0) return response.status();
      return absl::Status(response.status().code(),
                          absl::StrCat("items[", start,
                                       "] onwards not applied (items before "
                                       "them were, as printed): ",
                                       response.status().message()));
    }
    for (size_t i = start; i < end; ++i) {
      const v1::BatchResult& result = response->results(i - start);
      if (inv.output == OutputFormat::kJson) {
        Print(FormatJson(result));
      } else {
        Print(FormatBatchResultText(static_cast<int>(i), (*items)[i], result));
      }
      if (result.status().code() != 0) {
        ++failed;
        if (!first_failure.has_value()) {
          first_failure = absl::Status(
              static_cast<absl::StatusCode>(result.status().code()),
              absl::StrCat("items[", i, "]: ", result.status().message()));
        }
      }
    }
  }
  if (!first_failure.has_value()) return absl::OkStatus();
  return absl::Status(
      first_failure->code(),
      absl::StrCat(failed, " of ", items->size(),
                   " items failed; the first: ", first_failure->message()));
}

absl::Status RunList(const Invocation& inv) {
  absl::StatusOr<std::vector<v1::Binding>> bindings =
      inv.client->ListAllBindings(absl::GetFlag(FLAGS_node),
                                  absl::GetFlag(FLAGS_page_size));
  if (!bindings.ok()) return bindings.status();
  if (inv.output == OutputFormat::kJson) {
    // All pages merged into one response object with no next page.
    v1::ListBindingsResponse response;
    for (v1::Binding& binding : *bindings) {
      *response.add_bindings() = std::move(binding);
    }
    Print(FormatJson(response));
  } else {
    Print(FormatBindingTable(*bindings));
  }
  return absl::OkStatus();
}

absl::Status RunWatch(const Invocation& inv) {
  v1::WatchBindingsRequest request;
  request.set_node(absl::GetFlag(FLAGS_node));
  request.set_include_existing(absl::GetFlag(FLAGS_include_existing));
  request.set_start_revision(absl::GetFlag(FLAGS_start_revision));
  request.set_progress_notify(absl::GetFlag(FLAGS_progress));
  const int64_t max_events = absl::GetFlag(FLAGS_max_events);
  int64_t seen = 0;
  return inv.client->WatchBindings(request, [&](const v1::BindingEvent& event) {
    Print(inv.output == OutputFormat::kJson ? FormatJson(event)
                                            : FormatEventText(event));
    ++seen;
    return max_events == 0 || seen < max_events;
  });
}

struct Command {
  absl::string_view name;
  std::vector<absl::string_view> required;
  std::vector<absl::string_view> optional;
  std::function<absl::Status(const Invocation&)> run;
};

const std::vector<Command>& Commands() {
  static const auto* const kCommands = new std::vector<Command>{
      {"register-producer",
       {"token", "node", "device"},
       {"vector", "index", "request_id", "attempts"},
       RunRegisterProducer},
      {"register-consumer",
       {"token", "node", "vm", "gsi"},
       {"request_id", "attempts"},
       RunRegisterConsumer},
      {"unregister-producer",
       {"token"},
       {"registration_id", "request_id", "attempts"},
       RunUnregisterProducer},
      {"unregister-consumer",
       {"token"},
       {"registration_id", "request_id", "attempts"},
       RunUnregisterConsumer},
      {"apply", {"f"}, {"attempts"}, RunApply},
      {"get", {"token"}, {}, RunGet},
      {"list", {}, {"node", "page_size"}, RunList},
      {"nodes", {}, {}, RunNodes},
      {"node", {"node"}, {}, RunNode},
      {"watch",
       {},
       {"node", "include_existing", "max_events", "start_revision", "progress"},
       RunWatch},
  };
  return *kCommands;
}

const Command* FindCommand(absl::string_view name) {
  for (const Command& command : Commands()) {
    if (command.name == name) return &command;
  }
  return nullptr;
}

// Every flag name some command (or the global set) accepts.
bool IsKnownFlag(absl::string_view name) {
  for (absl::string_view flag : GlobalFlags()) {
    if (flag == name) return true;
  }
  for (const Command& command : Commands()) {
    for (const auto* list : {&command.required, &command.optional}) {
      for (absl::string_view flag : *list) {
        if (flag == name) return true;
      }
    }
  }
  return false;
}

// --- Command line ---

struct CommandLine {
  bool help = false;
  std::vector<std::string> positional;
  std::set<std::string> specified;  // flags given on the command line
};

// Sets the flags named on the command line and collects positional arguments.
// INVALID_ARGUMENT names the offending argument.
absl::StatusOr<CommandLine> ParseArgs(int argc, char** argv) {
  CommandLine result;
  bool only_positional = false;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (only_positional || arg.size() < 2 || arg[0] != '-') {
      result.positional.emplace_back(arg);
      continue;
    }
    if (arg == "--") {
      only_positional = true;
      continue;
    }
    absl::string_view body = arg.substr(arg[1] == '-' ? 2 : 1);
    absl::string_view name = body;
    std::optional<std::string> value;
    if (const size_t eq = body.find('='); eq != absl::string_view::npos) {
      name = body.substr(0, eq);
      value = std::string(body.substr(eq + 1));
    }
    if (name == "help" || name == "h") {
      result.help = true;
      continue;
    }
    absl::CommandLineFlag* flag =
        IsKnownFlag(name) ? absl::FindCommandLineFlag(name) : nullptr;
    if (flag == nullptr && absl::StartsWith(name, "no") && !value.has_value()) {
      // --noinclude_existing
      absl::string_view positive = name.substr(2);
      absl::CommandLineFlag* bool_flag =
          IsKnownFlag(positive) ? absl::FindCommandLineFlag(positive) : nullptr;
      if (bool_flag != nullptr && bool_flag->IsOfType<bool>()) {
        flag = bool_flag;
        name = positive;
        value = "false";
      }
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (!value.has_value()) {
      if (flag->IsOfType<bool>()) {
        value = "true";
      } else if (i + 1 < argc) {
        value = std::string(argv[++i]);
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " needs a value"));
      }
    }
    std::string error;
    if (!flag->ParseFrom(*value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid value \"", *value, "\" for --", name, ": ", error));
    }
    result.specified.insert(std::string(name));
  }
  return result;
}

// Checks that the flags given fit `command`: nothing foreign, every required
// flag present (and, for strings, not empty).
absl::Status CheckFlagsFitCommand(const Command& command,
                                  const std::set<std::string>& specified) {
  for (const std::string& name : specified) {
    bool allowed = false;
    for (const auto* list :
         {&GlobalFlags(), &command.required, &command.optional}) {
      for (absl::string_view flag : *list) allowed |= flag == name;
    }
    if (!allowed) {
      return absl::InvalidArgumentError(
          absl::StrCat("flag --", name, " does not apply to ", command.name));
    }
  }
  for (absl::string_view name : command.required) {
    bool missing = specified.count(std::string(name)) == 0;
    if (!missing) {
      absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
      missing = flag != nullptr && flag->IsOfType<std::string>() &&
                flag->CurrentValue().empty();
    }
    if (missing) {
      return absl::InvalidArgumentError(
          absl::StrCat(command.name, ": missing required flag --", name));
    }
  }
  return absl::OkStatus();
}

std::string Usage() { return absl::StrCat(kUsage, ExitCodeHelp()); }

// Reports a bad command line: always on stderr, and as a JSON error object on
// stdout in json mode. Returns kExitUsage.
int UsageError(const absl::Status& status, OutputFormat output) {
  PrintError(absl::StrCat(kProgram, ": ", status.message(), "\nRun '", kProgram,
                          " --help' for usage.\n"));
  if (output == OutputFormat::kJson) Print(FormatErrorJson(status));
  return kExitUsage;
}

std::string ServerAddress(const std::set<std::string>& specified) {
  if (specified.count("server") == 0) {
    const char* env = std::getenv(kServerEnv);
    if (env != nullptr && env[0] != '\0') return env;
  }
  return absl::GetFlag(FLAGS_server);
}

int Main(int argc, char** argv) {
  absl::StatusOr<CommandLine> command_line = ParseArgs(argc, argv);
  if (!command_line.ok()) {
    return UsageError(command_line.status(), OutputFormat::kText);
  }
  if (command_line->help || (!command_line->positional.empty() &&
                             command_line->positional.front() == "help")) {
    Print(Usage());
    return kExitOk;
  }

  absl::StatusOr<OutputFormat> output =
      ParseOutputFormat(absl::GetFlag(FLAGS_output));
  if (!output.ok()) return UsageError(output.status(), OutputFormat::kText);

  if (command_line->positional.empty()) {
    return UsageError(
        absl::InvalidArgumentError(
            "missing command (register-producer, register-consumer, "
            "unregister-producer, unregister-consumer, get, list, watch, "
            "nodes, node)"),
        *output);
  }
  const std::string& name = command_line->positional.front();
  const Command* command = FindCommand(name);
  if (command == nullptr) {
    return UsageError(absl::InvalidArgumentError(
                          absl::StrCat("unknown command \"", name, "\"")),
                      *output);
  }
  // `node NAME` is `node --node=NAME`.
  if (command->name == "node" && command_line->positional.size() == 2 &&
      command_line->specified.count("node") == 0) {
    absl::SetFlag(&FLAGS_node, command_line->positional[1]);
    command_line->specified.insert("node");
    command_line->positional.pop_back();
  }
  if (command_line->positional.size() > 1) {
    return UsageError(
        absl::InvalidArgumentError(absl::StrCat(
            "unexpected argument \"", command_line->positional[1], "\"")),
        *output);
  }
  if (absl::Status status =
          CheckFlagsFitCommand(*command, command_line->specified);
      !status.ok()) {
    return UsageError(status, *output);
  }
  const absl::Duration timeout = absl::GetFlag(FLAGS_timeout);
  if (timeout <= absl::ZeroDuration()) {
    return UsageError(absl::InvalidArgumentError("--timeout must be positive"),
                      *output);
  }
  if (absl::GetFlag(FLAGS_attempts) < 1) {
    return UsageError(
        absl::InvalidArgumentError("--attempts must be at least 1"), *output);
  }
  if (absl::GetFlag(FLAGS_page_size) < 0) {
    return UsageError(
        absl::InvalidArgumentError("--page_size must not be negative"),
        *output);
  }
  if (absl::GetFlag(FLAGS_max_events) < 0) {
    return UsageError(
        absl::InvalidArgumentError("--max_events must not be negative"),
        *output);
  }
  if (command->name == "register-producer") {
    absl::StatusOr<v1::IrqIndex> index =
        ParseIrqIndex(absl::GetFlag(FLAGS_index));
    if (!index.ok()) return UsageError(index.status(), *output);
  }

  // Mutual TLS unless --insecure; flags first, then the environment: the
  // plaintext choice first, then (unless plaintext) the certificates.
  auto from_env = [&](const char* flag, const char* env) -> absl::Status {
    const char* value = std::getenv(env);
    if (command_line->specified.count(flag) > 0 || value == nullptr ||
        value[0] == '\0') {
      return absl::OkStatus();
    }
    std::string error;
    if (!absl::FindCommandLineFlag(flag)->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat(env, ": ", error));
    }
    return absl::OkStatus();
  };
  if (absl::Status s = from_env("insecure", "IRQBYPASS_INSECURE"); !s.ok()) {
    return UsageError(s, *output);
  }
  if (!security::InsecureFlag()) {
    for (const auto& [flag, env] :
         {std::pair<const char*, const char*>{"tls_cert", "IRQBYPASS_TLS_CERT"},
          {"tls_key", "IRQBYPASS_TLS_KEY"},
          {"tls_ca", "IRQBYPASS_TLS_CA"}}) {
      if (absl::Status s = from_env(flag, env); !s.ok()) {
        return UsageError(s, *output);
      }
    }
  }
  absl::StatusOr<security::TlsSetup> tls =
      security::TlsFromFlags({security::Role::kOrchestrator,
                              security::Role::kReader, security::Role::kAdmin});
  if (!tls.ok()) return UsageError(tls.status(), *output);

  if (tls->insecure) {
    // On stderr, so that a JSON reply on stdout stays what it was.
    std::fprintf(stderr,
                 "irqbypassctl: warning: --insecure: plaintext, no "
                 "certificate presented and the server not verified\n");
  }
  client::ClientOptions options;
  options.call_timeout = timeout;
  if (!tls->insecure) {
    options.credentials = security::ChannelCredentials(tls->options);
  }
  options.max_attempts = absl::GetFlag(FLAGS_attempts);
  if (command_line->specified.count("timeout") > 0) {
    options.watch_timeout = timeout;
  }
  absl::StatusOr<std::unique_ptr<client::Client>> client =
      client::Client::Create(ServerAddress(command_line->specified), options);
  if (!client.ok()) return UsageError(client.status(), *output);

  Invocation invocation;
  invocation.output = *output;
  invocation.client = client->get();
  const absl::Status status = command->run(invocation);
  if (!status.ok()) {
    if (*output == OutputFormat::kJson) {
      Print(FormatErrorJson(status));
    } else {
      PrintError(absl::StrCat(kProgram, ": ", FormatErrorText(status)));
    }
  }
  return ExitCodeForStatus(status);
}

}  // namespace
}  // namespace irqbypass::ctl

int main(int argc, char** argv) { return irqbypass::ctl::Main(argc, argv); }
