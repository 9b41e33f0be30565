// Durability end to end: the real irqbypassd (embedded store) and a real
// agent, 64 concurrent callers registering and unregistering, and irqbypassd
// killed with SIGKILL at random moments. After every restart, each change
// that was acknowledged is there and nothing that was refused or never
// asked for is (0 lost, 0 phantom); every unanswered call, retried with its
// request id, succeeds exactly once (with its first outcome if it had taken
// effect); acknowledged pairs are connected, and the agent was sent no
// command for them.
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/cluster.h"
#include "tests/process.h"

namespace irqbypass::testing {
namespace {

constexpr int kCallers = 64;
constexpr int kTokensPerCaller = 8;
constexpr int kKills = 10;

// What a token holds, as the callers were told.
struct Sides {
  std::string producer_id;  // registration id; empty: none
  std::string consumer_id;
  bool operator==(const Sides& o) const {
    return producer_id == o.producer_id && consumer_id == o.consumer_id;
  }
};

struct TokenModel {
  Sides acked;
  // The last call got no answer (the manager died under it): it may or may
  // not have happened. `maybe` is the state if it did (an unknown new
  // registration id is "?").
  bool uncertain = false;
  Sides maybe;
  // The unanswered call, to be retried with its request id.
  enum Op { kRegP, kRegC, kUnregP, kUnregC } op = kRegP;
  std::string request_id;
};

std::string Token(int n) { return "k" + std::to_string(n); }

std::string Device(int n) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0000:%02x:%02x.0", n / 32, n % 32);
  return buf;
}

bool NoAnswer(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable ||
         s.code() == absl::StatusCode::kDeadlineExceeded ||
         s.code() == absl::StatusCode::kCancelled ||
         s.code() == absl::StatusCode::kUnknown ||
         s.code() == absl::StatusCode::kInternal;
}

bool Matches(const Sides& actual, const Sides& expected) {
  auto same = [](const std::string& a, const std::string& e) {
    return e == "?" ? !a.empty() : a == e;
  };
  return same(actual.producer_id, expected.producer_id) &&
         same(actual.consumer_id, expected.consumer_id);
}

class DurabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(cluster_.StartManager());
    ASSERT_TRUE(cluster_.StartAgent("n1"));
  }
  void TearDown() override {
    if (HasFailure()) cluster_.DumpLogs();
  }

  // One caller: random operations on its own tokens until the first call
  // that gets no answer, or `stop`.
  void Caller(int caller, uint32_t seed, std::atomic<bool>& stop) {
    std::mt19937 rng(seed);
    client::Client& api = cluster_.client();
    while (!stop.load()) {
      const int n =
          caller + kCallers * static_cast<int>(rng() % kTokensPerCaller);
      TokenModel& m = model_[n];
      const Sides before = m.acked;
      Sides after = before;
      absl::Status status;
      const std::string request_id = client::NewRequestId();
      TokenModel::Op op;
      const bool flip = rng() % 2 == 0;
      const bool has_p = !before.producer_id.empty();
      const bool has_c = !before.consumer_id.empty();
      if ((!has_p && (flip || has_c))) {
        op = TokenModel::kRegP;
        auto r = api.RegisterProducer(MakeProducer(Token(n), "n1", Device(n)),
                                      request_id);
        status = r.status();
        after.producer_id = r.ok() ? r->registration_id : "?";
        if (r.ok() && has_c && !r->connected) {
          errors_.fetch_add(1);
          ADD_FAILURE() << Token(n) << ": registered but not connected";
        }
      } else if (!has_c) {
        op = TokenModel::kRegC;
        auto r = api.RegisterConsumer(MakeConsumer(Token(n), "n1", "vm-a", n),
                                      request_id);
        status = r.status();
        after.consumer_id = r.ok() ? r->registration_id : "?";
        if (r.ok() && has_p && !r->connected) {
          errors_.fetch_add(1);
          ADD_FAILURE() << Token(n) << ": registered but not connected";
        }
      } else if (flip) {
        op = TokenModel::kUnregP;
        status =
            api.UnregisterProducer(Token(n), before.producer_id, request_id)
                .status();
        after.producer_id.clear();
      } else {
        op = TokenModel::kUnregC;
        status =
            api.UnregisterConsumer(Token(n), before.consumer_id, request_id)
                .status();
        after.consumer_id.clear();
      }
      if (status.ok()) {
        m.acked = after;
        acknowledged_.fetch_add(1);
        continue;
      }
      if (NoAnswer(status)) {
        m.uncertain = true;
        m.maybe = after;
        m.op = op;
        m.request_id = request_id;
        return;
      }
      errors_.fetch_add(1);
      ADD_FAILURE() << Token(n) << ": " << status;
      return;
    }
  }

  Cluster cluster_;
  // Each caller touches only its own tokens (n % kCallers == caller).
  std::vector<TokenModel> model_ =
      std::vector<TokenModel>(kCallers * kTokensPerCaller);
  std::atomic<int> acknowledged_{0};
  std::atomic<int> errors_{0};
};

