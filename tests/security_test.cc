// irqbypassd's authorization with the real binaries and real mutual TLS on
// loopback: every RPC by role (none, reader, orchestrator, admin, the
// agents of nodes n1 and n2), and every way an agent of n1 could touch n2.
#include <signal.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "agent/agent_session.h"
#include "client/error_detail.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "gtest/gtest.h"
#include "protos/irqbypass/v1/agent.grpc.pb.h"
#include "protos/irqbypass/v1/irqbypass.grpc.pb.h"
#include "service/bypass_service.h"
#include "service/server_options.h"
#include "tests/cluster.h"
#include "tests/metrics_support.h"

namespace irqbypass::testing {
namespace {

using security::Role;

std::chrono::system_clock::time_point Soon() {
  return std::chrono::system_clock::now() + std::chrono::seconds(10);
}

// What a call may come back with: let through (any status but these),
// refused for its role, or refused at the handshake.
enum class Outcome { kAllowed, kDenied, kNoConnection };

Outcome Classify(const grpc::Status& s) {
  if (s.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
    return Outcome::kDenied;
  }
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE ||
      s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
    return Outcome::kNoConnection;
  }
  return Outcome::kAllowed;
}

using Stub = v1::BypassManager::Stub;

// A unary call with a 10 s deadline; its status.
template <typename Request, typename Response>
grpc::Status Call(Stub& stub,
                  grpc::Status (Stub::*method)(grpc::ClientContext*,
                                               const Request&, Response*),
                  const Request& request) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Soon());
  Response response;
  return (stub.*method)(&ctx, request, &response);
}

const char* Name(Outcome o) {
  switch (o) {
    case Outcome::kAllowed:
      return "allowed";
    case Outcome::kDenied:
      return "PERMISSION_DENIED";
    case Outcome::kNoConnection:
      return "refused at the handshake";
  }
  return "";
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(cluster_.StartManager({"--store=memory"}));
    ASSERT_TRUE(cluster_.StartAgent("n1"));
    ASSERT_TRUE(cluster_.StartAgent("n2"));
  }
  void TearDown() override {
    if (HasFailure()) cluster_.DumpLogs();
  }
  std::shared_ptr<grpc::Channel> Channel(
      std::shared_ptr<grpc::ChannelCredentials> credentials) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return grpc::CreateCustomChannel(cluster_.target(), credentials, args);
  }
  // TLS that verifies the server but presents no certificate.
  std::shared_ptr<grpc::ChannelCredentials> NoCertificate() {
    grpc::experimental::TlsChannelCredentialsOptions options;
    options.set_certificate_provider(
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            cluster_.Certificate(Role::kReader, "x").ca_file, 1));
    options.watch_root_certs();
    options.set_check_call_host(false);
    options.set_certificate_verifier(
        std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
    return grpc::experimental::TlsCredentials(options);
  }
  // The first message of an agent session opened with `credentials` whose
  // hello names `node` and reports `wired`: its status (OK: the manager
  // answered with its hello).
  grpc::Status OpenSession(std::shared_ptr<grpc::ChannelCredentials> creds,
                           const std::string& node,
                           const std::vector<v1::WiredPair>& wired = {}) {
    auto stub = v1::AgentControl::NewStub(Channel(creds));
    grpc::ClientContext ctx;
    ctx.set_deadline(Soon());
    auto stream = stub->Session(&ctx);
    v1::AgentMessage hello;
    hello.mutable_hello()->set_node(node);
    hello.mutable_hello()->set_backend("sim");
    for (const v1::WiredPair& w : wired)
      *hello.mutable_hello()->add_wired() = w;
    stream->Write(hello);
    v1::ManagerMessage answer;
    if (stream->Read(&answer) && answer.has_hello()) {
      ctx.TryCancel();
      stream->Finish().IgnoreError();
      return grpc::Status::OK;
    }
    return stream->Finish();
  }

  Cluster cluster_;
};

