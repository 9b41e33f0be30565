#include "agent/deviceplugin/vfio_inventory.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
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

bool ValidResourceName(absl::string_view name) {
  const size_t slash = name.find('/');
  if (slash == absl::string_view::npos || slash == 0 ||
      slash + 1 == name.size() || name.size() > 253) {
    return false;
  }
  for (char c : name) {
    if (!(absl::ascii_isalnum(c) || c == '.' || c == '-' || c == '_' ||
          c == '/')) {
      return false;
    }
  }
  return name.find('/', slash + 1) == absl::string_view::npos;
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

}  // namespace

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
                       "\" is not an extended resource name (DOMAIN/NAME, e.g. "
                       "irqbypass.io/vfio-net)"));
    }
    for (const ResourceSpec& seen : out) {
      if (seen.name == spec.name) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--device_plugin_resources: \"", spec.name, "\" given twice"));
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
    out.push_back(std::move(spec));
  }
  return out;
}

std::vector<VfioGroup> VfioInventory::Scan(const ResourceSpec& resource) const {
  const fs::path devices = fs::path(sysfs_) / "bus/pci/devices";
  std::map<std::string, VfioGroup> groups;  // by group number
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(devices, ec)) {
    const fs::path dir = entry.path();
    const uint32_t vendor = ReadHex(dir / "vendor");
    const uint32_t device = ReadHex(dir / "device");
    const bool match =
        std::any_of(resource.selectors.begin(), resource.selectors.end(),
                    [&](const PciSelector& s) {
                      return s.vendor == vendor && s.device == device;
                    });
    if (!match) continue;
    const std::string group = LinkName(dir / "iommu_group");
    if (group.empty()) continue;  // no IOMMU: VFIO cannot use it
    VfioGroup& g = groups[group];
    g.group = group;
    g.pci_addresses.push_back(dir.filename().string());
    int numa = -1;
    if (absl::SimpleAtoi(ReadTrimmed(dir / "numa_node"), &numa) && numa >= 0 &&
        g.numa_node < 0) {
      g.numa_node = numa;
    }
  }
  std::vector<VfioGroup> out;
  for (auto& [number, g] : groups) {
    std::sort(g.pci_addresses.begin(), g.pci_addresses.end());
    g.healthy = true;
    const std::set<std::string> matching(g.pci_addresses.begin(),
                                         g.pci_addresses.end());
    // Every function of the group, matching or not, decides viability.
    const fs::path members =
        fs::path(sysfs_) / "kernel/iommu_groups" / number / "devices";
    std::vector<std::string> all;
    for (const auto& m : fs::directory_iterator(members, ec)) {
      all.push_back(m.path().filename().string());
    }
    if (all.empty()) all = g.pci_addresses;
    std::sort(all.begin(), all.end());
    for (const std::string& addr : all) {
      const std::string driver = LinkName(devices / addr / "driver");
      const bool ok =
          matching.count(addr) > 0
              ? driver == "vfio-pci"
              : driver.empty() || driver == "vfio-pci" || driver == "pci-stub";
      if (!ok) {
        g.healthy = false;
        g.why_unhealthy =
            absl::StrCat(addr, " is bound to ",
                         driver.empty() ? std::string("no driver") : driver,
                         matching.count(addr) > 0
                             ? ", not vfio-pci"
                             : " (the IOMMU group is not viable for VFIO)");
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
