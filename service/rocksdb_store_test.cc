// The embedded store: what it keeps across a reopen, what it refuses, and
// (with a file system that can lose power) that an acknowledged write is on
// the disk, not only in the page cache.
#include "service/rocksdb_store.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "service/errors.h"
#include "service/testing/store_support.h"

namespace irqbypass {
namespace {

using ::irqbypass::testing::LoadAll;
using ::irqbypass::testing::PairedState;

std::string NewTempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string path = std::string(base != nullptr ? base : "/tmp") +
                     "/rocksdb_store_test.XXXXXX";
  if (mkdtemp(path.data()) == nullptr) std::abort();
  return path;
}

std::unique_ptr<RocksDbStore> OpenOrDie(const RocksDbStoreOptions& options) {
  auto opened = RocksDbStore::Open(options);
  EXPECT_TRUE(opened.ok()) << opened.status();
  if (!opened.ok()) std::abort();
  return *std::move(opened);
}

void Write(Store& store, const std::string& token, const BindingState& st) {
  absl::Status s = store.WriteAndWait(StoreChange{token, st});
  ASSERT_TRUE(s.ok()) << s;
}

TEST(RocksDbStoreTest, Reopen_LoadsWhatWasWrittenAndNotWhatWasRemoved) {
  const std::string dir = NewTempDir();
  {
    auto store = OpenOrDie({dir});
    Write(*store, "a", PairedState(1, 1, "n1"));
    Write(*store, "b", PairedState(2, 2, "n2"));
    Write(*store, "b", BindingState{.revision = 3});  // removed
    BindingState waiting;
    waiting.consumer.emplace().node = "n1";
    waiting.consumer->vm = "vm-x";
    waiting.consumer->gsi = 7;
    waiting.revision = 4;
    Write(*store, "c", waiting);
    ASSERT_TRUE(store->Close().ok());
  }
  auto store = OpenOrDie({dir});
  uint64_t last = 0;
  auto loaded = LoadAll(*store, &last);
  ASSERT_EQ(loaded.size(), 2u);
  const BindingState& a = loaded.at("a");
  ASSERT_TRUE(a.producer && a.consumer);
  EXPECT_EQ(a.producer->device, "0000:3b:00.1");
  EXPECT_EQ(a.producer->vector, 1u);
  EXPECT_EQ(a.producer->irq_index, 3);
  EXPECT_EQ(a.producer->registration_id, 1001u);
  EXPECT_EQ(a.consumer->vm, "vm-1");
  EXPECT_EQ(a.consumer->registration_id, 2001u);
  EXPECT_TRUE(a.connected);
  EXPECT_EQ(a.revision, 1u);
  const BindingState& c = loaded.at("c");
  EXPECT_FALSE(c.producer.has_value());
  ASSERT_TRUE(c.consumer.has_value());
  EXPECT_EQ(c.consumer->gsi, 7u);
  EXPECT_EQ(last, 4u);
}

TEST(RocksDbStoreTest, Load_HighestRevisionWasARemoval_StillReturned) {
  const std::string dir = NewTempDir();
  {
    auto store = OpenOrDie({dir});
    Write(*store, "a", PairedState(1, 10, "n1"));
    Write(*store, "gone", PairedState(2, 11, "n1"));
    Write(*store, "gone", BindingState{.revision = 12});
  }
  auto store = OpenOrDie({dir});
  uint64_t last = 0;
  EXPECT_EQ(LoadAll(*store, &last).size(), 1u);
  EXPECT_EQ(last, 12u);
}

TEST(RocksDbStoreTest, ConcurrentWriters_RevisionMarkIsTheMaximum) {
  const std::string dir = NewTempDir();
  constexpr int kThreads = 8;
  constexpr int kPerThread = 50;
  std::atomic<uint64_t> revision{0};
  {
    auto store = OpenOrDie({dir});
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) {
          const std::string token = absl::StrCat("t", t, "-", i);
          Write(*store, token, PairedState(i, revision.fetch_add(1) + 1, "n1"));
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_GT(store->GetStats().wal_syncs, 0u);
    EXPECT_LE(store->GetStats().wal_syncs, store->GetStats().writes);
    EXPECT_EQ(store->GetStats().writes, uint64_t{kThreads * kPerThread});
  }
  auto store = OpenOrDie({dir});
  uint64_t last = 0;
  EXPECT_EQ(LoadAll(*store, &last).size(), size_t{kThreads * kPerThread});
  EXPECT_EQ(last, revision.load());
}

TEST(RocksDbStoreTest, SecondOpenOfSameDir_FailedPreconditionNamingIt) {
  const std::string dir = NewTempDir();
  auto first = OpenOrDie({dir});
  auto second = RocksDbStore::Open({dir});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find(dir), std::string::npos)
      << second.status();
  EXPECT_NE(second.status().message().find("another process"),
            std::string::npos)
      << second.status();
  // The first is unharmed.
  Write(*first, "a", PairedState(1, 1, "n1"));
}

