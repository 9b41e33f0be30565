#include "agent/deviceplugin/testing/fake_kubelet.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace irqbypass::agent::testing {

namespace dp = ::v1beta1;
namespace fs = std::filesystem;

class FakeKubelet::RegistrationService final
    : public dp::Registration::CallbackService {
 public:
  explicit RegistrationService(FakeKubelet& kubelet) : kubelet_(kubelet) {}
  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* context,
                                     const dp::RegisterRequest* request,
                                     dp::Empty*) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    if (request->version() != "v1beta1") {
      reactor->Finish(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       absl::StrCat("version: \"", request->version(),
                                    "\" is not supported (v1beta1 is)")));
      return reactor;
    }
    if (request->resource_name().empty() || request->endpoint().empty()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   "resource_name and endpoint are required"));
      return reactor;
    }
    reactor->Finish(kubelet_.OnRegister(*request));
    return reactor;
  }

 private:
  FakeKubelet& kubelet_;
};

class FakeKubelet::PodResourcesService final
    : public ::v1::PodResourcesLister::CallbackService {
 public:
  explicit PodResourcesService(FakeKubelet& kubelet) : kubelet_(kubelet) {}
  grpc::ServerUnaryReactor* List(
      grpc::CallbackServerContext* context,
      const ::v1::ListPodResourcesRequest*,
      ::v1::ListPodResourcesResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    {
      MutexLock lock(&kubelet_.mu_);
      for (const auto& [key, pod] : kubelet_.pods_) {
        *response->add_pod_resources() = pod;
      }
      if (kubelet_.hold_lists_) {
        kubelet_.held_lists_.push_back(reactor);
        return reactor;
      }
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerUnaryReactor* Get(
      grpc::CallbackServerContext* context,
      const ::v1::GetPodResourcesRequest* request,
      ::v1::GetPodResourcesResponse* response) override {
    grpc::Status status(grpc::StatusCode::NOT_FOUND, "no such pod");
    {
      MutexLock lock(&kubelet_.mu_);
      auto it = kubelet_.pods_.find(request->pod_namespace() + "/" +
                                    request->pod_name());
      if (it != kubelet_.pods_.end()) {
        *response->mutable_pod_resources() = it->second;
        status = grpc::Status::OK;
      }
    }
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(status);
    return reactor;
  }

 private:
  FakeKubelet& kubelet_;
};

FakeKubelet::FakeKubelet(std::string kubelet_dir)
    : dir_(std::move(kubelet_dir)) {
  fs::create_directories(Dir());
  fs::create_directories(dir_ + "/pod-resources");
}

void FakeKubelet::SetPod(const std::string& pod_namespace,
                         const std::string& pod_name,
                         const std::string& container,
                         const std::string& resource,
                         const std::vector<std::string>& devices) {
  ::v1::PodResources pod;
  pod.set_name(pod_name);
  pod.set_namespace_(pod_namespace);
  auto* c = pod.add_containers();
  c->set_name(container);
  auto* d = c->add_devices();
  d->set_resource_name(resource);
  for (const auto& id : devices) d->add_device_ids(id);
  MutexLock lock(&mu_);
  pods_[pod_namespace + "/" + pod_name] = std::move(pod);
}

void FakeKubelet::RemovePod(const std::string& pod_namespace,
                            const std::string& pod_name) {
  MutexLock lock(&mu_);
  pods_.erase(pod_namespace + "/" + pod_name);
}

void FakeKubelet::HoldLists(bool hold) {
  std::vector<grpc::ServerUnaryReactor*> answer;
  {
    MutexLock lock(&mu_);
    hold_lists_ = hold;
    if (!hold) answer.swap(held_lists_);
  }
  for (grpc::ServerUnaryReactor* r : answer) r->Finish(grpc::Status::OK);
}

int FakeKubelet::HeldLists() const {
  MutexLock lock(&mu_);
  return static_cast<int>(held_lists_.size());
}

FakeKubelet::~FakeKubelet() { Stop(); }

void FakeKubelet::Start() {
  const std::string path = Dir() + "/kubelet.sock";
  unlink(path.c_str());
  service_ = std::make_unique<RegistrationService>(*this);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + path, grpc::InsecureServerCredentials());
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();

  const std::string pods = dir_ + "/pod-resources/kubelet.sock";
  unlink(pods.c_str());
  pods_service_ = std::make_unique<PodResourcesService>(*this);
  grpc::ServerBuilder pods_builder;
  pods_builder.AddListeningPort("unix:" + pods,
                                grpc::InsecureServerCredentials());
  pods_builder.RegisterService(pods_service_.get());
  pods_server_ = pods_builder.BuildAndStart();
}

void FakeKubelet::Stop() {
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(1));
    server_.reset();
    service_.reset();
  }
  if (pods_server_ != nullptr) {
    std::vector<grpc::ServerUnaryReactor*> held;
    {
      MutexLock lock(&mu_);
      hold_lists_ = false;  // a List arriving from now on is answered
      held.swap(held_lists_);
    }
    for (grpc::ServerUnaryReactor* r : held) r->Finish(grpc::Status::OK);
    pods_server_->Shutdown(std::chrono::system_clock::now() +
                           std::chrono::seconds(1));
    pods_server_.reset();
    pods_service_.reset();
  }
  unlink((Dir() + "/kubelet.sock").c_str());
  EndAllPlugins();
}