TEST_F(SecurityTest, EveryRpcByRole) {
  struct Caller {
    const char* name;
    std::shared_ptr<grpc::ChannelCredentials> credentials;
    bool reads, writes, agent_n1;
    bool connects = true;
  };
  std::vector<Caller> callers = {
      {"no certificate", NoCertificate(), false, false, false, false},
      {"reader", cluster_.tls().Credentials(Role::kReader, "r"), true, false,
       false},
      {"orchestrator", cluster_.tls().Credentials(Role::kOrchestrator, "o"),
       true, true, false},
      {"admin", cluster_.tls().Credentials(Role::kAdmin, "a"), true, true,
       false},
      {"agent n1", cluster_.tls().Credentials(Role::kAgent, "n1"), false, false,
       true},
      {"agent n2", cluster_.tls().Credentials(Role::kAgent, "n2"), false, false,
       false},
  };
  int token = 0;
  for (const Caller& caller : callers) {
    SCOPED_TRACE(caller.name);
    auto stub = v1::BypassManager::NewStub(Channel(caller.credentials));
    const Outcome read = !caller.connects ? Outcome::kNoConnection
                         : caller.reads   ? Outcome::kAllowed
                                          : Outcome::kDenied;
    const Outcome write = !caller.connects ? Outcome::kNoConnection
                          : caller.writes  ? Outcome::kAllowed
                                           : Outcome::kDenied;
    const std::string t = "t" + std::to_string(++token);
    auto expect = [&](const char* method, Outcome want, grpc::Status got) {
      EXPECT_EQ(Classify(got), want)
          << method << ": want " << Name(want) << ", got " << got.error_code()
          << " " << got.error_message();
    };
    v1::GetBindingRequest get;
    get.set_token(t);
    expect("GetBinding", read, Call(*stub, &Stub::GetBinding, get));
    expect("ListBindings", read,
           Call(*stub, &Stub::ListBindings, v1::ListBindingsRequest()));
    expect("ListNodes", read,
           Call(*stub, &Stub::ListNodes, v1::ListNodesRequest()));
    v1::GetNodeRequest node;
    node.set_node("n1");
    expect("GetNode", read, Call(*stub, &Stub::GetNode, node));
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(Soon());
      v1::WatchBindingsRequest req;
      req.set_include_existing(true);
      auto watch = stub->WatchBindings(&ctx, req);
      v1::BindingEvent event;
      if (watch->Read(&event)) {
        expect("WatchBindings", read, grpc::Status::OK);
        ctx.TryCancel();
        watch->Finish().IgnoreError();
      } else {
        expect("WatchBindings", read, watch->Finish());
      }
    }
    v1::RegisterConsumerRequest consumer;
    *consumer.mutable_consumer() = MakeConsumer(t, "n1", "vm-a", token);
    expect("RegisterConsumer", write,
           Call(*stub, &Stub::RegisterConsumer, consumer));
    v1::RegisterProducerRequest producer;
    *producer.mutable_producer() = MakeProducer(t, "n1", "0000:3b:00.1", token);
    expect("RegisterProducer", write,
           Call(*stub, &Stub::RegisterProducer, producer));
    v1::UnregisterProducerRequest unproducer;
    unproducer.set_token(t);
    expect("UnregisterProducer", write,
           Call(*stub, &Stub::UnregisterProducer, unproducer));
    v1::UnregisterConsumerRequest unconsumer;
    unconsumer.set_token(t);
    expect("UnregisterConsumer", write,
           Call(*stub, &Stub::UnregisterConsumer, unconsumer));
    v1::BatchRequest batch;
    *batch.add_items()->mutable_register_consumer()->mutable_consumer() =
        MakeConsumer(t + "-b", "n1", "vm-b", token);
    expect("Batch", write, Call(*stub, &Stub::Batch, batch));
    expect("AgentControl/Session (hello n1)",
           !caller.connects  ? Outcome::kNoConnection
           : caller.agent_n1 ? Outcome::kAllowed
                             : Outcome::kDenied,
           OpenSession(caller.credentials, "n1"));
  }
  // What the orchestrator and the admin registered in their batches is
  // there (their other registrations they unregistered again); nothing the
  // others tried is.
  EXPECT_TRUE(cluster_.client().GetBinding("t3-b").ok());
  EXPECT_TRUE(cluster_.client().GetBinding("t4-b").ok());
  for (const char* refused : {"t2", "t2-b", "t5", "t5-b", "t6", "t6-b"}) {
    EXPECT_EQ(cluster_.client().GetBinding(refused).status().code(),
              absl::StatusCode::kNotFound)
        << refused;
  }
}

