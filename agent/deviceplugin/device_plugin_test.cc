// The device plugin against the fake kubelet, over real gRPC on unix
// sockets, with a fake sysfs and /dev tree.
#include "agent/deviceplugin/device_plugin.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/deviceplugin/pod_devices.h"
#include "agent/deviceplugin/testing/fake_host.h"
#include "agent/deviceplugin/testing/fake_kubelet.h"
#include "agent/deviceplugin/vfio_inventory.h"
#include "common/testing/eventually.h"
#include "gtest/gtest.h"

namespace irqbypass::agent {
namespace {

namespace fs = std::filesystem;
using testing::FakeHost;
using testing::FakeKubelet;

constexpr char kResource[] = "irqbypass.io/vfio-net";
constexpr absl::Duration kWait = absl::Seconds(10);

ResourceSpec NetResource() {
  auto specs = ParseResourceSpecs(std::string(kResource) + "=8086:154c");
  EXPECT_TRUE(specs.ok()) << specs.status();
  return (*specs)[0];
}

std::string HealthOf(const v1beta1::ListAndWatchResponse& list,
                     const std::string& id) {
  for (const auto& d : list.devices()) {
    if (d.id() == id) return d.health();
  }
  return "absent";
}

TEST(ResourceSpecsTest, ParsesAndNamesWhatIsWrong) {
  auto ok = ParseResourceSpecs(
      "irqbypass.io/vfio-net=8086:154c|8086:10ed,irqbypass.io/nvme=144d:a808");
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->size(), 2u);
  EXPECT_EQ((*ok)[0].name, "irqbypass.io/vfio-net");
  ASSERT_EQ((*ok)[0].selectors.size(), 2u);
  EXPECT_EQ((*ok)[0].selectors[1].vendor, 0x8086);
  EXPECT_EQ((*ok)[0].selectors[1].device, 0x10ed);
  EXPECT_EQ((*ok)[1].selectors[0].vendor, 0x144d);
  // "requests." + the domain must be a DNS subdomain (253 characters).
  const std::string long_domain =
      std::string(60, 'a') + "." + std::string(60, 'b') + "." +
      std::string(60, 'c') + "." + std::string(60, 'd') + ".io";
  ASSERT_EQ(long_domain.size(), 246u);  // 255 with "requests."
  EXPECT_FALSE(ParseResourceSpecs(long_domain + "/x=8086:154c").ok());
  EXPECT_TRUE(ParseResourceSpecs(long_domain.substr(4) + "/x=8086:154c").ok());
  for (const char* bad :
       {"novendor", "irqbypass.io/x=8086", "x=8086:154c",
        "irqbypass.io/x=zzzz:154c",
        "irqbypass.io/x=", "a.io/x=8086:154c,a.io/x=8086:10ed",
        "Irqbypass.io/x=8086:154c", "kubernetes.io/x=8086:154c",
        "a.k8s.io/x=8086:154c", "a.io/-x=8086:154c",
        "a.kubernetes.io/x=8086:154c", "requests.a.io/x=8086:154c",
        // one device in two resources; two names with one variable
        "a.io/x=8086:154c,a.io/y=8086:154c",
        "a.io/x-y=8086:154c,a.io/x_y=8086:10ed"}) {
    auto parsed = ParseResourceSpecs(bad);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
    EXPECT_NE(parsed.status().message().find("--device_plugin_resources"),
              std::string::npos);
  }
}

TEST(ResourceSpecsTest, EndpointsAndVariablesNeverCollide) {
  EXPECT_EQ(ResourceEndpoint("irqbypass.io/vfio-net"),
            "irqbypass-irqbypass.io_2fvfio-net.sock");
  EXPECT_NE(ResourceEndpoint("a.io/x_y"), ResourceEndpoint("a.io/x-y"));
  EXPECT_NE(ResourceEndpoint("a/b-c"), ResourceEndpoint("a-b/c"));
  EXPECT_EQ(ResourceEnvName("irqbypass.io/vfio-net"),
            "PCI_RESOURCE_IRQBYPASS_IO_VFIO_NET");
}

TEST(VfioInventoryTest, BridgesAllowed_OtherResourcesDevicesNot) {
  FakeHost host;
  // A root port (a bridge, on pcieport) shares group 50 with the NIC.
  host.AddFunction("0000:00:01.0", "8086:2030", "pcieport", "50");
  host.AddFunction("0000:3b:00.0", "8086:154c", "vfio-pci", "50", 1);
  // Group 51: the NIC and a device of another resource.
  host.AddFunction("0000:5e:00.0", "8086:154c", "vfio-pci", "51", 1);
  host.AddFunction("0000:5e:00.1", "144d:a808", "vfio-pci", "51", 1);
  VfioInventory inventory(host.sysfs(), host.dev());
  const std::vector<PciSelector> nvme = {{0x144d, 0xa808}};
  std::vector<VfioGroup> groups = inventory.Scan(NetResource(), nvme);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_TRUE(groups[0].healthy) << groups[0].why_unhealthy;
  EXPECT_FALSE(groups[1].healthy);
  EXPECT_NE(groups[1].why_unhealthy.find("another resource"), std::string::npos)
      << groups[1].why_unhealthy;
}

TEST(VfioInventoryTest, OneDevicePerGroup_ViabilityAndDevVfio) {
  FakeHost host;
  host.AddFunction("0000:3b:00.0", "8086:154c", "vfio-pci", "40", 0);
  host.AddFunction("0000:3b:00.1", "8086:154c", "vfio-pci", "40", 0);
  host.AddFunction("0000:5e:00.0", "8086:154c", "vfio-pci", "41", 1);
  // Group 42 holds a matching function and another bound to a host driver:
  // not viable for VFIO.
  host.AddFunction("0000:af:00.0", "8086:154c", "vfio-pci", "42", 1);
  host.AddFunction("0000:af:00.1", "8086:1572", "i40e", "42", 1);
  // Matching but bound to its host driver; and one without an IOMMU group.
  host.AddFunction("0000:d8:00.0", "8086:154c", "ixgbe", "43", 1);
  host.AddFunction("0000:d9:00.0", "8086:154c", "vfio-pci", "");
  // Not matching at all.
  host.AddFunction("0000:00:1f.0", "8086:a1c1", "lpc_ich", "7");

  VfioInventory inventory(host.sysfs(), host.dev());
  std::vector<VfioGroup> groups = inventory.Scan(NetResource());
  ASSERT_EQ(groups.size(), 4u);
  EXPECT_EQ(groups[0].group, "40");
  EXPECT_EQ(groups[0].pci_addresses,
            (std::vector<std::string>{"0000:3b:00.0", "0000:3b:00.1"}));
  EXPECT_TRUE(groups[0].healthy);
  EXPECT_EQ(groups[0].numa_node, 0);
  EXPECT_EQ(groups[1].group, "41");
  EXPECT_TRUE(groups[1].healthy);
  EXPECT_EQ(groups[1].numa_node, 1);
  EXPECT_EQ(groups[2].group, "42");
  EXPECT_FALSE(groups[2].healthy);
  EXPECT_NE(groups[2].why_unhealthy.find(
                "0000:af:00.1 is bound to i40e: the IOMMU group is not viable"),
            std::string::npos)
      << groups[2].why_unhealthy;
  EXPECT_EQ(groups[3].group, "43");
  EXPECT_FALSE(groups[3].healthy);
  EXPECT_NE(groups[3].why_unhealthy.find("not vfio-pci"), std::string::npos);

  host.RemoveDevVfio("41");
  groups = inventory.Scan(NetResource());
  EXPECT_FALSE(groups[1].healthy);
  EXPECT_NE(groups[1].why_unhealthy.find("/vfio/41 is missing"),
            std::string::npos);
}

class DevicePluginTest : public ::testing::Test {
 protected:
  void SetUp() override {
    host_.AddFunction("0000:3b:00.0", "8086:154c", "vfio-pci", "40", 0);
    host_.AddFunction("0000:3b:00.1", "8086:154c", "vfio-pci", "40", 0);
    host_.AddFunction("0000:5e:00.0", "8086:154c", "vfio-pci", "41", 1);
    host_.AddFunction("0000:5e:00.1", "8086:154c", "vfio-pci", "44", 1);
    kubelet_ = std::make_unique<FakeKubelet>(host_.kubelet());
  }

