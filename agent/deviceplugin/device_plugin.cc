#include "agent/deviceplugin/device_plugin.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/agent_metrics.h"
#include "agent/deviceplugin/file_id.h"
#include "common/log.h"

namespace irqbypass::agent {

namespace dp = ::v1beta1;

namespace {

constexpr char kHealthy[] = "Healthy";
constexpr char kUnhealthy[] = "Unhealthy";

}  // namespace

// ListAndWatch: the list now, then the latest list whenever it changes
// (a list that changes twice during one write is sent once, as it is
// then). Keeps itself alive from Start to OnDone.
class DevicePlugin::ListStream final
    : public grpc::ServerWriteReactor<dp::ListAndWatchResponse> {
 public:
  static ListStream* Start(DevicePlugin& plugin) {
    auto stream = std::make_shared<ListStream>();
    ListStream* raw = stream.get();
    raw->self_ = stream;
    plugin.AddStream(stream);  // sends the current list
    return raw;
  }

  // Any thread; the plugin's mu_ held (so lists arrive in order).
  void Update(const dp::ListAndWatchResponse& list) {
    MutexLock lock(&mu_);
    if (finished_) return;
    pending_ = list;
    if (!writing_) WriteLocked();
  }

  // The plugin stops serving: the stream ends (the kubelet dials again).
  void End() {
    MutexLock lock(&mu_);
    ending_ = true;
    if (!writing_ && !finished_) FinishLocked(grpc::Status::OK);
  }

  void OnWriteDone(bool ok) override {
    MutexLock lock(&mu_);
    writing_ = false;
    if (!ok || ending_) return FinishLocked(grpc::Status::OK);
    if (pending_.has_value()) WriteLocked();
  }
  void OnCancel() override { End(); }
  void OnDone() override {
    std::shared_ptr<ListStream> self = std::move(self_);
  }

 private:
  void WriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    out_ = *std::move(pending_);
    pending_.reset();
    writing_ = true;
    StartWrite(&out_);  // OnWriteDone never runs on this stack
  }
  void FinishLocked(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(std::move(status));
  }

  std::shared_ptr<ListStream> self_;
  Mutex mu_;
  std::optional<dp::ListAndWatchResponse> pending_ ABSL_GUARDED_BY(mu_);
  dp::ListAndWatchResponse out_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

class DevicePlugin::Service final : public dp::DevicePlugin::CallbackService {
 public:
  explicit Service(DevicePlugin& plugin) : plugin_(plugin) {}

  grpc::ServerUnaryReactor* GetDevicePluginOptions(
      grpc::CallbackServerContext* context, const dp::Empty*,
      dp::DevicePluginOptions* response) override {
    response->set_get_preferred_allocation_available(true);
    return Done(context, grpc::Status::OK);
  }
  grpc::ServerWriteReactor<dp::ListAndWatchResponse>* ListAndWatch(
      grpc::CallbackServerContext*, const dp::Empty*) override {
    return ListStream::Start(plugin_);
  }
  grpc::ServerUnaryReactor* GetPreferredAllocation(
      grpc::CallbackServerContext* context,
      const dp::PreferredAllocationRequest* request,
      dp::PreferredAllocationResponse* response) override {
    return Done(context, plugin_.DoPreferred(*request, response));
  }
  grpc::ServerUnaryReactor* Allocate(grpc::CallbackServerContext* context,
                                     const dp::AllocateRequest* request,
                                     dp::AllocateResponse* response) override {
    return Done(context, plugin_.DoAllocate(*request, response));
  }
  grpc::ServerUnaryReactor* PreStartContainer(
      grpc::CallbackServerContext* context, const dp::PreStartContainerRequest*,
      dp::PreStartContainerResponse*) override {
    return Done(context, grpc::Status::OK);  // not asked for (options)
  }

 private:
  static grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context,
                                        grpc::Status status) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(std::move(status));
    return reactor;
  }
  DevicePlugin& plugin_;
};

DevicePlugin::DevicePlugin(Options options)
    : options_(std::move(options)),
      inventory_(options_.sysfs_root, options_.dev_root),
      endpoint_(ResourceEndpoint(options_.resource.name)),
      wake_fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

