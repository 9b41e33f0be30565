#include "service/etcd_mirror.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "service/etcd_store.h"
#include "service/store_codec.h"

namespace irqbypass {

EtcdMirror::EtcdMirror(EtcdMirrorOptions options)
    : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<EtcdMirror>> EtcdMirror::Start(
    EtcdMirrorOptions options) {
  absl::StatusOr<std::string> target = EtcdTarget(options.endpoints);
  if (!target.ok()) return target.status();
  std::unique_ptr<EtcdMirror> mirror(new EtcdMirror(std::move(options)));
  // A watch that catches up carries many revisions in one message.
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  // A silently dropped connection would leave the copy stalled: ping.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  absl::StatusOr<std::shared_ptr<grpc::Channel>> made = EtcdChannel(
      mirror->options_.endpoints, mirror->options_.credentials, args);
  if (!made.ok()) return made.status();
  std::shared_ptr<grpc::Channel> channel = *std::move(made);
  mirror->kv_ = etcdserverpb::KV::NewStub(channel);
  mirror->watch_ = etcdserverpb::Watch::NewStub(channel);
  mirror->thread_ = std::thread([m = mirror.get()] { m->Run(); });
  return mirror;
}

EtcdMirror::~EtcdMirror() {
  Cancel();
  if (thread_.joinable()) thread_.join();
}

void EtcdMirror::Cancel() {
  MutexLock lock(&mu_);
  stop_ = true;
  if (watching_ != nullptr) watching_->TryCancel();
}

void EtcdMirror::Release() {
  Cancel();
  if (thread_.joinable()) thread_.join();
  MutexLock lock(&mu_);
  bindings_ = {};
  requests_ = {};
  bad_ = {};
}

bool EtcdMirror::Stopping() const {
  MutexLock lock(&mu_);
  return stop_;
}

int64_t EtcdMirror::revision() const {
  MutexLock lock(&mu_);
  return revision_;
}

int EtcdMirror::lists() const {
  MutexLock lock(&mu_);
  return lists_;
}

size_t EtcdMirror::bindings() const {
  MutexLock lock(&mu_);
  return bindings_.size();
}

void EtcdMirror::PauseForTest() {
  MutexLock lock(&mu_);
  paused_ = true;
  if (watching_ != nullptr) watching_->TryCancel();
}

void EtcdMirror::ResumeForTest() {
  MutexLock lock(&mu_);
  paused_ = false;
}

void EtcdMirror::ApplyLocked(const std::string& key, const std::string* value) {
  bad_.erase(key);  // this put or delete replaces what was there
  if (absl::StartsWith(key, "b/")) {
    const std::string token = key.substr(2);
    if (value == nullptr) {
      bindings_.erase(token);
      return;
    }
    absl::StatusOr<BindingState> state = DecodeBinding(*value);
    if (!state.ok()) {
      bindings_.erase(token);
      bad_[key] = std::string(state.status().message());
      return;
    }
    bindings_[token] = *std::move(state);
  } else if (absl::StartsWith(key, "r/")) {
    if (value == nullptr) {
      requests_.erase(key);
      return;
    }
    absl::StatusOr<RequestRecord> record = DecodeRequest(*value);
    if (!record.ok()) {
      requests_.erase(key);
      bad_[key] = std::string(record.status().message());
      return;
    }
    requests_[key] = *std::move(record);
  } else if (key == "m/revision" && value != nullptr) {
    uint64_t mark = 0;
    if (!absl::SimpleAtoi(*value, &mark)) {
      bad_[key] = "not a number";
      return;
    }
    mark_ = std::max(mark_, mark);
  }
  // Anything else under the prefix (the leader key) is not state.
}

bool EtcdMirror::List() {
  // Everything under the prefix, page by page, all at the first page's
  // revision so that the pages agree.
  const std::string end = EtcdPrefixEnd(options_.prefix);
  std::string key = options_.prefix;
  int64_t at = 0;
  std::vector<std::pair<std::string, std::string>> kvs;
  while (true) {
    if (Stopping()) return false;
    etcdserverpb::RangeRequest request;
    request.set_key(key);
    request.set_range_end(end);
    request.set_limit(1000);
    request.set_revision(at);
    etcdserverpb::RangeResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         absl::ToChronoNanoseconds(options_.timeout));
    grpc::Status s = kv_->Range(&context, request, &response);
    if (!s.ok()) {
      // etcd unreachable, or it compacted past `at` meanwhile: again.
      LogDebug("standby copy: listing failed", {{"error", s.error_message()}});
      return false;
    }
    if (at == 0) at = response.header().revision();
    for (mvccpb::KeyValue& kv : *response.mutable_kvs()) {
      kvs.emplace_back(kv.key().substr(options_.prefix.size()),
                       std::move(*kv.mutable_value()));
    }
    if (!response.more() || response.kvs().empty()) break;
    key = response.kvs().rbegin()->key() + std::string(1, '\0');
  }
  MutexLock lock(&mu_);
  bindings_.clear();
  requests_.clear();
  mark_ = 0;
  bad_.clear();
  for (const auto& [k, v] : kvs) ApplyLocked(k, &v);
  revision_ = at;
  ++lists_;
  LogInfo("standby copy listed", {{"tokens", absl::StrCat(bindings_.size())},
                                  {"etcd_revision", absl::StrCat(at)},
                                  {"lists", absl::StrCat(lists_)}});
  return true;
}

