// irqbypass-agent: the node agent, one per host. Keeps a session with the
// manager (irqbypassd) and executes its connect/disconnect commands on the
// chosen backend. SIGTERM/SIGINT shut it down gracefully (exit 0); bad flag
// values exit 2 with a message naming the flag.
#include <limits.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/agent_metrics.h"
#include "agent/agent_session.h"
#include "agent/deviceplugin/device_plugin.h"
#include "agent/deviceplugin/pod_devices.h"
#include "agent/deviceplugin/vfio_inventory.h"
#include "agent/handoff/handoff_server.h"
#include "agent/kvm/kvm_backend.h"
#include "agent/kvm/vfio_device.h"
#include "agent/metered_backend.h"
#include "agent/sim/sim_backend.h"
#include "common/allocator.h"
#include "common/grpc_log.h"
#include "common/log.h"
#include "common/target_list.h"
#include "metrics/metrics_server.h"
#include "security/tls.h"
#include "security/tls_flags.h"

ABSL_FLAG(std::string, manager, "127.0.0.1:50051",
          "The manager's AgentControl address, HOST:PORT; with several "
          "replicas (--store=etcd) all of them, comma-separated: the agent "
          "finds the leader.");
ABSL_FLAG(std::string, node, "",
          "This host's node name, as producers and consumers name it "
          "(default: the name in the agent certificate; with --insecure, "
          "the hostname).");
ABSL_FLAG(std::string, backend, "sim", "Backend: sim or kvm.");
ABSL_FLAG(std::string, sim_vms, "",
          "sim: comma-separated VM names on this host (empty: every VM "
          "exists).");
ABSL_FLAG(std::string, sim_devices, "",
          "sim: comma-separated PCI addresses of the devices on this host "
          "(empty: every device exists).");
ABSL_FLAG(std::string, sim_fail_step, "",
          "sim, for tests: STEP:ERRNO makes every STEP (add_consumer, "
          "add_producer, del_producer or del_consumer) fail with ERRNO (a "
          "name such as EIO, or a number).");
ABSL_FLAG(std::string, sim_step_delay_ms, "0",
          "sim, for tests: sleep N milliseconds in every add step (with "
          "--sim_slow_vms, only in those VMs').");
ABSL_FLAG(std::string, sim_slow_vms, "",
          "sim, for tests: comma-separated VMs whose add steps take "
          "--sim_step_delay_ms (a slow VMM); empty: every VM's do.");
ABSL_FLAG(int, command_workers, 8,
          "Commands executed at once: unrelated commands run concurrently, "
          "those for one token, device vector or VM in the order received.");
ABSL_FLAG(std::string, metrics_listen, "",
          "HOST:PORT for this agent's Prometheus /metrics, e.g. "
          "127.0.0.1:9465 (empty: off; port 0: any free port).");
ABSL_FLAG(std::string, kvm_device, "/dev/kvm",
          "kvm: the KVM device to create VMs on.");
ABSL_FLAG(std::string, kvm_create_vms, "",
          "kvm: comma-separated names of VMs the agent creates on /dev/kvm at "
          "start (in-kernel irqchip, agent-owned GSI routing), for demos and "
          "tests.");
ABSL_FLAG(std::string, kvm_fake_devices, "",
          "kvm: comma-separated PCI addresses (DDDD:BB:DD.F) of fake VFIO "
          "devices that record VFIO_DEVICE_SET_IRQS instead of programming "
          "hardware, for hosts without a device bound to vfio-pci. The KVM "
          "side stays real.");
ABSL_FLAG(std::string, handoff_socket, "",
          "kvm: path of the Unix socket on which VMMs offer the VMs they hold "
          "(the VMM runs KVM_IRQFD on the agent's request) and hand over VFIO "
          "device fds (wire format: agent/handoff.h). Empty: off.");
ABSL_FLAG(absl::Duration, handoff_irqfd_timeout, absl::Seconds(2),
          "kvm: how long to wait for a VMM's answer to one irqfd request "
          "before the step fails with ETIMEDOUT, e.g. 2s or 500ms.");
