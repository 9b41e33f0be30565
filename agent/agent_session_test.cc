// AgentSession against an in-process fake manager on a loopback port chosen
// by the OS.
#include "agent/agent_session.h"

#include <cerrno>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/sim/sim_backend.h"
#include "common/mutex.h"
#include "common/target_list.h"
#include "gmock/gmock.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "protos/irqbypass/v1/agent.grpc.pb.h"

namespace irqbypass {
namespace agent {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::SizeIs;

constexpr absl::Duration kWait = absl::Seconds(10);

// The manager's end of the stream: records each hello, answers with a
// ManagerHello, sends the scripted commands one at a time (reading each
// ack), then holds the stream open until EndStreams() or cancellation.
class FakeManager final : public v1::AgentControl::Service {
 public:
  // `epoch`: the leader epoch its ManagerHello carries.
  explicit FakeManager(std::vector<v1::Command> script = {}, uint64_t epoch = 0)
      : script_(std::move(script)), epoch_(epoch) {}

  grpc::Status Session(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::ManagerMessage, v1::AgentMessage>* stream)
      override {
    v1::AgentMessage in;
    if (!stream->Read(&in) || !in.has_hello()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "want hello");
    }
    {
      MutexLock lock(&mu_);
      hellos_.push_back(in.hello());
    }
    v1::ManagerMessage out;
    out.mutable_hello()->set_epoch(epoch_);
    out.mutable_hello()->set_accepts_ack_batches(batched_);
    if (!stream->Write(out)) return grpc::Status::CANCELLED;
    if (batched_ && !script_.empty()) {
      // The whole script in one CommandBatch; acks read as they come (one
      // by one or in AckBatch messages).
      v1::ManagerMessage batch;
      for (const v1::Command& command : script_) {
        *batch.mutable_commands()->add_commands() = command;
      }
      if (!stream->Write(batch)) return grpc::Status::CANCELLED;
      size_t got = 0;
      while (got < script_.size() && stream->Read(&in)) {
        MutexLock lock(&mu_);
        ++ack_messages_;
        if (in.has_ack()) {
          acks_.push_back(in.ack());
          ++got;
        }
        for (const v1::CommandAck& ack : in.acks().acks()) {
          acks_.push_back(ack);
          ++got;
        }
      }
    }
    for (const v1::Command& command :
         batched_ ? std::vector<v1::Command>{} : script_) {
      *out.mutable_command() = command;
      if (!stream->Write(out) || !stream->Read(&in)) {
        return grpc::Status::CANCELLED;
      }
      MutexLock lock(&mu_);
      acks_.push_back(in.ack());
    }
    MutexLock lock(&mu_);
    while (!end_streams_ && !context->IsCancelled()) {
      mu_.AwaitWithTimeout(
          [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return end_streams_; },
          absl::Milliseconds(10));
    }
    return grpc::Status::OK;
  }

  // Sends the script as one CommandBatch and says it reads AckBatch
  // messages. Before the agent connects.
  void SendAsOneBatch() { batched_ = true; }
  size_t ack_messages() {
    MutexLock lock(&mu_);
    return ack_messages_;
  }

  void EndStreams() {
    MutexLock lock(&mu_);
    end_streams_ = true;
  }

  bool WaitForHellos(size_t n) {
    MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return hellos_.size() >= n;
    };
    return mu_.AwaitWithTimeout(enough, kWait);
  }
  bool WaitForAcks(size_t n) {
    MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return acks_.size() >= n;
    };
    return mu_.AwaitWithTimeout(enough, kWait);
  }
  std::vector<v1::AgentHello> hellos() {
    MutexLock lock(&mu_);
    return hellos_;
  }
  std::vector<v1::CommandAck> acks() {
    MutexLock lock(&mu_);
    return acks_;
  }

 private:
  const std::vector<v1::Command> script_;
  const uint64_t epoch_;
  bool batched_ = false;
  Mutex mu_;
  size_t ack_messages_ ABSL_GUARDED_BY(mu_) = 0;
  bool end_streams_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<v1::AgentHello> hellos_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::CommandAck> acks_ ABSL_GUARDED_BY(mu_);
};

// A gRPC server for one FakeManager on 127.0.0.1 (port 0: the OS picks).
class ManagerServer {
 public:
  explicit ManagerServer(FakeManager& service, int port = 0)
      : service_(service) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort(absl::StrCat("127.0.0.1:", port),
                             grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
  }
  ~ManagerServer() { Stop(); }