TEST_F(SecurityTest, AgentOfN1_CannotActForN2) {
  const auto n1 = cluster_.tls().Credentials(Role::kAgent, "n1");
  // Claiming n2 in its hello.
  grpc::Status claim = OpenSession(n1, "n2");
  EXPECT_EQ(claim.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(claim.error_message().find("is for node \"n1\""), std::string::npos)
      << claim.error_message();
  // Reporting n2's wiring in its own session.
  v1::WiredPair foreign;
  foreign.set_token("w1");
  *foreign.mutable_producer() = MakeProducer("w1", "n2", "0000:3b:00.1", 1);
  *foreign.mutable_consumer() = MakeConsumer("w1", "n2", "vm-a", 40);
  grpc::Status report = OpenSession(n1, "n1", {foreign});
  EXPECT_EQ(report.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(report.error_message().find("names node \"n2\""), std::string::npos)
      << report.error_message();
  // n2's real agent kept its session throughout: a pair on n2 connects.
  ASSERT_TRUE(cluster_.client()
                  .RegisterConsumer(MakeConsumer("k2", "n2", "vm-a", 41))
                  .ok());
  auto p = cluster_.client().RegisterProducer(
      MakeProducer("k2", "n2", "0000:3b:00.2", 2));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->connected);
  EXPECT_NE(cluster_.agent("n2").Log().find("token=k2"), std::string::npos)
      << "n2's commands went to n2's agent";
  EXPECT_EQ(cluster_.agent("n1").Log().find("token=k2"), std::string::npos)
      << "n1's agent was sent n2's command";
  // Each refusal was logged.
  const std::string log = cluster_.manager().Log();
  EXPECT_NE(log.find("msg=\"call refused\" method=Session"), std::string::npos)
      << log;
}

// Tokens belong to the orchestrator that registered them, across a
// restart of irqbypassd (the embedded store keeps the owner).
TEST(SecurityOwnersTest, OtherOrchestrator_CannotUnregisterOrPair_AdminMay) {
  Cluster cluster;
  ASSERT_TRUE(cluster.StartManager());
  ASSERT_TRUE(cluster.StartAgent("n1"));
  auto client_as = [&](Role role, const std::string& name) {
    client::ClientOptions options;
    options.credentials = cluster.tls().Credentials(role, name);
    return *client::Client::Create(cluster.target(), options);
  };
  auto x = client_as(Role::kOrchestrator, "x");
  auto y = client_as(Role::kOrchestrator, "y");
  auto admin = client_as(Role::kAdmin, "ops");
  auto c = x->RegisterConsumer(MakeConsumer("vm1-q0", "n1", "vm-a", 24));
  ASSERT_TRUE(c.ok()) << c.status();

  auto expect_not_owner = [](const absl::Status& s) {
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
    auto detail = client::GetErrorDetail(s);
    ASSERT_TRUE(detail.has_value());
    EXPECT_EQ(detail->reason(), v1::ErrorDetail::NOT_OWNER);
    EXPECT_EQ(s.message().find("orchestrator/x"), std::string::npos) << s;
  };
  expect_not_owner(y->UnregisterConsumer("vm1-q0", "").status());
  expect_not_owner(
      y->RegisterProducer(MakeProducer("vm1-q0", "n1", "0000:3b:00.1", 1))
          .status());

  // irqbypassd restarted: the owner is still known.
  ASSERT_TRUE(cluster.manager().Signal(SIGKILL));
  cluster.manager().Wait();
  ASSERT_TRUE(cluster.StartManager());
  auto y2 = client_as(Role::kOrchestrator, "y");
  auto x2 = client_as(Role::kOrchestrator, "x");
  auto admin2 = client_as(Role::kAdmin, "ops");
  expect_not_owner(y2->UnregisterConsumer("vm1-q0", "").status());
  // X pairs its own; an admin may unregister X's.
  ASSERT_TRUE(cluster.WaitReconciles("n1", 2));
  auto p =
      x2->RegisterProducer(MakeProducer("vm1-q0", "n1", "0000:3b:00.1", 1));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->connected);
  auto by_admin = admin2->UnregisterProducer("vm1-q0", "");
  EXPECT_TRUE(by_admin.ok()) << by_admin.status();
  EXPECT_TRUE(x2->UnregisterConsumer("vm1-q0", "").ok());
}

