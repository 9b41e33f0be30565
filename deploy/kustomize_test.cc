// deploy/kubernetes: both overlays render with kustomize (kubectl's), and
// what they render is what a platform team needs and the binaries accept:
// every flag in the manifests is one the binary defines; every container
// has probes, requests and a memory limit; single runs one irqbypassd with
// Recreate on a PVC at its --data_dir; ha runs replicas on etcd with a
// PodDisruptionBudget and the pod IP as advertise address; the agent
// DaemonSet is privileged, system-node-critical, rolls with maxSurge 0 and
// mounts what it opens; monitoring, network policies, service accounts.
#include <unistd.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/process.h"
#include "yaml-cpp/yaml.h"

namespace irqbypass {
namespace {

using ::irqbypass::testing::CommandResult;
using ::irqbypass::testing::RunCommand;

std::string Runfile(const std::string& path) {
  const char* dir = getenv("TEST_SRCDIR");
  const char* ws = getenv("TEST_WORKSPACE");
  return std::string(dir ? dir : ".") + "/" + (ws ? ws : "irqbypass") + "/" +
         path;
}

struct Rendered {
  std::vector<YAML::Node> docs;
  YAML::Node Find(const std::string& kind, const std::string& name) const {
    for (const YAML::Node& d : docs) {
      if (d["kind"].as<std::string>() == kind &&
          d["metadata"]["name"].as<std::string>() == name) {
        return d;
      }
    }
    return YAML::Node();
  }
};

// The value of `--flag=VALUE` in a container's args; empty if absent.
std::string Arg(const YAML::Node& args, const std::string& flag) {
  for (const YAML::Node& a : args) {
    const std::string arg = a.as<std::string>();
    if (absl::StartsWith(arg, flag + "=")) return arg.substr(flag.size() + 1);
  }
  return "";
}

class KustomizeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (RunCommand("/bin/sh", {"-c", "command -v kubectl"}).exit_code != 0) {
      GTEST_SKIP() << "kubectl (with its kustomize) is not on this machine";
    }
    // (absl's --helpfull exits 1 after printing.)
    const CommandResult irqbypassd =
        RunCommand(Runfile("service/irqbypassd"), {"--helpfull"});
    irqbypassd_help_ = irqbypassd.out + irqbypassd.err;
    const CommandResult agent =
        RunCommand(Runfile("agent/irqbypass-agent"), {"--helpfull"});
    agent_help_ = agent.out + agent.err;
    ASSERT_NE(irqbypassd_help_.find("    --store ("), std::string::npos)
        << irqbypassd_help_;
    ASSERT_NE(agent_help_.find("    --device_plugin_resources ("),
              std::string::npos)
        << agent_help_;
  }

  Rendered Render(const std::string& overlay) {
    const CommandResult kustomize = RunCommand(
        "/bin/sh",
        {"-c",
         "exec kubectl kustomize --load-restrictor=LoadRestrictionsNone " +
             Runfile("deploy/kubernetes/overlays/" + overlay)});
    EXPECT_EQ(kustomize.exit_code, 0) << kustomize.err;
    Rendered r;
    for (const YAML::Node& d : YAML::LoadAll(kustomize.out)) {
      if (d.IsMap()) r.docs.push_back(d);
    }
    return r;
  }

  // Every --flag in `args` is one `help` (a --helpfull) lists.
  void ExpectKnownFlags(const YAML::Node& args, const std::string& help,
                        const std::string& binary) {
    ASSERT_TRUE(args.IsSequence());
    for (const YAML::Node& a : args) {
      const std::string arg = a.as<std::string>();
      ASSERT_TRUE(absl::StartsWith(arg, "--")) << arg;
      const std::string name = arg.substr(0, arg.find('='));
      EXPECT_NE(help.find("    " + name + " ("), std::string::npos)
          << binary << " has no flag " << name;
    }
  }

