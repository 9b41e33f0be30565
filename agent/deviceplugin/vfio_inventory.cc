#include "agent/deviceplugin/vfio_inventory.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace irqbypass::agent {
namespace fs = std::filesystem;

namespace {

absl::StatusOr<PciSelector> ParseSelector(absl::string_view s) {
  std::vector<absl::string_view> parts = absl::StrSplit(s, ':');
  PciSelector sel;
  uint32_t vendor = 0, device = 0;
  if (parts.size() != 2 || parts[0].size() != 4 || parts[1].size() != 4 ||
      !absl::SimpleHexAtoi(parts[0], &vendor) ||
      !absl::SimpleHexAtoi(parts[1], &device)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--device_plugin_resources: \"", s,
                     "\" is not a PCI vendor:device pair (e.g. 8086:154c)"));
  }
  sel.vendor = static_cast<uint16_t>(vendor);
  sel.device = static_cast<uint16_t>(device);
  return sel;
}

// A DNS-1123 subdomain: lowercase alphanumerics, '-' and '.', alphanumeric
// at both ends of each label, at most 253 characters.
bool ValidDomain(absl::string_view domain) {
  if (domain.empty() || domain.size() > 253) return false;
  for (absl::string_view label : absl::StrSplit(domain, '.')) {
    if (label.empty() || label.size() > 63) return false;
    for (char c : label) {
      if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '-')) {
        return false;
      }
    }
    if (label.front() == '-' || label.back() == '-') return false;
  }
  return true;
}

// A qualified name's name part: at most 63 characters, alphanumeric at both
// ends, '-', '_' and '.' inside.
bool ValidNamePart(absl::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    if (!(absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.')) {
      return false;
    }
  }
  return absl::ascii_isalnum(name.front()) && absl::ascii_isalnum(name.back());
}

// As the kubelet's IsExtendedResourceName: DOMAIN/NAME, the domain not
// Kubernetes' own (nor k8s.io), not starting "requests." (the quota form),
// and short enough that "requests.DOMAIN" (the name a quota uses) is still
// a DNS subdomain.
bool ValidResourceName(absl::string_view name) {
  const size_t slash = name.find('/');
  if (slash == absl::string_view::npos) return false;
  const absl::string_view domain = name.substr(0, slash);
  if (absl::StrContains(name, "kubernetes.io/") || domain == "k8s.io" ||
      absl::EndsWith(domain, ".k8s.io") ||
      absl::StartsWith(name, "requests.")) {
    return false;
  }
  return ValidDomain(absl::StrCat("requests.", domain)) &&
         ValidNamePart(name.substr(slash + 1));
}

std::string ReadTrimmed(const fs::path& path) {
  std::ifstream in(path);
  std::string s((std::istreambuf_iterator<char>(in)),
                std::istreambuf_iterator<char>());
  return std::string(absl::StripAsciiWhitespace(s));
}

// The basename of the symlink's target; empty if it is not a symlink.
std::string LinkName(const fs::path& link) {
  std::error_code ec;
  fs::path target = fs::read_symlink(link, ec);
  return ec ? std::string() : target.filename().string();
}

uint32_t ReadHex(const fs::path& path) {
  std::string s = ReadTrimmed(path);
  absl::string_view v = s;
  absl::ConsumePrefix(&v, "0x");
  uint32_t out = 0;
  return absl::SimpleHexAtoi(v, &out) ? out : 0xffffffff;
}

// Whether the PCI function in `dir` matches one of `selectors`.
bool Matches(const std::vector<PciSelector>& selectors, const fs::path& dir) {
  if (selectors.empty()) return false;
  const uint32_t vendor = ReadHex(dir / "vendor");
  const uint32_t device = ReadHex(dir / "device");
  return std::any_of(selectors.begin(), selectors.end(),
                     [&](const PciSelector& s) {
                       return s.vendor == vendor && s.device == device;
                     });
}

// A PCI-to-PCI bridge (class 0x0604xx): the kernel lets VFIO have a group
// that holds one.
bool IsBridge(const fs::path& dir) {
  const uint32_t cls = ReadHex(dir / "class");
  return cls != 0xffffffff && (cls >> 8) == 0x0604;
}

}  // namespace

