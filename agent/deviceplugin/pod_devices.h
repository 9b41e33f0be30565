// PodDevices: which pod holds which of the plugin's devices, from the
// kubelet's pod-resources API (v1 List on <kubelet_dir>/pod-resources/
// kubelet.sock), polled. Allocate carries no pod; this is how the agent
// learns who got a device, shows it in its log and metrics, and notices a
// pod that went away so its devices can be released (the kvm backend's
// handed-over device fds closed, its wiring removed).
//
// It never releases on what it does not know: the first List after a start,
// after a failed List or after the kubelet's socket changed (a kubelet
// restart, whose first answers may list pods only partly) only learns the
// holders (a restarted agent keeps every running pod's devices: the kubelet
// does not call Allocate again for them); a device is released only once no
// pod has held it in every List for `release_after` (at least two Lists),
// and never because it moved to another pod (the new pod's VMM hands it
// over itself; a VMM's handover also ends when its connection does).
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
#include "agent/deviceplugin/file_id.h"
#include "common/mutex.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

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
  // `unheld_since`: when the device was first seen held by no pod (a
  // device allocated again after that is not to be released).
  using ReleasedFn =
      std::function<void(const std::string& resource, const std::string& device,
                         const Holder& was, absl::Time unheld_since)>;
  struct Options {
    std::string kubelet_dir = "/var/lib/kubelet";
    std::vector<std::string> resources;  // the plugin's; others are ignored
    absl::Duration interval = absl::Seconds(2);
    // How long a device must stay held by no pod before it is released.
    absl::Duration release_after = absl::Seconds(10);
    // The deadline of one List (the destructor cancels one in flight).
    absl::Duration list_timeout = absl::Seconds(2);
    // A device a pod held is held by no pod any more. Runs on the poller's
    // thread, with no lock held.
    ReleasedFn released;
    AgentMetrics* metrics = nullptr;  // may be null
  };

  static std::unique_ptr<PodDevices> Start(Options options);
  ~PodDevices();  // stops the poller, cancelling a List in flight

  std::optional<Holder> HolderOf(const std::string& resource,
                                 const std::string& device) const;
  // Whether a List has succeeded since the start.
  bool synced() const;
  // Lists that succeeded and failed so far.
  int lists() const;
  int failures() const;

 private:
  explicit PodDevices(Options options) : options_(std::move(options)) {}
  void Loop();
  void Poll();

  using Key = std::pair<std::string, std::string>;  // resource, device
  const Options options_;
  mutable Mutex mu_;
  std::map<Key, Holder> held_ ABSL_GUARDED_BY(mu_);
  // Held before, by no pod since (the first List that showed it so).
  std::map<Key, std::pair<Holder, absl::Time>> unheld_ ABSL_GUARDED_BY(mu_);
  bool synced_ ABSL_GUARDED_BY(mu_) = false;
  int lists_ ABSL_GUARDED_BY(mu_) = 0;
  int failures_ ABSL_GUARDED_BY(mu_) = 0;
  // The poller's own: the next good List only learns (start, failure,
  // another kubelet socket).
  bool relearn_ = true;
  bool failing_ = false;  // a failure was logged
  // The socket the last List used.
  std::optional<FileId> socket_id_;
  Mutex stop_mu_;
  CondVar stop_cv_;
  bool stop_ ABSL_GUARDED_BY(stop_mu_) = false;
  grpc::ClientContext* in_flight_ ABSL_GUARDED_BY(stop_mu_) = nullptr;
  std::thread thread_;
};

}  // namespace irqbypass::agent

#endif  // IRQBYPASS_AGENT_DEVICEPLUGIN_POD_DEVICES_H_