ABSL_FLAG(std::string, handoff_allowed_uids, "",
          "kvm: comma-separated uids allowed to hand over fds (checked with "
          "SO_PEERCRED; empty: the agent's own uid).");
ABSL_FLAG(std::string, handoff_allowed_gids, "",
          "kvm: comma-separated gids whose members may hand over fds too "
          "(the peer's effective gid or a supplementary group, as of its "
          "connect; empty: none).");
ABSL_FLAG(std::string, device_plugin_resources, "",
          "Serve the kubelet's device plugin API: one extended resource per "
          "NAME=VENDOR:DEVICE[|VENDOR:DEVICE...], comma-separated, e.g. "
          "irqbypass.io/vfio-net=8086:154c; each offers the IOMMU groups of "
          "the matching PCI functions bound to vfio-pci (empty: off)");
ABSL_FLAG(std::string, kubelet_dir, "/var/lib/kubelet",
          "The kubelet's root folder (its device-plugins/ holds "
          "kubelet.sock and the plugins' sockets)");
ABSL_FLAG(std::string, sysfs_root, "/sys",
          "Where sysfs is (the device plugin reads PCI functions and IOMMU "
          "groups there)");
ABSL_FLAG(std::string, dev_root, "/dev",
          "Where /dev is (the device plugin checks and hands out "
          "<dev_root>/vfio/<group>)");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warn or error.");
ABSL_FLAG(std::string, log_format, "kv", "kv (key=value) or json.");

namespace irqbypass {
namespace agent {
namespace {

constexpr char kAgentVersion[] = "0.1.0";
constexpr int kExitUsage = 2;

// Reports a bad flag value and exits with kExitUsage.
[[noreturn]] void FlagError(absl::string_view flag, absl::string_view what) {
  std::fprintf(stderr, "irqbypass-agent: --%s: %s\n", std::string(flag).c_str(),
               std::string(what).c_str());
  std::exit(kExitUsage);
}

// absl's own flags, which FindCommandLineFlag does not know.
bool IsAbslBuiltinFlag(absl::string_view name) {
  for (absl::string_view builtin :
       {"help", "helpfull", "helpshort", "helppackage", "helpon", "helpmatch",
        "version", "only_check_args", "flagfile", "fromenv", "tryfromenv",
        "undefok"}) {
    if (name == builtin) return true;
  }
  return false;
}

// absl exits 1 on an unknown flag; every usage error here exits 2.
void RejectUnknownFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "-")) continue;
    absl::ConsumePrefix(&arg, "-");
    const absl::string_view name = arg.substr(0, arg.find('='));
    if (name.empty() || IsAbslBuiltinFlag(name) ||
        absl::FindCommandLineFlag(name) != nullptr) {
      continue;
    }
    absl::string_view negated = name;  // --nofoo for a boolean --foo
    if (absl::ConsumePrefix(&negated, "no") &&
        absl::FindCommandLineFlag(negated) != nullptr) {
      continue;
    }
    FlagError(name, "unknown flag (see --help)");
  }
}

std::string Hostname() {
  char name[HOST_NAME_MAX + 1] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "";
  return name;
}

// The node name: 1..256 bytes of printable ASCII without spaces (as tokens).
bool ValidNodeName(absl::string_view node) {
  if (node.empty() || node.size() > 256) return false;
  for (char c : node) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

// HOST:PORT with a port in 1..65535, or a target with a gRPC URI scheme
// ("dns:///...", "unix:...", "ipv4:...") passed through as is.
bool ValidManagerAddress(absl::string_view address) {
  if (address.empty()) return false;
  if (absl::StrContains(address, "://") || absl::StartsWith(address, "unix:") ||
      absl::StartsWith(address, "ipv4:") ||
      absl::StartsWith(address, "ipv6:")) {
    return true;
  }
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) return false;
  int port = 0;
  return absl::SimpleAtoi(address.substr(colon + 1), &port) && port > 0 &&
         port <= 65535;
}