  void ExpectContainersComplete(const Rendered& r) {
    for (const YAML::Node& d : r.docs) {
      const std::string kind = d["kind"].as<std::string>();
      if (kind != "Deployment" && kind != "DaemonSet") continue;
      for (const YAML::Node& c : d["spec"]["template"]["spec"]["containers"]) {
        const std::string what = kind + "/" + c["name"].as<std::string>();
        EXPECT_TRUE(c["livenessProbe"].IsMap()) << what;
        EXPECT_TRUE(c["readinessProbe"].IsMap()) << what;
        EXPECT_TRUE(c["resources"]["requests"]["cpu"].IsScalar()) << what;
        EXPECT_TRUE(c["resources"]["requests"]["memory"].IsScalar()) << what;
        EXPECT_TRUE(c["resources"]["limits"]["memory"].IsScalar()) << what;
      }
      EXPECT_FALSE(d["spec"]["template"]["spec"]["automountServiceAccountToken"]
                       .as<bool>(true))
          << kind;
    }
  }

  void ExpectCommon(const Rendered& r) {
    for (const auto& [kind, name] :
         std::vector<std::pair<std::string, std::string>>{
             {"Namespace", "irqbypass-system"},
             {"ServiceAccount", "irqbypassd"},
             {"ServiceAccount", "irqbypass-agent"},
             {"Service", "irqbypassd"},
             {"NetworkPolicy", "irqbypassd"},
             {"NetworkPolicy", "irqbypass-agent"},
             {"ServiceMonitor", "irqbypassd"},
             {"PodMonitor", "irqbypass-agent"}}) {
      EXPECT_TRUE(r.Find(kind, name).IsMap()) << kind << " " << name;
    }
    const YAML::Node d = r.Find("Deployment", "irqbypassd");
    ASSERT_TRUE(d.IsMap());
    const YAML::Node c = d["spec"]["template"]["spec"]["containers"][0];
    ExpectKnownFlags(c["args"], irqbypassd_help_, "irqbypassd");
    EXPECT_EQ(c["readinessProbe"]["grpc"]["service"].as<std::string>(),
              "irqbypass.v1.BypassManager");
    EXPECT_EQ(c["livenessProbe"]["grpc"]["port"].as<int>(), 50052);
    EXPECT_EQ(Arg(c["args"], "--listen"), "0.0.0.0:50051");

    const YAML::Node ds = r.Find("DaemonSet", "irqbypass-agent");
    ASSERT_TRUE(ds.IsMap());
    const YAML::Node spec = ds["spec"]["template"]["spec"];
    EXPECT_EQ(spec["priorityClassName"].as<std::string>(),
              "system-node-critical");
    EXPECT_EQ(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"].as<int>(), 0);
    const YAML::Node agent = spec["containers"][0];
    EXPECT_TRUE(agent["securityContext"]["privileged"].as<bool>());
    ExpectKnownFlags(agent["args"], agent_help_, "irqbypass-agent");
    std::map<std::string, std::string> host_paths;  // volume -> host path
    for (const YAML::Node& v : spec["volumes"]) {
      host_paths[v["name"].as<std::string>()] =
          v["hostPath"]["path"].as<std::string>();
    }
    std::map<std::string, std::string> mounts;  // mount path -> host path
    std::set<std::string> read_only;
    for (const YAML::Node& m : agent["volumeMounts"]) {
      const std::string path = m["mountPath"].as<std::string>();
      mounts[path] = host_paths[m["name"].as<std::string>()];
      if (m["readOnly"].as<bool>(false)) read_only.insert(path);
    }
    EXPECT_EQ(mounts["/dev/vfio"], "/dev/vfio");
    EXPECT_EQ(mounts["/dev/kvm"], "/dev/kvm");
    const std::string kubelet = Arg(agent["args"], "--kubelet_dir");
    EXPECT_EQ(mounts[kubelet + "/device-plugins"],
              "/var/lib/kubelet/device-plugins");
    EXPECT_EQ(mounts[kubelet + "/pod-resources"],
              "/var/lib/kubelet/pod-resources");
    const std::string sysfs = Arg(agent["args"], "--sysfs_root");
    EXPECT_EQ(mounts[sysfs], "/sys");
    EXPECT_EQ(read_only.count(sysfs), 1u) << "sysfs must be read-only";
    const std::string handoff = Arg(agent["args"], "--handoff_socket");
    const std::string handoff_dir = handoff.substr(0, handoff.rfind('/'));
    EXPECT_FALSE(mounts[handoff_dir].empty())
        << "the handoff socket's folder is not a host path";
    ExpectContainersComplete(r);
  }

  std::string irqbypassd_help_;
  std::string agent_help_;
};

// Whether `selector` (a map of labels) selects a pod labelled `labels`.
bool Selects(const YAML::Node& selector, const YAML::Node& labels) {
  if (!selector.IsDefined() || !selector.IsMap() || selector.size() == 0) {
    return false;
  }
  for (const auto& kv : selector) {
    const YAML::Node value = labels[kv.first.as<std::string>()];
    if (!value.IsDefined() || !value.IsScalar() ||
        value.as<std::string>() != kv.second.as<std::string>()) {
      return false;
    }
  }
  return true;
}

// The named ports of the first container of `workload`: name -> number.
std::map<std::string, int> ContainerPorts(const YAML::Node& workload) {
  std::map<std::string, int> ports;
  for (const YAML::Node& p :
       workload["spec"]["template"]["spec"]["containers"][0]["ports"]) {
    ports[p["name"].as<std::string>()] = p["containerPort"].as<int>();
  }
  return ports;
}

// What refers to the pods finds them: every selector selects the pods it is
// for, every port it names is one they serve, probes and flags agree.
void ExpectReferencesResolve(const Rendered& r) {
  const YAML::Node d = r.Find("Deployment", "irqbypassd");
  const YAML::Node ds = r.Find("DaemonSet", "irqbypass-agent");
  ASSERT_TRUE(d.IsMap() && ds.IsMap());
  const YAML::Node d_labels = d["spec"]["template"]["metadata"]["labels"];
  const YAML::Node ds_labels = ds["spec"]["template"]["metadata"]["labels"];
  EXPECT_TRUE(Selects(d["spec"]["selector"]["matchLabels"], d_labels));
  EXPECT_TRUE(Selects(ds["spec"]["selector"]["matchLabels"], ds_labels));
  EXPECT_FALSE(Selects(d["spec"]["selector"]["matchLabels"], ds_labels))
      << "the Deployment's selector also takes the agent's pods";

  const std::map<std::string, int> d_ports = ContainerPorts(d);
  const std::map<std::string, int> ds_ports = ContainerPorts(ds);
  const YAML::Node svc = r.Find("Service", "irqbypassd");
  ASSERT_TRUE(svc.IsMap());
  EXPECT_TRUE(Selects(svc["spec"]["selector"], d_labels));
  EXPECT_FALSE(Selects(svc["spec"]["selector"], ds_labels));
  std::set<std::string> svc_ports;
  for (const YAML::Node& p : svc["spec"]["ports"]) {
    svc_ports.insert(p["name"].as<std::string>());
    const YAML::Node target = p["targetPort"];
    EXPECT_EQ(d_ports.count(target.as<std::string>()), 1u)
        << "Service port " << p["name"] << " targets " << target
        << ", which irqbypassd's container does not name";
    EXPECT_EQ(d_ports.at(target.as<std::string>()), p["port"].as<int>());
  }

  const YAML::Node sm = r.Find("ServiceMonitor", "irqbypassd");
  ASSERT_TRUE(sm.IsMap());
  EXPECT_TRUE(
      Selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]))
      << "the ServiceMonitor does not select the Service";
  for (const YAML::Node& e : sm["spec"]["endpoints"]) {
    EXPECT_EQ(svc_ports.count(e["port"].as<std::string>()), 1u) << e["port"];
  }
  const YAML::Node pm = r.Find("PodMonitor", "irqbypass-agent");
  ASSERT_TRUE(pm.IsMap());
  EXPECT_TRUE(Selects(pm["spec"]["selector"]["matchLabels"], ds_labels));
  for (const YAML::Node& e : pm["spec"]["podMetricsEndpoints"]) {
    EXPECT_EQ(ds_ports.count(e["port"].as<std::string>()), 1u) << e["port"];
  }

  // Probes and the ports the binaries listen on: the kubelet's gRPC probes
  // present no certificate, so they go to the plaintext health-only port.
  const YAML::Node c = d["spec"]["template"]["spec"]["containers"][0];
  const int grpc_port = d_ports.count("grpc") ? d_ports.at("grpc") : -1;
  const int health_port = d_ports.count("health") ? d_ports.at("health") : -1;
  ASSERT_NE(health_port, grpc_port);
  for (const char* probe :
       {"startupProbe", "livenessProbe", "readinessProbe"}) {
    if (!c[probe].IsDefined()) continue;
    EXPECT_EQ(c[probe]["grpc"]["port"].as<int>(), health_port) << probe;
  }
  EXPECT_TRUE(absl::EndsWith(Arg(c["args"], "--listen"),
                             ":" + std::to_string(grpc_port)));
  EXPECT_TRUE(absl::EndsWith(Arg(c["args"], "--health_listen"),
                             ":" + std::to_string(health_port)));
  EXPECT_TRUE(absl::EndsWith(Arg(c["args"], "--metrics_listen"),
                             ":" + std::to_string(d_ports.at("metrics"))));
  const YAML::Node a = ds["spec"]["template"]["spec"]["containers"][0];
  EXPECT_TRUE(absl::EndsWith(Arg(a["args"], "--metrics_listen"),
                             ":" + std::to_string(ds_ports.at("metrics"))));
  for (const char* probe : {"livenessProbe", "readinessProbe"}) {
    EXPECT_EQ(a[probe]["httpGet"]["port"].as<std::string>(), "metrics")
        << probe;
  }

  // The network policies: each selects its pods and opens the ports they
  // serve; the agents may reach irqbypassd's gRPC port.
  const YAML::Node np = r.Find("NetworkPolicy", "irqbypassd");
  const YAML::Node np_agent = r.Find("NetworkPolicy", "irqbypass-agent");
  ASSERT_TRUE(np.IsMap() && np_agent.IsMap());
  EXPECT_TRUE(Selects(np["spec"]["podSelector"]["matchLabels"], d_labels));
  EXPECT_TRUE(
      Selects(np_agent["spec"]["podSelector"]["matchLabels"], ds_labels));
  bool agents_reach_grpc = false;
  for (const YAML::Node& rule : np["spec"]["ingress"]) {
    bool grpc = false;
    for (const YAML::Node& p : rule["ports"]) {
      grpc |= p["port"].as<int>() == grpc_port;
    }
    for (const YAML::Node& from : rule["from"]) {
      if (!from["podSelector"].IsDefined()) continue;  // namespaceSelector
      agents_reach_grpc |=
          grpc && Selects(from["podSelector"]["matchLabels"], ds_labels);
    }
  }
  EXPECT_TRUE(agents_reach_grpc);

  // Mutual TLS for both: the three files in a mounted volume (a Secret for
  // irqbypassd; for the agents, whose certificates name their nodes, a
  // folder on each host), never --insecure.
  for (const YAML::Node& w : {d, ds}) {
    const YAML::Node pod = w["spec"]["template"]["spec"];
    const YAML::Node container = pod["containers"][0];
    const std::string what = w["metadata"]["name"].as<std::string>();
    for (const YAML::Node& a : container["args"]) {
      EXPECT_NE(a.as<std::string>(), "--insecure") << what;
    }
    std::map<std::string, YAML::Node> volumes;
    for (const YAML::Node& v : pod["volumes"]) {
      volumes[v["name"].as<std::string>()] = v;
    }
    for (const char* flag : {"--tls_cert", "--tls_key", "--tls_ca"}) {
      const std::string file = Arg(container["args"], flag);
      ASSERT_FALSE(file.empty()) << what << " has no " << flag;
      const std::string folder = file.substr(0, file.rfind('/'));
      bool mounted = false;
      for (const YAML::Node& m : container["volumeMounts"]) {
        if (m["mountPath"].as<std::string>() != folder) continue;
        const YAML::Node v = volumes[m["name"].as<std::string>()];
        mounted = m["readOnly"].IsDefined() && m["readOnly"].as<bool>() &&
                  (v["secret"].IsDefined() || v["hostPath"].IsDefined());
      }
      EXPECT_TRUE(mounted) << what << ": " << flag << "=" << file
                           << " is not in a read-only Secret or host folder";
    }
  }

  // RBAC: neither binary calls the Kubernetes API, so no Role or binding
  // is granted and no pod mounts a service account token.
  for (const YAML::Node& doc : r.docs) {
    const std::string kind = doc["kind"].as<std::string>();
    EXPECT_TRUE(kind != "Role" && kind != "ClusterRole" &&
                kind != "RoleBinding" && kind != "ClusterRoleBinding")
        << kind << " " << doc["metadata"]["name"];
  }
  for (const YAML::Node& w : {d, ds}) {
    const YAML::Node pod = w["spec"]["template"]["spec"];
    EXPECT_FALSE(pod["automountServiceAccountToken"].as<bool>(true));
    EXPECT_TRUE(
        r.Find("ServiceAccount", pod["serviceAccountName"].as<std::string>())
            .IsMap());
  }
}

