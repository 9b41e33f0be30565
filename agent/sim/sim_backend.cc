#include "agent/sim/sim_backend.h"

#include <cerrno>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/errno_name.h"

namespace irqbypass {
namespace agent {
namespace {

v1::IrqIndex NormalizedIndex(v1::IrqIndex index) {
  // irqbypass.proto: IRQ_INDEX_UNSPECIFIED is treated as MSIX.
  return index == v1::IRQ_INDEX_UNSPECIFIED ? v1::IRQ_INDEX_MSIX : index;
}

std::string IndexName(v1::IrqIndex index) {
  switch (NormalizedIndex(index)) {
    case v1::IRQ_INDEX_INTX:
      return "intx";
    case v1::IRQ_INDEX_MSI:
      return "msi";
    case v1::IRQ_INDEX_MSIX:
      return "msix";
    default:
      return absl::StrCat("index", static_cast<int>(index));
  }
}

// `device "0000:3b:00.1" msix vector 3`
std::string Describe(const v1::Producer& p) {
  return absl::StrFormat("device \"%s\" %s vector %u", p.device(),
                         IndexName(p.index()), p.vector());
}

// `vm "vm-1" gsi 40`
std::string Describe(const v1::Consumer& c) {
  return absl::StrFormat("vm \"%s\" gsi %u", c.vm(), c.gsi());
}

}  // namespace

absl::string_view SimStepName(SimStep step) {
  switch (step) {
    case SimStep::kAddConsumer:
      return "add_consumer";
    case SimStep::kAddProducer:
      return "add_producer";
    case SimStep::kDelProducer:
      return "del_producer";
    case SimStep::kDelConsumer:
      return "del_consumer";
  }
  return "unknown";
}

absl::StatusOr<SimFault> ParseSimFault(absl::string_view spec) {
  const size_t colon = spec.find(':');
  if (colon == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", spec, "\": want STEP:ERRNO, e.g. add_producer:EIO"));
  }
  const absl::string_view step_name = spec.substr(0, colon);
  const absl::string_view errno_name = spec.substr(colon + 1);
  SimFault fault;
  bool known = false;
  for (SimStep step : {SimStep::kAddConsumer, SimStep::kAddProducer,
                       SimStep::kDelProducer, SimStep::kDelConsumer}) {
    if (step_name == SimStepName(step)) {
      fault.step = step;
      known = true;
    }
  }
  if (!known) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown step \"", step_name,
        "\" (want add_consumer, add_producer, del_producer or del_consumer)"));
  }
  fault.errno_value = ErrnoFromName(errno_name);
  if (fault.errno_value <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad errno \"", errno_name,
                     "\" (want a name such as EIO or a positive number)"));
  }
  return fault;
}

SimBackend::SimBackend(SimBackendOptions options)
    : options_(std::move(options)) {}

SimBackend::VectorKey SimBackend::KeyOf(const v1::Producer& producer) {
  return VectorKey(producer.device(),
                   static_cast<int>(NormalizedIndex(producer.index())),
                   producer.vector());
}

SimBackend::GsiKey SimBackend::KeyOf(const v1::Consumer& consumer) {
  return GsiKey(consumer.vm(), consumer.gsi());
}

std::optional<StepResult> SimBackend::Inject(
    SimStep step, const v1::Consumer& consumer) const {
  // Sleep without the lock: a slow host must not serialise Inventory().
  const bool add =
      step == SimStep::kAddConsumer || step == SimStep::kAddProducer;
  if (add && options_.add_step_delay > absl::ZeroDuration() &&
      (!options_.slow_vms.has_value() ||
       options_.slow_vms->contains(consumer.vm()))) {
    absl::SleepFor(options_.add_step_delay);
  }
  if (options_.fault.has_value() && options_.fault->step == step) {
    return StepResult::Error(
        options_.fault->errno_value,
        absl::StrCat("injected fault: ", SimStepName(step), " fails with ",
                     ErrnoName(options_.fault->errno_value), " on node ",
                     options_.node));
  }
  return std::nullopt;
}

bool SimBackend::DeviceHeldLocked(const std::string& address) const {
  if (removed_devices_.contains(address)) return false;
  return !options_.devices.has_value() || options_.devices->contains(address) ||
         added_devices_.contains(address);
}

bool SimBackend::RemoveDevice(const std::string& address) {
  MutexLock lock(&mu_);
  if (!DeviceHeldLocked(address)) return false;
  removed_devices_.insert(address);
  added_devices_.erase(address);
  std::vector<std::string> unwired;
  for (auto& [token, wiring] : tokens_) {
    if (wiring.producer.has_value() && wiring.producer->device() == address) {
      vector_owner_.erase(KeyOf(*wiring.producer));
      wiring.producer.reset();
      unwired.push_back(token);
    }
  }
  for (const std::string& token : unwired) EraseIfEmpty(token);
  return true;
}

bool SimBackend::AddDevice(const std::string& address) {
  MutexLock lock(&mu_);
  if (DeviceHeldLocked(address)) return false;
  removed_devices_.erase(address);
  if (options_.devices.has_value() && !options_.devices->contains(address)) {
    added_devices_.insert(address);
  }
  return true;
}

void SimBackend::EraseIfEmpty(const std::string& token) {
  auto it = tokens_.find(token);
  if (it != tokens_.end() && !it->second.producer.has_value() &&
      !it->second.consumer.has_value()) {
    tokens_.erase(it);
  }
}

