// DevicePlugin: irqbypass-agent as a kubelet device plugin (API v1beta1)
// for one extended resource: the VFIO IOMMU groups of VfioInventory.
//
// It serves DevicePlugin on <kubelet_dir>/device-plugins/<endpoint>.sock
// (gRPC's callback API; ListAndWatch is a write reactor that sends the
// whole list at once and again on every change), dials that socket itself,
// then registers with the kubelet on kubelet.sock. A monitor thread, every
// `poll_interval`:
//  * rescans sysfs: a group that stops being usable (a function unbound
//    from vfio-pci, /dev/vfio/<group> gone) turns Unhealthy, and Healthy
//    again when it is back; a group that disappears stays listed,
//    Unhealthy, so the kubelet never loses track of an allocated device;
//  * watches for a kubelet restart, which deletes every plugin socket and
//    re-creates kubelet.sock (in either order, possibly late; inotify on
//    the folder wakes the monitor at once, the poll is the fallback): a
//    missing or
//    replaced own socket is served again, and a new kubelet.sock (another
//    inode) is registered with again (the kubelet never re-opens
//    ListAndWatch by itself, so a plugin that missed this would leave the
//    node with no allocatable devices).
//
// Allocate answers the DeviceSpecs /dev/vfio/vfio and /dev/vfio/<group>
// (rwm), a Mount of the agent's handoff socket (when it has one) and
// environment variables naming the allocated PCI addresses and the socket.
// GetPreferredAllocation honours must_include and the size and prefers one
// NUMA node.
//
// Thread-safe.
#ifndef IRQBYPASS_AGENT_DEVICEPLUGIN_DEVICE_PLUGIN_H_
#define IRQBYPASS_AGENT_DEVICEPLUGIN_DEVICE_PLUGIN_H_

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/deviceplugin/vfio_inventory.h"
#include "common/mutex.h"
#include "grpcpp/grpcpp.h"
#include "protos/k8s/deviceplugin/v1beta1/api.grpc.pb.h"

namespace irqbypass::agent {

class AgentMetrics;

// Where the handoff socket's folder appears inside the container
// (Allocate's Mount; IRQBYPASS_HANDOFF_SOCKET names the socket in it). The
// folder, not the socket: a bind mount pins an inode, and a restarted agent
// makes a new socket.
inline constexpr char kContainerHandoffDir[] = "/var/run/irqbypass";

class DevicePlugin {
 public:
  struct Options {
    ResourceSpec resource;
    // The other resources' selectors: a group that holds one of their
    // devices is not offered under this one (Unhealthy).
    std::vector<PciSelector> other_selectors;
    std::string kubelet_dir = "/var/lib/kubelet";
    std::string sysfs_root = "/sys";
    std::string dev_root = "/dev";
    // The agent's handoff socket on the host; empty: no Mount, no variable.
    std::string handoff_socket;
    // Rescans and kubelet-restart checks.
    absl::Duration poll_interval = absl::Milliseconds(500);
    AgentMetrics* metrics = nullptr;  // may be null; must outlive the plugin
    // Called after each successful Allocate with the PCI functions it gave
    // (on a gRPC thread, no lock held); may be empty.
    std::function<void(const std::vector<std::string>& pci_addresses)>
        allocated;
  };

  // Serves the plugin's socket and starts the monitor (registration is
  // its first step, retried until the kubelet answers; a device-plugins
  // folder that does not exist yet is waited for). INVALID_ARGUMENT when
  // the socket's path is longer than a unix socket address allows.
  static absl::StatusOr<std::unique_ptr<DevicePlugin>> Start(Options options);
  // Stops the monitor and cancels a registration in progress, without
  // waiting; for stopping several plugins at once (the destructor waits).
  void BeginStop();
  ~DevicePlugin();  // ends the streams, stops serving, removes the socket

  const std::string& resource() const { return options_.resource.name; }
  // The socket's file name (RegisterRequest.endpoint) and path.
  const std::string& endpoint() const { return endpoint_; }
  std::string socket_path() const;
  // Successful registrations with the kubelet so far.
  int registrations() const { return registrations_.load(); }

  // The PCI functions of device (IOMMU group) `id`; empty if unknown.
  std::vector<std::string> AddressesOf(const std::string& id) const;
  // When device `id` was last given to a container by Allocate
  // (InfinitePast if never since the start).
  absl::Time LastAllocated(const std::string& id) const;

  // The current device list (what a new ListAndWatch is sent first).
  v1beta1::ListAndWatchResponse Devices() const;

  class ListStream;
  class Service;

 private:
  explicit DevicePlugin(Options options);

  absl::Status Serve() ABSL_EXCLUSIVE_LOCKS_REQUIRED(serve_mu_);
  void StopServing() ABSL_EXCLUSIVE_LOCKS_REQUIRED(serve_mu_);
  class DirWatch;
  void MonitorLoop();
  // Until the poll interval passed, a stop, or a change in the
  // device-plugins folder (inotify), whichever comes first.
  void WaitForChange(DirWatch& watch);
  // Rescans; true when the list changed (then streams were told).
  bool Rescan();
  // Dials the own socket, then registers; true on success.
  bool Register();
  void AddStream(std::weak_ptr<ListStream> stream);
  // ListAndWatch streams open now.
  int LiveStreams() const;

  grpc::Status DoAllocate(const v1beta1::AllocateRequest& request,
                          v1beta1::AllocateResponse* response) const;
  // DoAllocate's answer; `addresses` gets every PCI function given.
  grpc::Status AllocateLocked(const v1beta1::AllocateRequest& request,
                              v1beta1::AllocateResponse* response,
                              std::vector<std::string>* addresses) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  grpc::Status DoPreferred(
      const v1beta1::PreferredAllocationRequest& request,
      v1beta1::PreferredAllocationResponse* response) const;

  const Options options_;
  const VfioInventory inventory_;
  const std::string endpoint_;

  mutable Mutex mu_;  // the device list and the streams
  // Device id -> when Allocate last gave it out.
  mutable std::map<std::string, absl::Time> last_allocated_
      ABSL_GUARDED_BY(mu_);
  std::vector<VfioGroup> groups_ ABSL_GUARDED_BY(mu_);  // incl. vanished
  v1beta1::ListAndWatchResponse devices_ ABSL_GUARDED_BY(mu_);
  std::vector<std::weak_ptr<ListStream>> streams_ ABSL_GUARDED_BY(mu_);
  bool stopping_streams_ ABSL_GUARDED_BY(mu_) = false;  // in StopServing

  Mutex serve_mu_;  // the server (the monitor and the destructor)
  std::unique_ptr<Service> service_ ABSL_GUARDED_BY(serve_mu_);
  std::unique_ptr<grpc::Server> server_ ABSL_GUARDED_BY(serve_mu_);
  ino_t socket_inode_ ABSL_GUARDED_BY(serve_mu_) = 0;

  std::atomic<int> registrations_{0};
  const int wake_fd_;  // an eventfd: BeginStop wakes the monitor
  Mutex stop_mu_;
  bool stop_ ABSL_GUARDED_BY(stop_mu_) = false;
  // The registration call in flight (BeginStop cancels it).
  grpc::ClientContext* registering_ ABSL_GUARDED_BY(stop_mu_) = nullptr;
  std::thread monitor_;
};

}  // namespace irqbypass::agent

#endif  // IRQBYPASS_AGENT_DEVICEPLUGIN_DEVICE_PLUGIN_H_