  std::unique_ptr<DevicePlugin> StartPlugin(
      absl::Duration poll = absl::Milliseconds(200)) {
    DevicePlugin::Options options;
    options.resource = NetResource();
    options.kubelet_dir = host_.kubelet();
    options.sysfs_root = host_.sysfs();
    options.dev_root = host_.dev();
    options.handoff_socket = "/run/irqbypass/handoff.sock";
    options.poll_interval = poll;
    auto plugin = DevicePlugin::Start(options);
    EXPECT_TRUE(plugin.ok()) << plugin.status();
    return plugin.ok() ? *std::move(plugin) : nullptr;
  }

  // `n` devices Healthy on a live ListAndWatch of a registration made after
  // `after`.
  bool ListedHealthy(int n, absl::Time after = absl::InfinitePast(),
                     absl::Duration timeout = kWait) {
    return kubelet_->WaitForDevices(
        kResource,
        [n](const v1beta1::ListAndWatchResponse& l) {
          int healthy = 0;
          for (const auto& d : l.devices()) healthy += d.health() == "Healthy";
          return healthy == n;
        },
        timeout, after);
  }

  FakeHost host_;
  std::unique_ptr<FakeKubelet> kubelet_;
};

TEST_F(DevicePluginTest, Registers_ListsGroupsWithNuma_Allocates) {
  kubelet_->Start();
  auto plugin = StartPlugin();
  ASSERT_NE(plugin, nullptr);
  ASSERT_TRUE(kubelet_->WaitRegistrations(kResource, 1, kWait));
  const v1beta1::RegisterRequest reg = kubelet_->Registrations()[0];
  EXPECT_EQ(reg.version(), "v1beta1");
  EXPECT_EQ(reg.resource_name(), kResource);
  EXPECT_EQ(reg.endpoint(), fs::path(plugin->socket_path()).filename());
  EXPECT_TRUE(reg.options().get_preferred_allocation_available());

  ASSERT_TRUE(ListedHealthy(3));
  EXPECT_TRUE(
      kubelet_->OptionsOf(kResource).get_preferred_allocation_available());
  const auto list = kubelet_->LatestDevices(kResource);
  ASSERT_EQ(list.devices_size(), 3);
  EXPECT_EQ(list.devices(0).id(), "40");
  ASSERT_EQ(list.devices(0).topology().nodes_size(), 1);
  EXPECT_EQ(list.devices(0).topology().nodes(0).id(), 0);
  ASSERT_EQ(list.devices(1).topology().nodes_size(), 1);
  EXPECT_EQ(list.devices(1).topology().nodes(0).id(), 1);

  EXPECT_EQ(plugin->LastAllocated("40"), absl::InfinitePast());
  const absl::Time before = absl::Now();
  auto alloc = kubelet_->Allocate(kResource, {{"40", "41"}});
  ASSERT_TRUE(alloc.ok()) << alloc.status();
  // (What keeps a release of the previous pod from taking it from this one.)
  EXPECT_GE(plugin->LastAllocated("40"), before);
  EXPECT_GE(plugin->LastAllocated("41"), before);
  EXPECT_EQ(plugin->LastAllocated("42"), absl::InfinitePast());
  ASSERT_EQ(alloc->container_responses_size(), 1);
  const auto& c = alloc->container_responses(0);
  std::set<std::string> paths;
  for (const auto& d : c.devices()) {
    EXPECT_EQ(d.permissions(), "rwm");
    // The host's /dev, not where this agent sees it (--dev_root).
    EXPECT_EQ(d.host_path(), d.container_path());
    paths.insert(d.container_path());
  }
  EXPECT_EQ(paths, (std::set<std::string>{"/dev/vfio/vfio", "/dev/vfio/40",
                                          "/dev/vfio/41"}));
  // The socket's folder (a restarted agent's new socket shows through).
  ASSERT_EQ(c.mounts_size(), 1);
  EXPECT_EQ(c.mounts(0).host_path(), "/run/irqbypass");
  EXPECT_EQ(c.mounts(0).container_path(), kContainerHandoffDir);
  EXPECT_FALSE(c.mounts(0).read_only());
  EXPECT_EQ(c.envs().at("IRQBYPASS_PCI_ADDRESSES"),
            "0000:3b:00.0,0000:3b:00.1,0000:5e:00.0");
  EXPECT_EQ(c.envs().at("PCI_RESOURCE_IRQBYPASS_IO_VFIO_NET"),
            "0000:3b:00.0,0000:3b:00.1,0000:5e:00.0");
  EXPECT_EQ(c.envs().at("IRQBYPASS_IOMMU_GROUPS"), "40,41");
  EXPECT_EQ(c.envs().at("IRQBYPASS_HANDOFF_SOCKET"),
            "/var/run/irqbypass/handoff.sock");

  auto unknown = kubelet_->Allocate(kResource, {{"40", "99"}});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("\"99\""), std::string::npos);
}

