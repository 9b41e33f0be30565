// The real irqbypass-agent as a device plugin, against the fake kubelet and
// a fake sysfs tree: it registers, lists and allocates; it registers again
// after a kubelet restart and counts it on /metrics; on SIGTERM its socket
// goes, and a restarted agent registers again.
// The whole path, with irqbypassd: a pod is allocated a device; its VMM
// serves its VM through the handoff socket the allocation mounts (kvm); an
// orchestrator registers the pair for the allocated PCI address; it is
// wired; the pod goes and the pair is unwired (sim and kvm).
#include <signal.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

#include "agent/deviceplugin/testing/fake_host.h"
#include "agent/deviceplugin/testing/fake_kubelet.h"
#include "agent/kvm/testing/open_kvm.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"
#include "tests/metrics_support.h"

namespace irqbypass::testing {
namespace {

using agent::testing::FakeHost;
using agent::testing::FakeKubelet;

constexpr char kResource[] = "irqbypass.io/vfio-net";

TEST(DevicePluginE2eTest, RealAgent_RegistersAllocatesSurvivesRestarts) {
  FakeHost host;
  host.AddFunction("0000:3b:00.0", "8086:154c", "vfio-pci", "40", 0);
  host.AddFunction("0000:5e:00.0", "8086:154c", "vfio-pci", "41", 1);
  FakeKubelet kubelet(host.kubelet());
  kubelet.Start();

  Cluster cluster;
  ASSERT_TRUE(cluster.StartManager({"--store=memory"}));
  const std::vector<std::string> flags = {
      std::string("--device_plugin_resources=") + kResource + "=8086:154c",
      "--kubelet_dir=" + host.kubelet(), "--sysfs_root=" + host.sysfs(),
      "--dev_root=" + host.dev(), "--metrics_listen=127.0.0.1:0"};
  ASSERT_TRUE(cluster.StartAgent("n1", flags));
  ASSERT_TRUE(kubelet.WaitRegistrations(kResource, 1, absl::Seconds(10)))
      << cluster.agent("n1").Log();
  ASSERT_TRUE(kubelet.WaitForDevices(
      kResource,
      [](const v1beta1::ListAndWatchResponse& l) {
        return l.devices_size() == 2 && l.devices(0).health() == "Healthy" &&
               l.devices(1).health() == "Healthy";
      },
      absl::Seconds(10)));
  auto alloc = kubelet.Allocate(kResource, {{"41"}});
  ASSERT_TRUE(alloc.ok()) << alloc.status();
  EXPECT_EQ(alloc->container_responses(0).envs().at("IRQBYPASS_PCI_ADDRESSES"),
            "0000:5e:00.0");
  EXPECT_NE(cluster.agent("n1").Log().find("msg=\"devices allocated\""),
            std::string::npos);

  // The kubelet says which pod got it (pod-resources); the agent logs it,
  // and when the pod is gone releases the device.
  kubelet.SetPod("vms", "vm-1", "vmm", kResource, {"41"});
  ASSERT_TRUE(Eventually([&] {
    return cluster.agent("n1").Log().find("msg=\"device held by a pod") !=
           std::string::npos;
  })) << cluster.agent("n1").Log();
  EXPECT_NE(cluster.agent("n1").Log().find("pod=vms/vm-1"), std::string::npos);
  kubelet.RemovePod("vms", "vm-1");
  ASSERT_TRUE(Eventually(
      [&] {
        return cluster.agent("n1").Log().find("msg=\"device released\"") !=
               std::string::npos;
      },
      absl::Seconds(40)))  // held by no pod for 10 s, listed every 2 s
      << cluster.agent("n1").Log();
  EXPECT_NE(cluster.agent("n1").Log().find("pci=0000:5e:00.0"),
            std::string::npos);

  const absl::Time back =
      kubelet.Restart(FakeKubelet::RestartOrder::kDeleteSocketsThenServe,
                      absl::Milliseconds(500));
  ASSERT_TRUE(kubelet.WaitForDevices(
      kResource,
      [](const v1beta1::ListAndWatchResponse& l) {
        return l.devices_size() == 2;
      },
      absl::Seconds(5), back));
  const int metrics_port =
      LoggedPort(cluster.agent("n1").Log(), "metrics_port");
  ASSERT_GT(metrics_port, 0);
  const std::string series =
      "irqbypass_agent_device_plugin_registrations_total{resource=\"" +
      std::string(kResource) + "\"} 2\n";
  EXPECT_TRUE(Eventually([&] {
    auto body = HttpGet(metrics_port, "/metrics");
    return body.has_value() && body->find(series) != std::string::npos;
  })) << HttpGet(metrics_port, "/metrics").value_or("(no /metrics)");

  // SIGTERM: the plugin's socket goes with the agent.
  const std::string socket =
      host.kubelet() + "/device-plugins/irqbypass-irqbypass.io_2fvfio-net.sock";
  ASSERT_TRUE(std::filesystem::exists(socket));
  ASSERT_TRUE(cluster.agent("n1").Signal(SIGTERM));
  EXPECT_EQ(cluster.agent("n1").Wait(), 0);
  EXPECT_FALSE(std::filesystem::exists(socket));
  // A new agent registers again, and the kubelet's new stream lists both.
  const absl::Time restarted = absl::Now();
  ASSERT_TRUE(cluster.StartAgent("n1", flags));
  ASSERT_TRUE(kubelet.WaitRegistrations(kResource, 3, absl::Seconds(5)));
  EXPECT_TRUE(kubelet.WaitForDevices(
      kResource,
      [](const v1beta1::ListAndWatchResponse& l) {
        return l.devices_size() == 2;
      },
      absl::Seconds(10), restarted));
}

// The agent's flags for `host` serving kResource, plus `extra`.
std::vector<std::string> PluginFlags(const FakeHost& host,
                                     std::vector<std::string> extra = {}) {
  extra.push_back(std::string("--device_plugin_resources=") + kResource +
                  "=8086:154c");
  extra.push_back("--kubelet_dir=" + host.kubelet());
  extra.push_back("--sysfs_root=" + host.sysfs());
  extra.push_back("--dev_root=" + host.dev());
  return extra;
}

bool Connected(Cluster& cluster, const std::string& token) {
  auto binding = cluster.client().GetBinding(token);
  return binding.ok() && binding->connected();
}

// The pod's device (group 41, 0000:5e:00.0) allocated: the PCI address the
// pod sees in its environment.
std::string AllocateGroup41(FakeKubelet& kubelet,
                            v1beta1::ContainerAllocateResponse* out) {
  auto alloc = kubelet.Allocate(kResource, {{"41"}});
  EXPECT_TRUE(alloc.ok()) << alloc.status();
  if (!alloc.ok() || alloc->container_responses_size() != 1) return "";
  *out = alloc->container_responses(0);
  return out->envs().at("IRQBYPASS_PCI_ADDRESSES");
}

// The agent has seen (pod-resources, every 2 s) that vms/vm-1 holds it.
bool WaitHeld(Process& agent) {
  return Eventually([&] {
    const std::string log = agent.Log();
    // (Or "... (already running)", if the first List came after SetPod.)
    const size_t at = log.find("msg=\"device held by a pod");
    return at != std::string::npos &&
           log.find("pod=vms/vm-1", at) != std::string::npos;
  });
}

bool WaitReleased(Process& agent, const std::string& pci) {
  // Held by no pod for 10 s of Lists (every 2 s) before it is released.
  return Eventually(
      [&] {
        return agent.Log().find("msg=\"device released\" resource=" +
                                std::string(kResource) +
                                " iommu_group=41 pci=" + pci +
                                " handed_over=closed") != std::string::npos;
      },
      absl::Seconds(40));
}

TEST(DevicePluginPodPathTest, Sim_AllocatedDeviceWired_PodGone_Unwired) {
  FakeHost host;
  host.AddFunction("0000:5e:00.0", "8086:154c", "vfio-pci", "41", 1);
  FakeKubelet kubelet(host.kubelet());
  kubelet.Start();
  Cluster cluster;
  ASSERT_TRUE(cluster.StartManager({"--store=memory"}));
  ASSERT_TRUE(cluster.StartAgent("n1", PluginFlags(host)));
  ASSERT_TRUE(kubelet.WaitRegistrations(kResource, 1, absl::Seconds(10)))
      << cluster.agent("n1").Log();

  v1beta1::ContainerAllocateResponse container;
  const std::string pci = AllocateGroup41(kubelet, &container);
  ASSERT_EQ(pci, "0000:5e:00.0");
  kubelet.SetPod("vms", "vm-1", "vmm", kResource, {"41"});
  ASSERT_TRUE(WaitHeld(cluster.agent("n1"))) << cluster.agent("n1").Log();

  // The orchestrator pairs the pod's device vector with its VM's GSI.
  ASSERT_TRUE(cluster.client()
                  .RegisterConsumer(MakeConsumer("vm1-q0", "n1", "vm-1", 40))
                  .ok());
  auto p =
      cluster.client().RegisterProducer(MakeProducer("vm1-q0", "n1", pci, 3));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->connected);

