#include "service/etcd_election.h"

#include <chrono>
#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "grpcpp/create_channel.h"
#include "service/etcd_store.h"

namespace irqbypass {

EtcdElection::EtcdElection(EtcdElectionOptions options)
    : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<EtcdElection>> EtcdElection::Create(
    EtcdElectionOptions options) {
  absl::StatusOr<std::string> target = EtcdTarget(options.endpoints);
  if (!target.ok()) return target.status();
  if (options.address.empty()) {
    return absl::InvalidArgumentError(
        "advertise_address: empty (clients and agents could not find the "
        "leader)");
  }
  if (options.ttl < absl::Seconds(2)) {
    return absl::InvalidArgumentError(
        absl::StrCat("leader_lease_ttl: ", absl::FormatDuration(options.ttl),
                     " is under etcd's shortest lease, 2s"));
  }
  if (options.key.empty()) {
    return absl::InvalidArgumentError("leader key: empty");
  }
  std::unique_ptr<EtcdElection> election(new EtcdElection(std::move(options)));
  // A channel of its own: keepalives do not queue behind bulk writes.
  absl::StatusOr<std::shared_ptr<grpc::Channel>> made =
      EtcdChannel(election->options_.endpoints, election->options_.credentials);
  if (!made.ok()) return made.status();
  std::shared_ptr<grpc::Channel> channel = *std::move(made);
  election->kv_ = etcdserverpb::KV::NewStub(channel);
  election->lease_stub_ = etcdserverpb::Lease::NewStub(channel);
  return election;
}

EtcdElection::~EtcdElection() { Stop(); }

void EtcdElection::SetDeadline(grpc::ClientContext* context) const {
  context->set_deadline(std::chrono::system_clock::now() +
                        absl::ToChronoNanoseconds(options_.timeout));
}

bool EtcdElection::SleepUnlessStopped(absl::Duration d) {
  MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(
      [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopped_; }, d);
  return !stopped_;
}

int64_t EtcdElection::lease_id() const {
  MutexLock lock(&mu_);
  return lease_;
}

absl::Status EtcdElection::Grant() {
  etcdserverpb::LeaseGrantRequest request;
  request.set_ttl(
      static_cast<int64_t>(std::ceil(absl::ToDoubleSeconds(options_.ttl))));
  etcdserverpb::LeaseGrantResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  const absl::Time sent = absl::Now();
  grpc::Status s = lease_stub_->LeaseGrant(&context, request, &response);
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("etcd lease grant: ", s.error_message()));
  }
  if (!response.error().empty() || response.id() == 0) {
    return absl::UnavailableError(
        absl::StrCat("etcd lease grant refused: ", response.error()));
  }
  MutexLock threads(&thread_mu_);
  // The previous lease's keepalive thread has ended (it saw the lease go).
  if (keepalive_.joinable()) keepalive_.join();
  {
    MutexLock lock(&mu_);
    if (stopped_) return absl::CancelledError("election stopped");
    lease_ = response.id();
    lease_lost_ = false;
  }
  keepalive_ = std::thread([this, id = response.id(),
                            expires = sent + absl::Seconds(response.ttl())] {
    KeepAliveLoop(id, expires);
  });
  return absl::OkStatus();
}

void EtcdElection::KeepAliveLoop(int64_t lease, absl::Time expires) {
  const absl::Duration every = options_.ttl / 3;
  // Step down this long before the lease would expire unrenewed, by our own
  // clock: etcd may have let it go already (this replica cut off from the
  // quorum, or stopped), and nobody would tell us.
  const absl::Duration margin = options_.ttl / 4;
  while (true) {
    // One short stream per renewal, with a deadline: a member that hangs
    // cannot hold the renewal (or our knowledge of the lease) forever.
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + every));
    {
      MutexLock lock(&mu_);
      if (stopped_) return;
      keepalive_context_ = &context;
    }
    const absl::Time sent = absl::Now();
    std::unique_ptr<
        grpc::ClientReaderWriter<etcdserverpb::LeaseKeepAliveRequest,
                                 etcdserverpb::LeaseKeepAliveResponse>>
        stream = lease_stub_->LeaseKeepAlive(&context);
    etcdserverpb::LeaseKeepAliveRequest request;
    request.set_id(lease);
    etcdserverpb::LeaseKeepAliveResponse response;
    const char* lost = nullptr;
    if (stream->Write(request) && stream->Read(&response)) {
      if (response.ttl() <= 0) {
        lost = "etcd says the lease is gone";
      } else {
        expires = sent + absl::Seconds(response.ttl());
      }
    }
    if (lost == nullptr && absl::Now() >= expires - margin) {
      lost = "the lease was not renewed in time";
    }
    bool leading = false;
    {
      MutexLock lock(&mu_);
      keepalive_context_ = nullptr;
      if (lost != nullptr) {
        lease_lost_ = true;
        leading = std::exchange(leading_, false);
      }
    }
    context.TryCancel();
    stream->Finish();
    if (lost != nullptr) {
      LogWarn("etcd lease lost", {{"lease", absl::StrCat(absl::Hex(lease))},
                                  {"why", lost},
                                  {"was_leader", leading ? "true" : "false"}});
      if (leading && options_.on_lost) options_.on_lost();
      return;
    }
    const absl::Duration wait = sent + every - absl::Now();
    if (!SleepUnlessStopped(std::max(wait, absl::Milliseconds(10)))) return;
  }
}

