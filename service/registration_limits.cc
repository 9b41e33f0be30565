#include "service/registration_limits.h"

#include "absl/strings/str_cat.h"

namespace irqbypass {

absl::Status RegistrationLimits::Reserve(uint16_t owner,
                                         const std::string& node) {
  MutexLock lock(&mu_);
  if (per_node_ > 0) {
    auto it = nodes_.find(node);
    if (it != nodes_.end() && it->second >= per_node_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "node \"", node, "\" has ", per_node_,
          " producers and consumers registered, the most a node may "
          "(--max_registrations_per_node); nothing was changed"));
    }
  }
  if (per_owner_ > 0 && owner != 0) {
    auto it = owners_.find(owner);
    if (it != owners_.end() && it->second >= per_owner_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "this caller has ", per_owner_,
          " producers and consumers registered, the most one identity may "
          "(--max_registrations_per_owner); nothing was changed"));
    }
  }
  AddLocked(owner, node);
  return absl::OkStatus();
}

void RegistrationLimits::AddLocked(uint16_t owner, const std::string& node) {
  ++nodes_[node];
  if (owner != 0) ++owners_[owner];
}

void RegistrationLimits::Release(uint16_t owner, const std::string& node) {
  MutexLock lock(&mu_);
  auto n = nodes_.find(node);
  if (n != nodes_.end() && --n->second == 0) nodes_.erase(n);
  if (owner != 0) {
    auto o = owners_.find(owner);
    if (o != owners_.end() && --o->second == 0) owners_.erase(o);
  }
}

void RegistrationLimits::Recount(const TokenIndex& index) {
  absl::flat_hash_map<std::string, size_t> nodes;
  absl::flat_hash_map<uint16_t, size_t> owners;
  index.ForEachCommitted([&](const std::string&, const BindingState& st) {
    if (st.producer) {
      ++nodes[st.producer->node];
      if (st.producer->owner != 0) ++owners[st.producer->owner];
    }
    if (st.consumer) {
      ++nodes[st.consumer->node];
      if (st.consumer->owner != 0) ++owners[st.consumer->owner];
    }
  });
  MutexLock lock(&mu_);
  nodes_ = std::move(nodes);
  owners_ = std::move(owners);
}

size_t RegistrationLimits::OfNode(const std::string& node) const {
  MutexLock lock(&mu_);
  auto it = nodes_.find(node);
  return it == nodes_.end() ? 0 : it->second;
}

size_t RegistrationLimits::OfOwner(uint16_t owner) const {
  MutexLock lock(&mu_);
  auto it = owners_.find(owner);
  return it == owners_.end() ? 0 : it->second;
}

}  // namespace irqbypass
