// PodDevices: which pod holds which of the plugin's devices, from the
// kubelet's pod-resources API (v1 List on <kubelet_dir>/pod-resources/
// kubelet.sock), polled. Allocate carries no pod; this is how the agent
// learns who got a device, shows it in its log and metrics, and notices a
// pod that went away so its devices can be released (the kvm backend's
// handed-over device fds closed, its wiring removed).
//
// It never releases on what it does not know: the first List after a start
// only learns the holders (a restarted agent keeps every running pod's
// devices: the kubelet does not call Allocate again for them), and a List
// that fails changes nothing (a kubelet restart is not a pod leaving).
// Thread-safe.
#ifndef IRQBYPASS_AGENT_DEVICEPLUGIN_POD_DEVICES_H_
#define IRQBYPASS_AGENT_DEVICEPLUGIN_POD_DEVICES_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "common/mutex.h"

namespace irqbypass::agent {

class AgentMetrics;

class PodDevices {
 public:
  struct Holder {
    std::string pod_namespace;
    std::string pod_name;
    std::string container;
    bool operator==(const Holder& o) const {
      return pod_namespace == o.pod_namespace && pod_name == o.pod_name &&
             container == o.container;
    }
  };
  using ReleasedFn =
      std::function<void(const std::string& resource, const std::string& device,
                         const Holder& was)>;
  struct Options {
    std::string kubelet_dir = "/var/lib/kubelet";
    std::vector<std::string> resources;  // the plugin's; others are ignored
    absl::Duration interval = absl::Seconds(2);
    // A device a pod held is held by no pod any more. Runs on the poller's
    // thread, with no lock held.
    ReleasedFn released;
    AgentMetrics* metrics = nullptr;  // may be null
  };

  static std::unique_ptr<PodDevices> Start(Options options);
  ~PodDevices();  // stops the poller

  std::optional<Holder> HolderOf(const std::string& resource,
                                 const std::string& device) const;
  // Whether a List has succeeded since the start.
  bool synced() const;

 private:
  explicit PodDevices(Options options) : options_(std::move(options)) {}
  void Loop();
  void Poll();

  using Key = std::pair<std::string, std::string>;  // resource, device
  const Options options_;
  mutable Mutex mu_;
  std::map<Key, Holder> held_ ABSL_GUARDED_BY(mu_);
  bool synced_ ABSL_GUARDED_BY(mu_) = false;
  bool failing_ = false;  // the poller's: a failure was logged
  Mutex stop_mu_;
  CondVar stop_cv_;
  bool stop_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread thread_;
};

}  // namespace irqbypass::agent

#endif  // IRQBYPASS_AGENT_DEVICEPLUGIN_POD_DEVICES_H_
