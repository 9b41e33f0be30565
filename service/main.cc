// irqbypassd: the fleet IRQ bypass manager. Serves irqbypass.v1.BypassManager
// for orchestrators and irqbypass.v1.AgentControl for node agents on one
// port. See README.md.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/allocator.h"
#include "common/grpc_log.h"
#include "common/log.h"
#include "common/mutex.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "security/tls.h"
#include "security/tls_flags.h"
#include "service/agent_registry.h"
#include "service/audit_log.h"
#include "service/authorizer.h"
#include "service/bypass_service.h"
#include "service/etcd_election.h"
#include "service/etcd_mirror.h"
#include "service/etcd_store.h"
#include "service/leadership.h"
#include "service/matcher.h"
#include "service/metrics_endpoint.h"
#include "service/reflection_service.h"
#include "service/registration_limits.h"
#include "service/request_log.h"
#include "service/rocksdb_store.h"
#include "service/rpc_metrics_interceptor.h"
#include "service/server_options.h"
#include "service/service_metrics.h"
#include "service/token_index.h"
#include "service/watch_hub.h"
#include "service/watch_slots.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "HOST:PORT for the gRPC API and the agents' streams (port 0: any "
          "free port; see --port_file)");
ABSL_FLAG(std::string, health_listen, "",
          "HOST:PORT for a plaintext port serving only the gRPC health "
          "service (grpc.health.v1.Health), for probes that cannot present a "
          "client certificate, e.g. the kubelet's gRPC probes (empty: off)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "HOST:PORT for the Prometheus /metrics endpoint (empty: off)");
ABSL_FLAG(std::string, port_file, "",
          "If set, write the bound gRPC port to this file once serving");
ABSL_FLAG(absl::Duration, agent_command_timeout, absl::Seconds(5),
          "How long a connect/disconnect waits for the agent's ack");
ABSL_FLAG(int, agent_backlog, 10000,
          "Most commands one node may have waiting for its agent's acks; a "
          "registration whose connect would go past it is refused "
          "RESOURCE_EXHAUSTED, nothing changed (0: no limit)");
ABSL_FLAG(absl::Duration, agent_hello_timeout, absl::Seconds(10),
          "An agent stream that has sent no hello this long after it opened "
          "is ended");
ABSL_FLAG(absl::Duration, max_connection_age, absl::Hours(1),
          "Every connection is closed this long after it opened (clients "
          "reconnect; calls in flight get a minute to finish) and every agent "
          "session ended (the agent reconnects and keeps its wiring), so a "
          "rotated, expired or revoked certificate takes effect within this "
          "time (0: never)");
ABSL_FLAG(int, shards, 65536,
          "Number of token index shards (each: a few lock-free lists and "
          "the mutex under which same-token waiters are listed)");
ABSL_FLAG(std::string, audit_log, "",
          "File that gets one JSON line per mutation and per refused call "
          "(README: Security, audit log); - for standard error; empty: none");
ABSL_FLAG(double, rate_limit_per_identity, 20000,
          "Calls one caller identity may start a second (bursts of up to a "
          "second's worth); past it a call is RESOURCE_EXHAUSTED (0: no "
          "limit; with --insecure there are no identities, so none)");
ABSL_FLAG(int64_t, max_registrations_per_node, 4000000,
          "Most producers and consumers one node may have registered (as "
          "many as one agent's hello may report); past it a registration is "
          "RESOURCE_EXHAUSTED, nothing changed (0: no limit)");
ABSL_FLAG(int64_t, max_registrations_per_owner, 10000000,
          "Most producers and consumers one caller identity may have "
          "registered (0: no limit; with --insecure there are no "
          "identities, so none)");
ABSL_FLAG(int, max_watches, 10000,
          "Most WatchBindings streams open at once, in all; past it a watch "
          "is refused RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_watches_per_identity, 100,
          "Most WatchBindings streams one caller identity may have open");
ABSL_FLAG(int, watch_queue, 10000,
          "Most events queued for one WatchBindings stream that is not "
          "reading; past it the stream ends RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, store, "embedded",
          "Where state is kept durably: embedded (RocksDB in --data_dir), "
          "etcd (--etcd_endpoints; several replicas per --etcd_prefix, one "
          "leader) or memory (nothing survives a restart; tests and "
          "benchmarks only)");
ABSL_FLAG(std::string, etcd_endpoints, "http://127.0.0.1:2379",
          "--store=etcd: the members, comma-separated http://HOST:PORT, or "
          "https://HOST:PORT (TLS: needs --etcd_cacert)");
ABSL_FLAG(std::string, etcd_cacert, "",
          "--store=etcd over https://: the CA bundle (PEM) that signed the "
          "etcd members' certificates; a member's certificate must also name "
          "a host dialled (DNS or IP SAN): the endpoint's, or with several "
          "IPv4 endpoints any of theirs");
ABSL_FLAG(std::string, etcd_cert, "",
          "--store=etcd over https://: a client certificate (PEM) to present "
          "to members started with --client-cert-auth (with --etcd_key)");
ABSL_FLAG(std::string, etcd_key, "",
          "--store=etcd over https://: the key of --etcd_cert (PEM)");
ABSL_FLAG(std::string, etcd_prefix, "/irqbypass/",
          "--store=etcd: the key prefix of this manager's state");
ABSL_FLAG(absl::Duration, leader_lease_ttl, absl::Seconds(5),
          "--store=etcd: the leader's etcd lease; a standby takes over this "
          "long after the leader dies (whole seconds, at least 2s)");
ABSL_FLAG(bool, warm_standby, true,
          "--store=etcd: a standby keeps a copy of the state from an etcd "
          "watch and takes over from it; false: it reads the whole state "
          "from etcd once elected");
ABSL_FLAG(std::string, advertise_address, "",
          "--store=etcd: where clients and agents reach this replica, named "
          "to them by standbys (default: the --listen host, or this host's "
          "name for a wildcard host, and the bound port)");
ABSL_FLAG(std::string, data_dir, "/var/lib/irqbypassd",
          "Directory of the embedded store (created if missing; one "
          "irqbypassd at a time)");
ABSL_FLAG(absl::Duration, request_id_ttl, absl::Minutes(10),
          "How long the outcome of a call with a request_id is kept for its "
          "retries");
ABSL_FLAG(int, request_id_max, 1000000,
          "Most call outcomes kept for retries (the oldest go first)");
ABSL_FLAG(std::string, log_level, "info", "debug|info|warn|error");
ABSL_FLAG(std::string, log_format, "kv", "kv|json");

namespace irqbypass {

// The command line, to re-execute after stepping down.
std::vector<std::string> g_argv;

namespace {

// Asks the main thread (SIGUSR2) to step down, once per process, whoever
// finds out first: the election (lease gone) or the store (fenced write, or
// a write whose outcome is unknown).
std::atomic<bool> g_step_down_requested{false};
// Closed at once on a step-down, before the main thread gets to it.
std::atomic<Leadership*> g_leadership{nullptr};
void RequestStepDown(const char* why) {
  if (Leadership* l = g_leadership.load()) l->StepDown();
  if (g_step_down_requested.exchange(true)) return;
  LogWarn("stepping down: this irqbypassd no longer leads", {{"reason", why}});
  kill(getpid(), SIGUSR2);
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "irqbypassd: %s\n", message.c_str());
  return 2;
}

int Run() {
  LogLevel level;
  if (!ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    return Fail("--log_level: expected debug|info|warn|error");
  }
  SetLogLevel(level);
  LogFormat format;
  if (!ParseLogFormat(absl::GetFlag(FLAGS_log_format), &format)) {
    return Fail("--log_format: expected kv|json");
  }
  SetLogFormat(format);
  const int shards = absl::GetFlag(FLAGS_shards);
  if (shards < 1 || shards > (1 << 20)) {
    return Fail("--shards: expected 1..1048576");
  }
  if (absl::GetFlag(FLAGS_request_id_ttl) <= absl::ZeroDuration() ||
      absl::GetFlag(FLAGS_request_id_max) < 1) {
    return Fail(
        "--request_id_ttl: must be positive; --request_id_max: at least 1");
  }
  const absl::Duration timeout = absl::GetFlag(FLAGS_agent_command_timeout);
  if (timeout <= absl::ZeroDuration()) {
    return Fail("--agent_command_timeout: must be positive");
  }
  // Mutual TLS (or --insecure): every call's caller is checked.
  const security::TlsSetup tls =
      security::TlsFromFlagsOrExit("irqbypassd", {security::Role::kServer});
  if (absl::GetFlag(FLAGS_rate_limit_per_identity) < 0) {
    return Fail("--rate_limit_per_identity: 0 (off) or more");
  }
  Authorizer authorizer(tls.insecure, tls.options.trust_domain,
                        absl::GetFlag(FLAGS_rate_limit_per_identity));
  std::unique_ptr<AuditLog> audit;
  if (const std::string path = absl::GetFlag(FLAGS_audit_log); !path.empty()) {
    absl::StatusOr<std::unique_ptr<AuditLog>> opened = AuditLog::Open(path);
    if (!opened.ok()) {
      return Fail(absl::StrCat("--audit_log: ", opened.status().message()));
    }
    audit = *std::move(opened);
    authorizer.SetAuditLog(audit.get());
  }

  // Block the signals we wait for before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR2);  // from this process: step down (etcd)
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const std::string store_kind = absl::GetFlag(FLAGS_store);
  // Set by the store when a write failed; turns health NOT_SERVING.
  std::atomic<bool> store_failed{false};
  std::unique_ptr<RocksDbStore> rocks;
  std::unique_ptr<EtcdStore> etcd;
  std::unique_ptr<EtcdMirror> mirror;  // a standby's warm copy
  std::shared_ptr<grpc::ChannelCredentials> etcd_credentials;  // null: http
  const bool etcd_tls_flags = !absl::GetFlag(FLAGS_etcd_cacert).empty() ||
                              !absl::GetFlag(FLAGS_etcd_cert).empty() ||
                              !absl::GetFlag(FLAGS_etcd_key).empty();
  if (etcd_tls_flags && store_kind != "etcd") {
    return Fail("--etcd_cacert/--etcd_cert/--etcd_key: only with --store=etcd");
  }
  if (store_kind == "etcd") {
    EtcdStoreOptions etcd_options;
    etcd_options.endpoints = absl::StrSplit(absl::GetFlag(FLAGS_etcd_endpoints),
                                            ',', absl::SkipWhitespace());
    etcd_options.prefix = absl::GetFlag(FLAGS_etcd_prefix);
    if (etcd_options.prefix.empty()) return Fail("--etcd_prefix: empty");
    etcd_options.on_step_down = RequestStepDown;
    if (etcd_tls_flags) {
      security::EtcdTlsOptions etcd_tls;
      etcd_tls.ca_file = absl::GetFlag(FLAGS_etcd_cacert);
      etcd_tls.cert_file = absl::GetFlag(FLAGS_etcd_cert);
      etcd_tls.key_file = absl::GetFlag(FLAGS_etcd_key);
      etcd_tls.hosts = EtcdDialledHosts(etcd_options.endpoints);
      etcd_tls.refresh = tls.options.refresh;  // --tls_refresh
      if (etcd_tls.ca_file.empty()) {
        return Fail("--etcd_cacert: needed with --etcd_cert/--etcd_key");
      }
      if (absl::Status s = security::CheckEtcdTlsFiles(etcd_tls); !s.ok()) {
        // Name the flag whose file is at fault.
        const std::optional<security::TlsFile> file =
            security::TlsFileAtFault(s);
        const char* flag = file == security::TlsFile::kCa    ? "--etcd_cacert"
                           : file == security::TlsFile::kKey ? "--etcd_key"
                                                             : "--etcd_cert";
        return Fail(absl::StrCat(flag, ": ", s.message()));
      }
      etcd_options.credentials = security::EtcdChannelCredentials(etcd_tls);
    }
    etcd_credentials = etcd_options.credentials;
    // A standby starts (and a deposed leader restarts) while etcd is away.
    etcd_options.require_answer = false;
    auto opened = EtcdStore::Open(etcd_options);
    if (!opened.ok()) return Fail(std::string(opened.status().message()));
    etcd = *std::move(opened);
    if (absl::GetFlag(FLAGS_warm_standby)) {
      EtcdMirrorOptions mirror_options;
      mirror_options.endpoints = etcd_options.endpoints;
      mirror_options.prefix = etcd_options.prefix;
      mirror_options.credentials = etcd_options.credentials;
      auto started = EtcdMirror::Start(mirror_options);
      if (!started.ok()) return Fail(std::string(started.status().message()));
      mirror = *std::move(started);
    }
  } else if (store_kind == "embedded") {
    const std::string data_dir = absl::GetFlag(FLAGS_data_dir);
    if (data_dir.empty()) return Fail("--data_dir: empty");
    std::error_code ec;
    std::filesystem::create_directories(data_dir, ec);
    if (ec) {
      return Fail(absl::StrCat("--data_dir: cannot create ", data_dir, ": ",
                               ec.message()));
    }
    RocksDbStoreOptions store_options;
    store_options.dir = data_dir;
    store_options.on_failure = [&store_failed](const absl::Status& error) {
      LogWarn(
          "durable store failed: refusing every change from now on; "
          "health is NOT_SERVING until irqbypassd is restarted",
          {{"error", error.ToString()}});
      store_failed.store(true);
    };
    auto opened = RocksDbStore::Open(store_options);
    if (!opened.ok()) {
      return Fail(absl::StrCat("--data_dir: ", opened.status().message()));
    }
    rocks = *std::move(opened);
  } else if (store_kind == "memory") {
    LogWarn(
        "--store=memory: state is not durable; a restart loses every "
        "registration and tears down the wiring of every node");
  } else {
    return Fail("--store: expected embedded|etcd|memory");
  }
  Store* store =
      rocks != nullptr ? static_cast<Store*>(rocks.get()) : etcd.get();

  // --store=etcd: one of several replicas, a standby until elected.
  Leadership leadership(/*standby=*/etcd != nullptr);
  g_leadership.store(&leadership);
  absl::Cleanup forget_leadership = [] { g_leadership.store(nullptr); };
  if (absl::GetFlag(FLAGS_watch_queue) < 1) {
    return Fail("--watch_queue: must be at least 1");
  }
  WatchHub watch_hub(static_cast<size_t>(absl::GetFlag(FLAGS_watch_queue)));
  // Lock waits are timed only when someone can scrape them.
  ServiceMetrics service_metrics;
  TokenIndex index(
      static_cast<size_t>(shards), &watch_hub,
      absl::GetFlag(FLAGS_metrics_listen).empty() ? nullptr : &service_metrics,
      store);
  AgentRegistry::Options registry_options;
  registry_options.authorizer = &authorizer;
  registry_options.command_timeout = timeout;
  registry_options.hello_timeout = absl::GetFlag(FLAGS_agent_hello_timeout);
  if (absl::GetFlag(FLAGS_agent_backlog) < 0) {
    return Fail("--agent_backlog: 0 (no limit) or more");
  }
  registry_options.max_backlog =
      static_cast<size_t>(absl::GetFlag(FLAGS_agent_backlog));
  registry_options.max_session_age = absl::GetFlag(FLAGS_max_connection_age);
  if (registry_options.hello_timeout <= absl::ZeroDuration() ||
      registry_options.max_session_age < absl::ZeroDuration() ||
      registry_options.max_session_age > absl::Hours(24 * 20)) {
    return Fail(
        "--agent_hello_timeout: must be positive; --max_connection_age: 0 "
        "to 480h");
  }
  registry_options.metrics = &service_metrics;
  registry_options.leadership = &leadership;
  AgentRegistry registry(registry_options);
  RequestLog::Options request_options;
  request_options.ttl = absl::GetFlag(FLAGS_request_id_ttl);
  request_options.max_entries =
      static_cast<size_t>(absl::GetFlag(FLAGS_request_id_max));
  RequestLog requests(request_options);
  // Everything the store holds is in the index before anything is served,
  // so reconnecting agents find their wiring known and keep it.
  // From the store, or (a standby just elected) from its warm copy.
  // (Counted again from the state whenever it is loaded.)
  RegistrationLimits limits(
      static_cast<size_t>(absl::GetFlag(FLAGS_max_registrations_per_node)),
      static_cast<size_t>(absl::GetFlag(FLAGS_max_registrations_per_owner)));
  auto load_state = [&](MirrorCopy* copy) -> absl::Status {
    const auto load_start = std::chrono::steady_clock::now();
    const int threads =
        static_cast<int>(std::max(2u, std::thread::hardware_concurrency()));
    const std::string source =
        copy != nullptr
            ? absl::StrCat(store->Describe(), " (warm copy at etcd revision ",
                           copy->etcd_revision, ")")
            : store->Describe();
    absl::Status restored;
    if (copy != nullptr) {
      // Every write compares against the revision mark.
      restored = etcd->EnsureMark();
      if (restored.ok()) {
        restored = index.Restore(
            [copy](const std::function<absl::Status(std::string, BindingState)>&
                       fn) -> absl::StatusOr<uint64_t> {
              for (auto& [token, state] : copy->bindings) {
                absl::Status s = fn(std::move(token), std::move(state));
                if (!s.ok()) return s;
              }
              return copy->last_revision;
            },
            threads);
      }
    } else {
      restored = index.Restore(*store, threads);
    }
    if (!restored.ok()) {
      return absl::Status(restored.code(),
                          absl::StrCat("loading the store (", source,
                                       "): ", restored.message()));
    }
    // A watch resumes only from what this process saw: one revision is
    // skipped, so every resume point an earlier process gave out is below
    // the floor (a write whose outcome was unknown there may have landed).
    index.SkipRevision();
    watch_hub.SetResumeFloor(index.revision());
    absl::Status loaded;
    if (copy != nullptr) {
      const int64_t now = requests.NowUnixMicros();
      for (RequestRecord& r : copy->requests) {
        if (r.expires_unix_micros > now) requests.Restore(std::move(r));
      }
    } else {
      loaded = store->LoadRequests(
          requests.NowUnixMicros(),
          [&](RequestRecord r) { requests.Restore(std::move(r)); });
    }
    if (!loaded.ok()) {
      return absl::Status(loaded.code(),
                          absl::StrCat("loading request outcomes from the "
                                       "store: ",
                                       loaded.message()));
    }
    const TokenIndex::Counts counts = index.CountAll();
    limits.Recount(index);
    LogInfo("store loaded",
            {{"store", source},
             {"tokens", absl::StrCat(counts.tokens)},
             {"connected", absl::StrCat(counts.connected)},
             {"revision", absl::StrCat(index.revision())},
             {"ms", absl::StrCat(
                        std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::steady_clock::now() - load_start)
                            .count())}});
    return absl::OkStatus();
  };
  if (store != nullptr && etcd == nullptr) {
    if (absl::Status s = load_state(nullptr); !s.ok()) {
      return Fail(std::string(s.message()));
    }
  } else if (store == nullptr) {
    // Nothing to load; revision 0 stays "no resume point".
    index.SkipRevision();
    watch_hub.SetResumeFloor(index.revision());
  }
  if (absl::GetFlag(FLAGS_max_registrations_per_node) < 0 ||
      absl::GetFlag(FLAGS_max_registrations_per_owner) < 0) {
    return Fail(
        "--max_registrations_per_node, --max_registrations_per_owner: 0 (no "
        "limit) or more");
  }
  Matcher matcher(index, registry, &requests);
  matcher.SetLimits(&limits);
  registry.SetMatcher(&matcher);
  if (absl::GetFlag(FLAGS_max_watches) < 1 ||
      absl::GetFlag(FLAGS_max_watches_per_identity) < 1) {
    return Fail("--max_watches, --max_watches_per_identity: at least 1");
  }
  WatchSlots watch_slots(absl::GetFlag(FLAGS_max_watches_per_identity),
                         absl::GetFlag(FLAGS_max_watches));
  BypassService service(matcher, index, watch_hub, &leadership, &registry,
                        &authorizer, &watch_slots);
  service.SetAuditLog(audit.get());

  std::unique_ptr<MetricsEndpoint> metrics;
  const std::string metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  if (!metrics_listen.empty()) {
    auto created = MetricsEndpoint::Create(metrics_listen, index, registry,
                                           service_metrics, rocks.get());
    if (!created.ok()) {
      return Fail(
          absl::StrCat("--metrics_listen: ", created.status().message()));
    }
    metrics = *std::move(created);
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  {
    std::vector<
        std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(
        std::make_unique<RpcMetricsInterceptorFactory>(service_metrics));
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  int port = 0;
  const std::string listen = absl::GetFlag(FLAGS_listen);
  builder.AddListeningPort(listen,
                           tls.insecure
                               ? grpc::InsecureServerCredentials()
                               : security::ServerCredentials(tls.options),
                           &port);
  builder.RegisterService(&service);
  builder.RegisterService(&registry);
  // For grpcurl. Every service is on the callback API: no sync server.
  ReflectionService reflection(
      {"irqbypass.v1.BypassManager", "irqbypass.v1.AgentControl",
       "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"});
  builder.RegisterService(&reflection);
  ApplyServerOptions(builder);
  if (const absl::Duration age = absl::GetFlag(FLAGS_max_connection_age);
      age > absl::ZeroDuration()) {
    builder.AddChannelArgument(
        GRPC_ARG_MAX_CONNECTION_AGE_MS,
        static_cast<int>(absl::ToInt64Milliseconds(age)));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS, 60'000);
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail(absl::StrCat("--listen: cannot listen on ", listen));
  }
  const std::string listen_host = listen.substr(0, listen.rfind(':'));
  // --health_listen: the health service alone, in plaintext (it says only
  // whether this replica serves).
  std::unique_ptr<grpc::Server> health_server;
  int health_port = 0;
  const std::string health_listen = absl::GetFlag(FLAGS_health_listen);
  if (!health_listen.empty()) {
    grpc::ServerBuilder health_builder;
    health_builder.AddListeningPort(
        health_listen, grpc::InsecureServerCredentials(), &health_port);
    health_server = health_builder.BuildAndStart();
    if (health_server == nullptr || health_port == 0) {
      server->Shutdown();
      return Fail(
          absl::StrCat("--health_listen: cannot listen on ", health_listen));
    }
  }
  // Besides the server as a whole (""), probes may name either service;
  // a standby is not ready for either.
  auto set_ready = [&server, &health_server](bool ready) {
    for (grpc::Server* s : {server.get(), health_server.get()}) {
      if (s == nullptr) continue;
      s->GetHealthCheckService()->SetServingStatus("irqbypass.v1.BypassManager",
                                                   ready);
      s->GetHealthCheckService()->SetServingStatus("irqbypass.v1.AgentControl",
                                                   ready);
    }
  };
  set_ready(leadership.leading());
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) WritePortFile(port_file, port);
  LogInfo("irqbypassd serving",
          {{"listen", listen},
           {"port", absl::StrCat(port)},
           {"metrics_listen", metrics_listen},
           {"metrics_port", absl::StrCat(metrics ? metrics->port() : 0)},
           {"health_port", absl::StrCat(health_port)},
           {"tls", tls.insecure ? "off (--insecure)" : "mutual"},
           {"shards", absl::StrCat(shards)},
           {"role", leadership.leading() ? "leader" : "standby"},
           {"allocator", AllocatorName()}});

  // --store=etcd: campaign; once elected, load the state, fence the store's
  // writes with the epoch and serve. A leader that finds itself deposed
  // steps down (SIGUSR2 to this process: see below).
  std::unique_ptr<EtcdElection> election;
  std::thread elector;
  auto step_down = [](const char* why) { RequestStepDown(why); };
  if (etcd != nullptr) {
    EtcdElectionOptions election_options;
    election_options.endpoints = absl::StrSplit(
        absl::GetFlag(FLAGS_etcd_endpoints), ',', absl::SkipWhitespace());
    election_options.credentials = etcd_credentials;
    election_options.key = absl::GetFlag(FLAGS_etcd_prefix) + "leader";
    std::string advertise = absl::GetFlag(FLAGS_advertise_address);
    if (advertise.empty()) {
      std::string host = listen_host;
      if (host.empty() || host == "0.0.0.0" || host == "[::]") {
        char name[256] = {};
        gethostname(name, sizeof(name) - 1);
        host = name;
      }
      advertise = absl::StrCat(host, ":", port);
    }
    election_options.address = advertise;
    election_options.ttl = absl::GetFlag(FLAGS_leader_lease_ttl);
    election_options.on_lost = [&step_down] { step_down("lease lost"); };
    auto created = EtcdElection::Create(election_options);
    if (!created.ok()) {
      server->Shutdown();
      return Fail(std::string(created.status().message()));
    }
    election = *std::move(created);
    // By value: this block's locals end before the thread does.
    elector = std::thread([&, key = election_options.key,
                           ttl = election_options.ttl, advertise] {
      absl::StatusOr<uint64_t> epoch = election->Campaign([&leadership](
                                                              const std::string&
                                                                  leader) {
        LogInfo("standby", {{"leader", leader.empty() ? "(none)" : leader}});
        leadership.SetLeaderAddress(leader);
      });
      if (!epoch.ok()) return;  // stopping
      etcd->SetFence(key, static_cast<int64_t>(*epoch));
      // The warm copy, once it has caught up with the election (every
      // earlier leader's writes come before it); if it cannot (etcd lost
      // meanwhile, an undecodable record), the whole state from etcd.
      std::optional<MirrorCopy> copy;
      if (mirror != nullptr) {
        // The mirror object stays until shutdown (main may Cancel it), but
        // its thread and its copy are gone after Take.
        absl::StatusOr<MirrorCopy> taken =
            mirror->Take(static_cast<int64_t>(*epoch), ttl);
        if (taken.ok()) {
          copy = *std::move(taken);
        } else if (absl::IsCancelled(taken.status())) {
          return;  // shutting down
        } else {
          mirror->Release();
          LogWarn(
              "the standby copy cannot be used; reading the state from "
              "etcd",
              {{"error", taken.status().ToString()}});
        }
      }
      absl::Status s = load_state(copy ? &*copy : nullptr);
      copy.reset();
      if (!s.ok()) {
        LogWarn("elected, but loading the state failed; resigning",
                {{"error", s.ToString()}});
        election->Resign();
        step_down("state not loaded");
        return;
      }
      if (!leadership.Lead(*epoch)) return;  // deposed or stopping meanwhile
      set_ready(true);
      LogInfo("leading",
              {{"epoch", absl::StrCat(*epoch)}, {"address", advertise}});
    });
  }

  // Expired request outcomes leave the store once a minute; a failed store
  // turns the services' health NOT_SERVING (checked every second).
  Mutex prune_mu;
  CondVar prune_cv;
  bool stopping = false;
  std::thread pruner;
  if (store != nullptr) {
    pruner = std::thread([&] {
      bool reported_failure = false;
      auto next_prune =
          std::chrono::steady_clock::now() + std::chrono::seconds(60);
      MutexLock lock(&prune_mu);
      while (!stopping) {
        prune_cv.WaitUntil(&prune_mu, std::chrono::steady_clock::now() +
                                          std::chrono::seconds(1));
        if (stopping) break;
        if (store_failed.load() && !reported_failure) {
          reported_failure = true;
          // Not the "" service: that would also fail liveness probes of a
          // manager that can still serve reads. Readiness moves away.
          set_ready(false);
        }
        if (std::chrono::steady_clock::now() < next_prune) continue;
        next_prune =
            std::chrono::steady_clock::now() + std::chrono::seconds(60);
        if (!leadership.leading()) continue;
        absl::Status pruned = store->PruneRequests(requests.NowUnixMicros());
        if (!pruned.ok()) {
          LogWarn("pruning expired request outcomes failed",
                  {{"error", pruned.ToString()}});
        }
      }
    });
  }

  int sig = 0;
  sigwait(&signals, &sig);
  const bool restart_as_standby = sig == SIGUSR2;
  {
    MutexLock lock(&prune_mu);
    stopping = true;
    prune_cv.SignalAll();
  }
  if (pruner.joinable()) pruner.join();
  LogInfo(restart_as_standby ? "stepping down: dropping every stream"
                             : "shutting down",
          {{"signal", absl::StrCat(sig)}});
  server->GetHealthCheckService()->Shutdown();  // probes now see NOT_SERVING
  if (health_server != nullptr)
    health_server->GetHealthCheckService()->Shutdown();
  leadership.StepDown();
  registry.Shutdown();
  watch_hub.Shutdown();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->Wait();
  if (health_server != nullptr) health_server->Shutdown();
  if (election != nullptr) {
    // Hand over at once instead of after the lease's TTL (a lease already
    // gone makes this a no-op).
    election->Resign();
    election->Stop();
  }
  if (mirror != nullptr) mirror->Cancel();  // an elector waiting in Take
  if (elector.joinable()) elector.join();
  if (rocks != nullptr) {
    absl::Status closed = rocks->Close();
    if (!closed.ok()) {
      LogWarn("closing the store failed", {{"error", closed.ToString()}});
    }
  }
  if (restart_as_standby) {
    // Nothing of the deposed leader's state is trusted: start afresh, as a
    // standby, on the same ports (same pid, same flags).
    const int metrics_listen_port = metrics != nullptr ? metrics->port() : 0;
    metrics.reset();
    std::vector<std::string> args(g_argv.begin(), g_argv.end());
    args.push_back(absl::StrCat("--listen=", listen_host, ":", port));
    if (metrics_listen_port > 0) {
      args.push_back(
          absl::StrCat("--metrics_listen=",
                       metrics_listen.substr(0, metrics_listen.rfind(':')), ":",
                       metrics_listen_port));
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    // Pending signals survive execve: the new process must not see this
    // one's step-down request.
    sigset_t step_down_signal;
    sigemptyset(&step_down_signal);
    sigaddset(&step_down_signal, SIGUSR2);
    const timespec no_wait = {0, 0};
    while (sigtimedwait(&step_down_signal, nullptr, &no_wait) == SIGUSR2) {
    }
    g_leadership.store(nullptr);
    LogInfo("restarting as a standby");
    execv("/proc/self/exe", argv.data());
    LogWarn("re-executing irqbypassd failed; exiting",
            {{"errno", absl::StrCat(errno)}});
    return 3;
  }
  LogInfo("stopped");
  return 0;
}

}  // namespace
}  // namespace irqbypass

int main(int argc, char** argv) {
  irqbypass::g_argv.assign(argv, argv + argc);
  absl::SetProgramUsageMessage(
      "irqbypassd: fleet IRQ bypass manager (gRPC irqbypass.v1).\n"
      "  irqbypassd --listen=127.0.0.1:50051 --metrics_listen=127.0.0.1:9464");
  absl::ParseCommandLine(argc, argv);
  // gRPC locks absl::Mutex on every call; the system Abseil is built with
  // deadlock detection on, which costs a lock-graph update per acquisition.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  irqbypass::RouteGrpcLogs();
  return irqbypass::Run();
}