// Exit code and output of `script` run by bash with pipefail.
CommandResult Bash(const std::string& script) {
  return RunCommand("/bin/bash", {"-o", "pipefail", "-c", script});
}

// Validates `overlay`'s objects against the Kubernetes schemas.
CommandResult ValidateOverlay(const std::string& overlay) {
  return Bash("kubectl kustomize --load-restrictor=LoadRestrictionsNone " +
              Runfile("deploy/kubernetes/overlays/" + overlay) + " | node " +
              Runfile("deploy/validate/validate.mjs"));
}

TEST_F(KustomizeTest, BothOverlays_SelectorsPortsProbesAndRbacResolve) {
  for (const char* overlay : {"single", "ha"}) {
    SCOPED_TRACE(overlay);
    ExpectReferencesResolve(Render(overlay));
  }
}

TEST_F(KustomizeTest, BothOverlays_ValidAgainstTheKubernetesSchemas) {
  ASSERT_EQ(Bash("command -v node").exit_code, 0)
      << "node (Node.js) is not on this machine";
  for (const char* overlay : {"single", "ha"}) {
    const CommandResult result = ValidateOverlay(overlay);
    EXPECT_EQ(result.exit_code, 0)
        << overlay << ":\n"
        << result.out << result.err
        << "(missing modules: scripts/install-deps.sh runs npm ci in "
           "deploy/validate)";
    EXPECT_NE(result.out.find("11 objects, 0 invalid"), std::string::npos)
        << result.out;
  }
  // The validator is not a pass-through: a wrong type, a missing required
  // field and a kind it has no schema for are each refused.
  const std::string validate =
      "node " + Runfile("deploy/validate/validate.mjs");
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"apiVersion: apps/v1\\nkind: Deployment\\nmetadata: {name: x}\\n"
       "spec: {replicas: two, selector: {}, template: {}}",
       "spec/replicas must be integer"},
      {"apiVersion: apps/v1\\nkind: DaemonSet\\nmetadata: {name: x}\\n"
       "spec: {template: {}}",
       "required property selector"},
      {"apiVersion: example.com/v1\\nkind: Widget\\nmetadata: {name: w}",
       "no schema for example.com/v1 Widget"},
  };
  for (const auto& [yaml, why] : refused) {
    const CommandResult r = Bash("printf '" + yaml + "\\n' | " + validate);
    EXPECT_EQ(r.exit_code, 1) << yaml << ": " << r.out << r.err;
    EXPECT_NE(r.out.find(why), std::string::npos) << r.out;
  }
}