// The largest legitimate messages fit irqbypassd's 1 MiB limit; a larger
// one is refused, naming the limit, and the server goes on.
TEST_F(SecurityTest, MessageLimit_LegitimateOnesFit_LargerRefused) {
  const std::string longest_token(256, 't');
  const std::string longest_node(253, 'n');
  // An agent's inventory message: kWiredPerMessage pairs, every field at
  // its longest.
  v1::AgentMessage inventory;
  for (size_t i = 0; i < agent::kWiredPerMessage; ++i) {
    v1::WiredPair* w = inventory.mutable_wired_more()->add_wired();
    w->set_token(longest_token);
    *w->mutable_producer() =
        MakeProducer(longest_token, longest_node, "0000:3b:00.1", 2047);
    *w->mutable_consumer() =
        MakeConsumer(longest_token, longest_node, std::string(128, 'v'), 4095);
  }
  EXPECT_LT(inventory.ByteSizeLong(), static_cast<size_t>(kMaxRequestBytes));
  // A Batch of the most items, of ordinary size.
  v1::BatchRequest batch;
  for (int i = 0; i < BypassService::kMaxBatchItems; ++i) {
    auto* item = batch.add_items()->mutable_register_consumer();
    *item->mutable_consumer() = MakeConsumer(
        "vm-" + std::to_string(i) + "-queue-0", "node-17", "vm-1", i % 4096);
    item->set_request_id("0123456789abcdef0123456789abcdef");
  }
  EXPECT_LT(batch.ByteSizeLong(), static_cast<size_t>(kMaxRequestBytes));

  // Past the limit: refused by gRPC before it is parsed.
  v1::BatchRequest huge;
  for (int i = 0; i < 3000; ++i) {
    *huge.add_items()->mutable_register_consumer()->mutable_consumer() =
        MakeConsumer(longest_token, longest_node, "vm-1", 1);
  }
  ASSERT_GT(huge.ByteSizeLong(), static_cast<size_t>(kMaxRequestBytes));
  auto stub = v1::BypassManager::NewStub(Channel(cluster_.credentials()));
  const grpc::Status refused = Call(*stub, &Stub::Batch, huge);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.error_message().find(std::to_string(kMaxRequestBytes)),
            std::string::npos)
      << refused.error_message();
  EXPECT_EQ(cluster_.client().GetBinding("none").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(SecurityLimitsTest, WatchesPerIdentity_Capped_OthersUnaffected) {
  Cluster cluster;
  const std::string audit = cluster.dir() + "/audit.jsonl";
  ASSERT_TRUE(
      cluster.StartManager({"--store=memory", "--max_watches_per_identity=2",
                            "--audit_log=" + audit}));
  auto open_watch = [&](std::shared_ptr<grpc::ChannelCredentials> creds,
                        grpc::ClientContext* ctx) {
    auto stub = v1::BypassManager::NewStub(
        grpc::CreateChannel(cluster.target(), creds));
    v1::WatchBindingsRequest req;
    req.set_include_existing(true);
    auto watch = stub->WatchBindings(ctx, req);
    v1::BindingEvent event;
    const bool live = watch->Read(&event);  // SYNCED, if admitted
    grpc::Status status = grpc::Status::OK;
    if (!live) status = watch->Finish();
    return std::make_pair(std::move(watch), status);
  };
  const auto reader = cluster.tls().Credentials(Role::kReader, "r1");
  grpc::ClientContext c1, c2, c3, c4;
  auto w1 = open_watch(reader, &c1);
  auto w2 = open_watch(reader, &c2);
  ASSERT_TRUE(w1.second.ok() && w2.second.ok());
  auto w3 = open_watch(reader, &c3);
  EXPECT_EQ(w3.second.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(w3.second.error_message().find("--max_watches_per_identity"),
            std::string::npos)
      << w3.second.error_message();
  EXPECT_TRUE(Eventually([&] {
    return ReadFile(audit).find(
               "\"role\":\"reader\",\"method\":\"WatchBindings\",\"token\":"
               "\"\",\"node\":\"\",\"decision\":\"denied\",\"code\":"
               "\"RESOURCE_EXHAUSTED\"") != std::string::npos;
  })) << ReadFile(audit);
  // Another identity is not held back by the first one's watches.
  auto other = open_watch(cluster.tls().Credentials(Role::kReader, "r2"), &c4);
  EXPECT_TRUE(other.second.ok()) << other.second.error_message();
  // One of r1's ends: r1 may watch again.
  c1.TryCancel();
  w1.first->Finish().IgnoreError();
  EXPECT_TRUE(Eventually([&] {
    grpc::ClientContext again;
    auto w = open_watch(reader, &again);
    const bool ok = w.second.ok();
    if (ok) {
      again.TryCancel();
      w.first->Finish().IgnoreError();
    }
    return ok;
  }));
  for (grpc::ClientContext* c : {&c2, &c4}) c->TryCancel();
  w2.first->Finish().IgnoreError();
  other.first->Finish().IgnoreError();
}

TEST(SecurityLimitsTest, RatePerIdentity_Limited_OthersUnaffected) {
  Cluster cluster;
  ASSERT_TRUE(
      cluster.StartManager({"--store=memory", "--rate_limit_per_identity=20"}));
  auto stub = v1::BypassManager::NewStub(grpc::CreateChannel(
      cluster.target(), cluster.tls().Credentials(Role::kReader, "busy")));
  v1::GetBindingRequest get;
  get.set_token("t");
  int allowed = 0, limited = 0;
  std::string message;
  const absl::Time start = absl::Now();
  for (int i = 0; i < 200; ++i) {
    const grpc::Status s = Call(*stub, &Stub::GetBinding, get);
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++limited;
      message = s.error_message();
    } else {
      EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
      ++allowed;
    }
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  // A second's worth at once, then 20 a second.
  EXPECT_LE(allowed, 20 + static_cast<int>(seconds * 20) + 1)
      << allowed << " in " << seconds << " s";
  EXPECT_GT(limited, 0);
  EXPECT_NE(message.find("--rate_limit_per_identity"), std::string::npos)
      << message;
  // Another identity gets its own budget.
  auto other = v1::BypassManager::NewStub(grpc::CreateChannel(
      cluster.target(), cluster.tls().Credentials(Role::kReader, "calm")));
  EXPECT_EQ(Call(*other, &Stub::GetBinding, get).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST(SecurityAuditTest, OneLinePerMutationAndPerDenial_NoneForReads) {
  Cluster cluster;
  const std::string audit = cluster.dir() + "/audit.jsonl";
  ASSERT_TRUE(cluster.StartManager({"--store=memory", "--audit_log=" + audit}));
  ASSERT_TRUE(cluster.StartAgent("n1"));
  ASSERT_TRUE(cluster.client()
                  .RegisterConsumer(MakeConsumer("a1", "n1", "vm-a", 1))
                  .ok());
  ASSERT_TRUE(cluster.client()
                  .RegisterProducer(MakeProducer("a1", "n1", "0000:3b:00.1", 1))
                  .ok());
  EXPECT_EQ(cluster.client().UnregisterProducer("a2", "").status().code(),
            absl::StatusCode::kNotFound);  // a mutation that failed: audited
  v1::BatchRequest batch;
  *batch.add_items()->mutable_register_consumer()->mutable_consumer() =
      MakeConsumer("b1", "n1", "vm-b", 2);
  batch.add_items()->mutable_unregister_consumer()->set_token("a1");
  ASSERT_TRUE(cluster.client().Batch(batch).ok());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(cluster.client().GetBinding("a1").ok());  // reads: none
  }
  auto reader = v1::BypassManager::NewStub(grpc::CreateChannel(
      cluster.target(), cluster.tls().Credentials(Role::kReader, "r1")));
  v1::UnregisterProducerRequest refused;
  refused.set_token("a1");
  EXPECT_EQ(Call(*reader, &Stub::UnregisterProducer, refused).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  std::vector<std::string> lines;
  EXPECT_TRUE(Eventually([&] {
    lines = absl::StrSplit(ReadFile(audit), '\n', absl::SkipEmpty());
    return lines.size() >= 6;
  })) << ReadFile(audit);
  ASSERT_EQ(lines.size(), 6u) << ReadFile(audit);
  const std::string tests =
      "\"identity\":\"spiffe://irqbypass.test/irqbypass/orchestrator/tests\","
      "\"role\":\"orchestrator\",";
  const std::vector<std::string> want = {
      tests +
          "\"method\":\"RegisterConsumer\",\"token\":\"a1\",\"node\":"
          "\"n1\",\"decision\":\"allowed\",\"code\":\"OK\"",
      tests +
          "\"method\":\"RegisterProducer\",\"token\":\"a1\",\"node\":"
          "\"n1\",\"decision\":\"allowed\",\"code\":\"OK\"",
      tests +
          "\"method\":\"UnregisterProducer\",\"token\":\"a2\",\"node\":"
          "\"\",\"decision\":\"allowed\",\"code\":\"NOT_FOUND\"",
      tests + "\"method\":\"Batch[0].register_consumer\",\"token\":\"b1\"",
      tests + "\"method\":\"Batch[1].unregister_consumer\",\"token\":\"a1\"",
      "\"identity\":\"spiffe://irqbypass.test/irqbypass/reader/r1\",\"role\":"
      "\"reader\",\"method\":\"UnregisterProducer\",\"token\":\"\",\"node\":"
      "\"\",\"decision\":\"denied\",\"code\":\"PERMISSION_DENIED\"",
  };
  // (Batch items end in any order.)
  for (const std::string& w : want) {
    EXPECT_EQ(std::count_if(lines.begin(), lines.end(),
                            [&](const std::string& l) {
                              return l.find(w) != std::string::npos &&
                                     l.find("\"peer\":\"ipv4:127.0.0.1:") !=
                                         std::string::npos;
                            }),
              1)
        << w << "\n"
        << ReadFile(audit);
  }
}

TEST(SecurityLimitsTest, CommandBacklogPerNode_ConnectsPastItRefused) {
  Cluster cluster;
  ASSERT_TRUE(cluster.StartManager({"--store=memory", "--agent_backlog=2"}));
  ASSERT_TRUE(cluster.StartAgent("n1", {"--sim_step_delay_ms=1000"}));
  v1::BatchRequest consumers, producers;
  for (int i = 0; i < 6; ++i) {
    const std::string t = "k" + std::to_string(i);
    *consumers.add_items()->mutable_register_consumer()->mutable_consumer() =
        MakeConsumer(t, "n1", "vm-a", 10 + i);
    *producers.add_items()->mutable_register_producer()->mutable_producer() =
        MakeProducer(t, "n1", "0000:3b:00.1", i);
  }
  ASSERT_TRUE(cluster.client().Batch(consumers).ok());
  auto results = cluster.client().Batch(producers);  // six connects at once
  ASSERT_TRUE(results.ok()) << results.status();
  int connected = 0, refused = 0;
  for (const auto& r : results->results()) {
    if (r.status().code() == 0) {
      ++connected;
    } else {
      EXPECT_EQ(r.status().code(),
                static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
      EXPECT_NE(r.status().message().find("--agent_backlog"), std::string::npos)
          << r.status().message();
      ++refused;
    }
  }
  EXPECT_EQ(connected, 2);
  EXPECT_EQ(refused, 4);
  // Refused means not made: those producers are not registered.
  int registered = 0;
  for (int i = 0; i < 6; ++i) {
    auto b = cluster.client().GetBinding("k" + std::to_string(i));
    ASSERT_TRUE(b.ok());
    registered += b->has_producer();
  }
  EXPECT_EQ(registered, 2);
}

TEST(SecurityLimitsTest, MalformedRequests_LibraryLinesRateLimited) {
  Cluster cluster;
  ASSERT_TRUE(cluster.StartManager({"--store=memory"}));
  const auto creds = cluster.tls().Credentials(Role::kReader, "r1");
  // A token that is not UTF-8: protobuf refuses to parse the request and
  // says so, once per request.
  const absl::Time start = absl::Now();
  for (int i = 0; i < 100; ++i) {
    RawResult r =
        RawUnary(cluster.target(), "/irqbypass.v1.BypassManager/GetBinding",
                 ProtoStringField(1, "\xff\xfe"), creds);
    EXPECT_FALSE(r.status.ok());
  }
  const int seconds =
      static_cast<int>(absl::ToInt64Seconds(absl::Now() - start)) + 1;
  const std::string log = cluster.manager().Log();
  EXPECT_EQ(CountOccurrences(log, "[libprotobuf"), 0) << TailLines(log, 5);
  const int lines = CountOccurrences(log, "msg=protobuf");
  EXPECT_GT(lines, 0);
  EXPECT_LE(lines, 10 * (seconds + 1))
      << lines << " lines in " << seconds << " s";
  // The server is fine.
  EXPECT_EQ(cluster.client().GetBinding("t").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(SecurityLimitsTest, RegistrationsPerNode_CountedAgainAfterARestart) {
  Cluster cluster;
  const std::vector<std::string> flags = {"--max_registrations_per_node=2"};
  ASSERT_TRUE(cluster.StartManager(flags));
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(cluster.client()
                    .RegisterConsumer(MakeConsumer("c" + std::to_string(i),
                                                   "n1", "vm-a", 10 + i))
                    .ok());
  }
  auto third =
      cluster.client().RegisterConsumer(MakeConsumer("c2", "n1", "vm-a", 12));
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(third.status().message().find("--max_registrations_per_node"),
            std::string::npos)
      << third.status();
  ASSERT_TRUE(cluster.manager().Signal(SIGKILL));
  cluster.manager().Wait();
  ASSERT_TRUE(cluster.StartManager(flags));  // the embedded store's state
  EXPECT_EQ(cluster.client()
                .RegisterConsumer(MakeConsumer("c2", "n1", "vm-a", 12))
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(cluster.client()
                  .RegisterConsumer(MakeConsumer("o1", "n2", "vm-a", 12))
                  .ok());  // another node
  ASSERT_TRUE(cluster.client().UnregisterConsumer("c0", "").ok());
  EXPECT_TRUE(cluster.client()
                  .RegisterConsumer(MakeConsumer("c2", "n1", "vm-a", 12))
                  .ok());
}

TEST(SecurityTimeoutsTest, StreamWithoutHello_Ended) {
  Cluster cluster;
  ASSERT_TRUE(
      cluster.StartManager({"--store=memory", "--agent_hello_timeout=1s"}));
  grpc::ChannelArguments args;
  auto stub = v1::AgentControl::NewStub(grpc::CreateCustomChannel(
      cluster.target(), cluster.tls().Credentials(Role::kAgent, "n1"), args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto stream = stub->Session(&ctx);  // and then says nothing
  v1::ManagerMessage m;
  EXPECT_FALSE(stream->Read(&m));  // ended by the manager, not the deadline
  const grpc::Status s = stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED) << s.error_message();
  EXPECT_TRUE(Eventually([&] {
    return cluster.manager().Log().find(
               "msg=\"agent stream ended: no hello in time\"") !=
           std::string::npos;
  })) << cluster.manager().Log();
}

TEST(SecurityTimeoutsTest,
     SessionPastItsMaximumAge_EndedAndResumedKeepingWiring) {
  Cluster cluster;
  ASSERT_TRUE(
      cluster.StartManager({"--store=memory", "--max_connection_age=2s"}));
  ASSERT_TRUE(cluster.StartAgent("n1"));
  ASSERT_TRUE(cluster.client()
                  .RegisterConsumer(MakeConsumer("a1", "n1", "vm-a", 1))
                  .ok());
  auto p = cluster.client().RegisterProducer(
      MakeProducer("a1", "n1", "0000:3b:00.1", 1));
  ASSERT_TRUE(p.ok()) << p.status();
  const int reconciles = cluster.Reconciles("n1");
  // Ended at 2 s, again 2 s later: each time the agent comes back (a new
  // handshake with its certificate as it is then) and keeps its pair.
  ASSERT_TRUE(cluster.WaitReconciles("n1", reconciles + 2))
      << cluster.manager().Log();
  EXPECT_NE(cluster.manager().Log().find("at its maximum age"),
            std::string::npos);
  EXPECT_NE(cluster.manager().Log().find("kept=1 disconnected=0"),
            std::string::npos);
  auto binding = cluster.client().GetBinding("a1");
  ASSERT_TRUE(binding.ok());
  EXPECT_TRUE(binding->connected());
}

TEST_F(SecurityTest, InsecureCluster_PlaintextAndWarned) {
  Cluster plain(Cluster::Security::kInsecure);
  ASSERT_TRUE(plain.StartManager({"--store=memory"}));
  ASSERT_TRUE(plain.StartAgent("n1"));
  EXPECT_NE(plain.manager().Log().find("--insecure: plaintext"),
            std::string::npos);
  EXPECT_TRUE(plain.client()
                  .RegisterConsumer(MakeConsumer("i1", "n1", "vm-a", 1))
                  .ok());
  // The TLS cluster refuses a plaintext caller.
  auto stub =
      v1::BypassManager::NewStub(Channel(grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(Soon());
  v1::GetBindingRequest req;
  req.set_token("x");
  v1::Binding resp;
  EXPECT_EQ(stub->GetBinding(&ctx, req, &resp).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace irqbypass::testing