// "a, b,,c" -> {a, b, c}; nullopt for an empty list (everything exists).
std::optional<absl::flat_hash_set<std::string>> ParseNameList(
    absl::string_view flag, absl::string_view value) {
  absl::flat_hash_set<std::string> names;
  for (absl::string_view part : absl::StrSplit(value, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) continue;
    if (!ValidNodeName(part)) {
      FlagError(flag, absl::StrCat("bad name \"", part, "\""));
    }
    names.insert(std::string(part));
  }
  if (names.empty()) return std::nullopt;
  return names;
}

SimBackendOptions SimOptionsFromFlags(const std::string& node) {
  SimBackendOptions options;
  options.node = node;
  options.vms = ParseNameList("sim_vms", absl::GetFlag(FLAGS_sim_vms));
  options.devices =
      ParseNameList("sim_devices", absl::GetFlag(FLAGS_sim_devices));

  const std::string fail_step = absl::GetFlag(FLAGS_sim_fail_step);
  if (!fail_step.empty()) {
    absl::StatusOr<SimFault> fault = ParseSimFault(fail_step);
    if (!fault.ok()) FlagError("sim_fail_step", fault.status().message());
    options.fault = *fault;
  }

  const std::string delay = absl::GetFlag(FLAGS_sim_step_delay_ms);
  int delay_ms = 0;
  if (!absl::SimpleAtoi(delay, &delay_ms) || delay_ms < 0) {
    FlagError(
        "sim_step_delay_ms",
        absl::StrCat("\"", delay, "\": want a number of milliseconds >= 0"));
  }
  options.add_step_delay = absl::Milliseconds(delay_ms);
  options.slow_vms =
      ParseNameList("sim_slow_vms", absl::GetFlag(FLAGS_sim_slow_vms));
  return options;
}

// --backend=kvm: the backend, with the VMs and fake devices the flags ask
// for. Exits kExitUsage on a bad flag, 1 if KVM cannot be used.
std::unique_ptr<KvmBackend> KvmBackendFromFlags(const std::string& node) {
  KvmBackendOptions options;
  options.node = node;
  options.kvm_device = absl::GetFlag(FLAGS_kvm_device);
  absl::StatusOr<std::unique_ptr<KvmBackend>> created =
      KvmBackend::Create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "irqbypass-agent: --backend=kvm: %s\n",
                 std::string(created.status().message()).c_str());
    std::exit(1);
  }
  std::unique_ptr<KvmBackend> backend = *std::move(created);
  if (auto vms = ParseNameList("kvm_create_vms",
                               absl::GetFlag(FLAGS_kvm_create_vms))) {
    for (const std::string& name : *vms) {
      if (absl::Status s = backend->CreateVm(name); !s.ok()) {
        std::fprintf(stderr, "irqbypass-agent: --kvm_create_vms: %s\n",
                     std::string(s.message()).c_str());
        std::exit(1);
      }
    }
  }
  if (auto devices = ParseNameList("kvm_fake_devices",
                                   absl::GetFlag(FLAGS_kvm_fake_devices))) {
    for (const std::string& address : *devices) {
      if (!IsPciAddress(address)) {
        FlagError(
            "kvm_fake_devices",
            absl::StrCat("\"", address, "\": want a PCI address DDDD:BB:DD.F"));
      }
      backend->AddDevice(std::make_unique<FakeVfioIrqs>(address));
    }
  }
  return backend;
}