TEST_F(DevicePluginTest, Health_FollowsBindingAndDevVfio_NeverStuck) {
  kubelet_->Start();
  auto plugin = StartPlugin();
  ASSERT_TRUE(ListedHealthy(3));
  const auto unhealthy = [&](const std::string& id) {
    return kubelet_->WaitForDevices(
        kResource,
        [&](const v1beta1::ListAndWatchResponse& l) {
          return HealthOf(l, id) == "Unhealthy";
        },
        absl::Seconds(2));
  };
  const auto healthy = [&](const std::string& id) {
    return kubelet_->WaitForDevices(
        kResource,
        [&](const v1beta1::ListAndWatchResponse& l) {
          return HealthOf(l, id) == "Healthy";
        },
        absl::Seconds(2));
  };
  // Unbound from vfio-pci (to its host driver): Unhealthy within 2 s.
  host_.Bind("0000:3b:00.1", "i40e");
  EXPECT_TRUE(unhealthy("40"));
  auto refused = kubelet_->Allocate(kResource, {{"40"}});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("unhealthy"), std::string::npos);
  host_.Bind("0000:3b:00.1", "vfio-pci");
  EXPECT_TRUE(healthy("40"));
  // /dev/vfio/<group> gone and back.
  host_.RemoveDevVfio("41");
  EXPECT_TRUE(unhealthy("41"));
  host_.AddDevVfio("41");
  EXPECT_TRUE(healthy("41"));
  // The function vanishes from sysfs: still listed, Unhealthy; then back.
  fs::rename(host_.sysfs() + "/bus/pci/devices/0000:5e:00.1",
             host_.sysfs() + "/hidden");
  EXPECT_TRUE(unhealthy("44"));
  fs::rename(host_.sysfs() + "/hidden",
             host_.sysfs() + "/bus/pci/devices/0000:5e:00.1");
  EXPECT_TRUE(healthy("44"));
}

