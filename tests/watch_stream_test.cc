// WatchBindings on the real irqbypassd, where the callback API shows: idle
// watchers hold no thread of the manager, a watcher that stops reading is
// ended RESOURCE_EXHAUSTED once --watch_queue events wait for it (and the
// others go on), a shutdown ends watches UNAVAILABLE, and the manager runs
// no sync-server thread at all.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/irqbypass_client.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "protos/irqbypass/v1/irqbypass.grpc.pb.h"
#include "tests/cluster.h"
#include "tests/metrics_support.h"

namespace irqbypass::testing {
namespace {

constexpr char kWatchMethod[] = "/irqbypass.v1.BypassManager/WatchBindings";

size_t ThreadCount(pid_t pid) { return ThreadNames(pid).size(); }

// Registers producers p0..p(n-1) on `node` (no agent needed) through Batch.
// Registers n producers in Batch calls of 4000; after each, `after_batch`
// (given how many are registered) may wait.
void RegisterProducers(
    client::Client& api, const std::string& prefix, int n,
    const std::string& node,
    const std::function<void(int)>& after_batch = [](int) {}) {
  for (int start = 0; start < n; start += 4000) {
    v1::BatchRequest request;
    for (int i = start; i < std::min(n, start + 4000); ++i) {
      auto* item = request.add_items()->mutable_register_producer();
      *item->mutable_producer() =
          MakeProducer(absl::StrCat(prefix, i), node,
                       absl::StrCat("0000:", 10 + i / 2048, ":00.1"), i % 2048);
    }
    auto response = api.Batch(request);
    ASSERT_TRUE(response.ok()) << response.status();
    for (const auto& result : response->results()) {
      ASSERT_EQ(result.status().code(), 0) << result.status().message();
    }
    after_batch(std::min(n, start + 4000));
  }
}

TEST(WatchStreamTest, IdleWatchers_HoldNoManagerThread_AndAllSeeAnEvent) {
  Cluster cluster;
  // (All 200 as one identity, the test client: above the default 100.)
  ASSERT_TRUE(cluster.StartManager(
      {"--store=memory", "--max_watches_per_identity=1000"}));
  const pid_t pid = cluster.manager().pid();
  // Let the process settle (the first calls start gRPC's own threads).
  ASSERT_TRUE(cluster.client().GetBinding("warm-up").status().code() ==
              absl::StatusCode::kNotFound);
  const size_t before = ThreadCount(pid);

  constexpr int kWatchers = 200;
  // WatchBindingsRequest{include_existing: true} (field 2): each sends
  // SYNCED once it is subscribed.
  const std::string request("\x10\x01", 2);
  std::vector<std::unique_ptr<RawStream>> watchers;
  for (int i = 0; i < kWatchers; ++i) {
    watchers.push_back(std::make_unique<RawStream>(
        cluster.target(), kWatchMethod, request, cluster.credentials()));
  }
  for (int i = 0; i < kWatchers; ++i) {
    auto synced = watchers[i]->Read(std::chrono::seconds(30));
    ASSERT_TRUE(synced.has_value()) << "watcher " << i << " not subscribed";
    v1::BindingEvent parsed;
    ASSERT_TRUE(parsed.ParseFromString(*synced));
    ASSERT_EQ(parsed.type(), v1::BindingEvent::SYNCED);
  }
  // Every watch is subscribed: one registration reaches them all.
  ASSERT_TRUE(cluster.client()
                  .RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1"))
                  .ok());
  for (int i = 0; i < kWatchers; ++i) {
    auto event = watchers[i]->Read(std::chrono::seconds(30));
    ASSERT_TRUE(event.has_value()) << "watcher " << i << " got nothing";
    v1::BindingEvent parsed;
    ASSERT_TRUE(parsed.ParseFromString(*event));
    EXPECT_EQ(parsed.type(), v1::BindingEvent::UPDATED);
    EXPECT_EQ(parsed.binding().token(), "t1");
  }
  const size_t during = ThreadCount(pid);
  // A thread per watcher would add 200; gRPC may start a few of its own.
  EXPECT_LT(during, before + 20) << "threads before " << before << ", with "
                                 << kWatchers << " watchers " << during;
}

TEST(WatchStreamTest, WatcherThatStopsReading_EndsResourceExhausted) {
  Cluster cluster;
  ASSERT_TRUE(cluster.StartManager({"--store=memory", "--watch_queue=20000"}));
  // A channel that does not grow its receive window (no BDP probing) and
  // buffers little, so a watcher that stops reading backs up into the
  // manager's queue quickly.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8192);
  auto stub = v1::BypassManager::NewStub(
      grpc::CreateCustomChannel(cluster.target(), cluster.credentials(), args));
  grpc::ClientContext slow_context;
  slow_context.set_deadline(std::chrono::system_clock::now() +
                            std::chrono::seconds(120));
  v1::WatchBindingsRequest synced_first;
  synced_first.set_include_existing(true);  // SYNCED: subscribed
  auto slow = stub->WatchBindings(&slow_context, synced_first);
  v1::BindingEvent event;
  ASSERT_TRUE(slow->Read(&event));  // the watch is live; now it stops
  ASSERT_EQ(event.type(), v1::BindingEvent::SYNCED);
  // A watcher that keeps reading, on the same manager.
  std::atomic<int> fast_events{0};
  std::atomic<bool> fast_synced{false};
  client::WatchCanceller canceller;
  std::thread fast([&] {
    auto s = cluster.client().WatchBindings(
        synced_first,
        [&](const v1::BindingEvent& e) {
          if (e.type() == v1::BindingEvent::SYNCED) fast_synced = true;
          if (e.type() == v1::BindingEvent::UPDATED) ++fast_events;
          return true;
        },
        &canceller);
    EXPECT_TRUE(s.ok()) << s;  // ended by the canceller
  });
  struct Join {
    client::WatchCanceller& canceller;
    std::thread& thread;
    ~Join() {
      canceller.Cancel();
      thread.join();
    }
  } join{canceller, fast};
  ASSERT_TRUE(Eventually([&] { return fast_synced.load(); }));

  constexpr int kChanges = 60000;  // ~8 MB of events
  // Paced by the reading watcher (it keeps up: never more than a batch
  // behind), while the other's backlog only grows.
  RegisterProducers(cluster.client(), "p", kChanges, "n1", [&](int done) {
    EXPECT_TRUE(Eventually([&] { return fast_events.load() >= done; }))
        << fast_events.load() << " of " << done;
  });
  // The reading watcher saw every change.
  EXPECT_TRUE(Eventually([&] { return fast_events.load() == kChanges; }))
      << fast_events.load();

  // The slow one gets what was buffered for it, then the end.
  int read = 0;
  while (slow->Read(&event)) ++read;
  grpc::Status status = slow->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "fell too far behind"))
      << status.error_message();
  EXPECT_LT(read, kChanges);
}

