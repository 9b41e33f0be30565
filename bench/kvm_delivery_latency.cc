// KVM delivery latency: how long an interrupt takes from the token's eventfd
// being signalled to the guest's handler running, through the wiring the
// agent builds. The agent's kvm backend (KvmBackend) creates a VM with an
// in-kernel irqchip (KvmVm), holds a fake VFIO device (as the tests do: no
// device is bound to vfio-pci here), and connects one token as the manager
// would: add_consumer (the device vector's trigger) then add_producer
// (KVM_SET_GSI_ROUTING for the GSI, KVM_IRQFD). The guest is the tests'
// real-mode interrupt counter (agent/kvm_test_vcpu.h) on a vCPU thread in
// KVM_RUN; each interrupt on the routed vector increments a counter in guest
// memory, which this process has mmap'd.
//
// One sample: wait until the vCPU thread sleeps in KVM_RUN (the guest halted,
// past KVM's halt polling: the wake-from-idle path), take the time, write 1 to
// the token's eventfd (what vfio-pci's interrupt handler does), spin-read the
// guest's counter until it moves, take the time. Prints count, avg, p50, p99,
// p99.9, max and the interrupts delivered vs signalled; --json_out writes
// JSON. Exits 0 with "skipped" where /dev/kvm cannot be opened, no VM can be
// created on it, or KVM_RUN of the guest does not work; 1 if an interrupt is
// lost (not delivered within a second) or a step fails.
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "agent/kvm/fd.h"
#include "agent/kvm/kvm_backend.h"
#include "agent/kvm/kvm_test_vcpu.h"
#include "agent/kvm/kvm_vm.h"
#include "agent/kvm/vfio_device.h"
#include "bench/latency_stats.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

ABSL_FLAG(int, iterations, 10000, "Measured interrupts");
ABSL_FLAG(int, warmup, 1000, "Interrupts sent (and checked) before measuring");
ABSL_FLAG(std::string, json_out, "", "Write results as JSON to this file");

namespace irqbypass::bench {
namespace {

using Clock = std::chrono::steady_clock;
using agent::KvmBackend;
using agent::KvmVm;
using agent::TestVcpu;

constexpr char kNode[] = "bench";
constexpr char kVm[] = "bench-vm";
constexpr char kDevice[] = "0000:00:01.0";
constexpr char kToken[] = "bench-token";
constexpr uint32_t kMsixVector = 0;
constexpr uint32_t kGsi = 40;  // routed as an MSI (>= 24), vector 0x30
// How long one interrupt may take before it counts as lost.
constexpr absl::Duration kDeliveryTimeout = absl::Seconds(1);
// How long to wait for the vCPU thread to go to sleep in KVM_RUN before
// signalling anyway (counted as "signalled while not asleep").
constexpr absl::Duration kIdleTimeout = absl::Milliseconds(50);
// The vCPU thread's KVM_RUN timeout: how soon it notices the stop flag.
constexpr absl::Duration kRunTimeout = absl::Milliseconds(200);

int64_t NsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count();
}

// `text` as the inside of a JSON string.
std::string JsonEscape(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(static_cast<unsigned char>(c) < 0x20 ? ' ' : c);
  }
  return out;
}

int Skip(const std::string& reason) {
  std::printf("kvm_delivery_latency: skipped: %s\n", reason.c_str());
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream(json_out)
        << absl::StrFormat("{\"skipped\": \"%s\"}\n", JsonEscape(reason));
  }
  return 0;
}

// Runs the guest on its own thread: KVM_RUN until each interrupt's exit,
// counting those exits, until stopped.
class VcpuThread {
 public:
  explicit VcpuThread(TestVcpu& vcpu) : vcpu_(vcpu) {
    thread_ = std::thread([this] { Loop(); });
    while (tid_.load() == 0) std::this_thread::yield();
  }
  ~VcpuThread() {
    stop_ = true;
    thread_.join();
  }

  // Exits for port kPortCounted so far (one per interrupt the guest took).
  uint64_t counted_exits() const { return counted_exits_.load(); }
  // Set if KVM_RUN failed (the thread then stops).
  bool failed() const { return failed_.load(); }
  std::string error() const { return failed() ? error_ : std::string(); }
  pid_t tid() const { return tid_.load(); }

 private:
  void Loop() {
    tid_ = static_cast<pid_t>(::syscall(SYS_gettid));
    while (!stop_) {
      absl::StatusOr<uint16_t> port = vcpu_.Run(kRunTimeout);
      if (port.ok()) {
        if (*port == TestVcpu::kPortCounted) ++counted_exits_;
        continue;
      }
      if (port.status().code() == absl::StatusCode::kDeadlineExceeded) continue;
      error_ = port.status().ToString();
      failed_ = true;
      return;
    }
  }