TEST_F(DevicePluginTest, KubeletRestarts_BothOrdersAndLate_RegistersAgain) {
  kubelet_->Start();
  auto plugin = StartPlugin();
  ASSERT_TRUE(kubelet_->WaitRegistrations(kResource, 1, kWait));
  ASSERT_TRUE(ListedHealthy(3));

  int expected = 1;
  struct Case {
    FakeKubelet::RestartOrder order;
    absl::Duration gap;
  };
  for (const Case& c : {Case{FakeKubelet::RestartOrder::kDeleteSocketsThenServe,
                             absl::ZeroDuration()},
                        Case{FakeKubelet::RestartOrder::kServeThenDeleteSockets,
                             absl::Milliseconds(300)},
                        Case{FakeKubelet::RestartOrder::kDeleteSocketsThenServe,
                             absl::Seconds(2)}}) {
    const absl::Time back = kubelet_->Restart(c.order, c.gap);
    // Within 5 s of the restart's end: registered again (after the late
    // deletion too), and the kubelet's new ListAndWatch is open and lists
    // every device.
    EXPECT_TRUE(ListedHealthy(3, back, absl::Seconds(5)))
        << "order " << static_cast<int>(c.order) << ", gap "
        << absl::FormatDuration(c.gap);
    ++expected;
  }
  // Settled: one registration per restart at least, and the plugin counts
  // its own.
  EXPECT_GE(plugin->registrations(), expected);
  EXPECT_TRUE(fs::exists(plugin->socket_path()));
}

