// Backend: the host-side half of the irqbypass contract, as the node agent
// drives it. One Backend per agent process; StepExecutor (step_executor.h)
// calls one method per Step of a Command, in the order the manager sent them.
//
// Each method maps 1:1 to a contract step (agent.proto StepKind) and is given
// the command's token, producer and consumer, exactly as the manager sent
// them. Implementations:
//   * SimBackend (sim_backend.h): an in-memory model of a host, for tests.
//   * KvmBackend (kvm_backend.h). Per token it owns one eventfd (an owning
//     RAII fd). ADD_CONSUMER (the producer side takes the consumer) hands the
//     eventfd to the device vector with VFIO_DEVICE_SET_IRQS
//     (VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER) on the device
//     fd; ADD_PRODUCER (the consumer side takes the producer) assigns it to the
//     GSI with KVM_IRQFD on the VM fd. DEL_PRODUCER deassigns the irqfd
//     (KVM_IRQFD_FLAG_DEASSIGN), DEL_CONSUMER detaches the vector
//     (VFIO_IRQ_SET_DATA_NONE); STOP/START mask and unmask around the change.
//     When both sides hold the same eventfd the kernel's own bypass manager
//     pairs them.
//
// Thread-safety: implementations must be thread-safe. The agent runs one
// command at a time, but Inventory() may be called while a command runs.
#ifndef IRQBYPASS_AGENT_BACKEND_H_
#define IRQBYPASS_AGENT_BACKEND_H_

#include <cerrno>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "protos/irqbypass/v1/agent.pb.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

namespace irqbypass {
namespace agent {

// The outcome of a step that can fail: an errno (0 = success) and the
// backend's human-readable message. The errno travels unchanged to the
// manager in CommandAck.errno_value, so callers can tell failures apart.
class [[nodiscard]] StepResult {
 public:
  static StepResult Ok() { return StepResult(0, std::string()); }
  // `errno_value` must be non-zero; 0 is a backend bug and becomes EIO so a
  // failure is never reported as success.
  static StepResult Error(int errno_value, std::string message) {
    return StepResult(errno_value == 0 ? EIO : errno_value, std::move(message));
  }

  bool ok() const { return errno_value_ == 0; }
  int errno_value() const { return errno_value_; }
  const std::string& message() const { return message_; }

 private:
  StepResult(int errno_value, std::string message)
      : errno_value_(errno_value), message_(std::move(message)) {}

  int errno_value_;
  std::string message_;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "sim" or "kvm"; reported in AgentHello.backend.
  virtual std::string Name() const = 0;

  // stop(producer) / stop(consumer): quiesce a side before its wiring
  // changes; start undoes stop. They cannot fail (the kernel's hooks return
  // void); a backend logs what goes wrong and carries on.
  virtual void StopProducer(absl::string_view token,
                            const v1::Producer& producer,
                            const v1::Consumer& consumer) = 0;
  virtual void StopConsumer(absl::string_view token,
                            const v1::Producer& producer,
                            const v1::Consumer& consumer) = 0;
  virtual void StartConsumer(absl::string_view token,
                             const v1::Producer& producer,
                             const v1::Consumer& consumer) = 0;
  virtual void StartProducer(absl::string_view token,
                             const v1::Producer& producer,
                             const v1::Consumer& consumer) = 0;

  // producer.add_consumer: the producer side (device vector) takes the
  // consumer. Errors, by convention: ENOENT when the device is not on this
  // host, EBUSY when the vector is bound to another token, EINVAL for values
  // the host cannot represent; anything else the host reports.
  virtual StepResult AddConsumer(absl::string_view token,
                                 const v1::Producer& producer,
                                 const v1::Consumer& consumer) = 0;
  // consumer.add_producer: the consumer side (VM GSI) takes the producer.
  // Errors as for AddConsumer, about the VM and its GSI.
  virtual StepResult AddProducer(absl::string_view token,
                                 const v1::Producer& producer,
                                 const v1::Consumer& consumer) = 0;

  // consumer.del_producer / producer.del_consumer: undo AddProducer /
  // AddConsumer for exactly this token and object. Removing something not
  // wired is a no-op that returns Ok. The contract says these cannot fail:
  // an error returned here is logged by the caller and otherwise ignored.
  virtual StepResult DelProducer(absl::string_view token,
                                 const v1::Producer& producer,
                                 const v1::Consumer& consumer) = 0;
  virtual StepResult DelConsumer(absl::string_view token,
                                 const v1::Producer& producer,
                                 const v1::Consumer& consumer) = 0;

  // The pairs wired now: tokens for which both AddConsumer and AddProducer
  // succeeded and neither was deleted since, with the producer and consumer
  // exactly as given to those calls; and, marked `partial`, tokens of which
  // only one side is still wired (a del step failed). Sent in AgentHello so
  // the manager can reconcile. Order unspecified.
  virtual std::vector<v1::WiredPair> Inventory() const = 0;

  // Whether running `command` may wait on another process (e.g. a VMM that
  // wires its own VM). The session then sends the acks it holds back before
  // running it, so a slow command never delays an earlier one's ack.
  virtual bool MayBlock(const v1::Command& command) const { return false; }
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_BACKEND_H_
