// HA on etcd end to end: a real 3-member etcd cluster, two irqbypassd
// replicas (--store=etcd, one leader), a real agent that knows both, and a
// client over both.
//  - kill -9 of the leader under load, three times: the standby takes over,
//    callers and the agent follow, no acknowledged change is lost and no
//    acknowledged pair's wiring is touched;
//  - the leader stopped (SIGSTOP) past its lease, then resumed: a call it
//    was holding writes nothing, it steps down and comes back as a standby;
//  - one etcd member killed: service continues; two: writes fail
//    UNAVAILABLE, nothing acknowledged is lost, and service resumes once
//    they are back.
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"
#include "tests/ha_cluster.h"
#include "tests/process.h"

namespace irqbypass::testing {
namespace {

constexpr absl::Duration kTtl = absl::Seconds(2);

std::string Device(int n) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0000:%02x:%02x.%d", (n / 256) % 256,
                (n / 8) % 32, n % 8);
  return buf;
}

class HaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(ha_.Start(3, 2, kTtl));
    ASSERT_TRUE(ha_.StartAgent("n1"));
  }
  void TearDown() override {
    if (HasFailure()) {
      ha_.DumpLogs();
      ha_.etcd().DumpLogs();
    }
  }
  HaCluster ha_;
};

// What a caller was told about one token.
struct Acked {
  std::string producer_id, consumer_id;  // both empty: unregistered
};

TEST_F(HaTest,
       LeaderKilledUnderLoad_StandbyTakesOverNothingLostNothingTornDown) {
  constexpr int kCallers = 16;
  constexpr int kKills = 3;
  std::mutex mu;
  std::map<std::string, Acked> acked;  // guarded by mu
  std::atomic<bool> stop{false};
  std::atomic<int> errors{0}, calls{0};
  auto caller = [&](int c) {
    client::Client& api = ha_.client();
    for (int i = 0; !stop.load(); ++i) {
      const int n = c + kCallers * i;
      const std::string token = "h" + std::to_string(n);
      auto p = api.RegisterProducer(MakeProducer(token, "n1", Device(n)));
      calls.fetch_add(1);
      if (!p.ok()) {
        errors.fetch_add(1);
        ADD_FAILURE() << token << " register producer: " << p.status();
        return;
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        acked[token] = {p->registration_id, ""};
      }
      auto k = api.RegisterConsumer(MakeConsumer(token, "n1", "vm-a", n));
      calls.fetch_add(1);
      if (!k.ok() || !k->connected) {
        errors.fetch_add(1);
        ADD_FAILURE() << token << " register consumer: "
                      << (k.ok() ? "not connected" : k.status().ToString());
        return;
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        acked[token].consumer_id = k->registration_id;
      }
      if (n % 3 != 0) continue;
      // Every third pair is taken apart again.
      auto u = api.UnregisterConsumer(token, k->registration_id);
      auto v = api.UnregisterProducer(token, p->registration_id);
      calls.fetch_add(2);
      if (!u.ok() || !v.ok()) {
        errors.fetch_add(1);
        ADD_FAILURE() << token << " unregister: " << u.status() << " / "
                      << v.status();
        return;
      }
      std::lock_guard<std::mutex> lock(mu);
      acked[token] = {};
    }
  };
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) callers.emplace_back(caller, c);

  // Pairs acknowledged and left wired before a kill must never see another
  // command: the agent's log after the kill must not name them.
  struct KillPoint {
    std::vector<std::string> wired;
    size_t agent_log_at;
  };
  std::vector<KillPoint> kill_points;
  for (int kill = 0; kill < kKills && errors.load() == 0; ++kill) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    const int leader = ha_.WaitLeader();
    ASSERT_GE(leader, 0);
    KillPoint point;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (const auto& [token, a] : acked) {
        const int n = std::stoi(token.substr(1));
        if (!a.consumer_id.empty() && n % 3 != 0) point.wired.push_back(token);
      }
    }
    ASSERT_TRUE(ha_.replica(leader).Signal(SIGKILL));
    ha_.replica(leader).Wait();
    point.agent_log_at = ha_.agent("n1").Log().size();
    kill_points.push_back(std::move(point));
    const int next = ha_.WaitLeader(leader);
    ASSERT_GE(next, 0) << "no standby took over after kill " << kill;
    ASSERT_TRUE(ha_.StartReplica(leader));  // back, as a standby
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stop = true;
  for (auto& t : callers) t.join();
  ASSERT_EQ(errors.load(), 0);

  // Every acknowledged change is on the leader now, pairs connected.
  int pairs = 0, removed = 0, lost = 0;
  for (const auto& [token, a] : acked) {
    auto b = ha_.client().GetBinding(token);
    if (a.producer_id.empty()) {
      EXPECT_EQ(b.status().code(), absl::StatusCode::kNotFound)
          << token << " was unregistered: " << b.status();
      ++removed;
      continue;
    }
    if (!b.ok()) {
      ++lost;
      ADD_FAILURE() << token << ": " << b.status();
      continue;
    }
    EXPECT_EQ(b->producer_registration_id(), a.producer_id) << token;
    if (!a.consumer_id.empty()) {
      ++pairs;
      EXPECT_EQ(b->consumer_registration_id(), a.consumer_id) << token;
      EXPECT_TRUE(b->connected()) << token;
    }
  }
  int untouched = 0;
  const std::string agent_log = ha_.agent("n1").Log();
  for (size_t k = 0; k < kill_points.size(); ++k) {
    const std::string since = agent_log.substr(kill_points[k].agent_log_at);
    for (const std::string& token : kill_points[k].wired) {
      EXPECT_EQ(since.find(" token=" + token + " id="), std::string::npos)
          << token << " was sent a command after kill " << k;
      ++untouched;
    }
  }
  EXPECT_EQ(lost, 0);
  EXPECT_GT(pairs, 50);
  // The takeovers after the kills came from the standbys' warm copies (the
  // first election, at start-up, may come before a copy was listed).
  int warm = 0;
  for (int r = 0; r < 2; ++r) {
    warm +=
        CountOccurrences(ha_.replica(r).Log(), "(warm copy at etcd revision ");
  }
  EXPECT_GE(warm, kKills);
  std::printf(
      "%d leader kills under %d callers: %d calls, %d pairs and %d removals "
      "acknowledged, all found on the last leader; %d acknowledged pairs "
      "checked untouched across kills; %d lost\n",
      kKills, kCallers, calls.load(), pairs, removed, untouched, lost);
}

