#include "agent/deviceplugin/pod_devices.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "agent/agent_metrics.h"
#include "common/log.h"
#include "grpcpp/grpcpp.h"
#include "protos/k8s/podresources/v1/api.grpc.pb.h"

namespace irqbypass::agent {

std::unique_ptr<PodDevices> PodDevices::Start(Options options) {
  std::unique_ptr<PodDevices> p(new PodDevices(std::move(options)));
  p->thread_ = std::thread([raw = p.get()] { raw->Loop(); });
  return p;
}

PodDevices::~PodDevices() {
  {
    MutexLock lock(&stop_mu_);
    stop_ = true;
    stop_cv_.Signal();
    // A List in flight ends now, not at its deadline.
    if (in_flight_ != nullptr) in_flight_->TryCancel();
  }
  thread_.join();
}

std::optional<PodDevices::Holder> PodDevices::HolderOf(
    const std::string& resource, const std::string& device) const {
  MutexLock lock(&mu_);
  auto it = held_.find(Key(resource, device));
  if (it == held_.end()) return std::nullopt;
  return it->second;
}

bool PodDevices::synced() const {
  MutexLock lock(&mu_);
  return synced_;
}

int PodDevices::lists() const {
  MutexLock lock(&mu_);
  return lists_;
}

int PodDevices::failures() const {
  MutexLock lock(&mu_);
  return failures_;
}

void PodDevices::Loop() {
  while (true) {
    Poll();
    MutexLock lock(&stop_mu_);
    const auto until = std::chrono::steady_clock::now() +
                       absl::ToChronoNanoseconds(options_.interval);
    while (!stop_ && std::chrono::steady_clock::now() < until) {
      stop_cv_.WaitUntil(&stop_mu_, until);
    }
    if (stop_) return;
  }
}

void PodDevices::Poll() {
  const std::string socket =
      options_.kubelet_dir + "/pod-resources/kubelet.sock";
  // Another kubelet: a socket re-created (or gone).
  const std::optional<FileId> socket_id = IdentifyFile(socket);
  if (socket_id != socket_id_) relearn_ = true;
  socket_id_ = socket_id;
  auto stub = ::v1::PodResourcesLister::NewStub(grpc::CreateChannel(
      "unix:" + socket, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   absl::ToChronoNanoseconds(options_.list_timeout));
  ::v1::ListPodResourcesResponse list;
  {
    MutexLock lock(&stop_mu_);
    if (stop_) return;
    in_flight_ = &ctx;
  }
  grpc::Status s = stub->List(&ctx, ::v1::ListPodResourcesRequest(), &list);
  {
    MutexLock lock(&stop_mu_);
    in_flight_ = nullptr;
    if (stop_) return;  // cancelled by the destructor: nothing to learn
  }
  if (!s.ok()) {
    relearn_ = true;
    {
      MutexLock lock(&mu_);
      ++failures_;
    }
    if (!failing_) {
      LogWarn(
          "pod-resources: cannot list the pods' devices; nothing is "
          "released meanwhile",
          {{"socket", socket}, {"error", s.error_message()}});
      failing_ = true;
    }
    return;
  }
  if (failing_) LogInfo("pod-resources: listing again", {{"socket", socket}});
  failing_ = false;
  std::map<Key, Holder> now;
  for (const auto& pod : list.pod_resources()) {
    for (const auto& container : pod.containers()) {
      for (const auto& devices : container.devices()) {
        if (std::find(options_.resources.begin(), options_.resources.end(),
                      devices.resource_name()) == options_.resources.end()) {
          continue;
        }
        for (const std::string& id : devices.device_ids()) {
          now[Key(devices.resource_name(), id)] =
              Holder{pod.namespace_(), pod.name(), container.name()};
        }
      }
    }
  }
  const bool learn_only = relearn_;
  relearn_ = false;
  const absl::Time at = absl::Now();
  struct Released {
    Key key;
    Holder holder;
    absl::Time unheld_since;
  };
  std::vector<Released> released;
  {
    MutexLock lock(&mu_);
    ++lists_;
    for (const auto& [key, holder] : now) {
      unheld_.erase(key);  // held again (or still): nothing to release
      auto old = held_.find(key);
      if (old != held_.end() && old->second == holder) continue;
      LogInfo(
          learn_only ? "device held by a pod (already running)"
                     : "device held by a pod",
          {{"resource", key.first},
           {"device", key.second},
           {"pod", absl::StrCat(holder.pod_namespace, "/", holder.pod_name)},
           {"container", holder.container}});
    }
    if (learn_only) {
      // What this List does not show may be the kubelet still filling in:
      // forget it without releasing.
      unheld_.clear();
    } else {
      for (const auto& [key, holder] : held_) {
        if (now.count(key) == 0 && unheld_.count(key) == 0) {
          unheld_.emplace(key, std::make_pair(holder, at));
        }
      }
      for (auto it = unheld_.begin(); it != unheld_.end();) {
        if (at - it->second.second >= options_.release_after) {
          released.push_back({it->first, it->second.first, it->second.second});
          it = unheld_.erase(it);
        } else {
          ++it;
        }
      }
    }
    held_ = std::move(now);
    // Still waiting out release_after: keep them known as last held.
    for (const auto& [key, was] : unheld_) held_.emplace(key, was.first);
    synced_ = true;
    if (options_.metrics != nullptr) {
      std::map<std::string, int> per_resource;
      for (const std::string& r : options_.resources) per_resource[r] = 0;
      for (const auto& [key, holder] : held_) ++per_resource[key.first];
      for (const auto& [resource, n] : per_resource) {
        options_.metrics->DevicePluginAllocated(resource, n);
      }
    }
  }
  for (const auto& [key, holder, unheld_since] : released) {
    LogInfo("pod gone: releasing its device",
            {{"resource", key.first},
             {"device", key.second},
             {"pod", absl::StrCat(holder.pod_namespace, "/", holder.pod_name)},
             {"container", holder.container}});
    if (options_.released) {
      options_.released(key.first, key.second, holder, unheld_since);
    }
  }
}

}  // namespace irqbypass::agent