std::string DevicePlugin::socket_path() const {
  return options_.kubelet_dir + "/device-plugins/" + endpoint_;
}

absl::StatusOr<std::unique_ptr<DevicePlugin>> DevicePlugin::Start(
    Options options) {
  std::unique_ptr<DevicePlugin> plugin(new DevicePlugin(std::move(options)));
  // The listener is bound at socket_path() + ".new" first (see Serve).
  const size_t longest = sizeof(sockaddr_un::sun_path) - 1;
  if (plugin->socket_path().size() + 4 > longest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device plugin for ", plugin->resource(), ": its socket path ",
        plugin->socket_path(), " is ", plugin->socket_path().size(),
        " characters; a unix socket path has at most ", longest - 4,
        " here (use a shorter --kubelet_dir or resource name)"));
  }
  plugin->Rescan();
  if (plugin->options_.metrics != nullptr) {
    MutexLock lock(&plugin->mu_);
    int healthy = 0;
    for (const VfioGroup& g : plugin->groups_) healthy += g.healthy ? 1 : 0;
    plugin->options_.metrics->DevicePluginDevices(
        plugin->resource(), healthy,
        static_cast<int>(plugin->groups_.size()) - healthy);
  }
  {
    MutexLock lock(&plugin->serve_mu_);
    if (absl::Status s = plugin->Serve(); !s.ok()) {
      // Likely the kubelet's folder is not there yet: the monitor retries.
      LogWarn("device plugin cannot serve its socket yet; retrying",
              {{"resource", plugin->resource()},
               {"error", std::string(s.message())}});
    }
  }
  plugin->monitor_ = std::thread([p = plugin.get()] { p->MonitorLoop(); });
  return plugin;
}

void DevicePlugin::BeginStop() {
  MutexLock lock(&stop_mu_);
  stop_ = true;
  const uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof(one)) < 0) {
    // Full (a stop was already signalled): the monitor wakes anyway.
  }
  if (registering_ != nullptr) registering_->TryCancel();
}

DevicePlugin::~DevicePlugin() {
  BeginStop();
  if (monitor_.joinable()) monitor_.join();
  {
    MutexLock lock(&serve_mu_);
    StopServing();
  }
  close(wake_fd_);
}

absl::Status DevicePlugin::Serve() {
  // Bound at a name of its own, then renamed onto the endpoint: gRPC
  // unlinks the path it listened on when it shuts down, which would
  // otherwise delete a socket that is no longer ours (another plugin's,
  // after a restart). Ours is removed by StopServing, by inode.
  const std::string path = socket_path();
  const std::string bound = path + ".new";
  unlink(bound.c_str());
  service_ = std::make_unique<Service>(*this);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + bound, grpc::InsecureServerCredentials());
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || rename(bound.c_str(), path.c_str()) != 0) {
    if (server_ != nullptr) server_->Shutdown();
    server_.reset();
    service_.reset();
    unlink(bound.c_str());
    return absl::UnavailableError(absl::StrCat(
        "device plugin for ", options_.resource.name, ": cannot serve ", path,
        " (does --kubelet_dir/device-plugins exist?)"));
  }
  std::optional<FileId> id = IdentifyFile(path);
  socket_inode_ = id.has_value() ? id->inode : 0;
  {
    MutexLock lock(&mu_);
    stopping_streams_ = false;
  }
  return absl::OkStatus();
}

void DevicePlugin::StopServing() {
  if (server_ == nullptr) return;
  {
    MutexLock lock(&mu_);
    stopping_streams_ = true;  // one that arrives meanwhile ends at once
    for (const auto& weak : streams_) {
      if (auto stream = weak.lock()) stream->End();
    }
    streams_.clear();
  }
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_.reset();
  service_.reset();
  // Only our own socket: after a kubelet restart the path may be gone.
  std::optional<FileId> id = IdentifyFile(socket_path());
  if (id.has_value() && id->inode == socket_inode_) {
    unlink(socket_path().c_str());
  }
}