TEST_F(HaTest, LeaderStoppedPastItsLease_WritesNothingAndStepsDown) {
  const int leader = ha_.WaitLeader();
  ASSERT_GE(leader, 0);
  const int standby = 1 - leader;
  // A client of the leader alone, its connection up before the stop.
  client::ClientOptions options;
  options.call_timeout = absl::Seconds(30);
  options.max_attempts = 1;
  options.credentials =
      ha_.tls().Credentials(security::Role::kOrchestrator, "tests");
  auto direct = client::Client::Create(ha_.address(leader), options);
  ASSERT_TRUE(direct.ok());
  ASSERT_EQ((*direct)->GetBinding("none").status().code(),
            absl::StatusCode::kNotFound);

  ASSERT_TRUE(ha_.replica(leader).Signal(SIGSTOP));
  // Only once every thread has stopped does the call below surely wait in
  // the stopped leader's socket (a call it could still serve would be a
  // legitimate write of its epoch, found on the new leader).
  ASSERT_TRUE(WaitAllThreadsStopped(ha_.replica(leader).pid()));
  // This call waits in the stopped leader's socket.
  absl::Status held;
  std::thread call([&] {
    held = (*direct)
               ->RegisterProducer(MakeProducer("fenced", "n1", Device(1)))
               .status();
  });
  bool resumed = false;
  auto resume = [&] {
    if (!resumed) ha_.replica(leader).Signal(SIGCONT);
    resumed = true;
    if (call.joinable()) call.join();
  };
  absl::Cleanup resume_on_failure = resume;
  ASSERT_EQ(ha_.WaitLeader(leader), standby);
  // The client's calls leave the hung replica for the new leader.
  auto after =
      ha_.client().RegisterProducer(MakeProducer("after", "n1", Device(2)));
  ASSERT_TRUE(after.ok()) << after.status();

  resume();
  // Refused: the resumed replica either saw its lease gone first or its
  // write was fenced by the newer election (UNAVAILABLE), or the call was
  // still queued when the stepping-down server shut down (CANCELLED; the
  // client library retries both).
  EXPECT_TRUE(held.code() == absl::StatusCode::kUnavailable ||
              held.code() == absl::StatusCode::kCancelled)
      << held;
  ASSERT_TRUE(Eventually([&] {
    return ha_.replica(leader).Log().find("restarting as a standby") !=
           std::string::npos;
  }));
  EXPECT_NE(ha_.replica(leader).Log().find("stepping down"), std::string::npos);
  // It came back as a standby (same process, re-executed) naming the leader.
  ASSERT_TRUE(Eventually([&] {
    return ha_.replica(leader).Log().find("msg=standby leader=" +
                                          ha_.address(standby)) !=
           std::string::npos;
  }));
  EXPECT_FALSE(ha_.Serving(leader));
  auto refused = (*direct)->GetBinding("after");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find(ha_.address(standby)),
            std::string::npos)
      << refused.status();
  // Nothing of the held call reached etcd; the leader has the rest.
  EXPECT_EQ(ha_.client().GetBinding("fenced").status().code(),
            absl::StatusCode::kNotFound);
  auto kept = ha_.client().GetBinding("after");
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->producer_registration_id(), after->registration_id);
  // The agent left the deposed replica for the leader.
  const int reconciles = ha_.Reconciles("n1");
  EXPECT_TRUE(Eventually([&] {
    return ha_.Reconciles("n1") > reconciles - 1 &&
           ha_.client()
               .RegisterConsumer(MakeConsumer("after", "n1", "vm-a", 7))
               .ok();
  }));
  auto pair = ha_.client().GetBinding("after");
  ASSERT_TRUE(pair.ok());
  EXPECT_TRUE(pair->connected());
}