StepResult SimBackend::AddConsumer(absl::string_view token,
                                   const v1::Producer& producer,
                                   const v1::Consumer& consumer) {
  if (auto injected = Inject(SimStep::kAddConsumer, consumer))
    return *std::move(injected);
  const VectorKey key = KeyOf(producer);
  const std::string token_str(token);

  MutexLock lock(&mu_);
  if (!DeviceHeldLocked(producer.device())) {
    return StepResult::Error(
        ENOENT, absl::StrFormat("device \"%s\" not held by agent on node %s",
                                producer.device(), options_.node));
  }
  auto token_it = tokens_.find(token_str);
  if (token_it != tokens_.end() && token_it->second.producer.has_value()) {
    const v1::Producer& held = *token_it->second.producer;
    if (KeyOf(held) == key) return StepResult::Ok();  // already wired
    return StepResult::Error(
        EBUSY, absl::StrFormat("token \"%s\" already wired to %s on node %s",
                               token_str, Describe(held), options_.node));
  }
  auto owner_it = vector_owner_.find(key);
  if (owner_it != vector_owner_.end()) {
    return StepResult::Error(
        EBUSY,
        absl::StrFormat("%s already bound to token \"%s\" on node %s",
                        Describe(producer), owner_it->second, options_.node));
  }
  vector_owner_.emplace(key, token_str);
  Wiring& wiring = tokens_[token_str];
  wiring.producer = producer;
  wiring.last_producer = producer;
  wiring.last_consumer = consumer;
  return StepResult::Ok();
}

StepResult SimBackend::AddProducer(absl::string_view token,
                                   const v1::Producer& producer,
                                   const v1::Consumer& consumer) {
  if (auto injected = Inject(SimStep::kAddProducer, consumer))
    return *std::move(injected);
  if (options_.vms.has_value() && !options_.vms->contains(consumer.vm())) {
    return StepResult::Error(
        ENOENT, absl::StrFormat("vm \"%s\" not held by agent on node %s",
                                consumer.vm(), options_.node));
  }
  if (consumer.gsi() >= kMaxGsi) {
    return StepResult::Error(
        EINVAL, absl::StrFormat("gsi %u out of range (max %u) for vm \"%s\"",
                                consumer.gsi(), kMaxGsi - 1, consumer.vm()));
  }
  const GsiKey key = KeyOf(consumer);
  const std::string token_str(token);

  MutexLock lock(&mu_);
  auto token_it = tokens_.find(token_str);
  if (token_it != tokens_.end() && token_it->second.consumer.has_value()) {
    const v1::Consumer& held = *token_it->second.consumer;
    if (KeyOf(held) == key) return StepResult::Ok();  // already wired
    return StepResult::Error(
        EBUSY, absl::StrFormat("token \"%s\" already wired to %s on node %s",
                               token_str, Describe(held), options_.node));
  }
  auto owner_it = gsi_owner_.find(key);
  if (owner_it != gsi_owner_.end()) {
    return StepResult::Error(
        EBUSY,
        absl::StrFormat("%s already bound to token \"%s\" on node %s",
                        Describe(consumer), owner_it->second, options_.node));
  }
  gsi_owner_.emplace(key, token_str);
  Wiring& wiring = tokens_[token_str];
  wiring.consumer = consumer;
  wiring.last_producer = producer;
  wiring.last_consumer = consumer;
  return StepResult::Ok();
}

StepResult SimBackend::DelProducer(absl::string_view token,
                                   const v1::Producer& producer,
                                   const v1::Consumer& consumer) {
  if (auto fault = Inject(SimStep::kDelProducer, consumer)) return *fault;
  const std::string token_str(token);
  MutexLock lock(&mu_);
  auto it = tokens_.find(token_str);
  // Like KVM_IRQFD deassign: only the (eventfd, gsi) actually assigned.
  if (it == tokens_.end() || !it->second.consumer.has_value() ||
      KeyOf(*it->second.consumer) != KeyOf(consumer)) {
    return StepResult::Ok();
  }
  gsi_owner_.erase(KeyOf(consumer));
  it->second.consumer.reset();
  EraseIfEmpty(token_str);
  return StepResult::Ok();
}

StepResult SimBackend::DelConsumer(absl::string_view token,
                                   const v1::Producer& producer,
                                   const v1::Consumer& consumer) {
  if (auto fault = Inject(SimStep::kDelConsumer, consumer)) return *fault;
  const std::string token_str(token);
  MutexLock lock(&mu_);
  auto it = tokens_.find(token_str);
  if (it == tokens_.end() || !it->second.producer.has_value() ||
      KeyOf(*it->second.producer) != KeyOf(producer)) {
    return StepResult::Ok();
  }
  vector_owner_.erase(KeyOf(producer));
  it->second.producer.reset();
  EraseIfEmpty(token_str);
  return StepResult::Ok();
}

std::vector<v1::WiredPair> SimBackend::Inventory() const {
  std::vector<v1::WiredPair> pairs;
  MutexLock lock(&mu_);
  for (const auto& [token, wiring] : tokens_) {
    const bool producer = wiring.producer.has_value();
    const bool consumer = wiring.consumer.has_value();
    if (!producer && !consumer) continue;
    v1::WiredPair& pair = pairs.emplace_back();
    pair.set_token(token);
    // As the kvm backend: half a pair (a del step failed) is reported as
    // partial, so the manager disconnects it.
    pair.set_partial(!(producer && consumer));
    *pair.mutable_producer() =
        producer ? *wiring.producer : wiring.last_producer;
    *pair.mutable_consumer() =
        consumer ? *wiring.consumer : wiring.last_consumer;
  }
  return pairs;
}

}  // namespace agent
}  // namespace irqbypass