void DevicePlugin::AddStream(std::weak_ptr<ListStream> stream) {
  MutexLock lock(&mu_);
  if (auto live = stream.lock()) {
    live->Update(devices_);
    if (stopping_streams_) {  // arrived while StopServing ends the streams
      live->End();
      return;
    }
  }
  // Streams that ended are dropped as new ones come.
  streams_.erase(std::remove_if(streams_.begin(), streams_.end(),
                                [](const std::weak_ptr<ListStream>& w) {
                                  return w.expired();
                                }),
                 streams_.end());
  streams_.push_back(std::move(stream));
}

std::vector<std::string> DevicePlugin::AddressesOf(
    const std::string& id) const {
  MutexLock lock(&mu_);
  for (const VfioGroup& g : groups_) {
    if (g.group == id) return g.pci_addresses;
  }
  return {};
}

int DevicePlugin::LiveStreams() const {
  MutexLock lock(&mu_);
  int n = 0;
  for (const auto& weak : streams_) n += weak.expired() ? 0 : 1;
  return n;
}

v1beta1::ListAndWatchResponse DevicePlugin::Devices() const {
  MutexLock lock(&mu_);
  return devices_;
}

bool DevicePlugin::Rescan() {
  std::vector<VfioGroup> scanned =
      inventory_.Scan(options_.resource, options_.other_selectors);
  MutexLock lock(&mu_);
  std::map<std::string, VfioGroup> merged;
  for (VfioGroup& g : scanned) merged[g.group] = std::move(g);
  // A group seen before stays listed, Unhealthy, until it is back.
  for (const VfioGroup& old : groups_) {
    if (merged.count(old.group) > 0) continue;
    VfioGroup gone = old;
    gone.healthy = false;
    gone.why_unhealthy = "its functions are gone from sysfs";
    merged[old.group] = std::move(gone);
  }
  std::vector<VfioGroup> next;
  for (auto& [group, g] : merged) next.push_back(std::move(g));
  std::sort(next.begin(), next.end(),
            [](const VfioGroup& a, const VfioGroup& b) {
              return a.group.size() != b.group.size()
                         ? a.group.size() < b.group.size()
                         : a.group < b.group;
            });
  dp::ListAndWatchResponse list;
  int healthy = 0;
  for (const VfioGroup& g : next) {
    dp::Device* d = list.add_devices();
    d->set_id(g.group);
    d->set_health(g.healthy ? kHealthy : kUnhealthy);
    if (g.numa_node >= 0)
      d->mutable_topology()->add_nodes()->set_id(g.numa_node);
    healthy += g.healthy ? 1 : 0;
  }
  if (list.SerializeAsString() == devices_.SerializeAsString()) return false;
  // Log what changed, group by group.
  std::map<std::string, bool> before;
  for (const VfioGroup& g : groups_) before[g.group] = g.healthy;
  for (const VfioGroup& g : next) {
    auto it = before.find(g.group);
    if (it != before.end() && it->second == g.healthy) continue;
    if (g.healthy) {
      LogInfo("device healthy", {{"resource", options_.resource.name},
                                 {"iommu_group", g.group},
                                 {"pci", absl::StrJoin(g.pci_addresses, ",")}});
    } else {
      LogWarn("device unhealthy", {{"resource", options_.resource.name},
                                   {"iommu_group", g.group},
                                   {"pci", absl::StrJoin(g.pci_addresses, ",")},
                                   {"reason", g.why_unhealthy}});
    }
  }
  groups_ = std::move(next);
  devices_ = std::move(list);
  for (const auto& weak : streams_) {
    if (auto stream = weak.lock()) stream->Update(devices_);
  }
  if (options_.metrics != nullptr) {
    options_.metrics->DevicePluginDevices(
        options_.resource.name, healthy,
        static_cast<int>(groups_.size()) - healthy);
  }
  return true;
}