std::string ResourceEndpoint(absl::string_view resource) {
  std::string name = "irqbypass-";
  for (char c : resource) {
    if (absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '.' ||
        c == '-') {
      name.push_back(c);
    } else {
      absl::StrAppend(
          &name, "_",
          absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
    }
  }
  return name + ".sock";
}

std::string ResourceEnvName(absl::string_view resource) {
  std::string name = "PCI_RESOURCE_";
  for (char c : resource) {
    name.push_back(absl::ascii_isalnum(c) ? absl::ascii_toupper(c) : '_');
  }
  return name;
}

absl::StatusOr<std::vector<ResourceSpec>> ParseResourceSpecs(
    absl::string_view flag) {
  std::vector<ResourceSpec> out;
  for (absl::string_view part : absl::StrSplit(flag, ',', absl::SkipEmpty())) {
    const size_t eq = part.find('=');
    if (eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--device_plugin_resources: \"", part,
                       "\" is not NAME=VENDOR:DEVICE[|VENDOR:DEVICE...]"));
    }
    ResourceSpec spec;
    spec.name = std::string(part.substr(0, eq));
    if (!ValidResourceName(spec.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--device_plugin_resources: \"", spec.name,
                       "\" is not an extended resource name (DOMAIN/NAME: a "
                       "lowercase DNS domain other than Kubernetes' own, a "
                       "name of at most 63 characters; e.g. "
                       "irqbypass.io/vfio-net)"));
    }
    for (const ResourceSpec& seen : out) {
      if (seen.name == spec.name) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--device_plugin_resources: \"", spec.name, "\" given twice"));
      }
      if (ResourceEnvName(seen.name) == ResourceEnvName(spec.name)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--device_plugin_resources: \"", seen.name, "\" and \"", spec.name,
            "\" would share the variable ", ResourceEnvName(spec.name)));
      }
    }
    for (absl::string_view sel :
         absl::StrSplit(part.substr(eq + 1), '|', absl::SkipEmpty())) {
      absl::StatusOr<PciSelector> parsed = ParseSelector(sel);
      if (!parsed.ok()) return parsed.status();
      spec.selectors.push_back(*parsed);
    }
    if (spec.selectors.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--device_plugin_resources: \"", spec.name, "\" has no selector"));
    }
    for (const PciSelector& sel : spec.selectors) {
      for (const ResourceSpec& seen : out) {
        for (const PciSelector& other : seen.selectors) {
          if (other.vendor == sel.vendor && other.device == sel.device) {
            return absl::InvalidArgumentError(
                absl::StrCat("--device_plugin_resources: ",
                             absl::Hex(sel.vendor, absl::kZeroPad4), ":",
                             absl::Hex(sel.device, absl::kZeroPad4),
                             " is in both \"", seen.name, "\" and \"",
                             spec.name, "\" (a device must be offered once)"));
          }
        }
      }
    }
    out.push_back(std::move(spec));
  }
  return out;
}

std::vector<VfioGroup> VfioInventory::Scan(
    const ResourceSpec& resource,
    const std::vector<PciSelector>& others) const {
  const fs::path devices = fs::path(sysfs_) / "bus/pci/devices";
  std::map<std::string, VfioGroup> groups;  // by group number
  std::error_code ec;
  for (fs::directory_iterator it(devices, ec), end; !ec && it != end;
       it.increment(ec)) {
    const fs::path dir = it->path();
    if (!Matches(resource.selectors, dir)) continue;
    const std::string group = LinkName(dir / "iommu_group");
    if (group.empty()) continue;  // no IOMMU: VFIO cannot use it
    VfioGroup& g = groups[group];
    g.group = group;
    g.pci_addresses.push_back(dir.filename().string());
    int numa = -1;
    if (absl::SimpleAtoi(ReadTrimmed(dir / "numa_node"), &numa) && numa >= 0 &&
        (g.numa_node < 0 || numa < g.numa_node)) {
      g.numa_node = numa;  // the lowest, whatever the listing order
    }
  }
  std::vector<VfioGroup> out;
  for (auto& [number, g] : groups) {
    std::sort(g.pci_addresses.begin(), g.pci_addresses.end());
    g.healthy = true;
    const std::set<std::string> matching(g.pci_addresses.begin(),
                                         g.pci_addresses.end());
    // Every member of the group, matching or not, decides viability.
    const fs::path members =
        fs::path(sysfs_) / "kernel/iommu_groups" / number / "devices";
    std::vector<fs::path> all;
    for (fs::directory_iterator it(members, ec), end; !ec && it != end;
         it.increment(ec)) {
      all.push_back(it->path());
    }
    ec.clear();
    if (all.empty()) {
      for (const std::string& addr : g.pci_addresses) {
        all.push_back(devices / addr);
      }
    }
    std::sort(all.begin(), all.end());
    for (const fs::path& member : all) {
      const std::string addr = member.filename().string();
      // Through the group's own link, so non-PCI members count too.
      const std::string driver = LinkName(member / "driver");
      const bool vfio =
          driver == "vfio-pci" || absl::EndsWith(driver, "_vfio_pci");
      const bool mine = matching.count(addr) > 0;
      std::string problem;
      if (mine) {
        if (!vfio) problem = "not vfio-pci";
      } else if (Matches(others, member)) {
        problem = "a device of another resource shares the IOMMU group";
      } else if (!(driver.empty() || vfio || driver == "pci-stub" ||
                   driver == "pcieport" || IsBridge(member))) {
        problem = "the IOMMU group is not viable for VFIO";
      }
      if (!problem.empty()) {
        g.healthy = false;
        g.why_unhealthy = absl::StrCat(
            addr, " is bound to ",
            driver.empty() ? std::string("no driver") : driver, ": ", problem);
        break;
      }
    }
    if (g.healthy && !fs::exists(fs::path(dev_) / "vfio" / number, ec)) {
      g.healthy = false;
      g.why_unhealthy = absl::StrCat(dev_, "/vfio/", number, " is missing");
    }
    out.push_back(std::move(g));
  }
  std::sort(out.begin(), out.end(), [](const VfioGroup& a, const VfioGroup& b) {
    int x = 0, y = 0;
    if (absl::SimpleAtoi(a.group, &x) && absl::SimpleAtoi(b.group, &y)) {
      return x < y;
    }
    return a.group < b.group;
  });
  return out;
}

}  // namespace irqbypass::agent