// --handoff_socket: the server VMMs hand their fds to; null when off. Exits
// kExitUsage on a bad flag, 1 if the socket cannot be served.
std::unique_ptr<HandoffServer> HandoffFromFlags(const std::string& node,
                                                KvmBackend& backend) {
  HandoffServerOptions options;
  options.path = absl::GetFlag(FLAGS_handoff_socket);
  options.node = node;
  if (options.path.empty()) return nullptr;
  absl::StatusOr<absl::flat_hash_set<uid_t>> uids =
      ParseUidList(absl::GetFlag(FLAGS_handoff_allowed_uids));
  if (!uids.ok()) FlagError("handoff_allowed_uids", uids.status().message());
  options.allowed_uids = *std::move(uids);
  absl::StatusOr<absl::flat_hash_set<uid_t>> gids =
      ParseUidList(absl::GetFlag(FLAGS_handoff_allowed_gids));
  if (!gids.ok()) FlagError("handoff_allowed_gids", gids.status().message());
  for (uid_t gid : *gids) options.allowed_gids.insert(static_cast<gid_t>(gid));
  options.irqfd_timeout = absl::GetFlag(FLAGS_handoff_irqfd_timeout);
  if (options.irqfd_timeout <= absl::ZeroDuration()) {
    FlagError("handoff_irqfd_timeout", "want a duration > 0, e.g. 2s");
  }
  absl::StatusOr<std::unique_ptr<HandoffServer>> server =
      HandoffServer::Start(options, backend);
  if (!server.ok()) {
    std::fprintf(stderr, "irqbypass-agent: --handoff_socket: %s\n",
                 std::string(server.status().message()).c_str());
    std::exit(1);
  }
  LogInfo("handoff socket listening", {{"node", node}, {"path", options.path}});
  return *std::move(server);
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "irqbypass node agent.\n  irqbypass-agent --manager=HOST:PORT "
      "[--node=NAME] [--backend=sim|kvm]");
  absl::FlagsUsageConfig usage_config;
  usage_config.version_string = [] {
    return absl::StrCat("irqbypass-agent ", kAgentVersion, "\n");
  };
  // --help lists this file's flags (absl's default matches the file name).
  usage_config.contains_help_flags = [](absl::string_view path) {
    return absl::EndsWith(path, "agent/main.cc") ||
           security::IsTlsFlagsFile(std::string(path));
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  RejectUnknownFlags(argc, argv);
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  // gRPC locks absl::Mutex on every call; the system Abseil is built with
  // deadlock detection on, which costs a lock-graph update per acquisition.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  RouteGrpcLogs();
  if (rest.size() > 1) {
    std::fprintf(stderr, "irqbypass-agent: unexpected argument \"%s\"\n",
                 rest[1]);
    return kExitUsage;
  }

  LogLevel level;
  if (!ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    FlagError("log_level", absl::StrCat("\"", absl::GetFlag(FLAGS_log_level),
                                        "\": want debug, info, warn or error"));
  }
  LogFormat format;
  if (!ParseLogFormat(absl::GetFlag(FLAGS_log_format), &format)) {
    FlagError("log_format", absl::StrCat("\"", absl::GetFlag(FLAGS_log_format),
                                         "\": want kv or json"));
  }
  SetLogLevel(level);
  SetLogFormat(format);

  const std::string manager = absl::GetFlag(FLAGS_manager);
  const std::vector<std::string> managers = SplitTargetList(manager);
  if (managers.empty()) {
    FlagError("manager", "empty: want HOST:PORT[,HOST:PORT...]");
  }
  for (const std::string& m : managers) {
    if (!ValidManagerAddress(m)) {
      FlagError("manager",
                absl::StrCat("\"", m, "\": want HOST:PORT[,HOST:PORT...]"));
    }
  }
  // Mutual TLS with an agent certificate, which names this node (or
  // --insecure).
  const security::TlsSetup tls =
      security::TlsFromFlagsOrExit("irqbypass-agent", {security::Role::kAgent});
  std::string node = absl::GetFlag(FLAGS_node);
  if (node.empty()) node = tls.insecure ? Hostname() : tls.own.name;
  if (!tls.insecure && node != tls.own.name) {
    FlagError("node",
              absl::StrCat("\"", node, "\": the certificate (", tls.own.uri,
                           ") is for node \"", tls.own.name, "\""));
  }
  if (!ValidNodeName(node)) {
    FlagError("node", absl::StrCat("\"", node,
                                   "\": want 1..256 printable characters "
                                   "without spaces"));
  }

  const std::string backend_name = absl::GetFlag(FLAGS_backend);
  std::unique_ptr<Backend> backend;
  KvmBackend* kvm_backend = nullptr;  // --backend=kvm; owned by `backend`
  SimBackend* sim_backend = nullptr;  // --backend=sim; owned by `backend`
  if (backend_name == "sim") {
    auto sim = std::make_unique<SimBackend>(SimOptionsFromFlags(node));
    sim_backend = sim.get();
    backend = std::move(sim);
  } else if (backend_name == "kvm") {
    std::unique_ptr<KvmBackend> kvm = KvmBackendFromFlags(node);
    kvm_backend = kvm.get();
    backend = std::move(kvm);
  } else {
    FlagError("backend", absl::StrCat("unknown backend \"", backend_name,
                                      "\" (want sim or kvm)"));
  }

  // Every backend step is timed, and its errors counted, for /metrics.
  AgentMetrics metrics;
  backend = std::make_unique<MeteredBackend>(std::move(backend), metrics);

  // Block the shutdown signals before any thread starts (gRPC's included),
  // so they are delivered only to sigwait below.
  sigset_t shutdown_signals;
  sigemptyset(&shutdown_signals);
  sigaddset(&shutdown_signals, SIGTERM);
  sigaddset(&shutdown_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &shutdown_signals, nullptr);

  // After the signal mask: civetweb's threads must not take SIGTERM.
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  const std::string metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  if (!metrics_listen.empty()) {
    auto started = metrics::MetricsServer::Start(metrics_listen);
    if (!started.ok()) FlagError("metrics_listen", started.status().message());
    metrics_server = *std::move(started);
    for (auto& collectable : metrics.Collectables()) {
      metrics_server->Register(std::move(collectable));
    }
  }

  AgentSessionOptions session_options;
  session_options.manager_address = manager;
  session_options.node = node;
  session_options.agent_version = kAgentVersion;
  session_options.metrics = &metrics;
  if (absl::GetFlag(FLAGS_command_workers) < 1 ||
      absl::GetFlag(FLAGS_command_workers) > 256) {
    FlagError(
        "command_workers",
        absl::StrCat(absl::GetFlag(FLAGS_command_workers), ": want 1 to 256"));
  }
  session_options.command_workers = absl::GetFlag(FLAGS_command_workers);
  if (!tls.insecure) {
    session_options.credentials = security::ChannelCredentials(tls.options);
  }
  AgentSession session(session_options, *backend);

  // kvm: VMs and devices come and go (handoff); each change makes the
  // session re-report its wiring, so the manager reconciles.
  std::unique_ptr<HandoffServer> handoff;
  if (kvm_backend != nullptr) {
    kvm_backend->SetChangeCallback([&session] { session.Resync(); });
    handoff = HandoffFromFlags(node, *kvm_backend);
  } else if (!absl::GetFlag(FLAGS_handoff_socket).empty()) {
    FlagError("handoff_socket", "needs --backend=kvm");
  }

  // The device plugin: one per resource, each with its own socket.
  std::vector<std::unique_ptr<DevicePlugin>> plugins;
  if (!absl::GetFlag(FLAGS_device_plugin_resources).empty()) {
    auto specs =
        ParseResourceSpecs(absl::GetFlag(FLAGS_device_plugin_resources));
    if (!specs.ok()) {
      std::fprintf(stderr, "irqbypass-agent: %s\n",
                   std::string(specs.status().message()).c_str());
      return kExitUsage;
    }
    if (absl::GetFlag(FLAGS_handoff_socket).empty()) {
      LogWarn(
          "device plugin without --handoff_socket: allocations carry no "
          "handoff socket for the pod's VMM",
          {});
    }
    for (const ResourceSpec& spec : *specs) {
      DevicePlugin::Options options;
      options.resource = spec;
      for (const ResourceSpec& other : *specs) {
        if (other.name == spec.name) continue;
        options.other_selectors.insert(options.other_selectors.end(),
                                       other.selectors.begin(),
                                       other.selectors.end());
      }
      options.kubelet_dir = absl::GetFlag(FLAGS_kubelet_dir);
      options.sysfs_root = absl::GetFlag(FLAGS_sysfs_root);
      options.dev_root = absl::GetFlag(FLAGS_dev_root);
      options.handoff_socket = absl::GetFlag(FLAGS_handoff_socket);
      options.metrics = &metrics;
      // sim: an allocated device is on the host (kvm: once its VMM hands
      // the device fd over).
      if (sim_backend != nullptr) {
        options.allocated = [sim_backend,
                             &session](const std::vector<std::string>& pci) {
          bool added = false;
          for (const std::string& address : pci) {
            added = sim_backend->AddDevice(address) || added;
          }
          if (added) session.Resync();
        };
      }
      auto plugin = DevicePlugin::Start(std::move(options));
      if (!plugin.ok()) {
        FlagError("device_plugin_resources", plugin.status().message());
      }
      LogInfo("device plugin serving", {{"resource", (*plugin)->resource()},
                                        {"socket", (*plugin)->socket_path()}});
      plugins.push_back(*std::move(plugin));
    }
  }

  // Which pod holds which device; a pod's devices are released when it is
  // gone and their wiring goes (kvm: the handed-over device fds closed;
  // sim: the device leaves the simulated host), so the manager sees the
  // pairs disconnected.
  std::unique_ptr<PodDevices> pod_devices;
  if (!plugins.empty()) {
    PodDevices::Options options;
    options.kubelet_dir = absl::GetFlag(FLAGS_kubelet_dir);
    for (const auto& plugin : plugins) {
      options.resources.push_back(plugin->resource());
    }
    options.metrics = &metrics;
    options.released = [&plugins, kvm_backend, sim_backend, &session](
                           const std::string& resource,
                           const std::string& device, const PodDevices::Holder&,
                           absl::Time unheld_since) {
      bool sim_removed = false;
      for (const auto& plugin : plugins) {
        if (plugin->resource() != resource) continue;
        // Given to a new pod since it was last seen held: that pod's now
        // (pod-resources has not caught up yet).
        if (plugin->LastAllocated(device) >= unheld_since) {
          LogInfo("device not released: allocated again since",
                  {{"resource", resource}, {"iommu_group", device}});
          continue;
        }
        for (const std::string& address : plugin->AddressesOf(device)) {
          bool removed = false;
          if (kvm_backend != nullptr) {
            removed = kvm_backend->RemoveDevice(address);  // resyncs itself
          } else if (sim_backend != nullptr) {
            removed = sim_backend->RemoveDevice(address);
            sim_removed = sim_removed || removed;
          }
          LogInfo("device released",
                  {{"resource", resource},
                   {"iommu_group", device},
                   {"pci", address},
                   {"handed_over", removed ? "closed" : "none held"}});
        }
      }
      if (sim_removed) session.Resync();
    };
    pod_devices = PodDevices::Start(std::move(options));
  }

  const int metrics_port =
      metrics_server != nullptr ? metrics_server->port() : 0;
  LogInfo("agent started", {{"node", node},
                            {"manager", manager},
                            {"backend", backend->Name()},
                            {"version", kAgentVersion},
                            {"metrics_port", absl::StrCat(metrics_port)},
                            {"allocator", AllocatorName()}});
  std::thread session_thread([&session] { session.Run(); });

  int signal_number = 0;
  while (sigwait(&shutdown_signals, &signal_number) != 0) {
  }
  LogInfo("agent stopping",
          {{"node", node},
           {"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"}});
  pod_devices.reset();  // before the plugins its callback uses
  // All at once (a registration in flight is cancelled), then each waited
  // for: their sockets go and the kubelet sees the devices leave.
  for (auto& plugin : plugins) plugin->BeginStop();
  plugins.clear();
  if (handoff != nullptr) handoff->Stop();
  if (kvm_backend != nullptr) kvm_backend->SetChangeCallback(nullptr);
  session.Shutdown();
  session_thread.join();
  LogInfo("agent stopped", {{"node", node}});
  return 0;
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass

int main(int argc, char** argv) { return irqbypass::agent::Main(argc, argv); }
