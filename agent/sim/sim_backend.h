// SimBackend: an in-memory model of a host, the agent's `sim` backend. It
// holds no file descriptors but enforces the constraints a real KVM/VFIO host
// imposes, so the manager and the end-to-end tests see realistic failures:
//
//   * ADD_CONSUMER (the device side) fails with ENOENT when the device is not
//     on this host, and with EBUSY when its (device, index, vector) is bound
//     to another token or the token already drives another vector.
//   * ADD_PRODUCER (the VM side) fails with ENOENT when the VM is not on this
//     host, EINVAL for gsi >= 4096, and EBUSY when (vm, gsi) is bound to
//     another token or the token already feeds another GSI.
//   * Re-adding exactly what a token already has succeeds (idempotent).
//   * DEL_* remove exactly the given token's object; anything else is a no-op.
//
// For tests it can fail a chosen add step with a chosen errno, and sleep in
// every add step to simulate a slow host (SimBackendOptions).
//
// Thread-safe.
#ifndef IRQBYPASS_AGENT_SIM_SIM_BACKEND_H_
#define IRQBYPASS_AGENT_SIM_SIM_BACKEND_H_

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/backend.h"
#include "common/mutex.h"

namespace irqbypass {
namespace agent {

// The add steps SimBackend can be told to fail.
enum class SimStep { kAddConsumer, kAddProducer, kDelProducer, kDelConsumer };

// "add_consumer", "add_producer", "del_producer", "del_consumer".
absl::string_view SimStepName(SimStep step);

// Fault injection: every call of `step` fails with `errno_value`.
struct SimFault {
  SimStep step;
  int errno_value;
};

// Parses "STEP:ERRNO", where STEP is add_consumer, add_producer, del_producer
// or del_consumer and ERRNO a
// name ("EIO") or a positive decimal number ("5"). INVALID_ARGUMENT otherwise,
// with a message saying what is wrong.
absl::StatusOr<SimFault> ParseSimFault(absl::string_view spec);

struct SimBackendOptions {
  // This host's node name; used in error messages.
  std::string node;
  // VM names that exist on this host; nullopt: every VM exists.
  std::optional<absl::flat_hash_set<std::string>> vms;
  // PCI addresses of the devices on this host; nullopt: every device exists.
  std::optional<absl::flat_hash_set<std::string>> devices;
  // Fail one add or del step, every time (tests); a failed del changes
  // nothing.
  std::optional<SimFault> fault;
  // Sleep this long at the start of every add step (tests: a slow host),
  // or, with slow_vms, only of those VMs' add steps (a slow VMM).
  absl::Duration add_step_delay = absl::ZeroDuration();
  std::optional<absl::flat_hash_set<std::string>> slow_vms;
};

class SimBackend final : public Backend {
 public:
  // KVM accepts GSIs below KVM_MAX_IRQ_ROUTES.
  static constexpr uint32_t kMaxGsi = 4096;

  explicit SimBackend(SimBackendOptions options);

  SimBackend(const SimBackend&) = delete;
  SimBackend& operator=(const SimBackend&) = delete;

  std::string Name() const override { return "sim"; }

  // The sim has nothing to quiesce: no-ops.
  void StopProducer(absl::string_view token, const v1::Producer& producer,
                    const v1::Consumer& consumer) override {}
  void StopConsumer(absl::string_view token, const v1::Producer& producer,
                    const v1::Consumer& consumer) override {}
  void StartConsumer(absl::string_view token, const v1::Producer& producer,
                     const v1::Consumer& consumer) override {}
  void StartProducer(absl::string_view token, const v1::Producer& producer,
                     const v1::Consumer& consumer) override {}

  StepResult AddConsumer(absl::string_view token, const v1::Producer& producer,
                         const v1::Consumer& consumer) override;
  StepResult AddProducer(absl::string_view token, const v1::Producer& producer,
                         const v1::Consumer& consumer) override;
  StepResult DelProducer(absl::string_view token, const v1::Producer& producer,
                         const v1::Consumer& consumer) override;
  StepResult DelConsumer(absl::string_view token, const v1::Producer& producer,
                         const v1::Consumer& consumer) override;

  std::vector<v1::WiredPair> Inventory() const override;

  // The sim's counterpart of a device fd handed over and closed again (the
  // device plugin: a device allocated to a pod, the pod gone).
  // RemoveDevice: the device leaves this host; every vector wired on it is
  // unwired (the VM side stays, so the pair is reported partial and the
  // manager disconnects it) and add_consumer on it fails with ENOENT until
  // AddDevice. False if the device was not on this host.
  bool RemoveDevice(const std::string& address);
  // The device is on this host (again); true if it was not.
  bool AddDevice(const std::string& address);

 private:
  // (device, index with UNSPECIFIED read as MSIX, vector).
  using VectorKey = std::tuple<std::string, int, uint32_t>;
  // (vm, gsi).
  using GsiKey = std::pair<std::string, uint32_t>;

  // What one token has wired on this host.
  struct Wiring {
    // Set once AddConsumer succeeded: the device vector fires the token.
    std::optional<v1::Producer> producer;
    // Set once AddProducer succeeded: the token feeds the VM's GSI.
    std::optional<v1::Consumer> consumer;
    // Both sides as the last add step named them: the missing side of a
    // half-wired pair (a del step failed) in Inventory.
    v1::Producer last_producer;
    v1::Consumer last_consumer;
  };

  static VectorKey KeyOf(const v1::Producer& producer);
  static GsiKey KeyOf(const v1::Consumer& consumer);

  // Delay and fault injection common to both add steps; nullopt to proceed.
  std::optional<StepResult> Inject(SimStep step,
                                   const v1::Consumer& consumer) const;
  bool DeviceHeldLocked(const std::string& address) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops the token's entry once it has neither side.
  void EraseIfEmpty(const std::string& token)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SimBackendOptions options_;

  mutable Mutex mu_;
  absl::flat_hash_map<std::string, Wiring> tokens_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<VectorKey, std::string> vector_owner_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<GsiKey, std::string> gsi_owner_ ABSL_GUARDED_BY(mu_);
  // RemoveDevice / AddDevice over options_.devices.
  absl::flat_hash_set<std::string> removed_devices_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> added_devices_ ABSL_GUARDED_BY(mu_);
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_SIM_SIM_BACKEND_H_