TEST(RocksDbStoreTest, WriteAfterClose_UnavailableStoreReason) {
  auto store = OpenOrDie({NewTempDir()});
  ASSERT_TRUE(store->Close().ok());
  ASSERT_TRUE(store->Close().ok());  // idempotent
  absl::Status s =
      store->WriteAndWait(StoreChange{"a", PairedState(1, 1, "n1")});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(GetErrorReason(s), ErrorReason::kStoreUnavailable);
}

TEST(RocksDbStoreTest, CorruptRecord_LoadFailsDataLossNamingTheKey) {
  const std::string dir = NewTempDir();
  { auto store = OpenOrDie({dir}); }
  {
    // Someone else's bytes under a binding key.
    rocksdb::DB* raw = nullptr;
    rocksdb::Options options;
    ASSERT_TRUE(rocksdb::DB::Open(options, dir, &raw).ok());
    ASSERT_TRUE(
        raw->Put(rocksdb::WriteOptions(), "b/broken", "\xff\xff\xff").ok());
    delete raw;
  }
  auto store = OpenOrDie({dir});
  auto r =
      store->Load([](std::string, BindingState) { return absl::OkStatus(); });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("b/broken"), std::string::npos)
      << r.status();
}

// --- Power cut ---------------------------------------------------------------
//
// A file system that remembers, per file, how much of it was synced. After
// Cut() it acknowledges and drops every write, sync, rename and removal (the
// machine is off); ApplyCut() then truncates each file to what it had synced,
// which is what survives losing power with the page cache.
class PowerCutFs : public rocksdb::FileSystemWrapper {
 public:
  explicit PowerCutFs(const std::shared_ptr<rocksdb::FileSystem>& base)
      : FileSystemWrapper(base) {}
  static const char* kClassName() { return "PowerCutFs"; }
  const char* Name() const override { return kClassName(); }

  rocksdb::IOStatus NewWritableFile(
      const std::string& name, const rocksdb::FileOptions& options,
      std::unique_ptr<rocksdb::FSWritableFile>* result,
      rocksdb::IODebugContext* dbg) override {
    if (cut_) return rocksdb::IOStatus::IOError("power is off");
    rocksdb::IOStatus s = target()->NewWritableFile(name, options, result, dbg);
    if (s.ok()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        files_[name] = File{};
      }
      result->reset(new TrackedFile(std::move(*result), this, name));
    }
    return s;
  }
  rocksdb::IOStatus RenameFile(const std::string& from, const std::string& to,
                               const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override {
    if (cut_) return rocksdb::IOStatus::OK();
    rocksdb::IOStatus s = target()->RenameFile(from, to, options, dbg);
    if (s.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = files_.find(from);
      if (it != files_.end()) {
        files_[to] = it->second;
        files_.erase(from);
      } else {
        files_.erase(to);
      }
    }
    return s;
  }
  rocksdb::IOStatus DeleteFile(const std::string& name,
                               const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override {
    if (cut_) return rocksdb::IOStatus::OK();
    {
      std::lock_guard<std::mutex> lock(mu_);
      files_.erase(name);
    }
    return target()->DeleteFile(name, options, dbg);
  }

  void Cut() { cut_ = true; }
  // Every later sync fails (a disk that went away).
  void FailSyncs() { fail_syncs_ = true; }
  // Call once nothing uses the file system any more.
  void ApplyCut() {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [name, file] : files_) {
      if (file.written > file.synced) {
        ASSERT_EQ(truncate(name.c_str(), static_cast<off_t>(file.synced)), 0)
            << name;
        ++files_truncated_;
      }
    }
  }
  int files_truncated() const { return files_truncated_; }

 private:
  struct File {
    uint64_t written = 0;
    uint64_t synced = 0;
  };

  class TrackedFile : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    TrackedFile(std::unique_ptr<rocksdb::FSWritableFile>&& file, PowerCutFs* fs,
                std::string name)
        : FSWritableFileOwnerWrapper(std::move(file)),
          fs_(fs),
          name_(std::move(name)) {}

    rocksdb::IOStatus Append(const rocksdb::Slice& data,
                             const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override {
      if (fs_->cut_) return rocksdb::IOStatus::OK();
      rocksdb::IOStatus s = target()->Append(data, options, dbg);
      if (s.ok()) fs_->Written(name_, data.size());
      return s;
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& data,
                             const rocksdb::IOOptions& options,
                             const rocksdb::DataVerificationInfo& info,
                             rocksdb::IODebugContext* dbg) override {
      if (fs_->cut_) return rocksdb::IOStatus::OK();
      rocksdb::IOStatus s = target()->Append(data, options, info, dbg);
      if (s.ok()) fs_->Written(name_, data.size());
      return s;
    }
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* dbg) override {
      if (fs_->fail_syncs_) return rocksdb::IOStatus::IOError("disk gone");
      if (fs_->cut_) return rocksdb::IOStatus::OK();
      rocksdb::IOStatus s = target()->Sync(options, dbg);
      if (s.ok()) fs_->Synced(name_);
      return s;
    }
    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                            rocksdb::IODebugContext* dbg) override {
      if (fs_->cut_) return rocksdb::IOStatus::OK();
      rocksdb::IOStatus s = target()->Fsync(options, dbg);
      if (s.ok()) fs_->Synced(name_);
      return s;
    }

   private:
    PowerCutFs* fs_;
    std::string name_;
  };

  void Written(const std::string& name, size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    files_[name].written += n;
  }
  void Synced(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    File& f = files_[name];
    f.synced = f.written;
  }

  std::atomic<bool> cut_{false};
  std::atomic<bool> fail_syncs_{false};
  std::mutex mu_;
  std::map<std::string, File> files_;
  int files_truncated_ = 0;
};

