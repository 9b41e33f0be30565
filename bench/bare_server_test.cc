// bare_server --durable_dir really makes the synced writes it is the
// baseline for: each mutating call (a Batch as one) is answered only once
// its request is in the log, which still holds it after a SIGKILL.
#include <signal.h>

#include <memory>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "protos/irqbypass/v1/irqbypass.grpc.pb.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "tests/process.h"

namespace irqbypass::bench {
namespace {

// Every record in the RocksDB at `dir`, in key order.
std::vector<std::string> Records(const std::string& dir) {
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s =
      rocksdb::DB::OpenForReadOnly(rocksdb::Options(), dir, &raw);
  EXPECT_TRUE(s.ok()) << s.ToString();
  std::vector<std::string> out;
  if (!s.ok()) return out;
  std::unique_ptr<rocksdb::DB> db(raw);
  std::unique_ptr<rocksdb::Iterator> it(
      db->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    out.push_back(it->value().ToString());
  }
  EXPECT_TRUE(it->status().ok()) << it->status().ToString();
  return out;
}

TEST(BareServerDurableTest, AnsweredCallsAreInTheLogAfterAKill) {
  const std::string dir = testing::MakeTempDir("bare-durable");
  testing::Process server;
  ASSERT_TRUE(
      server.Start(testing::BinaryPath("bench/bare_server"),
                   {"--listen=127.0.0.1:0", "--port_file=" + dir + "/port",
                    "--durable_dir=" + dir + "/log"},
                   dir + "/bare.log"));
  const int port = testing::WaitForPortFile(dir + "/port");
  ASSERT_NE(port, 0) << testing::ReadFile(dir + "/bare.log");
  auto stub = v1::BypassManager::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));

  v1::RegisterProducerRequest producer;
  producer.mutable_producer()->set_token("t-1");
  producer.mutable_producer()->set_device("0000:01:00.0");
  v1::RegisterProducerResponse producer_response;
  grpc::ClientContext c1;
  ASSERT_TRUE(stub->RegisterProducer(&c1, producer, &producer_response).ok());

  v1::UnregisterConsumerRequest unregister;
  unregister.set_token("t-2");
  v1::UnregisterConsumerResponse unregister_response;
  grpc::ClientContext c2;
  ASSERT_TRUE(
      stub->UnregisterConsumer(&c2, unregister, &unregister_response).ok());

  v1::BatchRequest batch;
  for (int i = 0; i < 3; ++i) {
    batch.add_items()->mutable_unregister_producer()->set_token(
        "b-" + std::to_string(i));
  }
  v1::BatchResponse batch_response;
  grpc::ClientContext c3;
  ASSERT_TRUE(stub->Batch(&c3, batch, &batch_response).ok());
  EXPECT_EQ(batch_response.results_size(), 3);

  // A read writes nothing.
  v1::GetBindingRequest get;
  get.set_token("t-1");
  v1::Binding binding;
  grpc::ClientContext c4;
  ASSERT_TRUE(stub->GetBinding(&c4, get, &binding).ok());

  ASSERT_TRUE(server.Signal(SIGKILL));
  server.Wait();

  const std::vector<std::string> records = Records(dir + "/log");
  ASSERT_EQ(records.size(), 3u);
  v1::RegisterProducerRequest first;
  ASSERT_TRUE(first.ParseFromString(records[0]));
  EXPECT_EQ(first.producer().token(), "t-1");
  v1::UnregisterConsumerRequest second;
  ASSERT_TRUE(second.ParseFromString(records[1]));
  EXPECT_EQ(second.token(), "t-2");
  v1::BatchRequest third;
  ASSERT_TRUE(third.ParseFromString(records[2]));
  ASSERT_EQ(third.items_size(), 3);
  EXPECT_EQ(third.items(2).unregister_producer().token(), "b-2");
}

TEST(BareServerDurableTest, RefusesTheSyncApi) {
  const std::string dir = testing::MakeTempDir("bare-durable-sync");
  testing::Process server;
  ASSERT_TRUE(server.Start(
      testing::BinaryPath("bench/bare_server"),
      {"--listen=127.0.0.1:0", "--api=sync", "--durable_dir=" + dir + "/log"},
      dir + "/bare.log"));
  EXPECT_EQ(server.Wait(), 2);
  EXPECT_NE(testing::ReadFile(dir + "/bare.log")
                .find("--durable_dir needs --api=callback"),
            std::string::npos);
}

}  // namespace
}  // namespace irqbypass::bench