void FakeKubelet::DeletePluginSockets(bool keep_kubelet_sock) const {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(Dir(), ec)) {
    if (entry.path().extension() != ".sock") continue;
    if (keep_kubelet_sock && entry.path().filename() == "kubelet.sock") {
      continue;
    }
    fs::remove(entry.path(), ec);
  }
}

absl::Time FakeKubelet::Restart(RestartOrder order, absl::Duration gap) {
  Stop();
  if (order == RestartOrder::kDeleteSocketsThenServe) {
    DeletePluginSockets(/*keep_kubelet_sock=*/false);
    absl::SleepFor(gap);
    Start();
  } else {
    Start();
    absl::SleepFor(gap);
    DeletePluginSockets(/*keep_kubelet_sock=*/true);
  }
  return absl::Now();
}

grpc::Status FakeKubelet::OnRegister(const dp::RegisterRequest& request) {
  auto plugin = std::make_shared<Plugin>();
  plugin->endpoint = request.endpoint();
  plugin->stub = dp::DevicePlugin::NewStub(
      grpc::CreateChannel("unix:" + Dir() + "/" + request.endpoint(),
                          grpc::InsecureChannelCredentials()));
  plugin->watch = std::make_unique<grpc::ClientContext>();
  plugin->registered_at = absl::Now();
  const std::string resource = request.resource_name();
  {
    // Dialled before answering, as the kubelet does.
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(2));
    grpc::Status s = plugin->stub->GetDevicePluginOptions(&ctx, dp::Empty(),
                                                          &plugin->options);
    if (!s.ok()) {
      return grpc::Status(
          grpc::StatusCode::UNAVAILABLE,
          absl::StrCat("cannot dial the plugin at ", request.endpoint(), ": ",
                       s.error_message()));
    }
  }
  plugin->reader = std::thread([this, plugin] {
    auto reader = plugin->stub->ListAndWatch(plugin->watch.get(), dp::Empty());
    dp::ListAndWatchResponse list;
    while (reader->Read(&list)) {
      MutexLock lock(&mu_);
      plugin->latest = list;
      plugin->live = true;
      ++plugin->lists;
      cv_.SignalAll();
    }
    reader->Finish();
    MutexLock lock(&mu_);
    plugin->live = false;
    cv_.SignalAll();
  });
  // Listed once its reader exists (EndPlugin joins it).
  MutexLock lock(&mu_);
  registrations_.push_back(request);
  auto old = plugins_.find(resource);
  if (old != plugins_.end()) {
    old->second->watch->TryCancel();  // joined later, off this thread
    retired_.push_back(std::move(old->second));
  }
  plugins_[resource] = plugin;
  cv_.SignalAll();
  return grpc::Status::OK;
}

void FakeKubelet::EndPlugin(Plugin& plugin) {
  plugin.watch->TryCancel();
  if (plugin.reader.joinable()) plugin.reader.join();
}

void FakeKubelet::EndAllPlugins() {
  std::vector<std::shared_ptr<Plugin>> all;
  {
    MutexLock lock(&mu_);
    for (auto& [resource, plugin] : plugins_) all.push_back(plugin);
    for (auto& plugin : retired_) all.push_back(plugin);
    plugins_.clear();
    retired_.clear();
  }
  for (auto& plugin : all) EndPlugin(*plugin);
}