  TestVcpu& vcpu_;
  std::thread thread_;
  std::atomic<pid_t> tid_{0};
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> counted_exits_{0};
  std::atomic<bool> failed_{false};
  std::string error_;  // written before failed_ is set
};

// Whether thread `tid` of this process is asleep ('S'), from
// /proc/self/task/<tid>/stat, kept open and re-read.
class ThreadState {
 public:
  explicit ThreadState(pid_t tid)
      : fd_(::open(absl::StrFormat("/proc/self/task/%d/stat", tid).c_str(),
                   O_RDONLY | O_CLOEXEC)) {}
  bool Sleeping() const {
    if (!fd_.valid()) return true;  // cannot tell: do not wait
    char buf[512];
    const ssize_t n = ::pread(fd_.get(), buf, sizeof(buf) - 1, 0);
    if (n <= 0) return true;
    buf[n] = '\0';
    const char* paren = std::strrchr(buf, ')');  // "pid (comm) S ..."
    return paren != nullptr && paren[1] == ' ' && paren[2] == 'S';
  }

 private:
  agent::Fd fd_;
};

struct Result {
  uint64_t signalled = 0;
  uint64_t delivered = 0;   // the guest's counter moved
  uint64_t lost = 0;        // not within kDeliveryTimeout
  uint64_t not_asleep = 0;  // signalled before the vCPU thread slept
  LatencySamples samples;
};

