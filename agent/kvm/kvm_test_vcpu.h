// TestVcpu: one vCPU on a KvmVm, for tests that prove interrupt delivery on
// the real /dev/kvm without a guest OS:
//   * LAPIC proof: software-enable the LAPIC (SVR bit 8), then read a
//     vector's IRR bit with KVM_GET_LAPIC after signalling an irqfd whose GSI
//     is routed as an MSI to APIC 0 (KvmVm routes GSI >= 24 that way).
//   * PIC proof: the master/slave PIC's IRR from KVM_GET_IRQCHIP, for a
//     legacy GSI (< 16).
//   * Guest proof: a tiny real-mode guest (StartInterruptCounter) that counts
//     the interrupts it takes on one vector in guest memory and exits to us
//     (port I/O) after each; Run() runs the vCPU until that exit or a timeout.
//
// Test-only. Not thread-safe: one test thread drives it (Run() uses a
// watchdog thread internally).
#ifndef IRQBYPASS_AGENT_KVM_KVM_TEST_VCPU_H_
#define IRQBYPASS_AGENT_KVM_KVM_TEST_VCPU_H_

#include <linux/kvm.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/kvm/fd.h"
#include "agent/kvm/kvm_vm.h"

namespace irqbypass {
namespace agent {

// Whether PIC input `irq` (0..15) of `vm` is set in its PIC's IRR
// (KVM_GET_IRQCHIP).
absl::StatusOr<bool> PicIrr(const KvmVm& vm, uint32_t irq);
// Clears that bit (KVM_GET_IRQCHIP, KVM_SET_IRQCHIP).
absl::Status ClearPicIrr(const KvmVm& vm, uint32_t irq);

class TestVcpu {
 public:
  // The guest's I/O ports: "ready" once set up, "counted" after each
  // interrupt.
  static constexpr uint16_t kPortReady = 0x11;
  static constexpr uint16_t kPortCounted = 0x10;

  // Creates vCPU 0 on `vm` (whose fd stays owned by `vm`, which must outlive
  // this object) with 64 KiB of guest memory at address 0.
  static absl::StatusOr<std::unique_ptr<TestVcpu>> Create(const KvmVm& vm);
  ~TestVcpu();

  // KVM_GET_LAPIC, set SVR bit 8 (APIC software enable), KVM_SET_LAPIC.
  absl::Status EnableLapic();
  // Whether `vector`'s bit is set in the LAPIC's IRR.
  absl::StatusOr<bool> LapicIrr(uint8_t vector);
  // Clears `vector`'s IRR bit (so a test can look for the next one).
  absl::Status ClearLapicIrr(uint8_t vector);

  // Loads the counting guest for `vector` and its registers: it reports
  // ready (port kPortReady), enables interrupts and halts; each interrupt on
  // `vector` increments a 16-bit counter, EOIs the LAPIC and exits on port
  // kPortCounted. Enables the LAPIC.
  absl::Status StartInterruptCounter(uint8_t vector);

  // Runs the vCPU until it exits for port I/O (returns the port) or
  // `timeout` passes (DEADLINE_EXCEEDED; the vCPU stays usable). Other exits:
  // INTERNAL with the exit reason.
  absl::StatusOr<uint16_t> Run(absl::Duration timeout);

  // The guest's interrupt counter.
  uint16_t counter() const;

 private:
  TestVcpu(Fd kvm_dev, Fd vcpu, kvm_run* run, size_t run_size, void* memory);

  Fd kvm_dev_;
  Fd vcpu_;
  kvm_run* run_;
  size_t run_size_;
  void* memory_;
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_KVM_KVM_TEST_VCPU_H_