TEST_F(HaTest, EtcdMembersLost_OneTolerated_TwoRefuseWrites_ThenResume) {
  client::Client& api = ha_.client();
  auto p1 = api.RegisterProducer(MakeProducer("e1", "n1", Device(1)));
  ASSERT_TRUE(p1.ok()) << p1.status();

  // The member the replicas reached first goes: they move on.
  ASSERT_TRUE(ha_.etcd().member(0).Signal(SIGKILL));
  ha_.etcd().member(0).Wait();
  auto p2 = api.RegisterProducer(MakeProducer("e2", "n1", Device(2)));
  ASSERT_TRUE(p2.ok()) << p2.status();

  // No quorum: writes are refused, reads of what was acknowledged go on.
  ASSERT_TRUE(ha_.etcd().member(1).Signal(SIGKILL));
  ha_.etcd().member(1).Wait();
  client::ClientOptions once;
  once.max_attempts = 1;
  once.failover_timeout = absl::ZeroDuration();
  once.call_timeout = absl::Seconds(30);
  once.credentials =
      ha_.tls().Credentials(security::Role::kOrchestrator, "tests");
  auto single = client::Client::Create(ha_.targets(), once);
  ASSERT_TRUE(single.ok());
  auto p3 = (*single)->RegisterProducer(MakeProducer("e3", "n1", Device(3)));
  EXPECT_EQ(p3.status().code(), absl::StatusCode::kUnavailable) << p3.status();

  ASSERT_TRUE(ha_.etcd().Restart(0));
  ASSERT_TRUE(ha_.etcd().Restart(1));
  // Service resumes: a leader serves again and writes succeed.
  ASSERT_GE(ha_.WaitLeader(-1, std::chrono::seconds(60)), 0);
  bool resumed = Eventually(
      [&] {
        return api.RegisterProducer(MakeProducer("e4", "n1", Device(4))).ok();
      },
      absl::Seconds(60));
  ASSERT_TRUE(resumed);
  for (const auto& [token, id] :
       {std::pair{"e1", p1->registration_id}, {"e2", p2->registration_id}}) {
    auto b = api.GetBinding(token);
    ASSERT_TRUE(b.ok()) << token << ": " << b.status();
    EXPECT_EQ(b->producer_registration_id(), id) << token;
  }
}

}  // namespace
}  // namespace irqbypass::testing