TEST_F(DevicePluginTest, KubeletRestart_SeenAtOnceThroughInotify) {
  kubelet_->Start();
  // A poll too slow to see the restart within the wait below: only the
  // inotify watch on device-plugins/ can.
  auto plugin = StartPlugin(absl::Seconds(30));
  ASSERT_TRUE(ListedHealthy(3));
  const absl::Time back =
      kubelet_->Restart(FakeKubelet::RestartOrder::kDeleteSocketsThenServe);
  EXPECT_TRUE(ListedHealthy(3, back, absl::Seconds(3)));
}

TEST_F(DevicePluginTest, KubeletStartsAfterThePlugin_RegistersThen) {
  auto plugin = StartPlugin();
  ASSERT_NE(plugin, nullptr);
  absl::SleepFor(absl::Milliseconds(600));  // a few polls without a kubelet
  kubelet_->Start();
  EXPECT_TRUE(kubelet_->WaitRegistrations(kResource, 1, absl::Seconds(5)));
  EXPECT_TRUE(ListedHealthy(3));
}

TEST_F(DevicePluginTest, DroppedListAndWatch_PluginRegistersAgain) {
  kubelet_->Start();
  auto plugin = StartPlugin();
  ASSERT_TRUE(ListedHealthy(3));
  // The kubelet lost the stream but did not restart (its socket is the
  // same): it will not dial again by itself, so the plugin, seeing no
  // stream for 3 s, registers again.
  const absl::Time dropped = absl::Now();
  kubelet_->DropListAndWatch(kResource);
  EXPECT_TRUE(ListedHealthy(3, dropped, absl::Seconds(6)));
  // (It counts once Register has answered, maybe just after the new stream.)
  EXPECT_TRUE(irqbypass::testing::Eventually(
      [&] { return plugin->registrations() >= 2; }));
}