TEST_F(DurabilityTest, KilledUnderLoad_RestartLosesNothingAndTearsNothingDown) {
  std::mt19937 rng(20261201);
  int lost = 0, phantom = 0, uncertain_total = 0, kept_connected = 0;
  int retried_happened = 0;
  for (int kill = 0; kill < kKills; ++kill) {
    std::atomic<bool> stop{false};
    std::vector<std::thread> callers;
    for (int c = 0; c < kCallers; ++c) {
      callers.emplace_back([&, c, seed = static_cast<uint32_t>(rng())] {
        Caller(c, seed, stop);
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + rng() % 500));
    ASSERT_TRUE(cluster_.manager().Signal(SIGKILL));
    cluster_.manager().Wait();
    // From here on the agent may only finish commands whose outcome no
    // caller saw (an acknowledged call's command was done, and logged,
    // before its ack): any command for an acknowledged pair after this
    // point comes from the restarted manager.
    const size_t agent_log_at_kill = cluster_.agent("n1").Log().size();
    stop = true;
    for (auto& t : callers) t.join();
    ASSERT_EQ(errors_.load(), 0);
    // Pairs the callers were told are wired (callers own their tokens, so
    // the model is read only once they are stopped).
    std::set<std::string> acked_pairs;
    for (size_t n = 0; n < model_.size(); ++n) {
      const TokenModel& m = model_[n];
      if (!m.uncertain && !m.acked.producer_id.empty() &&
          !m.acked.consumer_id.empty()) {
        acked_pairs.insert(Token(static_cast<int>(n)));
      }
    }

    const int reconciles = cluster_.Reconciles("n1");
    ASSERT_TRUE(cluster_.StartManager());
    ASSERT_TRUE(cluster_.WaitReconciles("n1", reconciles + 1));

    for (size_t n = 0; n < model_.size(); ++n) {
      TokenModel& m = model_[n];
      const std::string token = Token(static_cast<int>(n));
      auto b = cluster_.client().GetBinding(token);
      Sides actual;
      bool connected = false;
      if (b.ok()) {
        actual.producer_id =
            b->has_producer() ? b->producer_registration_id() : "";
        actual.consumer_id =
            b->has_consumer() ? b->consumer_registration_id() : "";
        connected = b->connected();
      } else {
        ASSERT_EQ(b.status().code(), absl::StatusCode::kNotFound) << b.status();
      }
      const bool as_acked = Matches(actual, m.acked);
      const bool as_maybe = m.uncertain && Matches(actual, m.maybe);
      if (!as_acked && !as_maybe) {
        // Something acknowledged is missing, or something appeared.
        const bool missing =
            (!m.acked.producer_id.empty() && actual.producer_id.empty()) ||
            (!m.acked.consumer_id.empty() && actual.consumer_id.empty());
        (missing ? lost : phantom)++;
        ADD_FAILURE() << token << " after kill " << kill
                      << ": holds p=" << actual.producer_id
                      << " c=" << actual.consumer_id
                      << ", acknowledged p=" << m.acked.producer_id
                      << " c=" << m.acked.consumer_id;
      }
      if (!actual.producer_id.empty() && !actual.consumer_id.empty()) {
        EXPECT_TRUE(connected) << token << " after kill " << kill;
      }
      if (m.uncertain) {
        ++uncertain_total;
        // The client retries the unanswered call with its request id: it
        // succeeds, with the first outcome if the call had taken effect
        // (the same registration id), and nothing happens twice.
        const bool happened = as_maybe && !as_acked;
        absl::Status retried;
        Sides after = m.acked;
        client::Client& api = cluster_.client();
        switch (m.op) {
          case TokenModel::kRegP: {
            auto r = api.RegisterProducer(
                MakeProducer(token, "n1", Device(static_cast<int>(n))),
                m.request_id);
            retried = r.status();
            if (r.ok()) {
              if (happened) {
                EXPECT_EQ(r->registration_id, actual.producer_id) << token;
              }
              after.producer_id = r->registration_id;
            }
            break;
          }
          case TokenModel::kRegC: {
            auto r = api.RegisterConsumer(
                MakeConsumer(token, "n1", "vm-a", static_cast<int>(n)),
                m.request_id);
            retried = r.status();
            if (r.ok()) {
              if (happened) {
                EXPECT_EQ(r->registration_id, actual.consumer_id) << token;
              }
              after.consumer_id = r->registration_id;
            }
            break;
          }
          case TokenModel::kUnregP:
            retried =
                api.UnregisterProducer(token, m.acked.producer_id, m.request_id)
                    .status();
            after.producer_id.clear();
            break;
          case TokenModel::kUnregC:
            retried =
                api.UnregisterConsumer(token, m.acked.consumer_id, m.request_id)
                    .status();
            after.consumer_id.clear();
            break;
        }
        EXPECT_TRUE(retried.ok())
            << token << " retry after kill " << kill << " (it had "
            << (happened ? "" : "not ") << "happened): " << retried;
        if (happened) ++retried_happened;
        actual = after;
      }
      m.acked = actual;  // the unanswered call is resolved now
      m.uncertain = false;
    }
    // The restarted manager kept the agent's wiring of every acknowledged
    // pair: no disconnect was sent for any of them.
    const std::string since_kill =
        cluster_.agent("n1").Log().substr(agent_log_at_kill);
    for (const std::string& token : acked_pairs) {
      EXPECT_EQ(since_kill.find(" token=" + token + " id="), std::string::npos)
          << token << " was sent a command after kill " << kill;
    }
    kept_connected += static_cast<int>(acked_pairs.size());
  }
  EXPECT_EQ(lost, 0);
  EXPECT_EQ(phantom, 0);
  EXPECT_GT(acknowledged_.load(), 1000);
  std::printf(
      "%d kills: %d acknowledged changes, %d unanswered calls retried with "
      "their request ids (%d had taken effect and returned their first "
      "outcome), %d acknowledged pairs kept wired across kills; %d lost, %d "
      "phantom\n",
      kKills, acknowledged_.load(), uncertain_total, retried_happened,
      kept_connected, lost, phantom);
}

}  // namespace
}  // namespace irqbypass::testing