  bool started() const { return server_ != nullptr && port_ > 0; }
  int port() const { return port_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

  void Stop() {
    if (server_ == nullptr) return;
    service_.EndStreams();
    server_->Shutdown();
    server_->Wait();
    server_.reset();
  }

 private:
  FakeManager& service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// Runs AgentSession::Run() on its own thread; shuts down on destruction.
class RunningAgent {
 public:
  RunningAgent(AgentSessionOptions options, Backend& backend)
      : session_(std::move(options), backend),
        thread_([this] { session_.Run(); }) {}
  ~RunningAgent() { Stop(); }

  // Shuts the session down and returns how long Run() took to return.
  absl::Duration Stop() {
    if (!thread_.joinable()) return absl::ZeroDuration();
    const absl::Time start = absl::Now();
    session_.Shutdown();
    thread_.join();
    return absl::Now() - start;
  }

  AgentSession& session() { return session_; }

 private:
  AgentSession session_;
  std::thread thread_;
};

AgentSessionOptions Options(const std::string& address) {
  AgentSessionOptions options;
  options.manager_address = address;
  options.node = "n1";
  options.agent_version = "test";
  options.initial_backoff = absl::Milliseconds(20);
  options.max_backoff = absl::Milliseconds(200);
  return options;
}

SimBackend MakeSim() {
  SimBackendOptions options;
  options.node = "n1";
  options.vms = absl::flat_hash_set<std::string>{"vm-1", "vm-2"};
  return SimBackend(std::move(options));
}

v1::Command Connect(uint64_t id, const std::string& token,
                    const std::string& vm, uint32_t vector) {
  v1::Command command;
  command.set_id(id);
  command.set_kind(v1::Command::CONNECT);
  command.set_token(token);
  command.mutable_producer()->set_token(token);
  command.mutable_producer()->set_node("n1");
  command.mutable_producer()->set_device("0000:3b:00.1");
  command.mutable_producer()->set_vector(vector);
  command.mutable_consumer()->set_token(token);
  command.mutable_consumer()->set_node("n1");
  command.mutable_consumer()->set_vm(vm);
  command.mutable_consumer()->set_gsi(40 + vector);
  for (v1::StepKind kind :
       {v1::STOP_PRODUCER, v1::STOP_CONSUMER, v1::ADD_CONSUMER,
        v1::ADD_PRODUCER, v1::START_CONSUMER, v1::START_PRODUCER}) {
    v1::Step& step = *command.add_steps();
    step.set_kind(kind);
    step.set_always(kind == v1::START_CONSUMER || kind == v1::START_PRODUCER);
    if (kind == v1::ADD_CONSUMER) step.set_undo(v1::DEL_CONSUMER);
  }
  return command;
}

v1::Command Disconnect(uint64_t id, v1::Command connect) {
  connect.set_id(id);
  connect.set_kind(v1::Command::DISCONNECT);
  connect.clear_steps();
  for (v1::StepKind kind :
       {v1::STOP_PRODUCER, v1::STOP_CONSUMER, v1::DEL_PRODUCER,
        v1::DEL_CONSUMER, v1::START_CONSUMER, v1::START_PRODUCER}) {
    connect.add_steps()->set_kind(kind);
  }
  return connect;
}

// Reserves a loopback port with nothing listening on it (for a while).
int UnusedPort() {
  FakeManager service;
  ManagerServer server(service);
  return server.port();
}

TEST(AgentSessionTest, HelloMessages_LongInventory_SplitIntoParts) {
  std::vector<v1::WiredPair> wired(2500);
  for (size_t i = 0; i < wired.size(); ++i) {
    wired[i].set_token("t" + std::to_string(i));
  }
  const std::vector<v1::AgentMessage> messages =
      HelloMessages("n1", "sim", "v1", wired, 1000);
  ASSERT_EQ(messages.size(), 3u);
  ASSERT_TRUE(messages[0].has_hello());
  EXPECT_EQ(messages[0].hello().node(), "n1");
  EXPECT_TRUE(messages[0].hello().wired_follows());
  EXPECT_EQ(messages[0].hello().wired_size(), 1000);
  EXPECT_EQ(messages[0].hello().wired(999).token(), "t999");
  ASSERT_TRUE(messages[1].has_wired_more());
  EXPECT_EQ(messages[1].wired_more().wired_size(), 1000);
  EXPECT_EQ(messages[1].wired_more().wired(0).token(), "t1000");
  EXPECT_FALSE(messages[1].wired_more().last());
  ASSERT_TRUE(messages[2].has_wired_more());
  EXPECT_EQ(messages[2].wired_more().wired_size(), 500);
  EXPECT_EQ(messages[2].wired_more().wired(499).token(), "t2499");
  EXPECT_TRUE(messages[2].wired_more().last());
}

TEST(AgentSessionTest, HelloMessages_ShortInventory_OneMessage) {
  const std::vector<v1::AgentMessage> messages =
      HelloMessages("n1", "sim", "v1", std::vector<v1::WiredPair>(1000), 1000);
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_FALSE(messages[0].hello().wired_follows());
  EXPECT_EQ(messages[0].hello().wired_size(), 1000);
}

TEST(AgentSessionTest, Hello_CarriesNodeBackendVersionAndInventory) {
  SimBackend sim = MakeSim();
  const v1::Command wired = Connect(1, "t-old", "vm-1", 1);
  ASSERT_TRUE(
      sim.AddConsumer("t-old", wired.producer(), wired.consumer()).ok());
  ASSERT_TRUE(
      sim.AddProducer("t-old", wired.producer(), wired.consumer()).ok());
  FakeManager manager;
  ManagerServer server(manager);
  ASSERT_TRUE(server.started());

  RunningAgent agent(Options(server.address()), sim);

  ASSERT_TRUE(manager.WaitForHellos(1));
  const v1::AgentHello hello = manager.hellos()[0];
  EXPECT_EQ(hello.node(), "n1");
  EXPECT_EQ(hello.backend(), "sim");
  EXPECT_EQ(hello.agent_version(), "test");
  ASSERT_THAT(hello.wired(), SizeIs(1));
  EXPECT_EQ(hello.wired(0).token(), "t-old");
  EXPECT_EQ(hello.wired(0).consumer().vm(), "vm-1");
}

TEST(AgentSessionTest, Commands_ExecuteInOrderAndEachAckCarriesItsId) {
  SimBackend sim = MakeSim();
  const v1::Command connect_t1 = Connect(7, "t1", "vm-1", 1);
  FakeManager manager(
      {connect_t1, Connect(8, "t2", "vm-x", 2), Disconnect(9, connect_t1)});
  ManagerServer server(manager);
  ASSERT_TRUE(server.started());

  RunningAgent agent(Options(server.address()), sim);

  ASSERT_TRUE(manager.WaitForAcks(3));
  const std::vector<v1::CommandAck> acks = manager.acks();
  EXPECT_EQ(acks[0].id(), 7u);
  EXPECT_TRUE(acks[0].ok());
  EXPECT_EQ(acks[1].id(), 8u);
  EXPECT_FALSE(acks[1].ok());
  EXPECT_EQ(acks[1].failed_step(), v1::ADD_PRODUCER);
  EXPECT_EQ(acks[1].errno_value(), ENOENT);
  EXPECT_EQ(acks[1].message(), "vm \"vm-x\" not held by agent on node n1");
  EXPECT_THAT(acks[1].executed(),
              ElementsAre(v1::STOP_PRODUCER, v1::STOP_CONSUMER,
                          v1::ADD_CONSUMER, v1::ADD_PRODUCER, v1::DEL_CONSUMER,
                          v1::START_CONSUMER, v1::START_PRODUCER));
  EXPECT_EQ(acks[2].id(), 9u);
  EXPECT_TRUE(acks[2].ok());
  EXPECT_THAT(sim.Inventory(), IsEmpty());
}

TEST(AgentSessionTest, CommandBatch_EachCommandRunsAndIsAcked) {
  SimBackend sim = MakeSim();
  std::vector<v1::Command> script;
  for (int i = 0; i < 200; ++i) {
    // vm-1 and vm-2 exist in the sim; vm-x does not (those fail).
    const std::string vm = i % 10 == 9 ? "vm-x" : (i % 2 ? "vm-1" : "vm-2");
    script.push_back(Connect(100 + i, "t" + std::to_string(i), vm,
                             static_cast<uint32_t>(i)));
  }
  FakeManager manager(script);
  manager.SendAsOneBatch();
  ManagerServer server(manager);
  ASSERT_TRUE(server.started());

  RunningAgent agent(Options(server.address()), sim);

  ASSERT_TRUE(manager.WaitForAcks(script.size()));
  EXPECT_TRUE(manager.hellos()[0].accepts_command_batches());
  std::map<uint64_t, bool> ok;
  for (const v1::CommandAck& ack : manager.acks()) {
    EXPECT_TRUE(ok.emplace(ack.id(), ack.ok()).second) << "acked twice";
  }
  ASSERT_EQ(ok.size(), script.size());
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(ok[100 + i], i % 10 != 9) << "command " << 100 + i;
  }
  EXPECT_THAT(sim.Inventory(), SizeIs(180));
  // Acks finished together share messages (how many depends on timing;
  // never more than one message per ack).
  EXPECT_LE(manager.ack_messages(), script.size());
}

TEST(AgentSessionTest, ManagerRestart_AgentReconnectsAndReReportsInventory) {
  SimBackend sim = MakeSim();
  FakeManager first({Connect(1, "t1", "vm-1", 1)});
  auto server = std::make_unique<ManagerServer>(first);
  ASSERT_TRUE(server->started());
  const int port = server->port();
  RunningAgent agent(Options(server->address()), sim);
  ASSERT_TRUE(first.WaitForAcks(1));
  ASSERT_TRUE(first.acks()[0].ok());

  server.reset();  // The manager goes away...
  FakeManager second;
  ManagerServer restarted(second, port);  // ...and comes back.
  ASSERT_TRUE(restarted.started());

  ASSERT_TRUE(second.WaitForHellos(1));
  const v1::AgentHello hello = second.hellos()[0];
  ASSERT_THAT(hello.wired(), SizeIs(1));
  EXPECT_EQ(hello.wired(0).token(), "t1");
  // The agent counts the session once it reads the ManagerHello.
  const absl::Time deadline = absl::Now() + kWait;
  while (agent.session().sessions_established() < 2 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(agent.session().sessions_established(), 2u);
}

v1::Command WithEpoch(v1::Command command, uint64_t epoch) {
  command.set_epoch(epoch);
  return command;
}

TEST(AgentSessionTest, DeposedManagerOlderEpoch_SessionRefusedNothingRun) {
  SimBackend sim = MakeSim();
  FakeManager leader({WithEpoch(Connect(1, "t1", "vm-1", 1), 9)}, 9);
  FakeManager deposed({WithEpoch(Connect(2, "t2", "vm-1", 2), 5)}, 5);
  ManagerServer leader_server(leader);
  ManagerServer deposed_server(deposed);
  ASSERT_TRUE(leader_server.started() && deposed_server.started());
  // The leader first; once its stream ends, the agent moves to the next.
  RunningAgent agent(
      Options(leader_server.address() + "," + deposed_server.address()), sim);
  ASSERT_TRUE(leader.WaitForAcks(1));
  ASSERT_TRUE(leader.acks()[0].ok());
  EXPECT_EQ(agent.session().highest_epoch(), 9u);
  leader.EndStreams();
  ASSERT_TRUE(deposed.WaitForHellos(1));
  // The deposed manager's hello ended the session: its command never ran.
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_THAT(deposed.acks(), IsEmpty());
  const std::vector<v1::WiredPair> wired = sim.Inventory();
  ASSERT_THAT(wired, SizeIs(1));
  EXPECT_EQ(wired[0].token(), "t1");
}

TEST(AgentSessionTest, CommandFromOlderEpoch_RefusedNotExecuted) {
  SimBackend sim = MakeSim();
  FakeManager manager({WithEpoch(Connect(1, "t1", "vm-1", 1), 3)}, 9);
  ManagerServer server(manager);
  ASSERT_TRUE(server.started());
  RunningAgent agent(Options(server.address()), sim);
  ASSERT_TRUE(manager.WaitForAcks(1));
  const v1::CommandAck ack = manager.acks()[0];
  EXPECT_EQ(ack.id(), 1u);
  EXPECT_FALSE(ack.ok());
  EXPECT_EQ(ack.message(),
            "refused: command from leader epoch 3, older than epoch 9 seen");
  EXPECT_THAT(ack.executed(), IsEmpty());
  EXPECT_THAT(sim.Inventory(), IsEmpty());
}

TEST(AgentSessionTest, SplitTargetList_SchemesKeptWhole) {
  EXPECT_THAT(SplitTargetList("a:1, b:2,,c:3"),
              ElementsAre("a:1", "b:2", "c:3"));
  EXPECT_THAT(SplitTargetList("ipv4:10.0.0.1:1,10.0.0.2:1"),
              ElementsAre("ipv4:10.0.0.1:1,10.0.0.2:1"));
}

TEST(AgentSessionTest, ManagerDownAtStart_AgentConnectsOnceItComesUp) {
  SimBackend sim = MakeSim();
  const int port = UnusedPort();
  RunningAgent agent(Options(absl::StrCat("127.0.0.1:", port)), sim);
  absl::SleepFor(absl::Milliseconds(300));  // Let a few attempts fail.

  FakeManager manager;
  ManagerServer server(manager, port);
  ASSERT_TRUE(server.started());

  EXPECT_TRUE(manager.WaitForHellos(1));
}

TEST(AgentSessionTest, Shutdown_WhileBackingOff_ReturnsPromptly) {
  SimBackend sim = MakeSim();
  AgentSessionOptions options =
      Options(absl::StrCat("127.0.0.1:", UnusedPort()));
  options.initial_backoff = absl::Seconds(30);
  options.max_backoff = absl::Seconds(30);
  RunningAgent agent(options, sim);
  absl::SleepFor(absl::Milliseconds(300));  // First attempt fails; sleeping.

  EXPECT_LT(agent.Stop(), absl::Seconds(1));
}

TEST(AgentSessionTest, Shutdown_WhileConnected_ReturnsPromptly) {
  SimBackend sim = MakeSim();
  FakeManager manager;
  ManagerServer server(manager);
  ASSERT_TRUE(server.started());
  RunningAgent agent(Options(server.address()), sim);
  ASSERT_TRUE(manager.WaitForHellos(1));

  EXPECT_LT(agent.Stop(), absl::Seconds(1));
}

TEST(AgentSessionTest, Resync_ReReportsCurrentWiringAtOnce) {
  SimBackend sim = MakeSim();
  FakeManager manager;
  ManagerServer server(manager);
  ASSERT_TRUE(server.started());
  AgentSessionOptions options = Options(server.address());
  options.initial_backoff = absl::Seconds(30);  // a resync must not wait
  options.max_backoff = absl::Seconds(30);
  RunningAgent agent(options, sim);
  ASSERT_TRUE(manager.WaitForHellos(1));
  EXPECT_THAT(manager.hellos()[0].wired(), IsEmpty());

  // Wiring changes outside of a command (kvm: a VMM handed a VM over).
  const v1::Command wired = Connect(1, "t1", "vm-1", 1);
  ASSERT_TRUE(sim.AddConsumer("t1", wired.producer(), wired.consumer()).ok());
  ASSERT_TRUE(sim.AddProducer("t1", wired.producer(), wired.consumer()).ok());
  agent.session().Resync();

  ASSERT_TRUE(manager.WaitForHellos(2));
  ASSERT_THAT(manager.hellos()[1].wired(), SizeIs(1));
  EXPECT_EQ(manager.hellos()[1].wired(0).token(), "t1");
}

// Issue #10, fault 3: an agent whose del step keeps failing must not
// reconnect in a loop. The manager disconnects t1 in every session and the
// del fails every time: the first session (which did not report t1) re-reports
// once; the second reported it, so its failed del is left alone.
TEST(AgentSessionTest, DelKeepsFailing_ReReportedOnceNotInALoop) {
  SimBackendOptions sim_options;
  sim_options.node = "n1";
  sim_options.fault = SimFault{SimStep::kDelProducer, EIO};
  SimBackend sim(std::move(sim_options));
  const v1::Command connect = Connect(1, "t1", "vm-1", 1);
  FakeManager manager({connect, Disconnect(2, connect)});
  ManagerServer server(manager);
  ASSERT_TRUE(server.started());
  RunningAgent agent(Options(server.address()), sim);
  ASSERT_TRUE(manager.WaitForHellos(2));
  EXPECT_THAT(manager.hellos()[0].wired(), IsEmpty());
  ASSERT_THAT(manager.hellos()[1].wired(), SizeIs(1));  // still wired
  // Long enough for dozens of sessions at the test's 20-200 ms backoff.
  absl::SleepFor(absl::Seconds(2));
  EXPECT_EQ(manager.hellos().size(), 2u) << "reconnecting in a loop";
  EXPECT_EQ(agent.session().sessions_established(), 2u);
}

// Re-reports asked for in a row back off (the first is immediate).
TEST(AgentSessionTest, RepeatedResyncs_BackOff) {
  SimBackend sim = MakeSim();
  FakeManager manager;
  ManagerServer server(manager);
  ASSERT_TRUE(server.started());
  AgentSessionOptions options = Options(server.address());
  options.initial_backoff = absl::Milliseconds(400);
  options.max_backoff = absl::Seconds(5);
  RunningAgent agent(options, sim);
  ASSERT_TRUE(manager.WaitForHellos(1));
  agent.session().Resync();
  ASSERT_TRUE(manager.WaitForHellos(2));  // at once
  const absl::Time second = absl::Now();
  agent.session().Resync();
  ASSERT_TRUE(manager.WaitForHellos(3));
  // The second in a row waited about initial_backoff.
  EXPECT_GE(absl::Now() - second, absl::Milliseconds(300));
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass
