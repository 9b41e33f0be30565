#include "service/etcd_store.h"

#include <arpa/inet.h>

#include <algorithm>
#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpcpp/create_channel.h"
#include "service/errors.h"
#include "service/store_codec.h"

namespace irqbypass {
namespace {

constexpr size_t kChangesPerTxn = 40;  // at most 3 operations each
}  // namespace

// Transactions in flight at once (each carrying several calls' changes).
constexpr int EtcdStore::kWriters;

namespace {

std::string RequestKey(int64_t expires_unix_micros, const std::string& id) {
  return absl::StrFormat(
      "r/%016x/%s",
      static_cast<uint64_t>(std::max<int64_t>(0, expires_unix_micros)), id);
}

std::string RequestKeyBound(int64_t expires_unix_micros) {
  return absl::StrFormat("r/%016x/", static_cast<uint64_t>(std::max<int64_t>(
                                         0, expires_unix_micros)));
}

}  // namespace

std::string EtcdPrefixEnd(std::string prefix) {
  while (!prefix.empty()) {
    if (static_cast<unsigned char>(prefix.back()) < 0xff) {
      prefix.back() = static_cast<char>(prefix.back() + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');  // etcd: every key
}

std::string EtcdRevisionValue(uint64_t revision) {
  return absl::StrFormat("%020u", revision);
}

EtcdStore::EtcdStore(EtcdStoreOptions options) : options_(std::move(options)) {}

absl::StatusOr<EtcdEndpoint> ParseEtcdEndpoint(absl::string_view given) {
  absl::string_view e = absl::StripAsciiWhitespace(given);
  EtcdEndpoint endpoint;
  if (absl::ConsumePrefix(&e, "https://")) {
    endpoint.tls = true;
  } else {
    absl::ConsumePrefix(&e, "http://");
  }
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("--etcd_endpoints: \"", given, "\": ", why,
                     " (want http://HOST:PORT or https://HOST:PORT; an "
                     "IPv6 address in brackets)"));
  };
  absl::string_view port;
  if (absl::ConsumePrefix(&e, "[")) {
    const size_t close = e.find(']');
    if (close == absl::string_view::npos) return bad("no ']'");
    endpoint.host = std::string(e.substr(0, close));
    in6_addr v6;
    if (::inet_pton(AF_INET6, endpoint.host.c_str(), &v6) != 1) {
      return bad("not an IPv6 address in the brackets");
    }
    e.remove_prefix(close + 1);
    if (!absl::ConsumePrefix(&e, ":")) return bad("no port");
    port = e;
  } else {
    const size_t colon = e.rfind(':');
    if (colon == absl::string_view::npos) return bad("no port");
    endpoint.host = std::string(e.substr(0, colon));
    port = e.substr(colon + 1);
    if (endpoint.host.find(':') != std::string::npos) {
      return bad("an IPv6 address must be in brackets");
    }
  }
  if (endpoint.host.empty()) return bad("no host");
  if (endpoint.host.find('/') != std::string::npos ||
      port.find('/') != std::string::npos) {
    return bad("a path");
  }
  if (!absl::SimpleAtoi(port, &endpoint.port) || endpoint.port < 1 ||
      endpoint.port > 65535) {
    return bad("port not 1..65535");
  }
  return endpoint;
}

std::string EtcdEndpoint::HostPort() const {
  return host.find(':') != std::string::npos
             ? absl::StrCat("[", host, "]:", port)
             : absl::StrCat(host, ":", port);
}

namespace {

absl::StatusOr<std::vector<EtcdEndpoint>> ParseEtcdEndpoints(
    const std::vector<std::string>& endpoints) {
  if (endpoints.empty()) {
    return absl::InvalidArgumentError("--etcd_endpoints: none given");
  }
  std::vector<EtcdEndpoint> parsed;
  for (const std::string& e : endpoints) {
    absl::StatusOr<EtcdEndpoint> one = ParseEtcdEndpoint(e);
    if (!one.ok()) return one.status();
    if (!parsed.empty() && one->tls != parsed[0].tls) {
      return absl::InvalidArgumentError(
          absl::StrCat("--etcd_endpoints: \"", e,
                       "\": all endpoints must be http:// or all https://"));
    }
    parsed.push_back(*std::move(one));
  }
  return parsed;
}

bool AllIpv4(const std::vector<EtcdEndpoint>& endpoints) {
  for (const EtcdEndpoint& e : endpoints) {
    in_addr v4;
    if (::inet_pton(AF_INET, e.host.c_str(), &v4) != 1) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::string> EtcdTarget(
    const std::vector<std::string>& endpoints) {
  absl::StatusOr<std::vector<EtcdEndpoint>> parsed =
      ParseEtcdEndpoints(endpoints);
  if (!parsed.ok()) return parsed.status();
  // Several members: gRPC's ipv4 resolver with pick_first tries them in
  // order and moves on when one fails. Otherwise the first only.
  if (!AllIpv4(*parsed)) return (*parsed)[0].HostPort();
  std::vector<std::string> addresses;
  for (const EtcdEndpoint& e : *parsed) addresses.push_back(e.HostPort());
  return absl::StrCat("ipv4:", absl::StrJoin(addresses, ","));
}

bool EtcdEndpointsUseTls(const std::vector<std::string>& endpoints) {
  absl::StatusOr<std::vector<EtcdEndpoint>> parsed =
      ParseEtcdEndpoints(endpoints);
  return parsed.ok() && (*parsed)[0].tls;
}

std::vector<std::string> EtcdDialledHosts(
    const std::vector<std::string>& endpoints) {
  absl::StatusOr<std::vector<EtcdEndpoint>> parsed =
      ParseEtcdEndpoints(endpoints);
  if (!parsed.ok()) return {};
  std::vector<std::string> hosts;
  if (!AllIpv4(*parsed)) return {(*parsed)[0].host};
  for (const EtcdEndpoint& e : *parsed) hosts.push_back(e.host);
  return hosts;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> EtcdChannel(
    const std::vector<std::string>& endpoints,
    const std::shared_ptr<grpc::ChannelCredentials>& credentials,
    const grpc::ChannelArguments& args) {
  absl::StatusOr<std::string> target = EtcdTarget(endpoints);
  if (!target.ok()) return target.status();
  const bool tls = EtcdEndpointsUseTls(endpoints);
  if (tls && credentials == nullptr) {
    return absl::InvalidArgumentError(
        "--etcd_endpoints: https:// needs --etcd_cacert (the CA that signed "
        "the etcd members' certificates)");
  }
  if (!tls && credentials != nullptr) {
    return absl::InvalidArgumentError(
        "--etcd_endpoints: --etcd_cacert given, but the endpoints are "
        "http://; use https://HOST:PORT");
  }
  return grpc::CreateCustomChannel(
      *target, tls ? credentials : grpc::InsecureChannelCredentials(), args);
}

absl::StatusOr<std::unique_ptr<EtcdStore>> EtcdStore::Open(
    const EtcdStoreOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      EtcdChannel(options.endpoints, options.credentials);
  if (!channel.ok()) return channel.status();
  std::unique_ptr<EtcdStore> store(new EtcdStore(options));
  store->target_ = *EtcdTarget(options.endpoints);  // EtcdChannel checked
  store->kv_ = etcdserverpb::KV::NewStub(*std::move(channel));
  EtcdStore* const raw = store.get();
  store->batcher_ = std::make_unique<StoreBatcher>(
      kWriters, kChangesPerTxn, [raw](absl::Span<const StoreChange> changes) {
        return raw->WriteChunk(changes);
      });
  if (options.require_answer) {
    if (absl::Status s = store->EnsureMark(); !s.ok()) return s;
  }
  return store;
}

absl::Status EtcdStore::EnsureMark() {
  // The revision mark must exist for the Compare in every Write.
  etcdserverpb::TxnRequest txn;
  etcdserverpb::Compare* absent = txn.add_compare();
  absent->set_key(options_.prefix + "m/revision");
  absent->set_target(etcdserverpb::Compare::CREATE);
  absent->set_result(etcdserverpb::Compare::EQUAL);
  absent->set_create_revision(0);
  etcdserverpb::PutRequest* put = txn.add_success()->mutable_request_put();
  put->set_key(options_.prefix + "m/revision");
  put->set_value(EtcdRevisionValue(0));
  etcdserverpb::TxnResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  context.set_wait_for_ready(true);
  grpc::Status s = kv_->Txn(&context, txn, &response);
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("etcd at ", absl::StrJoin(options_.endpoints, ","),
                     " did not answer: ", s.error_message()));
  }
  return absl::OkStatus();
}

void EtcdStore::SetDeadline(grpc::ClientContext* context) const {
  context->set_deadline(std::chrono::system_clock::now() +
                        absl::ToChronoNanoseconds(options_.timeout));
}

absl::Status EtcdStore::RangeAll(
    const std::string& from, const std::string& to,
    const std::function<absl::Status(const std::string&, const std::string&)>&
        fn) {
  std::string key = options_.prefix + from;
  const std::string end = options_.prefix + to;
  while (true) {
    etcdserverpb::RangeRequest request;
    request.set_key(key);
    request.set_range_end(end);
    request.set_limit(1000);
    etcdserverpb::RangeResponse response;
    grpc::ClientContext context;
    SetDeadline(&context);
    grpc::Status s = kv_->Range(&context, request, &response);
    if (!s.ok()) {
      return MakeError(
          absl::StatusCode::kUnavailable, ErrorReason::kStoreUnavailable,
          absl::StrCat("etcd store: range: ", s.error_message()), {});
    }
    for (const mvccpb::KeyValue& kv : response.kvs()) {
      absl::Status taken =
          fn(kv.key().substr(options_.prefix.size()), kv.value());
      if (!taken.ok()) return taken;
    }
    if (!response.more() || response.kvs().empty()) return absl::OkStatus();
    key = response.kvs().rbegin()->key() + std::string(1, '\0');
  }
}

absl::StatusOr<uint64_t> EtcdStore::Load(
    const std::function<absl::Status(std::string token, BindingState state)>&
        fn) {
  if (absl::Status s = EnsureMark(); !s.ok()) return s;
  uint64_t last = 0;
  absl::Status s = RangeAll(
      "m/revision", "m/revision" + std::string(1, '\0'),
      [&](const std::string&, const std::string& value) {
        if (!absl::SimpleAtoi(value, &last)) {
          return absl::DataLossError("etcd key m/revision: not a number");
        }
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  s = RangeAll("b/", EtcdPrefixEnd("b/"),
               [&](const std::string& key, const std::string& value) {
                 absl::StatusOr<BindingState> state = DecodeBinding(value);
                 if (!state.ok()) {
                   return absl::DataLossError(absl::StrCat(
                       "etcd key ", key, ": ", state.status().message()));
                 }
                 last = std::max(last, state->revision);
                 return fn(key.substr(2), *std::move(state));
               });
  if (!s.ok()) return s;
  return last;
}

void EtcdStore::AddFence(etcdserverpb::TxnRequest* txn) const {
  etcdserverpb::Compare* leader = txn->add_compare();
  leader->set_key(fence_key_);
  leader->set_target(etcdserverpb::Compare::CREATE);
  leader->set_result(etcdserverpb::Compare::EQUAL);
  leader->set_create_revision(fence_revision_);
}

void EtcdStore::SetFence(std::string key, int64_t create_revision) {
  fence_key_ = std::move(key);
  fence_revision_ = create_revision;
}

absl::Status EtcdStore::WriteChunk(absl::Span<const StoreChange> changes) {
  if (!fence_key_.empty() && stepped_down_.load()) {
    // This replica's index may differ from etcd now: nothing more.
    ErrorContext ctx;
    if (changes.size() == 1) ctx.token = std::string(changes[0].token);
    return MakeError(absl::StatusCode::kUnavailable, ErrorReason::kNotLeader,
                     "this irqbypassd is stepping down; retry on the leader",
                     ctx);
  }
  etcdserverpb::TxnRequest txn;
  uint64_t revision = 0;
  auto add_ops =
      [&](google::protobuf::RepeatedPtrField<etcdserverpb::RequestOp>* ops) {
        for (const StoreChange& change : changes) {
          const std::string key =
              absl::StrCat(options_.prefix, "b/", change.token);
          if (change.state.empty()) {
            ops->Add()->mutable_request_delete_range()->set_key(key);
            revision = std::max(revision, change.state.revision);
          } else {
            etcdserverpb::PutRequest* put = ops->Add()->mutable_request_put();
            put->set_key(key);
            put->set_value(EncodeBinding(change.state));
          }
          if (change.request != nullptr) {
            etcdserverpb::PutRequest* put = ops->Add()->mutable_request_put();
            put->set_key(options_.prefix +
                         RequestKey(change.request->expires_unix_micros,
                                    change.request->id));
            put->set_value(EncodeRequest(*change.request));
          }
        }
      };
  // The highest revision ever written is the highest of the stored
  // bindings' and of the removals' (Load): only a removal raises the mark,
  // and only when it is higher, so concurrent writers never lower it.
  auto raise_mark = [&](etcdserverpb::TxnRequest* t) {
    etcdserverpb::Compare* lower = t->add_compare();
    lower->set_key(options_.prefix + "m/revision");
    lower->set_target(etcdserverpb::Compare::VALUE);
    lower->set_result(etcdserverpb::Compare::LESS);
    lower->set_value(EtcdRevisionValue(revision));
    etcdserverpb::PutRequest* mark = t->add_success()->mutable_request_put();
    mark->set_key(options_.prefix + "m/revision");
    mark->set_value(EtcdRevisionValue(revision));
  };
  const bool fenced = !fence_key_.empty();
  if (fenced) {
    // Applied only while this replica's election stands; the mark is raised
    // in a nested transaction (etcd 3.3+) so that its compare does not
    // decide whether the changes apply.
    AddFence(&txn);
    add_ops(txn.mutable_success());
    if (revision > 0) raise_mark(txn.add_success()->mutable_request_txn());
  } else {
    add_ops(txn.mutable_success());
    if (revision > 0) {
      add_ops(txn.mutable_failure());
      raise_mark(&txn);
    }
  }
  etcdserverpb::TxnResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  // While one member is down the channel moves to the next: wait for that
  // rather than fail.
  context.set_wait_for_ready(true);
  grpc::Status s = kv_->Txn(&context, txn, &response);
  ErrorContext ctx;
  if (changes.size() == 1) ctx.token = std::string(changes[0].token);
  if (!s.ok()) {
    // etcd may still apply a write whose answer did not come: this
    // replica's state may now differ from etcd's, so it steps down and the
    // next leader (maybe itself again) loads what etcd holds.
    if (fenced) StepDown("an etcd write failed with an unknown outcome");
    return MakeError(
        absl::StatusCode::kUnavailable, ErrorReason::kStoreUnavailable,
        absl::StrCat("etcd store: write failed: ", s.error_message()), ctx);
  }
  if (fenced && !response.succeeded()) return Fenced(ctx);
  return absl::OkStatus();
}

void EtcdStore::StepDown(const char* why) {
  if (!stepped_down_.exchange(true) && options_.on_step_down) {
    options_.on_step_down(why);
  }
}

absl::Status EtcdStore::Fenced(const ErrorContext& ctx) {
  StepDown("a write found a newer leader elected");
  return MakeError(absl::StatusCode::kUnavailable, ErrorReason::kNotLeader,
                   "this irqbypassd is no longer the leader (a newer one was "
                   "elected); nothing was written: retry on the leader",
                   ctx);
}

void EtcdStore::Write(absl::Span<const StoreChange> changes,
                      std::function<void(absl::Status)> done) {
  if (changes.empty()) {
    done(absl::OkStatus());
    return;
  }
  if (changes.size() > kChangesPerTxn) {
    // One call is one transaction, so that it stays all-or-none.
    done(absl::InvalidArgumentError(
        absl::StrCat("etcd store: a write of ", changes.size(),
                     " changes exceeds the ", kChangesPerTxn,
                     " one transaction holds (etcd allows 128 operations per "
                     "transaction); nothing was written")));
    return;
  }
  // The calls touch different tokens (one call at a time per token), so
  // the keys of the calls sharing a transaction never collide.
  batcher_->Write(changes, std::move(done));
}

absl::Status EtcdStore::LoadRequests(
    int64_t now_unix_micros, const std::function<void(RequestRecord)>& fn) {
  return RangeAll(RequestKeyBound(now_unix_micros + 1), EtcdPrefixEnd("r/"),
                  [&](const std::string& key, const std::string& value) {
                    absl::StatusOr<RequestRecord> r = DecodeRequest(value);
                    if (!r.ok()) {
                      return absl::DataLossError(absl::StrCat(
                          "etcd key ", key, ": ", r.status().message()));
                    }
                    fn(*std::move(r));
                    return absl::OkStatus();
                  });
}

absl::Status EtcdStore::PruneRequests(int64_t now_unix_micros) {
  etcdserverpb::TxnRequest txn;
  if (!fence_key_.empty()) {
    AddFence(&txn);
  }
  etcdserverpb::DeleteRangeRequest* request =
      txn.add_success()->mutable_request_delete_range();
  request->set_key(options_.prefix + "r/");
  request->set_range_end(options_.prefix +
                         RequestKeyBound(now_unix_micros + 1));
  etcdserverpb::TxnResponse response;
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::Status s = kv_->Txn(&context, txn, &response);
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("etcd store: prune: ", s.error_message()));
  }
  if (!response.succeeded()) return Fenced({});
  return absl::OkStatus();
}

std::string EtcdStore::Describe() const {
  return absl::StrCat("etcd endpoints=", absl::StrJoin(options_.endpoints, ","),
                      " prefix=", options_.prefix);
}

}  // namespace irqbypass