void FakeKubelet::DropListAndWatch(const std::string& resource) {
  std::shared_ptr<Plugin> plugin;
  {
    MutexLock lock(&mu_);
    auto it = plugins_.find(resource);
    if (it == plugins_.end()) return;
    plugin = it->second;
    plugins_.erase(it);
  }
  EndPlugin(*plugin);
}

std::vector<dp::RegisterRequest> FakeKubelet::Registrations() const {
  MutexLock lock(&mu_);
  return registrations_;
}

int FakeKubelet::RegistrationsOf(const std::string& resource) const {
  MutexLock lock(&mu_);
  int n = 0;
  for (const auto& r : registrations_) n += r.resource_name() == resource;
  return n;
}

bool FakeKubelet::WaitRegistrations(const std::string& resource, int at_least,
                                    absl::Duration timeout) const {
  const auto deadline =
      std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
  MutexLock lock(&mu_);
  while (true) {
    int n = 0;
    for (const auto& r : registrations_) n += r.resource_name() == resource;
    if (n >= at_least) return true;
    if (!cv_.WaitUntil(&mu_, deadline)) {
      n = 0;
      for (const auto& r : registrations_) n += r.resource_name() == resource;
      return n >= at_least;
    }
  }
}

bool FakeKubelet::WaitForDevices(
    const std::string& resource,
    const std::function<bool(const dp::ListAndWatchResponse&)>& pred,
    absl::Duration timeout, absl::Time registered_after) const {
  const auto deadline =
      std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
  MutexLock lock(&mu_);
  while (true) {
    auto it = plugins_.find(resource);
    if (it != plugins_.end() && it->second->live &&
        it->second->registered_at > registered_after &&
        pred(it->second->latest)) {
      return true;
    }
    if (std::chrono::steady_clock::now() >= deadline) return false;
    cv_.WaitUntil(&mu_, deadline);
  }
}

dp::ListAndWatchResponse FakeKubelet::LatestDevices(
    const std::string& resource) const {
  MutexLock lock(&mu_);
  auto it = plugins_.find(resource);
  return it == plugins_.end() ? dp::ListAndWatchResponse() : it->second->latest;
}

dp::DevicePluginOptions FakeKubelet::OptionsOf(
    const std::string& resource) const {
  MutexLock lock(&mu_);
  auto it = plugins_.find(resource);
  return it == plugins_.end() ? dp::DevicePluginOptions() : it->second->options;
}

namespace {
absl::Status ToAbsl(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      s.error_message());
}
}  // namespace

absl::StatusOr<std::shared_ptr<FakeKubelet::Plugin>> FakeKubelet::Current(
    const std::string& resource) const {
  MutexLock lock(&mu_);
  auto it = plugins_.find(resource);
  if (it == plugins_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no plugin registered for ", resource));
  }
  return it->second;
}

absl::StatusOr<dp::AllocateResponse> FakeKubelet::Allocate(
    const std::string& resource,
    const std::vector<std::vector<std::string>>& containers) {
  absl::StatusOr<std::shared_ptr<Plugin>> plugin = Current(resource);
  if (!plugin.ok()) return plugin.status();
  dp::AllocateRequest request;
  for (const auto& ids : containers) {
    auto* c = request.add_container_requests();
    for (const auto& id : ids) c->add_devices_ids(id);
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  dp::AllocateResponse response;
  grpc::Status s = (*plugin)->stub->Allocate(&ctx, request, &response);
  if (!s.ok()) return ToAbsl(s);
  return response;
}

absl::StatusOr<dp::PreferredAllocationResponse> FakeKubelet::Preferred(
    const std::string& resource, const std::vector<std::string>& available,
    const std::vector<std::string>& must_include, int size) {
  absl::StatusOr<std::shared_ptr<Plugin>> plugin = Current(resource);
  if (!plugin.ok()) return plugin.status();
  dp::PreferredAllocationRequest request;
  auto* c = request.add_container_requests();
  for (const auto& id : available) c->add_available_deviceids(id);
  for (const auto& id : must_include) c->add_must_include_deviceids(id);
  c->set_allocation_size(size);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  dp::PreferredAllocationResponse response;
  grpc::Status s =
      (*plugin)->stub->GetPreferredAllocation(&ctx, request, &response);
  if (!s.ok()) return ToAbsl(s);
  return response;
}

}  // namespace irqbypass::agent::testing