TEST_F(DevicePluginTest, SocketPathTooLong_RefusedNamingTheLimit) {
  DevicePlugin::Options options;
  options.resource = NetResource();
  options.kubelet_dir = "/var/lib/" + std::string(120, 'k');
  auto plugin = DevicePlugin::Start(options);
  EXPECT_EQ(plugin.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(plugin.status().message().find("unix socket path has at most"),
            std::string::npos)
      << plugin.status();
}

TEST_F(DevicePluginTest, PreferredAllocation_MustIncludeSizeAndOneNumaNode) {
  kubelet_->Start();
  auto plugin = StartPlugin();
  ASSERT_TRUE(ListedHealthy(3));
  // 40 is on NUMA 0; 41 and 44 on NUMA 1.
  auto p = kubelet_->Preferred(kResource, {"40", "41", "44"}, {"41"}, 2);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->container_responses_size(), 1);
  EXPECT_EQ(
      std::vector<std::string>(p->container_responses(0).deviceids().begin(),
                               p->container_responses(0).deviceids().end()),
      (std::vector<std::string>{"41", "44"}));
  // Nothing required: the node with the most available devices.
  p = kubelet_->Preferred(kResource, {"40", "41", "44"}, {}, 2);
  ASSERT_TRUE(p.ok());
  std::set<std::string> got(p->container_responses(0).deviceids().begin(),
                            p->container_responses(0).deviceids().end());
  EXPECT_EQ(got, (std::set<std::string>{"41", "44"}));
  // must_include beyond the size: refused, naming the field.
  p = kubelet_->Preferred(kResource, {"40", "41"}, {"40", "41"}, 1);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find("allocation_size"), std::string::npos);
}

// Which pod holds which device (pod-resources), and a pod going away.
class PodDevicesTest : public DevicePluginTest {
 protected:
  struct Release {
    std::string resource, device, pod;
  };
  std::unique_ptr<PodDevices> StartTracker() {
    PodDevices::Options options;
    options.kubelet_dir = host_.kubelet();
    options.resources = {kResource};
    options.interval = absl::Milliseconds(100);
    options.release_after = absl::Milliseconds(300);
    options.released = [this](const std::string& resource,
                              const std::string& device,
                              const PodDevices::Holder& was, absl::Time) {
      MutexLock lock(&mu_);
      released_.push_back(
          {resource, device, was.pod_namespace + "/" + was.pod_name});
    };
    return PodDevices::Start(options);
  }
  std::vector<Release> Released() {
    MutexLock lock(&mu_);
    return released_;
  }
  Mutex mu_;
  std::vector<Release> released_ ABSL_GUARDED_BY(mu_);
};

TEST_F(PodDevicesTest, HolderLearned_PodGone_ItsDevicesReleased) {
  kubelet_->Start();
  auto pods = StartTracker();
  ASSERT_TRUE(irqbypass::testing::Eventually([&] { return pods->synced(); }));
  kubelet_->SetPod("vms", "vm-1", "vmm", kResource, {"40", "41"});
  kubelet_->SetPod("vms", "other", "c", "example.com/other", {"40"});
  ASSERT_TRUE(irqbypass::testing::Eventually(
      [&] { return pods->HolderOf(kResource, "41").has_value(); }));
  EXPECT_EQ(pods->HolderOf(kResource, "40")->pod_name, "vm-1");
  EXPECT_EQ(pods->HolderOf(kResource, "40")->container, "vmm");
  EXPECT_FALSE(pods->HolderOf("example.com/other", "40").has_value());
  EXPECT_TRUE(Released().empty());

  kubelet_->RemovePod("vms", "vm-1");
  ASSERT_TRUE(
      irqbypass::testing::Eventually([&] { return Released().size() == 2; }));
  std::set<std::string> devices;
  for (const Release& r : Released()) {
    EXPECT_EQ(r.resource, kResource);
    EXPECT_EQ(r.pod, "vms/vm-1");
    devices.insert(r.device);
  }
  EXPECT_EQ(devices, (std::set<std::string>{"40", "41"}));
  EXPECT_FALSE(pods->HolderOf(kResource, "40").has_value());
}

TEST_F(PodDevicesTest, StopWhileAListHangs_CancelsIt_NothingReleased) {
  kubelet_->Start();
  kubelet_->HoldLists(true);
  PodDevices::Options options;
  options.kubelet_dir = host_.kubelet();
  options.resources = {kResource};
  options.list_timeout = absl::Minutes(5);
  int released = 0;
  options.released = [&released](const std::string&, const std::string&,
                                 const PodDevices::Holder&,
                                 absl::Time) { ++released; };
  auto pods = PodDevices::Start(options);
  ASSERT_TRUE(
      irqbypass::testing::Eventually([&] { return kubelet_->HeldLists(); }));
  const absl::Time stop = absl::Now();
  pods.reset();
  // Not the List's five minutes: the destructor cancelled it.
  EXPECT_LT(absl::Now() - stop, absl::Minutes(1));
  EXPECT_EQ(released, 0);
}