int Run() {
  const int iterations = absl::GetFlag(FLAGS_iterations);
  const int warmup = absl::GetFlag(FLAGS_warmup);
  if (iterations < 1 || warmup < 0) {
    std::fprintf(stderr, "--iterations must be >= 1 and --warmup >= 0\n");
    return 2;
  }

  agent::KvmBackendOptions options;
  options.node = kNode;
  absl::StatusOr<std::unique_ptr<KvmBackend>> created =
      KvmBackend::Create(options);
  if (!created.ok()) {
    return Skip(absl::StrFormat("/dev/kvm cannot be used here (%s)",
                                created.status().ToString()));
  }
  KvmBackend& backend = **created;
  if (absl::Status s = backend.CreateVm(kVm); !s.ok()) {
    return Skip(absl::StrFormat("/dev/kvm opens but creating a VM fails (%s)",
                                s.ToString()));
  }
  backend.AddDevice(std::make_unique<agent::FakeVfioIrqs>(kDevice));
  std::shared_ptr<KvmVm> vm = backend.FindVm(kVm);

  absl::StatusOr<std::unique_ptr<TestVcpu>> vcpu_or = TestVcpu::Create(*vm);
  if (!vcpu_or.ok()) {
    std::fprintf(stderr, "creating the vCPU: %s\n",
                 vcpu_or.status().ToString().c_str());
    return 1;
  }
  TestVcpu& vcpu = **vcpu_or;
  const uint8_t vector = KvmVm::MsiVectorForGsi(kGsi);
  if (absl::Status s = vcpu.StartInterruptCounter(vector); !s.ok()) {
    std::fprintf(stderr, "loading the guest: %s\n", s.ToString().c_str());
    return 1;
  }
  absl::StatusOr<uint16_t> port = vcpu.Run(absl::Seconds(5));
  if (!port.ok() || *port != TestVcpu::kPortReady) {
    return Skip(absl::StrFormat(
        "KVM_RUN of the real-mode guest does not work here (%s)",
        port.ok() ? absl::StrFormat("exit on port 0x%x", *port)
                  : port.status().ToString()));
  }

  // Wire the token as the manager's CONNECT does.
  v1::Producer producer;
  producer.set_node(kNode);
  producer.set_device(kDevice);
  producer.set_vector(kMsixVector);
  producer.set_index(v1::IRQ_INDEX_MSIX);
  v1::Consumer consumer;
  consumer.set_node(kNode);
  consumer.set_vm(kVm);
  consumer.set_gsi(kGsi);
  const auto consumer_added = backend.AddConsumer(kToken, producer, consumer);
  if (!consumer_added.ok()) {
    std::fprintf(stderr, "add_consumer: %s\n",
                 consumer_added.message().c_str());
    return 1;
  }
  const auto producer_added = backend.AddProducer(kToken, producer, consumer);
  if (!producer_added.ok()) {
    std::fprintf(stderr, "add_producer: %s\n",
                 producer_added.message().c_str());
    return 1;
  }
  std::shared_ptr<const agent::Fd> eventfd = backend.EventfdOf(kToken);

  Result warm;
  Result measured;
  measured.samples.Reserve(iterations);
  std::string vcpu_error;
  {
    VcpuThread vcpu_thread(vcpu);
    const ThreadState vcpu_state(vcpu_thread.tid());
    uint64_t delivered_total = 0;  // the guest's counter is 16 bits: unwrap
    for (int i = 0; i < warmup + iterations; ++i) {
      Result& result = i < warmup ? warm : measured;
      // Idle: the vCPU thread has handled every exit so far and is back in
      // KVM_RUN, asleep (the guest halted).
      const Clock::time_point idle_deadline =
          Clock::now() + absl::ToChronoNanoseconds(kIdleTimeout);
      bool asleep = false;
      while (Clock::now() < idle_deadline && !vcpu_thread.failed()) {
        if (vcpu_thread.counted_exits() >= delivered_total &&
            vcpu_state.Sleeping()) {
          asleep = true;
          break;
        }
      }
      if (vcpu_thread.failed()) break;
      if (!asleep) ++result.not_asleep;

      const uint16_t before = vcpu.counter();
      const uint64_t one = 1;
      const Clock::time_point t0 = Clock::now();
      if (::write(eventfd->get(), &one, sizeof(one)) != sizeof(one)) {
        std::fprintf(stderr, "write to the token's eventfd: %s\n",
                     std::strerror(errno));
        return 1;
      }
      ++result.signalled;
      const Clock::time_point deadline =
          t0 + absl::ToChronoNanoseconds(kDeliveryTimeout);
      uint16_t now_count = vcpu.counter();
      Clock::time_point t1 = Clock::now();
      while (now_count == before && t1 < deadline) {
        now_count = vcpu.counter();
        t1 = Clock::now();
      }
      if (now_count == before) {
        ++result.lost;
        continue;
      }
      const uint16_t moved = static_cast<uint16_t>(now_count - before);
      delivered_total += moved;
      result.delivered += moved;
      result.samples.Add(NsBetween(t0, t1));
    }
    vcpu_error = vcpu_thread.error();
  }  // stops the vCPU thread (within kRunTimeout)
  if (!vcpu_error.empty()) {
    std::fprintf(stderr, "KVM_RUN failed: %s\n", vcpu_error.c_str());
    return 1;
  }
  const auto producer_deleted = backend.DelProducer(kToken, producer, consumer);
  if (!producer_deleted.ok()) {
    std::fprintf(stderr, "del_producer: %s\n",
                 producer_deleted.message().c_str());
  }
  const auto consumer_deleted = backend.DelConsumer(kToken, producer, consumer);
  if (!consumer_deleted.ok()) {
    std::fprintf(stderr, "del_consumer: %s\n",
                 consumer_deleted.message().c_str());
  }

  const LatencySummary s = measured.samples.Summarise();
  utsname host;
  const std::string kernel = ::uname(&host) == 0 ? host.release : "?";
  std::printf(
      "kvm delivery latency: eventfd write -> guest interrupt handler "
      "(counter in guest memory); KvmBackend wiring (fake VFIO device, "
      "KVM_IRQFD on GSI %u -> MSI vector 0x%02x), guest halted and its vCPU "
      "thread asleep before each signal; kernel %s, %u cores\n",
      kGsi, vector, kernel.c_str(), std::thread::hardware_concurrency());
  std::printf("%10s %10s %10s %10s %10s %10s\n", "count", "avg", "p50", "p99",
              "p99.9", "max");
  std::printf("%10lu %10s %10s %10s %10s %10s\n",
              static_cast<unsigned long>(s.count), HumanNs(s.avg_ns).c_str(),
              HumanNs(s.p50_ns).c_str(), HumanNs(s.p99_ns).c_str(),
              HumanNs(s.p999_ns).c_str(), HumanNs(s.max_ns).c_str());
  std::printf(
      "interrupts: %lu signalled, %lu delivered, %lu lost (measured; warmup: "
      "%lu signalled, %lu delivered); %lu signalled before the vCPU thread "
      "was seen asleep\n",
      static_cast<unsigned long>(measured.signalled),
      static_cast<unsigned long>(measured.delivered),
      static_cast<unsigned long>(measured.lost),
      static_cast<unsigned long>(warm.signalled),
      static_cast<unsigned long>(warm.delivered),
      static_cast<unsigned long>(measured.not_asleep + warm.not_asleep));

  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream(json_out) << absl::StrFormat(
        "{\"iterations\": %d, \"warmup\": %d, \"gsi\": %u, \"vector\": %u, "
        "\"signalled\": %u, \"delivered\": %u, \"lost\": %u, "
        "\"not_asleep\": %u, \"latency\": %s}\n",
        iterations, warmup, kGsi, vector, measured.signalled,
        measured.delivered, measured.lost,
        measured.not_asleep + warm.not_asleep, SummaryJson(s));
  }
  return measured.lost == 0 && warm.lost == 0 ? 0 : 1;
}

}  // namespace
}  // namespace irqbypass::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return irqbypass::bench::Run();
}
