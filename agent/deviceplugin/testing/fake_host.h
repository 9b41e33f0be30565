// FakeHost: a fake sysfs and /dev tree (PCI functions, their drivers and
// IOMMU groups, /dev/vfio) under one temporary folder, for the device
// plugin's tests. Removed with the object. Not thread-safe.
#ifndef IRQBYPASS_AGENT_DEVICEPLUGIN_TESTING_FAKE_HOST_H_
#define IRQBYPASS_AGENT_DEVICEPLUGIN_TESTING_FAKE_HOST_H_

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace irqbypass::agent::testing {

// A fake sysfs and /dev under one temporary folder.
class FakeHost {
 public:
  FakeHost() {
    // Under /tmp, not TEST_TMPDIR: the plugin sockets' paths must fit a
    // sockaddr_un (108 bytes).
    char tmpl[] = "/tmp/irqbypass-dp.XXXXXX";
    root_ = mkdtemp(tmpl);
    std::filesystem::create_directories(sysfs() + "/bus/pci/devices");
    std::filesystem::create_directories(sysfs() + "/bus/pci/drivers");
    std::filesystem::create_directories(dev() + "/vfio");
    std::ofstream(dev() + "/vfio/vfio") << "";
  }
  ~FakeHost() { std::filesystem::remove_all(root_); }

  std::string sysfs() const { return root_ + "/sys"; }
  std::string dev() const { return root_ + "/dev"; }
  std::string kubelet() const { return root_ + "/kubelet"; }

  // A PCI function; `driver` empty: none; `group` empty: no IOMMU.
  void AddFunction(const std::string& addr, const std::string& vendor_device,
                   const std::string& driver, const std::string& group,
                   int numa = -1) {
    const std::string d = sysfs() + "/bus/pci/devices/" + addr;
    std::filesystem::create_directories(d);
    std::ofstream(d + "/vendor") << "0x" << vendor_device.substr(0, 4) << "\n";
    std::ofstream(d + "/device") << "0x" << vendor_device.substr(5, 4) << "\n";
    std::ofstream(d + "/numa_node") << numa << "\n";
    Bind(addr, driver);
    if (!group.empty()) {
      const std::string g = sysfs() + "/kernel/iommu_groups/" + group;
      std::filesystem::create_directories(g + "/devices");
      std::filesystem::create_symlink("../../../../bus/pci/devices/" + addr,
                                      g + "/devices/" + addr);
      std::filesystem::create_symlink("../../../kernel/iommu_groups/" + group,
                                      d + "/iommu_group");
      std::ofstream(dev() + "/vfio/" + group) << "";
    }
  }
  // Binds `addr` to `driver` (empty: unbinds).
  void Bind(const std::string& addr, const std::string& driver) {
    const std::string link = sysfs() + "/bus/pci/devices/" + addr + "/driver";
    std::filesystem::remove(link);
    if (driver.empty()) return;
    std::filesystem::create_directories(sysfs() + "/bus/pci/drivers/" + driver);
    std::filesystem::create_symlink("../../../bus/pci/drivers/" + driver, link);
  }
  void RemoveDevVfio(const std::string& group) {
    std::filesystem::remove(dev() + "/vfio/" + group);
  }
  void AddDevVfio(const std::string& group) {
    std::ofstream(dev() + "/vfio/" + group) << "";
  }

 private:
  std::string root_;
};

}  // namespace irqbypass::agent::testing

#endif  // IRQBYPASS_AGENT_DEVICEPLUGIN_TESTING_FAKE_HOST_H_