absl::StatusOr<uint64_t> EtcdElection::Campaign(
    const std::function<void(const std::string& leader)>& on_leader) {
  bool reported = false;
  std::string seen;
  absl::Time last_warning = absl::InfinitePast();
  auto warn = [&](const std::string& what, const std::string& error) {
    if (absl::Now() - last_warning < absl::Seconds(10)) return;
    last_warning = absl::Now();
    LogWarn(what, {{"error", error}, {"key", options_.key}});
  };
  while (true) {
    bool need_lease;
    int64_t lease;
    {
      MutexLock lock(&mu_);
      if (stopped_) return absl::CancelledError("election stopped");
      need_lease = lease_ == 0 || lease_lost_;
      lease = lease_;
    }
    if (need_lease) {
      if (absl::Status s = Grant(); !s.ok()) {
        warn("campaign: cannot get an etcd lease; retrying", s.ToString());
        if (!SleepUnlessStopped(absl::Seconds(1))) continue;
        continue;
      }
      continue;
    }
    etcdserverpb::TxnRequest txn;
    etcdserverpb::Compare* absent = txn.add_compare();
    absent->set_key(options_.key);
    absent->set_target(etcdserverpb::Compare::CREATE);
    absent->set_result(etcdserverpb::Compare::EQUAL);
    absent->set_create_revision(0);
    etcdserverpb::PutRequest* put = txn.add_success()->mutable_request_put();
    put->set_key(options_.key);
    put->set_value(options_.address);
    put->set_lease(lease);
    txn.add_failure()->mutable_request_range()->set_key(options_.key);
    etcdserverpb::TxnResponse response;
    grpc::ClientContext context;
    SetDeadline(&context);
    grpc::Status s = kv_->Txn(&context, txn, &response);
    if (!s.ok()) {
      warn("campaign: etcd did not answer; retrying", s.error_message());
      SleepUnlessStopped(absl::Seconds(1));
      continue;
    }
    uint64_t epoch = 0;
    std::string leader;
    if (response.succeeded()) {
      epoch = static_cast<uint64_t>(response.header().revision());
    } else if (response.responses_size() > 0 &&
               response.responses(0).response_range().kvs_size() > 0) {
      const mvccpb::KeyValue& kv =
          response.responses(0).response_range().kvs(0);
      // Our own key from an attempt whose answer was lost.
      if (kv.lease() == lease)
        epoch = static_cast<uint64_t>(kv.create_revision());
      leader = kv.value();
    }
    if (epoch != 0) {
      {
        MutexLock lock(&mu_);
        if (stopped_) return absl::CancelledError("election stopped");
        // The lease went while we won with it: campaign again with a new
        // one (the key, attached to the lost lease, goes with it).
        if (lease_lost_ || lease_ != lease) continue;
        leading_ = true;
      }
      LogInfo("elected leader", {{"key", options_.key},
                                 {"address", options_.address},
                                 {"epoch", absl::StrCat(epoch)},
                                 {"lease", absl::StrCat(absl::Hex(lease))}});
      return epoch;
    }
    if (!reported || leader != seen) {
      reported = true;
      seen = leader;
      if (on_leader) on_leader(leader);
    }
    SleepUnlessStopped(options_.poll);
  }
}

void EtcdElection::Resign() {
  int64_t lease;
  {
    MutexLock lock(&mu_);
    leading_ = false;  // the keepalive's "gone" is expected now
    lease = lease_;
  }
  if (lease == 0) return;
  etcdserverpb::LeaseRevokeRequest request;
  request.set_id(lease);
  etcdserverpb::LeaseRevokeResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(2));
  grpc::Status s = lease_stub_->LeaseRevoke(&context, request, &response);
  if (!s.ok()) {
    LogWarn(
        "resigning: revoking the etcd lease failed; a standby takes over "
        "once it expires",
        {{"error", s.error_message()}});
  }
}

void EtcdElection::Stop() {
  {
    MutexLock lock(&mu_);
    stopped_ = true;
    if (keepalive_context_ != nullptr) keepalive_context_->TryCancel();
  }
  MutexLock threads(&thread_mu_);
  if (keepalive_.joinable()) keepalive_.join();
}

}  // namespace irqbypass