bool DevicePlugin::Register() {
  // Dial our own socket first: the kubelet does right after Register.
  {
    auto own = dp::DevicePlugin::NewStub(grpc::CreateChannel(
        "unix:" + socket_path(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(1));
    dp::DevicePluginOptions options;
    grpc::Status s = own->GetDevicePluginOptions(&ctx, dp::Empty(), &options);
    if (!s.ok()) {
      LogWarn("device plugin: own socket does not answer",
              {{"resource", options_.resource.name},
               {"socket", socket_path()},
               {"error", s.error_message()}});
      return false;
    }
  }
  auto kubelet = dp::Registration::NewStub(grpc::CreateChannel(
      "unix:" + options_.kubelet_dir + "/device-plugins/kubelet.sock",
      grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  // The kubelet dials back and asks our options before it answers.
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  {
    MutexLock lock(&stop_mu_);
    if (stop_) return false;
    registering_ = &ctx;
  }
  dp::RegisterRequest request;
  request.set_version("v1beta1");
  request.set_endpoint(endpoint_);
  request.set_resource_name(options_.resource.name);
  request.mutable_options()->set_get_preferred_allocation_available(true);
  dp::Empty empty;
  grpc::Status s = kubelet->Register(&ctx, request, &empty);
  {
    MutexLock lock(&stop_mu_);
    registering_ = nullptr;
  }
  if (!s.ok()) {
    LogWarn("device plugin: the kubelet refused or did not answer Register",
            {{"resource", options_.resource.name},
             {"code", absl::StrCat(s.error_code())},
             {"error", s.error_message()}});
    return false;
  }
  return true;
}

// inotify on the device-plugins folder: a socket created, deleted or moved
// there wakes the monitor at once (the poll interval stays the fallback,
// also for a folder that does not exist yet).
class DevicePlugin::DirWatch {
 public:
  explicit DirWatch(std::string dir)
      : dir_(std::move(dir)), fd_(inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) {}
  ~DirWatch() {
    if (fd_ >= 0) close(fd_);
  }
  // The fd to poll, watching the folder if it can (-1: none).
  int Fd() {
    if (fd_ < 0) return -1;
    if (!watching_) {
      watching_ = inotify_add_watch(fd_, dir_.c_str(),
                                    IN_CREATE | IN_DELETE | IN_MOVED_TO |
                                        IN_MOVED_FROM | IN_DELETE_SELF |
                                        IN_ATTRIB) >= 0;
    }
    return watching_ ? fd_ : -1;
  }
  // Reads what is pending; a deleted folder is watched again next time.
  void Drain() {
    alignas(struct inotify_event) char buf[4096];
    ssize_t n;
    while ((n = read(fd_, buf, sizeof(buf))) > 0) {
      for (char* p = buf; p < buf + n;) {
        auto* event = reinterpret_cast<struct inotify_event*>(p);
        if (event->mask & (IN_IGNORED | IN_DELETE_SELF)) watching_ = false;
        p += sizeof(struct inotify_event) + event->len;
      }
    }
  }

 private:
  const std::string dir_;
  const int fd_;
  bool watching_ = false;
};

void DevicePlugin::WaitForChange(DirWatch& watch) {
  struct pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {watch.Fd(), POLLIN, 0}};
  const int nfds = fds[1].fd >= 0 ? 2 : 1;
  const int ms =
      static_cast<int>(absl::ToInt64Milliseconds(options_.poll_interval));
  if (poll(fds, nfds, ms) > 0 && nfds == 2 && (fds[1].revents & POLLIN)) {
    watch.Drain();
  }
}

void DevicePlugin::MonitorLoop() {
  const std::string kubelet_sock =
      options_.kubelet_dir + "/device-plugins/kubelet.sock";
  std::optional<FileId> registered;  // the kubelet.sock we registered with
  bool waiting_logged = false;
  // Registered, but no ListAndWatch open since: the kubelet dials right
  // after Register, so after a while without a stream, register again.
  std::optional<std::chrono::steady_clock::time_point> streamless_since;
  DirWatch watch(options_.kubelet_dir + "/device-plugins");
  for (bool first = true;; first = false) {
    if (!first) {
      WaitForChange(watch);
      MutexLock lock(&stop_mu_);
      if (stop_) return;
    }
    Rescan();
    {
      // The kubelet deletes every plugin socket when it restarts.
      MutexLock lock(&serve_mu_);
      std::optional<FileId> own = IdentifyFile(socket_path());
      if (!own.has_value() || own->inode != socket_inode_) {
        const bool was_serving = server_ != nullptr;
        if (was_serving) {
          LogWarn(
              "device plugin socket gone (a kubelet restart?); serving "
              "it again",
              {{"resource", options_.resource.name},
               {"socket", socket_path()}});
        }
        StopServing();
        if (absl::Status s = Serve(); !s.ok()) {
          if (was_serving) {
            LogWarn("device plugin cannot serve its socket; retrying",
                    {{"error", std::string(s.message())}});
          }
          continue;
        }
        registered.reset();
      }
    }
    std::optional<FileId> kubelet = IdentifyFile(kubelet_sock);
    if (!kubelet.has_value()) {
      registered.reset();  // the kubelet is down: register once it is back
      if (!waiting_logged) {
        LogInfo(
            "device plugin waiting for the kubelet",
            {{"resource", options_.resource.name}, {"socket", kubelet_sock}});
        waiting_logged = true;
      }
      continue;
    }
    if (registered.has_value() && *registered == *kubelet) {
      const auto now = std::chrono::steady_clock::now();
      if (LiveStreams() > 0) {
        streamless_since.reset();
        continue;
      }
      if (!streamless_since.has_value()) streamless_since = now;
      if (now - *streamless_since < std::chrono::seconds(3)) continue;
      LogWarn(
          "device plugin: the kubelet has no ListAndWatch open; "
          "registering again",
          {{"resource", options_.resource.name}});
    }
    streamless_since.reset();
    if (!Register()) continue;
    registered = kubelet;
    waiting_logged = false;
    const int n = ++registrations_;
    if (options_.metrics != nullptr) {
      options_.metrics->DevicePluginRegistered(options_.resource.name);
    }
    LogInfo("device plugin registered with the kubelet",
            {{"resource", options_.resource.name},
             {"endpoint", endpoint_},
             {"registrations", absl::StrCat(n)}});
  }
}

absl::Time DevicePlugin::LastAllocated(const std::string& id) const {
  MutexLock lock(&mu_);
  auto it = last_allocated_.find(id);
  return it == last_allocated_.end() ? absl::InfinitePast() : it->second;
}

grpc::Status DevicePlugin::DoAllocate(const dp::AllocateRequest& request,
                                      dp::AllocateResponse* response) const {
  std::vector<std::string> addresses;
  grpc::Status status;
  {
    MutexLock lock(&mu_);
    status = AllocateLocked(request, response, &addresses);
  }
  if (status.ok() && options_.allocated) options_.allocated(addresses);
  return status;
}

grpc::Status DevicePlugin::AllocateLocked(
    const dp::AllocateRequest& request, dp::AllocateResponse* response,
    std::vector<std::string>* all_addresses) const {
  std::map<std::string, const VfioGroup*> by_id;
  for (const VfioGroup& g : groups_) by_id[g.group] = &g;
  for (int c = 0; c < request.container_requests_size(); ++c) {
    const auto& ids = request.container_requests(c).devices_ids();
    dp::ContainerAllocateResponse* out = response->add_container_responses();
    dp::DeviceSpec* vfio = out->add_devices();
    vfio->set_container_path("/dev/vfio/vfio");
    // Host paths are the host's /dev: --dev_root is only where this agent
    // sees it (the kubelet does not).
    vfio->set_host_path("/dev/vfio/vfio");
    vfio->set_permissions("rwm");
    std::vector<std::string> addresses, groups;
    for (const std::string& id : ids) {
      auto it = by_id.find(id);
      if (it == by_id.end()) {
        return grpc::Status(
            grpc::StatusCode::INVALID_ARGUMENT,
            absl::StrCat("container_requests[", c, "].devices_ids: \"", id,
                         "\" is not a device (IOMMU group) of ",
                         options_.resource.name));
      }
      if (!it->second->healthy) {
        return grpc::Status(
            grpc::StatusCode::FAILED_PRECONDITION,
            absl::StrCat("container_requests[", c, "].devices_ids: device \"",
                         id, "\" of ", options_.resource.name,
                         " is unhealthy: ", it->second->why_unhealthy));
      }
      dp::DeviceSpec* spec = out->add_devices();
      spec->set_container_path("/dev/vfio/" + id);
      spec->set_host_path("/dev/vfio/" + id);
      spec->set_permissions("rwm");
      groups.push_back(id);
      last_allocated_[id] = absl::Now();
      addresses.insert(addresses.end(), it->second->pci_addresses.begin(),
                       it->second->pci_addresses.end());
    }
    const std::string joined = absl::StrJoin(addresses, ",");
    (*out->mutable_envs())["IRQBYPASS_PCI_ADDRESSES"] = joined;
    (*out->mutable_envs())[ResourceEnvName(options_.resource.name)] = joined;
    (*out->mutable_envs())["IRQBYPASS_IOMMU_GROUPS"] =
        absl::StrJoin(groups, ",");
    if (!options_.handoff_socket.empty()) {
      const std::string& socket = options_.handoff_socket;
      const size_t slash = socket.rfind('/');
      dp::Mount* mount = out->add_mounts();
      mount->set_container_path(kContainerHandoffDir);
      mount->set_host_path(slash == std::string::npos || slash == 0
                               ? std::string("/")
                               : socket.substr(0, slash));
      mount->set_read_only(false);
      (*out->mutable_envs())["IRQBYPASS_HANDOFF_SOCKET"] =
          absl::StrCat(kContainerHandoffDir, "/", socket.substr(slash + 1));
    }
    LogInfo("devices allocated", {{"resource", options_.resource.name},
                                  {"iommu_groups", absl::StrJoin(groups, ",")},
                                  {"pci", joined}});
    all_addresses->insert(all_addresses->end(), addresses.begin(),
                          addresses.end());
  }
  return grpc::Status::OK;
}

grpc::Status DevicePlugin::DoPreferred(
    const dp::PreferredAllocationRequest& request,
    dp::PreferredAllocationResponse* response) const {
  MutexLock lock(&mu_);
  std::map<std::string, int> numa;
  for (const VfioGroup& g : groups_) numa[g.group] = g.numa_node;
  for (int c = 0; c < request.container_requests_size(); ++c) {
    const auto& req = request.container_requests(c);
    if (req.allocation_size() < req.must_include_deviceids_size()) {
      return grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("container_requests[", c,
                       "].allocation_size: ", req.allocation_size(),
                       " is less than the ", req.must_include_deviceids_size(),
                       " must_include_deviceIDs"));
    }
    std::vector<std::string> chosen(req.must_include_deviceids().begin(),
                                    req.must_include_deviceids().end());
    std::set<std::string> taken(chosen.begin(), chosen.end());
    // The NUMA node to prefer: the must-include devices' most common one,
    // else the one with the most available devices.
    std::map<int, int> votes;
    for (const std::string& id : chosen)
      ++votes[numa.count(id) ? numa[id] : -1];
    if (votes.empty()) {
      for (const std::string& id : req.available_deviceids()) {
        ++votes[numa.count(id) ? numa[id] : -1];
      }
    }
    int prefer = -1, best = 0;
    for (const auto& [node, n] : votes) {
      if (node >= 0 && n > best) prefer = node, best = n;
    }
    std::vector<std::string> available(req.available_deviceids().begin(),
                                       req.available_deviceids().end());
    std::stable_sort(available.begin(), available.end(),
                     [&](const std::string& a, const std::string& b) {
                       const bool pa = numa.count(a) && numa[a] == prefer;
                       const bool pb = numa.count(b) && numa[b] == prefer;
                       return pa > pb;
                     });
    for (const std::string& id : available) {
      if (static_cast<int>(chosen.size()) >= req.allocation_size()) break;
      if (taken.insert(id).second) chosen.push_back(id);
    }
    auto* out = response->add_container_responses();
    for (const std::string& id : chosen) out->add_deviceids(id);
  }
  return grpc::Status::OK;
}

}  // namespace irqbypass::agent