TEST_F(KustomizeTest, YamlFiles_PassYamllint) {
  ASSERT_EQ(Bash("command -v yamllint").exit_code, 0)
      << "yamllint is not on this machine (scripts/install-deps.sh)";
  const CommandResult lint =
      Bash("yamllint -f parsable -c " + Runfile("deploy/.yamllint") + " " +
           Runfile("deploy/kubernetes") + " " + Runfile("deploy/prometheus"));
  EXPECT_EQ(lint.exit_code, 0) << lint.out << lint.err;
  // And it does fail on what it is for (a duplicated key).
  const CommandResult dup = Bash("printf 'a: 1\\na: 2\\n' | yamllint -c " +
                                 Runfile("deploy/.yamllint") + " -");
  EXPECT_EQ(dup.exit_code, 1) << dup.out;
}

TEST_F(KustomizeTest, Single_OneReplicaRecreateOnAPvcAtItsDataDir) {
  const Rendered r = Render("single");
  ExpectCommon(r);
  const YAML::Node d = r.Find("Deployment", "irqbypassd");
  EXPECT_EQ(d["spec"]["replicas"].as<int>(), 1);
  EXPECT_EQ(d["spec"]["strategy"]["type"].as<std::string>(), "Recreate");
  const YAML::Node pod = d["spec"]["template"]["spec"];
  const YAML::Node c = pod["containers"][0];
  EXPECT_EQ(Arg(c["args"], "--store"), "embedded");
  const std::string data_dir = Arg(c["args"], "--data_dir");
  std::string volume;
  for (const YAML::Node& m : c["volumeMounts"]) {
    if (m["mountPath"].as<std::string>() == data_dir) {
      volume = m["name"].as<std::string>();
    }
  }
  ASSERT_FALSE(volume.empty()) << "--data_dir " << data_dir << " not mounted";
  std::string claim;
  for (const YAML::Node& v : pod["volumes"]) {
    if (v["name"].as<std::string>() == volume) {
      claim = v["persistentVolumeClaim"]["claimName"].as<std::string>();
    }
  }
  EXPECT_TRUE(r.Find("PersistentVolumeClaim", claim).IsMap()) << claim;
  EXPECT_FALSE(r.Find("PodDisruptionBudget", "irqbypassd").IsMap());
}

