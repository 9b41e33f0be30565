#include "agent/kvm/kvm_test_vcpu.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "agent/errno_status.h"

namespace irqbypass {
namespace agent {
namespace {

constexpr size_t kMemorySize = 0x10000;
constexpr uint32_t kCodeAddress = 0x1000;
constexpr uint32_t kHandlerAddress = 0x1010;
constexpr uint32_t kCounterAddress = 0x2000;
constexpr uint32_t kStackTop = 0x8000;
constexpr uint32_t kLapicSvr = 0xf0;
constexpr uint32_t kLapicIrr = 0x200;
constexpr uint64_t kLapicBase = 0xfee00000;

// Real-mode guest (16-bit code, CS=0):
//   0x1000: out 0x11, al      ; ready
//   0x1002: sti
//   0x1003: hlt
//   0x1004: jmp 0x1003
// The handler, at 0x1010 (IVT[vector] = 0000:1010):
//   inc word [0x2000]         ; the counter
//   mov word fs:[0xb0], 0     ; LAPIC EOI (FS base = 0xfee00000)
//   out 0x10, al              ; counted
//   iret
constexpr uint8_t kMainCode[] = {0xe6, 0x11, 0xfb, 0xf4, 0xeb, 0xfd};
constexpr uint8_t kHandlerCode[] = {0xff, 0x06, 0x00, 0x20,              //
                                    0x64, 0xc7, 0x06, 0xb0, 0x00, 0x00,  //
                                    0x00, 0xe6, 0x10, 0xcf};

void NoopSignalHandler(int) {}

uint32_t* LapicReg(kvm_lapic_state& lapic, uint32_t offset) {
  return reinterpret_cast<uint32_t*>(lapic.regs + offset);
}

}  // namespace

absl::StatusOr<std::unique_ptr<TestVcpu>> TestVcpu::Create(const KvmVm& vm) {
  Fd kvm_dev(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!kvm_dev.valid()) return ErrnoError(errno, "open /dev/kvm");
  const int run_size = ::ioctl(kvm_dev.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size <= 0) return ErrnoError(errno, "KVM_GET_VCPU_MMAP_SIZE");

  void* memory = ::mmap(nullptr, kMemorySize, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) return ErrnoError(errno, "mmap guest memory");
  kvm_userspace_memory_region region;
  std::memset(&region, 0, sizeof(region));
  region.slot = 0;
  region.guest_phys_addr = 0;
  region.memory_size = kMemorySize;
  region.userspace_addr = reinterpret_cast<uint64_t>(memory);
  if (::ioctl(vm.fd(), KVM_SET_USER_MEMORY_REGION, &region) != 0) {
    const int err = errno;
    ::munmap(memory, kMemorySize);
    return ErrnoError(err, "KVM_SET_USER_MEMORY_REGION");
  }
  Fd vcpu(::ioctl(vm.fd(), KVM_CREATE_VCPU, 0));
  if (!vcpu.valid()) {
    const int err = errno;
    ::munmap(memory, kMemorySize);
    return ErrnoError(err, "KVM_CREATE_VCPU");
  }
  void* run = ::mmap(nullptr, run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                     vcpu.get(), 0);
  if (run == MAP_FAILED) {
    const int err = errno;
    ::munmap(memory, kMemorySize);
    return ErrnoError(err, "mmap kvm_run");
  }
  return std::unique_ptr<TestVcpu>(
      new TestVcpu(std::move(kvm_dev), std::move(vcpu),
                   static_cast<kvm_run*>(run), run_size, memory));
}

TestVcpu::TestVcpu(Fd kvm_dev, Fd vcpu, kvm_run* run, size_t run_size,
                   void* memory)
    : kvm_dev_(std::move(kvm_dev)),
      vcpu_(std::move(vcpu)),
      run_(run),
      run_size_(run_size),
      memory_(memory) {}

TestVcpu::~TestVcpu() {
  ::munmap(run_, run_size_);
  ::munmap(memory_, kMemorySize);
}

absl::Status TestVcpu::EnableLapic() {
  kvm_lapic_state lapic;
  if (::ioctl(vcpu_.get(), KVM_GET_LAPIC, &lapic) != 0) {
    return ErrnoError(errno, "KVM_GET_LAPIC");
  }
  *LapicReg(lapic, kLapicSvr) |= 0x100;
  if (::ioctl(vcpu_.get(), KVM_SET_LAPIC, &lapic) != 0) {
    return ErrnoError(errno, "KVM_SET_LAPIC");
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> TestVcpu::LapicIrr(uint8_t vector) {
  kvm_lapic_state lapic;
  if (::ioctl(vcpu_.get(), KVM_GET_LAPIC, &lapic) != 0) {
    return ErrnoError(errno, "KVM_GET_LAPIC");
  }
  const uint32_t word = *LapicReg(lapic, kLapicIrr + (vector / 32) * 0x10);
  return ((word >> (vector % 32)) & 1) != 0;
}

absl::Status TestVcpu::ClearLapicIrr(uint8_t vector) {
  kvm_lapic_state lapic;
  if (::ioctl(vcpu_.get(), KVM_GET_LAPIC, &lapic) != 0) {
    return ErrnoError(errno, "KVM_GET_LAPIC");
  }
  *LapicReg(lapic, kLapicIrr + (vector / 32) * 0x10) &= ~(1u << (vector % 32));
  if (::ioctl(vcpu_.get(), KVM_SET_LAPIC, &lapic) != 0) {
    return ErrnoError(errno, "KVM_SET_LAPIC");
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> PicIrr(const KvmVm& vm, uint32_t irq) {
  kvm_irqchip chip;
  std::memset(&chip, 0, sizeof(chip));
  chip.chip_id = irq < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE;
  if (::ioctl(vm.fd(), KVM_GET_IRQCHIP, &chip) != 0) {
    return ErrnoError(errno, "KVM_GET_IRQCHIP");
  }
  return ((chip.chip.pic.irr >> (irq % 8)) & 1) != 0;
}

absl::Status ClearPicIrr(const KvmVm& vm, uint32_t irq) {
  kvm_irqchip chip;
  std::memset(&chip, 0, sizeof(chip));
  chip.chip_id = irq < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE;
  if (::ioctl(vm.fd(), KVM_GET_IRQCHIP, &chip) != 0) {
    return ErrnoError(errno, "KVM_GET_IRQCHIP");
  }
  chip.chip.pic.irr &= ~(1u << (irq % 8));
  if (::ioctl(vm.fd(), KVM_SET_IRQCHIP, &chip) != 0) {
    return ErrnoError(errno, "KVM_SET_IRQCHIP");
  }
  return absl::OkStatus();
}

absl::Status TestVcpu::StartInterruptCounter(uint8_t vector) {
  auto* mem = static_cast<uint8_t*>(memory_);
  std::memset(mem, 0, kMemorySize);
  std::memcpy(mem + kCodeAddress, kMainCode, sizeof(kMainCode));
  std::memcpy(mem + kHandlerAddress, kHandlerCode, sizeof(kHandlerCode));
  const uint16_t ivt_entry[2] = {static_cast<uint16_t>(kHandlerAddress), 0};
  std::memcpy(mem + vector * 4, ivt_entry, sizeof(ivt_entry));

  kvm_sregs sregs;
  if (::ioctl(vcpu_.get(), KVM_GET_SREGS, &sregs) != 0) {
    return ErrnoError(errno, "KVM_GET_SREGS");
  }
  for (kvm_segment* seg :
       {&sregs.cs, &sregs.ds, &sregs.es, &sregs.ss, &sregs.gs}) {
    seg->base = 0;
    seg->selector = 0;
  }
  sregs.fs = sregs.ds;
  sregs.fs.base = kLapicBase;  // "unreal" FS: reaches the LAPIC page
  if (::ioctl(vcpu_.get(), KVM_SET_SREGS, &sregs) != 0) {
    return ErrnoError(errno, "KVM_SET_SREGS");
  }
  kvm_regs regs;
  std::memset(&regs, 0, sizeof(regs));
  regs.rip = kCodeAddress;
  regs.rsp = kStackTop;
  regs.rflags = 0x2;
  if (::ioctl(vcpu_.get(), KVM_SET_REGS, &regs) != 0) {
    return ErrnoError(errno, "KVM_SET_REGS");
  }
  return EnableLapic();
}

absl::StatusOr<uint16_t> TestVcpu::Run(absl::Duration timeout) {
  // A watchdog kicks the vCPU out of KVM_RUN (EINTR) after `timeout`:
  // immediate_exit covers a kick that lands before KVM_RUN starts.
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_handler = NoopSignalHandler;  // no SA_RESTART: KVM_RUN -> EINTR
  ::sigaction(SIGUSR1, &action, nullptr);
  run_->immediate_exit = 0;
  const pthread_t self = ::pthread_self();
  absl::Notification done;
  std::atomic<bool> kicked{false};
  std::thread watchdog([&] {
    if (done.WaitForNotificationWithTimeout(timeout)) return;
    kicked = true;
    run_->immediate_exit = 1;
    ::pthread_kill(self, SIGUSR1);
  });
  int rc;
  do {
    rc = ::ioctl(vcpu_.get(), KVM_RUN, 0);
  } while (rc != 0 && errno == EINTR && !kicked);
  const int err = errno;
  done.Notify();
  watchdog.join();
  run_->immediate_exit = 0;
  if (rc != 0) {
    if (err == EINTR) {
      return absl::DeadlineExceededError(absl::StrCat(
          "vCPU did not exit within ", absl::FormatDuration(timeout)));
    }
    return ErrnoError(err, "KVM_RUN");
  }
  if (run_->exit_reason == KVM_EXIT_IO) return run_->io.port;
  return absl::InternalError(
      absl::StrCat("unexpected KVM exit reason ", run_->exit_reason));
}

uint16_t TestVcpu::counter() const {
  uint16_t value;
  std::memcpy(&value, static_cast<const uint8_t*>(memory_) + kCounterAddress,
              sizeof(value));
  return value;
}

}  // namespace agent
}  // namespace irqbypass
