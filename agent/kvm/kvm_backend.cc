#include "agent/kvm/kvm_backend.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/errno_status.h"
#include "common/errno_name.h"
#include "common/log.h"

namespace irqbypass {
namespace agent {
namespace {

StepResult ToStepResult(const absl::Status& status) {
  if (status.ok()) return StepResult::Ok();
  return StepResult::Error(ErrnoOf(status), std::string(status.message()));
}

std::string Describe(const v1::Producer& p) {
  return absl::StrFormat("device \"%s\" %s vector %u", p.device(),
                         VfioIndexName(VfioIndexOf(p.index())), p.vector());
}

std::string Describe(const v1::Consumer& c) {
  return absl::StrFormat("vm \"%s\" gsi %u", c.vm(), c.gsi());
}

// Add steps share one shape: under the lock, check the token's side and the
// object's owner, then reserve both; run the ioctl without the lock; under
// the lock again, commit or roll back. These are the shared checks.

// The token's side before an add step: nullopt to go on; otherwise the
// step's result (the same object already wired: OK; anything else: EBUSY).
template <typename Side>
std::optional<StepResult> CheckSide(const std::optional<Side>& held,
                                    bool same_object, bool pending,
                                    const std::string& token, const char* step,
                                    const std::string& node) {
  if (held.has_value()) {
    if (same_object) return StepResult::Ok();  // already wired
    return StepResult::Error(
        EBUSY, absl::StrFormat("token \"%s\" already wired to %s on node %s",
                               token, Describe(*held), node));
  }
  if (pending) {
    return StepResult::Error(
        EBUSY,
        absl::StrFormat("token \"%s\": %s already in progress on node %s",
                        token, step, node));
  }
  return std::nullopt;
}

// nullopt when `key` is free or already this token's; otherwise EBUSY.
template <typename Map, typename Key, typename Object>
std::optional<StepResult> CheckOwner(const Map& owners, const Key& key,
                                     const std::string& token,
                                     const Object& object,
                                     const std::string& node) {
  auto it = owners.find(key);
  if (it == owners.end() || it->second == token) return std::nullopt;
  return StepResult::Error(
      EBUSY, absl::StrFormat("%s already bound to token \"%s\" on node %s",
                             Describe(object), it->second, node));
}

// Rolls back this token's reservation of `key` (no-op if another holds it).
template <typename Map, typename Key>
void ReleaseOwner(Map& owners, const Key& key, const std::string& token) {
  auto it = owners.find(key);
  if (it != owners.end() && it->second == token) owners.erase(it);
}

}  // namespace

absl::StatusOr<std::unique_ptr<KvmBackend>> KvmBackend::Create(
    KvmBackendOptions options) {
  Fd kvm_dev(::open(options.kvm_device.c_str(), O_RDWR | O_CLOEXEC));
  if (!kvm_dev.valid()) {
    return ErrnoError(errno, absl::StrCat("open ", options.kvm_device));
  }
  const int api = ::ioctl(kvm_dev.get(), KVM_GET_API_VERSION, 0);
  if (api != KVM_API_VERSION) {
    return ErrnoErrorWithMessage(
        api < 0 ? errno : EINVAL,
        absl::StrFormat("%s: KVM_GET_API_VERSION is %d, want %d",
                        options.kvm_device, api, KVM_API_VERSION));
  }
  return std::unique_ptr<KvmBackend>(
      new KvmBackend(std::move(options), std::move(kvm_dev)));
}

KvmBackend::KvmBackend(KvmBackendOptions options, Fd kvm_dev)
    : options_(std::move(options)), kvm_dev_(std::move(kvm_dev)) {}

KvmBackend::~KvmBackend() {
  // Deassign and release everything still wired, so a clean shutdown leaves
  // nothing behind in VMs and devices that outlive the agent.
  std::vector<std::string> vms = VmNames();
  std::vector<std::string> devices = DeviceAddresses();
  {
    MutexLock lock(&mu_);
    on_change_ = nullptr;
  }
  for (const std::string& name : vms) RemoveVm(name);
  for (const std::string& address : devices) RemoveDevice(address);
}

void KvmBackend::SetChangeCallback(std::function<void()> callback) {
  MutexLock lock(&mu_);
  on_change_ = std::move(callback);
}

void KvmBackend::NotifyChanged() {
  std::function<void()> callback;
  {
    MutexLock lock(&mu_);
    callback = on_change_;
  }
  if (callback) callback();
}

absl::StatusOr<KvmBackend::Wiring*> KvmBackend::WiringForAdd(
    const std::string& token) {
  Wiring& wiring = tokens_[token];
  if (wiring.eventfd == nullptr) {
    auto eventfd =
        std::make_shared<Fd>(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!eventfd->valid()) {
      const int err = errno;
      tokens_.erase(token);
      return ErrnoError(err, absl::StrCat("eventfd for token \"", token, "\""));
    }
    wiring.eventfd = std::move(eventfd);
  }
  return &wiring;
}

void KvmBackend::EraseIfEmpty(const std::string& token) {
  auto it = tokens_.find(token);
  if (it == tokens_.end()) return;
  const Wiring& w = it->second;
  if (!w.producer && !w.consumer && !w.producer_pending &&
      !w.consumer_pending) {
    tokens_.erase(it);  // closes the eventfd unless a VM or device holds it
  }
}

// ---- stop / start ----

void KvmBackend::SetMasked(absl::string_view token,
                           const v1::Producer& producer, bool masked) {
  std::shared_ptr<VfioIrqs> device = FindDevice(producer.device());
  if (device == nullptr) return;  // add_consumer will report ENOENT
  const uint32_t index = VfioIndexOf(producer.index());
  absl::StatusOr<VfioIrqInfo> info = device->GetIrqInfo(index);
  if (!info.ok() || !(info->flags & VFIO_IRQ_INFO_MASKABLE)) return;
  const absl::Status s =
      device->SetIrqs(masked ? VfioMask(index, producer.vector())
                             : VfioUnmask(index, producer.vector()));
  if (!s.ok()) {
    LogWarn(masked ? "stop producer: mask failed"
                   : "start producer: unmask "
                     "failed",
            {{"token", std::string(token)},
             {"node", options_.node},
             {"device", producer.device()},
             {"errno", ErrnoName(ErrnoOf(s))},
             {"error", std::string(s.message())}});
  }
}

void KvmBackend::StopProducer(absl::string_view token,
                              const v1::Producer& producer,
                              const v1::Consumer& consumer) {
  SetMasked(token, producer, true);
}

void KvmBackend::StartProducer(absl::string_view token,
                               const v1::Producer& producer,
                               const v1::Consumer& consumer) {
  SetMasked(token, producer, false);
}

// ---- add ----

StepResult KvmBackend::AddConsumer(absl::string_view token,
                                   const v1::Producer& producer,
                                   const v1::Consumer& consumer) {
  const std::string t(token);
  const uint32_t index = VfioIndexOf(producer.index());
  const VectorKey key(producer.device(), index, producer.vector());
  std::shared_ptr<VfioIrqs> device;
  std::shared_ptr<const Fd> eventfd;
  {
    MutexLock lock(&mu_);
    auto device_it = devices_.find(producer.device());
    if (device_it == devices_.end()) {
      return StepResult::Error(
          ENOENT, absl::StrFormat("device \"%s\" not held by agent on node %s",
                                  producer.device(), options_.node));
    }
    auto token_it = tokens_.find(t);
    if (token_it != tokens_.end()) {
      const Wiring& w = token_it->second;
      const bool same =
          w.producer.has_value() &&
          VectorKey(w.producer->device(), VfioIndexOf(w.producer->index()),
                    w.producer->vector()) == key &&
          w.device == device_it->second;
      if (auto done = CheckSide(w.producer, same, w.producer_pending, t,
                                "add_consumer", options_.node)) {
        return *done;
      }
    }
    auto owner_it = vector_owner_.find(key);
    if (owner_it != vector_owner_.end() && owner_it->second.empty()) {
      return StepResult::Error(
          EBUSY, absl::StrFormat("%s is being released on node %s (its VM "
                                 "went away); retry",
                                 Describe(producer), options_.node));
    }
    if (auto busy =
            CheckOwner(vector_owner_, key, t, producer, options_.node)) {
      return *busy;
    }
    absl::StatusOr<Wiring*> wiring = WiringForAdd(t);
    if (!wiring.ok()) return ToStepResult(wiring.status());
    (*wiring)->producer_pending = true;
    vector_owner_[key] = t;
    device = device_it->second;
    eventfd = (*wiring)->eventfd;
  }

  absl::Status s =
      device->SetIrqs(VfioTrigger(index, producer.vector(), eventfd->get()));

  bool device_gone = false;
  {
    MutexLock lock(&mu_);
    Wiring& w = tokens_[t];
    w.producer_pending = false;
    auto device_it = devices_.find(producer.device());
    if (s.ok() &&
        (device_it == devices_.end() || device_it->second != device)) {
      device_gone = true;
      s = ErrnoErrorWithMessage(
          ENOENT, absl::StrFormat("device \"%s\" released on node %s while "
                                  "being wired",
                                  producer.device(), options_.node));
    }
    if (s.ok()) {
      w.producer = producer;
      w.device = device;
      w.last_producer = producer;
      w.last_consumer = consumer;
    } else {
      ReleaseOwner(vector_owner_, key, t);
      EraseIfEmpty(t);
    }
  }
  if (device_gone) {
    (void)device->SetIrqs(VfioRelease(index, producer.vector()));
  }
  if (s.ok()) {
    LogInfo("vfio trigger set",
            {{"token", t},
             {"node", options_.node},
             {"device", producer.device()},
             {"index", VfioIndexName(index)},
             {"vector", std::to_string(producer.vector())},
             {"fake_device", device->fake() ? "true" : "false"}});
  }
  return ToStepResult(s);
}

StepResult KvmBackend::AddProducer(absl::string_view token,
                                   const v1::Producer& producer,
                                   const v1::Consumer& consumer) {
  const std::string t(token);
  const GsiKey key(consumer.vm(), consumer.gsi());
  std::shared_ptr<IrqfdTarget> vm;
  std::shared_ptr<const Fd> eventfd;
  {
    MutexLock lock(&mu_);
    auto vm_it = vms_.find(consumer.vm());
    if (vm_it == vms_.end()) {
      return StepResult::Error(
          ENOENT, absl::StrFormat("vm \"%s\" not held by agent on node %s",
                                  consumer.vm(), options_.node));
    }
    if (consumer.gsi() >= IrqfdTarget::kMaxGsi) {
      return StepResult::Error(
          EINVAL, absl::StrFormat("gsi %u out of range (max %u) for vm \"%s\"",
                                  consumer.gsi(), IrqfdTarget::kMaxGsi - 1,
                                  consumer.vm()));
    }
    auto token_it = tokens_.find(t);
    if (token_it != tokens_.end()) {
      const Wiring& w = token_it->second;
      const bool same = w.consumer.has_value() &&
                        GsiKey(w.consumer->vm(), w.consumer->gsi()) == key &&
                        w.vm == vm_it->second;
      if (auto done = CheckSide(w.consumer, same, w.consumer_pending, t,
                                "add_producer", options_.node)) {
        return *done;
      }
    }
    if (auto busy = CheckOwner(gsi_owner_, key, t, consumer, options_.node)) {
      return *busy;
    }
    absl::StatusOr<Wiring*> wiring = WiringForAdd(t);
    if (!wiring.ok()) return ToStepResult(wiring.status());
    (*wiring)->consumer_pending = true;
    gsi_owner_[key] = t;
    vm = vm_it->second;
    eventfd = (*wiring)->eventfd;
  }

  absl::Status s = vm->AssignIrqfd(eventfd, consumer.gsi());

  {
    MutexLock lock(&mu_);
    Wiring& w = tokens_[t];
    w.consumer_pending = false;
    auto vm_it = vms_.find(consumer.vm());
    if (s.ok() && (vm_it == vms_.end() || vm_it->second != vm)) {
      // Retired meanwhile; its Retire() deassigns what we just assigned.
      s = ErrnoErrorWithMessage(
          ENOENT, absl::StrFormat("vm \"%s\" released on node %s while being "
                                  "wired",
                                  consumer.vm(), options_.node));
    }
    if (s.ok()) {
      w.consumer = consumer;
      w.vm = vm;
      w.last_producer = producer;
      w.last_consumer = consumer;
    } else {
      ReleaseOwner(gsi_owner_, key, t);
      EraseIfEmpty(t);
    }
  }
  if (s.ok()) {
    LogInfo("irqfd assigned",
            {{"token", t},
             {"node", options_.node},
             {"vm", consumer.vm()},
             {"gsi", std::to_string(consumer.gsi())},
             {"eventfd", std::to_string(eventfd->get())},
             {"held_by", vm->held_by()},
             {"verified", "KVM_IRQFD accepted (wired; posted not known)"}});
  }
  return ToStepResult(s);
}

// ---- del ----

StepResult KvmBackend::DelProducer(absl::string_view token,
                                   const v1::Producer& producer,
                                   const v1::Consumer& consumer) {
  const std::string t(token);
  const GsiKey key(consumer.vm(), consumer.gsi());
  std::shared_ptr<IrqfdTarget> vm;
  std::shared_ptr<const Fd> eventfd;
  {
    MutexLock lock(&mu_);
    auto it = tokens_.find(t);
    // Like KVM_IRQFD deassign: only the (eventfd, gsi) actually assigned.
    if (it == tokens_.end() || !it->second.consumer.has_value() ||
        GsiKey(it->second.consumer->vm(), it->second.consumer->gsi()) != key) {
      return StepResult::Ok();
    }
    vm = it->second.vm;
    eventfd = it->second.eventfd;
  }
  const absl::Status s = vm->DeassignIrqfd(eventfd->get(), consumer.gsi());
  if (!s.ok()) return ToStepResult(s);  // still recorded: it may be held
  LogInfo("irqfd deassigned", {{"token", t},
                               {"node", options_.node},
                               {"vm", consumer.vm()},
                               {"gsi", std::to_string(consumer.gsi())}});
  MutexLock lock(&mu_);
  auto it = tokens_.find(t);
  if (it != tokens_.end() && it->second.vm == vm) {
    it->second.consumer.reset();
    it->second.vm.reset();
    ReleaseOwner(gsi_owner_, key, t);
    EraseIfEmpty(t);
  }
  return StepResult::Ok();
}

StepResult KvmBackend::DelConsumer(absl::string_view token,
                                   const v1::Producer& producer,
                                   const v1::Consumer& consumer) {
  const std::string t(token);
  const uint32_t index = VfioIndexOf(producer.index());
  const VectorKey key(producer.device(), index, producer.vector());
  std::shared_ptr<VfioIrqs> device;
  {
    MutexLock lock(&mu_);
    auto it = tokens_.find(t);
    if (it == tokens_.end() || !it->second.producer.has_value()) {
      return StepResult::Ok();
    }
    const v1::Producer& held = *it->second.producer;
    if (VectorKey(held.device(), VfioIndexOf(held.index()), held.vector()) !=
        key) {
      return StepResult::Ok();
    }
    device = it->second.device;
  }
  const absl::Status s = device->SetIrqs(VfioRelease(index, producer.vector()));
  if (!s.ok()) return ToStepResult(s);
  LogInfo("vfio trigger released",
          {{"token", t},
           {"node", options_.node},
           {"device", producer.device()},
           {"index", VfioIndexName(index)},
           {"vector", std::to_string(producer.vector())}});
  MutexLock lock(&mu_);
  auto it = tokens_.find(t);
  if (it != tokens_.end() && it->second.device == device) {
    it->second.producer.reset();
    it->second.device.reset();
    ReleaseOwner(vector_owner_, key, t);
    EraseIfEmpty(t);
  }
  return StepResult::Ok();
}

bool KvmBackend::MayBlock(const v1::Command& command) const {
  std::shared_ptr<IrqfdTarget> vm = FindIrqfdTarget(command.consumer().vm());
  return vm != nullptr && std::string_view(vm->held_by()) == "vmm";
}

std::vector<v1::WiredPair> KvmBackend::Inventory() const {
  std::vector<v1::WiredPair> pairs;
  MutexLock lock(&mu_);
  for (const auto& [token, wiring] : tokens_) {
    const bool producer = wiring.producer.has_value();
    const bool consumer = wiring.consumer.has_value();
    if (!producer && !consumer) continue;  // only an add in flight
    v1::WiredPair& pair = pairs.emplace_back();
    pair.set_token(token);
    // Half of a pair is left when a del step failed (e.g. a VMM did not
    // answer a deassign): report it so the manager disconnects it.
    pair.set_partial(!(producer && consumer));
    // The side still wired as it is; the other as last named with it.
    *pair.mutable_producer() =
        producer ? *wiring.producer : *wiring.last_producer;
    *pair.mutable_consumer() =
        consumer ? *wiring.consumer : *wiring.last_consumer;
  }
  return pairs;
}

// ---- VMs and devices ----

absl::Status KvmBackend::CreateVm(const std::string& name) {
  {
    MutexLock lock(&mu_);
    if (vms_.contains(name)) {
      return ErrnoErrorWithMessage(
          EEXIST, absl::StrFormat("vm \"%s\" already held", name));
    }
  }
  absl::StatusOr<std::unique_ptr<KvmVm>> vm = KvmVm::Create(kvm_dev_, name);
  if (!vm.ok()) return vm.status();
  AddVm(*std::move(vm));
  return absl::OkStatus();
}

void KvmBackend::AddVm(std::unique_ptr<IrqfdTarget> vm) {
  const std::string name = vm->name();
  const std::string held_by = vm->held_by();
  std::shared_ptr<IrqfdTarget> old;
  std::vector<Trigger> triggers;
  {
    MutexLock lock(&mu_);
    std::shared_ptr<IrqfdTarget>& slot = vms_[name];
    old = std::exchange(slot, std::shared_ptr<IrqfdTarget>(std::move(vm)));
    if (old != nullptr) triggers = DetachVmLocked(name, old);
  }
  LogInfo(old != nullptr ? "vm replaced" : "vm held",
          {{"node", options_.node}, {"vm", name}, {"held_by", held_by}});
  if (old != nullptr) TearDownVm(old, triggers);
  NotifyChanged();
}

bool KvmBackend::RemoveVm(const std::string& name) {
  std::shared_ptr<IrqfdTarget> vm;
  std::vector<Trigger> triggers;
  {
    MutexLock lock(&mu_);
    auto it = vms_.find(name);
    if (it == vms_.end()) return false;
    vm = std::move(it->second);
    vms_.erase(it);
    triggers = DetachVmLocked(name, vm);
  }
  TearDownVm(vm, triggers);
  NotifyChanged();
  return true;
}

std::vector<KvmBackend::Trigger> KvmBackend::DetachVmLocked(
    const std::string& name, const std::shared_ptr<IrqfdTarget>& vm) {
  std::vector<Trigger> triggers;
  std::vector<std::string> emptied;
  for (auto& [token, w] : tokens_) {
    if (w.vm != vm) continue;
    gsi_owner_.erase(GsiKey(name, w.consumer->gsi()));
    w.consumer.reset();
    w.vm.reset();
    // The pair cannot work without its VM: let go of the device side too,
    // so the token's eventfd closes. Reconciliation connects it again.
    if (w.producer.has_value() && w.device != nullptr) {
      const VectorKey key(w.producer->device(),
                          VfioIndexOf(w.producer->index()),
                          w.producer->vector());
      vector_owner_[key] = "";  // reserved until released (TearDownVm)
      triggers.push_back(Trigger{w.device, key});
      w.producer.reset();
      w.device.reset();
    }
    emptied.push_back(token);
  }
  for (const std::string& token : emptied) EraseIfEmpty(token);
  return triggers;
}

void KvmBackend::TearDownVm(const std::shared_ptr<IrqfdTarget>& vm,
                            const std::vector<Trigger>& triggers) {
  const absl::Time start = absl::Now();
  // Irqfds first, then the triggers: nothing fires into a half-torn pair.
  const int deassigned = vm->Retire();
  int released = 0;
  for (const Trigger& trigger : triggers) {
    const auto& [address, index, vector] = trigger.key;
    const absl::Status s = trigger.device->SetIrqs(VfioRelease(index, vector));
    if (s.ok()) {
      ++released;
      continue;
    }
    LogWarn("vfio trigger release failed while releasing vm",
            {{"node", options_.node},
             {"vm", vm->name()},
             {"device", address},
             {"errno", ErrnoName(ErrnoOf(s))},
             {"error", std::string(s.message())}});
  }
  {
    MutexLock lock(&mu_);
    for (const Trigger& trigger : triggers) {
      auto it = vector_owner_.find(trigger.key);
      if (it != vector_owner_.end() && it->second.empty()) {
        vector_owner_.erase(it);
      }
    }
  }
  LogInfo("vm released",
          {{"node", options_.node},
           {"vm", vm->name()},
           {"held_by", vm->held_by()},
           {"irqfds_deassigned", std::to_string(deassigned)},
           {"triggers_released", std::to_string(released)},
           {"duration", absl::FormatDuration(absl::Now() - start)}});
}

void KvmBackend::AddDevice(std::unique_ptr<VfioIrqs> device) {
  const std::string address = device->address();
  std::shared_ptr<VfioIrqs> old;
  std::vector<std::pair<uint32_t, uint32_t>> vectors;
  {
    MutexLock lock(&mu_);
    std::shared_ptr<VfioIrqs>& slot = devices_[address];
    old = std::exchange(slot, std::shared_ptr<VfioIrqs>(std::move(device)));
    if (old != nullptr) vectors = DetachDeviceLocked(address, old);
  }
  LogInfo(old != nullptr ? "device replaced" : "device held",
          {{"node", options_.node}, {"device", address}});
  if (old != nullptr) TearDownDevice(old, std::move(vectors));
  NotifyChanged();
}

bool KvmBackend::RemoveDevice(const std::string& address) {
  std::shared_ptr<VfioIrqs> device;
  std::vector<std::pair<uint32_t, uint32_t>> vectors;
  {
    MutexLock lock(&mu_);
    auto it = devices_.find(address);
    if (it == devices_.end()) return false;
    device = std::move(it->second);
    devices_.erase(it);
    vectors = DetachDeviceLocked(address, device);
  }
  TearDownDevice(device, std::move(vectors));
  NotifyChanged();
  return true;
}

std::vector<std::pair<uint32_t, uint32_t>> KvmBackend::DetachDeviceLocked(
    const std::string& address, const std::shared_ptr<VfioIrqs>& device) {
  std::vector<std::pair<uint32_t, uint32_t>> vectors;
  std::vector<std::string> emptied;
  for (auto& [token, w] : tokens_) {
    if (w.device != device) continue;
    const uint32_t index = VfioIndexOf(w.producer->index());
    vectors.emplace_back(index, w.producer->vector());
    vector_owner_.erase(VectorKey(address, index, w.producer->vector()));
    w.producer.reset();
    w.device.reset();
    emptied.push_back(token);
  }
  for (const std::string& token : emptied) EraseIfEmpty(token);
  return vectors;
}

void KvmBackend::TearDownDevice(
    const std::shared_ptr<VfioIrqs>& device,
    std::vector<std::pair<uint32_t, uint32_t>> vectors) {
  int released = 0;
  for (const auto& [index, vector] : vectors) {
    const absl::Status s = device->SetIrqs(VfioRelease(index, vector));
    if (s.ok()) {
      ++released;
      continue;
    }
    LogWarn("vfio trigger release failed while releasing device",
            {{"node", options_.node},
             {"device", device->address()},
             {"errno", ErrnoName(ErrnoOf(s))},
             {"error", std::string(s.message())}});
  }
  LogInfo("device released", {{"node", options_.node},
                              {"device", device->address()},
                              {"triggers_released", std::to_string(released)}});
}

std::shared_ptr<IrqfdTarget> KvmBackend::FindIrqfdTarget(
    const std::string& name) const {
  MutexLock lock(&mu_);
  auto it = vms_.find(name);
  return it == vms_.end() ? nullptr : it->second;
}

std::shared_ptr<KvmVm> KvmBackend::FindVm(const std::string& name) const {
  return std::dynamic_pointer_cast<KvmVm>(FindIrqfdTarget(name));
}

std::shared_ptr<VfioIrqs> KvmBackend::FindDevice(
    const std::string& address) const {
  MutexLock lock(&mu_);
  auto it = devices_.find(address);
  return it == devices_.end() ? nullptr : it->second;
}

std::shared_ptr<const Fd> KvmBackend::EventfdOf(absl::string_view token) const {
  MutexLock lock(&mu_);
  auto it = tokens_.find(std::string(token));
  return it == tokens_.end() ? nullptr : it->second.eventfd;
}

std::vector<std::string> KvmBackend::VmNames() const {
  MutexLock lock(&mu_);
  std::vector<std::string> names;
  for (const auto& [name, vm] : vms_) names.push_back(name);
  return names;
}

std::vector<std::string> KvmBackend::DeviceAddresses() const {
  MutexLock lock(&mu_);
  std::vector<std::string> addresses;
  for (const auto& [address, device] : devices_) addresses.push_back(address);
  return addresses;
}

}  // namespace agent
}  // namespace irqbypass
