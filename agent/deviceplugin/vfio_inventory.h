// VfioInventory: the VFIO devices a node can offer, read from sysfs. One
// offered device is one IOMMU group (VFIO hands out groups, not functions):
// a group is offered for a resource when one of its PCI functions matches
// one of the resource's vendor:device selectors, and it is healthy when
// every matching function is bound to vfio-pci (or a vfio-pci variant
// driver, *_vfio_pci), every other member of the group is bound to one of
// those, to pci-stub or to no driver, or is a PCI bridge (class 0x0604, or
// bound to pcieport): the group is then viable for VFIO; and
// /dev/vfio/<group> exists.
//
// The sysfs and /dev roots are parameters so tests use a fake tree:
//   <sysfs>/bus/pci/devices/<addr>/{vendor,device,numa_node}
//   <sysfs>/bus/pci/devices/<addr>/driver -> .../drivers/<name>
//   <sysfs>/bus/pci/devices/<addr>/iommu_group -> .../iommu_groups/<n>
//   <sysfs>/bus/pci/devices/<addr>/class (0x060400: a bridge)
//   <sysfs>/kernel/iommu_groups/<n>/devices/<addr> -> the device
//   <dev>/vfio/vfio, <dev>/vfio/<n>
// Thread-compatible (no state besides the roots).
#ifndef IRQBYPASS_AGENT_DEVICEPLUGIN_VFIO_INVENTORY_H_
#define IRQBYPASS_AGENT_DEVICEPLUGIN_VFIO_INVENTORY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace irqbypass::agent {

struct PciSelector {
  uint16_t vendor = 0;
  uint16_t device = 0;
};

// One extended resource the plugin offers, e.g. irqbypass.io/vfio-net with
// the selectors 8086:154c and 8086:10ed.
struct ResourceSpec {
  std::string name;
  std::vector<PciSelector> selectors;
};

// --device_plugin_resources: "NAME=VVVV:DDDD[|VVVV:DDDD...][,NAME=...]",
// e.g. "irqbypass.io/vfio-net=8086:154c|8086:10ed,irqbypass.io/nvme=144d:a808".
// NAME is an extended resource name as the kubelet accepts it (a DNS
// subdomain outside kubernetes.io and k8s.io, "/", a name of at most 63
// characters); each at most once, and no vendor:device pair in two
// resources (one device must never be offered twice). INVALID_ARGUMENT
// naming the part that is wrong.
absl::StatusOr<std::vector<ResourceSpec>> ParseResourceSpecs(
    absl::string_view flag);

// The plugin's socket file name for `resource`: "irqbypass-" and the name
// with every character but [a-z0-9.-] escaped as _XX (so two names never
// share a socket), ".sock".
std::string ResourceEndpoint(absl::string_view resource);
// The environment variable Allocate names the PCI addresses in:
// PCI_RESOURCE_ and the name upper-cased, every other character "_".
std::string ResourceEnvName(absl::string_view resource);

struct VfioGroup {
  std::string group;                       // the IOMMU group number
  std::vector<std::string> pci_addresses;  // the matching functions, sorted
  int numa_node = -1;                      // -1: unknown
  bool healthy = false;
  std::string why_unhealthy;  // for the log, when not healthy
};

class VfioInventory {
 public:
  VfioInventory(std::string sysfs_root, std::string dev_root)
      : sysfs_(std::move(sysfs_root)), dev_(std::move(dev_root)) {}

  // Groups offered for `resource`, sorted by group number. A group that
  // also holds a function matching one of `others` (the other resources'
  // selectors) is Unhealthy: it must not be offered under two names.
  std::vector<VfioGroup> Scan(
      const ResourceSpec& resource,
      const std::vector<PciSelector>& others = {}) const;

 private:
  const std::string sysfs_;
  const std::string dev_;
};

}  // namespace irqbypass::agent

#endif  // IRQBYPASS_AGENT_DEVICEPLUGIN_VFIO_INVENTORY_H_
