// The real irqbypass-agent as a device plugin, against the fake kubelet and
// a fake sysfs tree: it registers, lists and allocates; it registers again
// after a kubelet restart and counts it on /metrics; on SIGTERM its socket
// goes, and a restarted agent registers again.
#include <signal.h>

#include <filesystem>
#include <string>

#include "agent/deviceplugin/testing/fake_host.h"
#include "agent/deviceplugin/testing/fake_kubelet.h"
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

}  // namespace
}  // namespace irqbypass::testing
