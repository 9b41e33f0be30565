// FakeKubelet: the kubelet's side of the device plugin API for tests, from
// the same protos. It serves Registration on <dir>/device-plugins/
// kubelet.sock; on each Register it dials the plugin's endpoint (as the
// kubelet does: asynchronously, after answering), asks its options and
// keeps its ListAndWatch stream open, recording every list. It drives the
// plugin as a kubelet would: Allocate and GetPreferredAllocation calls, a
// restart (every socket in device-plugins deleted, kubelet.sock served
// again, in either order, with a gap), a dropped ListAndWatch stream.
// Thread-safe.
#ifndef IRQBYPASS_AGENT_DEVICEPLUGIN_TESTING_FAKE_KUBELET_H_
#define IRQBYPASS_AGENT_DEVICEPLUGIN_TESTING_FAKE_KUBELET_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "grpcpp/grpcpp.h"
#include "protos/k8s/deviceplugin/v1beta1/api.grpc.pb.h"
#include "protos/k8s/podresources/v1/api.grpc.pb.h"

namespace irqbypass::agent::testing {

class FakeKubelet {
 public:
  // `kubelet_dir`: its device-plugins folder is created if missing.
  explicit FakeKubelet(std::string kubelet_dir);
  ~FakeKubelet();

  // Serves kubelet.sock (again).
  void Start();
  // Stops serving and removes kubelet.sock; ends the plugin streams.
  void Stop();

  enum class RestartOrder {
    kDeleteSocketsThenServe,  // what a kubelet does on start
    kServeThenDeleteSockets,  // kubelet.sock first, the plugins' later
  };
  // A kubelet restart: stops, deletes every socket in device-plugins (the
  // plugins' too), waits `gap`, serves kubelet.sock again; or in the other
  // order. Returns when it is done: a plugin that recovered registered
  // after that.
  absl::Time Restart(RestartOrder order,
                     absl::Duration gap = absl::ZeroDuration());

  // Register calls answered OK so far, and those for `resource`.
  std::vector<v1beta1::RegisterRequest> Registrations() const;
  int RegistrationsOf(const std::string& resource) const;
  bool WaitRegistrations(const std::string& resource, int at_least,
                         absl::Duration timeout) const;

  // Waits until `resource`'s plugin, registered after `registered_after`,
  // has its ListAndWatch stream open and its latest list satisfies `pred`.
  bool WaitForDevices(
      const std::string& resource,
      const std::function<bool(const v1beta1::ListAndWatchResponse&)>& pred,
      absl::Duration timeout,
      absl::Time registered_after = absl::InfinitePast()) const;
  v1beta1::ListAndWatchResponse LatestDevices(
      const std::string& resource) const;
  // The options the plugin answered when dialled last.
  v1beta1::DevicePluginOptions OptionsOf(const std::string& resource) const;

  // A pod's container holds `devices` of `resource` (pod-resources); a pod
  // set again is replaced. RemovePod: the pod is gone.
  void SetPod(const std::string& pod_namespace, const std::string& pod_name,
              const std::string& container, const std::string& resource,
              const std::vector<std::string>& devices);
  void RemovePod(const std::string& pod_namespace, const std::string& pod_name);
  // While held, pod-resources List calls get no answer (a kubelet that
  // hangs); released, or on Stop (which ends the hold), they are answered.
  // HeldLists: how many wait now.
  void HoldLists(bool hold);
  int HeldLists() const;

  // Ends `resource`'s ListAndWatch stream from this side; like the real
  // kubelet, it does not open it again by itself.
  void DropListAndWatch(const std::string& resource);

  absl::StatusOr<v1beta1::AllocateResponse> Allocate(
      const std::string& resource,
      const std::vector<std::vector<std::string>>& containers);
  absl::StatusOr<v1beta1::PreferredAllocationResponse> Preferred(
      const std::string& resource, const std::vector<std::string>& available,
      const std::vector<std::string>& must_include, int size);

 private:
  class RegistrationService;
  class PodResourcesService;
  struct Plugin {
    std::string endpoint;
    std::unique_ptr<v1beta1::DevicePlugin::Stub> stub;
    std::unique_ptr<grpc::ClientContext> watch;  // ListAndWatch's
    std::thread reader;
    v1beta1::DevicePluginOptions options;
    v1beta1::ListAndWatchResponse latest;
    int lists = 0;
    bool live = false;  // ListAndWatch open (a list came, the stream is on)
    absl::Time registered_at;
  };

  // Dials the plugin (its options), then starts its ListAndWatch reader.
  grpc::Status OnRegister(const v1beta1::RegisterRequest& request);
  // The plugin registered last for `resource`.
  absl::StatusOr<std::shared_ptr<Plugin>> Current(
      const std::string& resource) const;
  // Cancels and joins `resource`'s reader; the caller then drops it.
  void EndPlugin(Plugin& plugin) ABSL_LOCKS_EXCLUDED(mu_);
  void EndAllPlugins();
  // Deletes every socket in device-plugins/, or every plugin's only.
  void DeletePluginSockets(bool keep_kubelet_sock) const;
  std::string Dir() const { return dir_ + "/device-plugins"; }

  const std::string dir_;
  std::unique_ptr<RegistrationService> service_;
  std::unique_ptr<PodResourcesService> pods_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> pods_server_;

  mutable Mutex mu_;
  mutable CondVar cv_;
  std::vector<v1beta1::RegisterRequest> registrations_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Plugin>> plugins_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Plugin>> retired_ ABSL_GUARDED_BY(mu_);
  // By namespace/name.
  std::map<std::string, ::v1::PodResources> pods_ ABSL_GUARDED_BY(mu_);
  bool hold_lists_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<grpc::ServerUnaryReactor*> held_lists_ ABSL_GUARDED_BY(mu_);
};

}  // namespace irqbypass::agent::testing

#endif  // IRQBYPASS_AGENT_DEVICEPLUGIN_TESTING_FAKE_KUBELET_H_