TEST_F(PodDevicesTest, AgentOrKubeletRestart_ReleasesNothing) {
  using irqbypass::testing::Eventually;
  // Pods running before the agent starts: learned, not released.
  kubelet_->Start();
  kubelet_->SetPod("vms", "vm-1", "vmm", kResource, {"44"});
  auto pods = StartTracker();
  ASSERT_TRUE(
      Eventually([&] { return pods->HolderOf(kResource, "44").has_value(); }));
  // The kubelet goes away (List fails), then comes back listing no pods
  // for a while (it is still filling in), then the pod: nothing is
  // released.
  kubelet_->Stop();
  const int failures = pods->failures();
  ASSERT_TRUE(Eventually([&] { return pods->failures() > failures; }));
  kubelet_->RemovePod("vms", "vm-1");
  kubelet_->Start();
  // Longer than release_after (300 ms here) without the pod.
  const int lists = pods->lists();
  ASSERT_TRUE(Eventually([&] { return pods->lists() > lists + 5; }));
  kubelet_->SetPod("vms", "vm-1", "vmm", kResource, {"44"});
  const int later = pods->lists();
  ASSERT_TRUE(Eventually([&] { return pods->lists() > later + 5; }));
  EXPECT_TRUE(Released().empty());
  EXPECT_EQ(pods->HolderOf(kResource, "44")->pod_name, "vm-1");
  // A kubelet restart between two polls (no List fails; the socket is
  // another): the first List after it only learns, too.
  kubelet_->RemovePod("vms", "vm-1");
  kubelet_->Restart(FakeKubelet::RestartOrder::kServeThenDeleteSockets);
  const int after_restart = pods->lists();
  ASSERT_TRUE(Eventually([&] { return pods->lists() > after_restart + 5; }));
  kubelet_->SetPod("vms", "vm-1", "vmm", kResource, {"44"});
  const int settled = pods->lists();
  ASSERT_TRUE(Eventually([&] { return pods->lists() > settled + 5; }));
  EXPECT_TRUE(Released().empty());
  // A new tracker (a restarted agent) learns the same holder.
  pods.reset();
  pods = StartTracker();
  ASSERT_TRUE(Eventually([&] { return pods->synced(); }));
  EXPECT_EQ(pods->HolderOf(kResource, "44")->pod_name, "vm-1");
  EXPECT_TRUE(Released().empty());
}

TEST_F(PodDevicesTest, DeviceMovesToAnotherPod_NotReleased) {
  using irqbypass::testing::Eventually;
  kubelet_->Start();
  auto pods = StartTracker();
  kubelet_->SetPod("vms", "vm-a", "vmm", kResource, {"40"});
  ASSERT_TRUE(Eventually([&] {
    auto h = pods->HolderOf(kResource, "40");
    return h.has_value() && h->pod_name == "vm-a";
  }));
  // Between two polls vm-a ends and vm-b gets the device: vm-b's VMM hands
  // it over itself, and nothing may tear that down.
  kubelet_->RemovePod("vms", "vm-a");
  kubelet_->SetPod("vms", "vm-b", "vmm", kResource, {"40"});
  ASSERT_TRUE(Eventually([&] {
    auto h = pods->HolderOf(kResource, "40");
    return h.has_value() && h->pod_name == "vm-b";
  }));
  const int lists = pods->lists();
  ASSERT_TRUE(Eventually([&] { return pods->lists() > lists + 5; }));
  EXPECT_TRUE(Released().empty());
}

}  // namespace
}  // namespace irqbypass::agent