TEST_F(KustomizeTest, Ha_ReplicasOnEtcdWithABudgetAndThePodIp) {
  const Rendered r = Render("ha");
  ExpectCommon(r);
  const YAML::Node d = r.Find("Deployment", "irqbypassd");
  EXPECT_GE(d["spec"]["replicas"].as<int>(), 2);
  const YAML::Node c = d["spec"]["template"]["spec"]["containers"][0];
  EXPECT_EQ(Arg(c["args"], "--store"), "etcd");
  EXPECT_FALSE(Arg(c["args"], "--etcd_endpoints").empty());
  EXPECT_EQ(Arg(c["args"], "--advertise_address"), "$(POD_IP):50051");
  bool pod_ip = false;
  for (const YAML::Node& e : c["env"]) {
    pod_ip |= e["name"].as<std::string>() == "POD_IP" &&
              e["valueFrom"]["fieldRef"]["fieldPath"].as<std::string>() ==
                  "status.podIP";
  }
  EXPECT_TRUE(pod_ip);
  const YAML::Node pdb = r.Find("PodDisruptionBudget", "irqbypassd");
  ASSERT_TRUE(pdb.IsMap());
  EXPECT_EQ(pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
                .as<std::string>(),
            "irqbypassd");
  EXPECT_EQ(pdb["spec"]["maxUnavailable"].as<int>(), 1);
}

}  // namespace
}  // namespace irqbypass
