#include "agent/metered_backend.h"

#include <chrono>
#include <type_traits>

namespace irqbypass {
namespace agent {
namespace {

// Runs `call` (returning StepResult or void) and records step, errno, time.
template <typename Call>
auto Timed(AgentMetrics& metrics, v1::StepKind step, Call call) {
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now() - start)
        .count();
  };
  if constexpr (std::is_void_v<decltype(call())>) {
    call();
    metrics.StepExecuted(step, 0, elapsed());
  } else {
    StepResult result = call();
    metrics.StepExecuted(step, result.errno_value(), elapsed());
    return result;
  }
}

}  // namespace

void MeteredBackend::StopProducer(absl::string_view token,
                                  const v1::Producer& producer,
                                  const v1::Consumer& consumer) {
  Timed(metrics_, v1::STOP_PRODUCER,
        [&] { inner_->StopProducer(token, producer, consumer); });
}

void MeteredBackend::StopConsumer(absl::string_view token,
                                  const v1::Producer& producer,
                                  const v1::Consumer& consumer) {
  Timed(metrics_, v1::STOP_CONSUMER,
        [&] { inner_->StopConsumer(token, producer, consumer); });
}

void MeteredBackend::StartConsumer(absl::string_view token,
                                   const v1::Producer& producer,
                                   const v1::Consumer& consumer) {
  Timed(metrics_, v1::START_CONSUMER,
        [&] { inner_->StartConsumer(token, producer, consumer); });
}

void MeteredBackend::StartProducer(absl::string_view token,
                                   const v1::Producer& producer,
                                   const v1::Consumer& consumer) {
  Timed(metrics_, v1::START_PRODUCER,
        [&] { inner_->StartProducer(token, producer, consumer); });
}

StepResult MeteredBackend::AddConsumer(absl::string_view token,
                                       const v1::Producer& producer,
                                       const v1::Consumer& consumer) {
  return Timed(metrics_, v1::ADD_CONSUMER,
               [&] { return inner_->AddConsumer(token, producer, consumer); });
}

StepResult MeteredBackend::AddProducer(absl::string_view token,
                                       const v1::Producer& producer,
                                       const v1::Consumer& consumer) {
  return Timed(metrics_, v1::ADD_PRODUCER,
               [&] { return inner_->AddProducer(token, producer, consumer); });
}

StepResult MeteredBackend::DelProducer(absl::string_view token,
                                       const v1::Producer& producer,
                                       const v1::Consumer& consumer) {
  return Timed(metrics_, v1::DEL_PRODUCER,
               [&] { return inner_->DelProducer(token, producer, consumer); });
}

StepResult MeteredBackend::DelConsumer(absl::string_view token,
                                       const v1::Producer& producer,
                                       const v1::Consumer& consumer) {
  return Timed(metrics_, v1::DEL_CONSUMER,
               [&] { return inner_->DelConsumer(token, producer, consumer); });
}

}  // namespace agent
}  // namespace irqbypass
