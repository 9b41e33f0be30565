#include "service/owners.h"

namespace irqbypass {

Owners& Owners::Get() {
  static Owners* owners = new Owners();
  return *owners;
}

uint16_t Owners::Intern(absl::string_view uri) {
  if (uri.empty()) return 0;
  MutexLock lock(&mu_);
  auto it = ids_.find(uri);
  if (it != ids_.end()) return it->second;
  if (names_.size() > kMaxOwners) return 0;
  const auto id = static_cast<uint16_t>(names_.size());
  names_.emplace_back(uri);
  ids_.emplace(std::string(uri), id);
  return id;
}

std::string Owners::Name(uint16_t id) const {
  MutexLock lock(&mu_);
  return id < names_.size() ? names_[id] : std::string();
}

size_t Owners::size() const {
  MutexLock lock(&mu_);
  return names_.size() - 1;
}

}  // namespace irqbypass
