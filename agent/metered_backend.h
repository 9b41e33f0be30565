// MeteredBackend: wraps another Backend and records, for every step call,
// its latency and (for failing steps) its errno in AgentMetrics. The agent
// wraps whichever backend it runs (sim, kvm), so the kvm backend's ioctl
// latency is measured without instrumenting it. Thread-safe if the wrapped
// backend is.
#ifndef IRQBYPASS_AGENT_METERED_BACKEND_H_
#define IRQBYPASS_AGENT_METERED_BACKEND_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "agent/agent_metrics.h"
#include "agent/backend.h"

namespace irqbypass {
namespace agent {

class MeteredBackend final : public Backend {
 public:
  // `metrics` must outlive this backend.
  MeteredBackend(std::unique_ptr<Backend> inner, AgentMetrics& metrics)
      : inner_(std::move(inner)), metrics_(metrics) {}

  std::string Name() const override { return inner_->Name(); }
  void StopProducer(absl::string_view token, const v1::Producer& producer,
                    const v1::Consumer& consumer) override;
  void StopConsumer(absl::string_view token, const v1::Producer& producer,
                    const v1::Consumer& consumer) override;
  void StartConsumer(absl::string_view token, const v1::Producer& producer,
                     const v1::Consumer& consumer) override;
  void StartProducer(absl::string_view token, const v1::Producer& producer,
                     const v1::Consumer& consumer) override;
  StepResult AddConsumer(absl::string_view token, const v1::Producer& producer,
                         const v1::Consumer& consumer) override;
  StepResult AddProducer(absl::string_view token, const v1::Producer& producer,
                         const v1::Consumer& consumer) override;
  StepResult DelProducer(absl::string_view token, const v1::Producer& producer,
                         const v1::Consumer& consumer) override;
  StepResult DelConsumer(absl::string_view token, const v1::Producer& producer,
                         const v1::Consumer& consumer) override;
  bool MayBlock(const v1::Command& command) const override {
    return inner_->MayBlock(command);
  }
  std::vector<v1::WiredPair> Inventory() const override {
    return inner_->Inventory();
  }

 private:
  std::unique_ptr<Backend> inner_;
  AgentMetrics& metrics_;
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_METERED_BACKEND_H_
