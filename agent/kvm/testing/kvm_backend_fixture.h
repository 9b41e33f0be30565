// Test support: a fixture with a real KvmBackend (node kTestNode) on
// /dev/kvm and one FakeVfioIrqs device (kFixtureDevice), for the kvm
// backend's tests and the handoff's. Skips where /dev/kvm cannot be opened
// (nowhere else), and checks at the end that the test left no fd open.
// Subclasses that own objects using the backend (a handoff server, a VMM)
// reset them in their TearDown before calling this one's.
#ifndef IRQBYPASS_AGENT_KVM_TESTING_KVM_BACKEND_FIXTURE_H_
#define IRQBYPASS_AGENT_KVM_TESTING_KVM_BACKEND_FIXTURE_H_

#include <atomic>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "agent/kvm/fd.h"
#include "agent/kvm/kvm_backend.h"
#include "agent/kvm/testing/open_kvm.h"
#include "agent/kvm/vfio_device.h"
#include "agent/test_fd_count.h"
#include "gtest/gtest.h"
#include "protocol/testing/records.h"

namespace irqbypass::agent::testing {

inline constexpr char kFixtureDevice[] = "0000:3b:00.1";

class KvmBackendFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    fds_before_ = OpenFdCount();
    absl::StatusOr<Fd> kvm = OpenKvmForTest();
    if (!kvm.ok()) {
      GTEST_SKIP() << kvm.status().message() << ": these tests need it";
    }
    kvm_ = *std::move(kvm);
    KvmBackendOptions options;
    options.node = std::string(::irqbypass::testing::kTestNode);
    auto backend = KvmBackend::Create(options);
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = *std::move(backend);
    auto device = std::make_unique<FakeVfioIrqs>(kFixtureDevice);
    device_ = device.get();
    backend_->AddDevice(std::move(device));
    backend_->SetChangeCallback([this] { ++changes_; });
  }
  void TearDown() override {
    backend_.reset();
    kvm_.reset();
    if (fds_before_ > 0) EXPECT_EQ(OpenFdCount(), fds_before_) << "fd leak";
  }

  // Connects `token` as the manager's CONNECT does: add_consumer, then
  // add_producer, undoing add_consumer if that fails.
  StepResult Connect(const std::string& token, const v1::Producer& p,
                     const v1::Consumer& c) {
    StepResult r = backend_->AddConsumer(token, p, c);
    if (!r.ok()) return r;
    r = backend_->AddProducer(token, p, c);
    if (!r.ok()) (void)backend_->DelConsumer(token, p, c);
    return r;
  }
  // As the manager's DISCONNECT: del_producer, then del_consumer.
  void Disconnect(const std::string& token, const v1::Producer& p,
                  const v1::Consumer& c) {
    ASSERT_TRUE(backend_->DelProducer(token, p, c).ok());
    ASSERT_TRUE(backend_->DelConsumer(token, p, c).ok());
  }
  // A second reference to the token's eventfd (invalid if it has none).
  Fd DupEventfd(const std::string& token) {
    std::shared_ptr<const Fd> eventfd = backend_->EventfdOf(token);
    return eventfd == nullptr ? Fd() : eventfd->Duplicate();
  }

  int fds_before_ = 0;
  Fd kvm_;  // /dev/kvm, for tests that create VMs of their own (a VMM's)
  std::unique_ptr<KvmBackend> backend_;
  FakeVfioIrqs* device_ = nullptr;  // owned by backend_
  std::atomic<int> changes_{0};     // calls of the backend's change callback
};

}  // namespace irqbypass::agent::testing

#endif  // IRQBYPASS_AGENT_KVM_TESTING_KVM_BACKEND_FIXTURE_H_