bool EtcdMirror::Watch() {
  grpc::ClientContext context;
  int64_t from = 0;
  {
    MutexLock lock(&mu_);
    if (stop_ || paused_) return false;
    watching_ = &context;
    from = revision_ + 1;
  }
  // etcd's require-leader: a member cut off from the quorum ends the watch
  // instead of leaving it silent.
  context.AddMetadata("hasleader", "true");
  auto stream = watch_->Watch(&context);
  etcdserverpb::WatchRequest request;
  etcdserverpb::WatchCreateRequest* create = request.mutable_create_request();
  create->set_key(options_.prefix);
  create->set_range_end(EtcdPrefixEnd(options_.prefix));
  create->set_start_revision(from);
  create->set_progress_notify(true);
  bool compacted = false;
  if (stream->Write(request)) {
    etcdserverpb::WatchResponse response;
    while (stream->Read(&response)) {
      if (response.compact_revision() > 0) {
        LogWarn(
            "standby copy: etcd compacted past it; listing again",
            {{"needed", absl::StrCat(from)},
             {"compact_revision", absl::StrCat(response.compact_revision())}});
        compacted = true;
        break;
      }
      if (response.canceled()) break;
      MutexLock lock(&mu_);
      int64_t at = revision_;
      for (const mvccpb::Event& event : response.events()) {
        const std::string key = event.kv().key().substr(options_.prefix.size());
        ApplyLocked(key, event.type() == mvccpb::Event::PUT
                             ? &event.kv().value()
                             : nullptr);
        at = std::max(at, event.kv().mod_revision());
      }
      // A response without events other than the creation's is a progress
      // notice: etcd sends those only once everything up to its header's
      // revision was delivered. (A catching-up response's header can be
      // ahead of its events, so only events count there.)
      if (response.events().empty() && !response.created()) {
        at = std::max(at, response.header().revision());
      }
      revision_ = at;
    }
  }
  context.TryCancel();
  stream->Finish();
  MutexLock lock(&mu_);
  watching_ = nullptr;
  return compacted;
}

void EtcdMirror::Run() {
  constexpr absl::Duration kMinBackoff = absl::Milliseconds(100);
  constexpr absl::Duration kMaxBackoff = absl::Seconds(2);
  absl::Duration backoff = kMinBackoff;
  bool listed = false;
  auto sleep = [&] {
    MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(
        [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; }, backoff);
    backoff = std::min(backoff * 2, kMaxBackoff);
  };
  while (true) {
    {
      MutexLock lock(&mu_);
      mu_.Await([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || !paused_;
      });
      if (stop_) return;
    }
    if (!listed) {
      if (!List()) {
        sleep();
        continue;
      }
      listed = true;
    }
    const int64_t before = revision();
    if (Watch()) {
      listed = false;
      backoff = kMinBackoff;
      continue;
    }
    if (Stopping()) return;
    if (revision() > before) backoff = kMinBackoff;  // it was making progress
    sleep();
  }
}

absl::StatusOr<MirrorCopy> EtcdMirror::Take(int64_t etcd_revision,
                                            absl::Duration timeout) {
  MirrorCopy copy;
  {
    MutexLock lock(&mu_);
    if (lists_ == 0) {
      return absl::FailedPreconditionError(
          "the standby copy has not been listed yet");
    }
    const bool reached = mu_.AwaitWithTimeout(
        [this, etcd_revision]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stop_ || revision_ >= etcd_revision;
        },
        timeout);
    if (revision_ < etcd_revision && stop_) {
      return absl::CancelledError("the standby copy was stopped");
    }
    if (!reached || revision_ < etcd_revision) {
      return absl::DeadlineExceededError(
          absl::StrCat("the standby copy reached etcd revision ", revision_,
                       ", not the election's ", etcd_revision, " within ",
                       absl::FormatDuration(timeout)));
    }
    if (!bad_.empty()) {
      const auto& [key, why] = *bad_.begin();
      return absl::DataLossError(absl::StrCat("etcd key ", key, ": ", why));
    }
    stop_ = true;
    if (watching_ != nullptr) watching_->TryCancel();
  }
  thread_.join();
  // The thread is gone: the copy is this thread's alone now.
  MutexLock lock(&mu_);
  copy.etcd_revision = revision_;
  copy.last_revision = mark_;
  copy.bindings.reserve(bindings_.size());
  for (auto& [token, state] : bindings_) {
    copy.last_revision = std::max(copy.last_revision, state.revision);
    copy.bindings.emplace_back(token, std::move(state));
  }
  bindings_.clear();
  // In key order, which is expiry order ("r/<expiry>/<id>"): the request
  // log keeps its outcomes oldest first.
  std::vector<std::pair<std::string, RequestRecord>> requests;
  requests.reserve(requests_.size());
  for (auto& [key, record] : requests_) {
    requests.emplace_back(key, std::move(record));
  }
  requests_.clear();
  std::sort(requests.begin(), requests.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  copy.requests.reserve(requests.size());
  for (auto& [key, record] : requests)
    copy.requests.push_back(std::move(record));
  return copy;
}

}  // namespace irqbypass