struct PowerCutResult {
  size_t acknowledged = 0;  // tokens whose last write was acknowledged
  size_t survived = 0;      // of those, found with that state after the cut
  int files_truncated = 0;
};

// Writes from 8 threads (puts, and removals of every fifth token), cuts the
// power, and counts what survived of what was acknowledged.
PowerCutResult WriteThenCutPower(bool sync) {
  const std::string dir = NewTempDir();
  auto fs = std::make_shared<PowerCutFs>(rocksdb::FileSystem::Default());
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
  std::map<std::string, BindingState> acked;
  {
    RocksDbStoreOptions options;
    options.dir = dir;
    options.sync = sync;
    options.env = env.get();
    auto store = OpenOrDie(options);
    std::mutex mu;
    std::atomic<uint64_t> revision{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 40; ++i) {
          const std::string token = absl::StrCat("t", t, "-", i);
          BindingState st = PairedState(i, revision.fetch_add(1) + 1, "n1");
          if (!store->WriteAndWait(StoreChange{token, st}).ok()) continue;
          if (i % 5 == 4) {
            BindingState removed;
            removed.revision = revision.fetch_add(1) + 1;
            if (!store->WriteAndWait(StoreChange{token, removed}).ok()) {
              continue;
            }
            st = removed;
          }
          std::lock_guard<std::mutex> lock(mu);
          acked[token] = st;
        }
      });
    }
    for (auto& th : threads) th.join();
    fs->Cut();
    // The process goes down with the power: whatever it writes from here
    // on is lost.
  }
  fs->ApplyCut();
  PowerCutResult result;
  result.files_truncated = fs->files_truncated();
  auto store = OpenOrDie({dir});
  auto loaded = LoadAll(*store, nullptr);
  for (const auto& [token, st] : acked) {
    ++result.acknowledged;
    auto it = loaded.find(token);
    if (st.empty()) {
      // A removal survived if the token is absent (its put and its removal
      // were both synced) -- an acknowledged put without its removal would
      // be a lost removal.
      if (it == loaded.end()) ++result.survived;
    } else if (it != loaded.end() && it->second.revision == st.revision) {
      ++result.survived;
    }
  }
  return result;
}

TEST(RocksDbStorePowerCutTest, SyncedWrites_EveryAcknowledgedChangeSurvives) {
  const PowerCutResult r = WriteThenCutPower(/*sync=*/true);
  std::printf("sync: %zu acknowledged, %zu survived, %d files truncated\n",
              r.acknowledged, r.survived, r.files_truncated);
  EXPECT_EQ(r.acknowledged, 320u);
  EXPECT_EQ(r.survived, r.acknowledged);
}

// The negative control: the same run without fsync loses acknowledged
// changes to the same power cut, so the test above can tell the difference
// (kill -9 cannot: the page cache survives it).
TEST(RocksDbStorePowerCutTest, UnsyncedWrites_AcknowledgedChangesLost) {
  const PowerCutResult r = WriteThenCutPower(/*sync=*/false);
  std::printf("no sync: %zu acknowledged, %zu survived, %d files truncated\n",
              r.acknowledged, r.survived, r.files_truncated);
  EXPECT_EQ(r.acknowledged, 320u);
  EXPECT_GT(r.files_truncated, 0);
  EXPECT_LT(r.survived, r.acknowledged);
}

TEST(RocksDbStoreTest, SyncFails_WriteUnavailableThenEveryWriteRefused) {
  auto fs = std::make_shared<PowerCutFs>(rocksdb::FileSystem::Default());
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
  int failures = 0;
  RocksDbStoreOptions options;
  options.dir = NewTempDir();
  options.env = env.get();
  options.on_failure = [&](const absl::Status&) { ++failures; };
  auto store = OpenOrDie(options);
  Write(*store, "a", PairedState(1, 1, "n1"));
  fs->FailSyncs();
  absl::Status s =
      store->WriteAndWait(StoreChange{"b", PairedState(2, 2, "n1")});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(GetErrorReason(s), ErrorReason::kStoreUnavailable);
  EXPECT_EQ(failures, 1);
  absl::Status later =
      store->WriteAndWait(StoreChange{"c", PairedState(3, 3, "n1")});
  EXPECT_EQ(later.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(later.message().find("restart"), std::string::npos) << later;
  EXPECT_EQ(failures, 1);
}

}  // namespace
}  // namespace irqbypass