  // The pod goes: its device leaves the host and the pair is unwired; the
  // registrations stay (the orchestrator owns them).
  kubelet.RemovePod("vms", "vm-1");
  ASSERT_TRUE(WaitReleased(cluster.agent("n1"), pci))
      << cluster.agent("n1").Log();
  EXPECT_TRUE(Eventually([&] { return !Connected(cluster, "vm1-q0"); }))
      << cluster.agent("n1").Log();
  auto binding = cluster.client().GetBinding("vm1-q0");
  ASSERT_TRUE(binding.ok()) << binding.status();
  EXPECT_TRUE(binding->has_producer() && binding->has_consumer());

  // The next pod that is given the device brings it back: the pair, still
  // registered, is wired again.
  ASSERT_EQ(AllocateGroup41(kubelet, &container), pci);
  EXPECT_TRUE(Eventually([&] { return Connected(cluster, "vm1-q0"); }))
      << cluster.agent("n1").Log();
}

// kvm: the device side is a fake VFIO device (no device is bound to
// vfio-pci on these machines, so no device fd can be handed over); the VM
// is real, created and served by the pod's VMM through the mounted socket.
TEST(DevicePluginPodPathTest,
     Kvm_VmmServesVmThroughMountedSocket_Wired_PodGone_Unwired) {
  absl::StatusOr<agent::Fd> kvm = agent::testing::OpenKvmForTest();
  if (!kvm.ok()) {
    GTEST_SKIP() << kvm.status().message() << ": the kvm path needs it";
  }
  FakeHost host;
  host.AddFunction("0000:5e:00.0", "8086:154c", "vfio-pci", "41", 1);
  FakeKubelet kubelet(host.kubelet());
  kubelet.Start();
  char dir[] = "/tmp/irqbypass-pod-XXXXXX";  // sun_path: 107 bytes at most
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string handoff_dir = dir;
  Cluster cluster;
  ASSERT_TRUE(cluster.StartManager({"--store=memory"}));
  ASSERT_TRUE(cluster.StartAgent(
      "n1",
      PluginFlags(host, {"--backend=kvm", "--kvm_fake_devices=0000:5e:00.0",
                         "--handoff_socket=" + handoff_dir + "/handoff.sock"})))
      << cluster.agent("n1").Log();
  ASSERT_TRUE(kubelet.WaitRegistrations(kResource, 1, absl::Seconds(10)))
      << cluster.agent("n1").Log();

  v1beta1::ContainerAllocateResponse container;
  const std::string pci = AllocateGroup41(kubelet, &container);
  ASSERT_EQ(pci, "0000:5e:00.0");
  kubelet.SetPod("vms", "vm-1", "vmm", kResource, {"41"});
  ASSERT_TRUE(WaitHeld(cluster.agent("n1"))) << cluster.agent("n1").Log();
  // What the container runtime makes of the answer: the socket the pod's
  // environment names, inside the folder the answer mounts.
  const std::string in_pod = container.envs().at("IRQBYPASS_HANDOFF_SOCKET");
  const std::string pod_dir = in_pod.substr(0, in_pod.rfind('/'));
  std::string host_socket;
  for (const v1beta1::Mount& mount : container.mounts()) {
    if (mount.container_path() == pod_dir) {
      host_socket = mount.host_path() + in_pod.substr(pod_dir.size());
    }
  }
  ASSERT_EQ(host_socket, handoff_dir + "/handoff.sock");

  // The pod's VMM: its own VM on /dev/kvm, offered through that socket.
  const int reconciles = cluster.Reconciles("n1");
  Process vmm;
  ASSERT_TRUE(vmm.Start(BinaryPath("agent/handoff/irqbypass-handoff"),
                        {"--socket=" + host_socket, "--serve_vm=vm-1"},
                        cluster.dir() + "/vmm.log"));
  ASSERT_TRUE(Eventually([&] {
    return vmm.Log().find("ready") != std::string::npos || !vmm.running();
  }));
  ASSERT_NE(vmm.Log().find("ready"), std::string::npos) << vmm.Log();
  ASSERT_TRUE(cluster.WaitReconciles("n1", reconciles + 1));

  ASSERT_TRUE(cluster.client()
                  .RegisterConsumer(MakeConsumer("vm1-q0", "n1", "vm-1", 40))
                  .ok());
  auto p =
      cluster.client().RegisterProducer(MakeProducer("vm1-q0", "n1", pci, 3));
  ASSERT_TRUE(p.ok()) << p.status() << cluster.agent("n1").Log();
  EXPECT_TRUE(p->connected);
  EXPECT_NE(vmm.Log().find("irqfd assign vm=vm-1 gsi=40 errno=0"),
            std::string::npos)
      << vmm.Log();

  // The pod goes: its container (the VMM, and with it the VM) is stopped
  // and the kubelet forgets it; the pair is unwired, the device released.
  ASSERT_TRUE(vmm.Signal(SIGTERM));
  EXPECT_EQ(vmm.Wait(), 0) << vmm.Log();
  kubelet.RemovePod("vms", "vm-1");
  EXPECT_TRUE(Eventually([&] { return !Connected(cluster, "vm1-q0"); }))
      << cluster.agent("n1").Log();
  ASSERT_TRUE(WaitReleased(cluster.agent("n1"), pci))
      << cluster.agent("n1").Log();
  auto binding = cluster.client().GetBinding("vm1-q0");
  ASSERT_TRUE(binding.ok()) << binding.status();
  EXPECT_FALSE(binding->connected());
  EXPECT_TRUE(binding->has_producer() && binding->has_consumer());

  ASSERT_TRUE(cluster.agent("n1").Signal(SIGTERM));
  EXPECT_EQ(cluster.agent("n1").Wait(), 0);
  std::filesystem::remove_all(handoff_dir);
}

}  // namespace
}  // namespace irqbypass::testing