TEST(WatchStreamTest, ShutdownEndsWatchesUnavailable) {
  Cluster cluster;
  ASSERT_TRUE(cluster.StartManager({"--store=memory"}));
  absl::Status status;
  std::atomic<bool> synced{false};
  std::thread watcher([&] {
    v1::WatchBindingsRequest request;
    request.set_include_existing(true);
    status =
        cluster.client().WatchBindings(request, [&](const v1::BindingEvent& e) {
          if (e.type() == v1::BindingEvent::SYNCED) {
            synced = true;
          }
          return true;
        });
  });
  ASSERT_TRUE(Eventually([&] { return synced.load(); }));
  ASSERT_TRUE(cluster.manager().Signal(SIGTERM));
  watcher.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_EQ(cluster.manager().Wait(), 0);
}

TEST(WatchStreamTest, Manager_RunsNoSyncServerThread) {
  Cluster cluster;
  ASSERT_TRUE(cluster.StartManager({"--store=memory"}));
  ASSERT_TRUE(cluster.StartAgent("n1"));
  // Every kind of call once: unary, watch, reflection, health, agent stream.
  ASSERT_TRUE(cluster.client()
                  .RegisterProducer(MakeProducer("t1", "n1", "0000:3b:00.1"))
                  .ok());
  RawStream watch(cluster.target(), kWatchMethod, "", cluster.credentials());
  RawStream reflection(
      cluster.target(),
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      ProtoStringField(7, ""), cluster.credentials());
  ASSERT_TRUE(reflection.Read(std::chrono::seconds(10)).has_value());
  RawResult health = RawUnary(cluster.target(), "/grpc.health.v1.Health/Check",
                              "", cluster.credentials());
  ASSERT_TRUE(health.status.ok()) << health.status.error_message();
  for (const std::string& name : ThreadNames(cluster.manager().pid())) {
    EXPECT_FALSE(absl::StartsWith(name, "grpcpp_sync"))
        << "a sync-server thread: " << name;
  }
}

}  // namespace
}  // namespace irqbypass::testing
