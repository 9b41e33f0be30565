#include "client/irqbypass_client.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/target_list.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/support/channel_arguments.h"

namespace irqbypass::client {
namespace {

using ::irqbypass::v1::Binding;
using ::irqbypass::v1::BindingEvent;
using ::irqbypass::v1::BypassManager;
using ::irqbypass::v1::Consumer;
using ::irqbypass::v1::ListBindingsResponse;
using ::irqbypass::v1::Producer;

constexpr char kUserAgentPrefix[] = "irqbypass-client";

absl::Status ValidateOptions(const ClientOptions& options) {
  if (options.call_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("call_timeout must be positive, got ",
                     absl::FormatDuration(options.call_timeout)));
  }
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_attempts must be at least 1, got ", options.max_attempts));
  }
  if (options.retry_backoff < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("retry_backoff must not be negative");
  }
  if (options.failover_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("failover_timeout must not be negative");
  }
  if (options.watch_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("watch_timeout must be positive, got ",
                     absl::FormatDuration(options.watch_timeout)));
  }
  return absl::OkStatus();
}

// An infinite timeout leaves the context without a deadline.
void SetTimeout(absl::Duration timeout, grpc::ClientContext* context) {
  if (timeout == absl::InfiniteDuration()) return;
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

}  // namespace

// --- WatchCanceller ---

void WatchCanceller::Cancel() {
  MutexLock lock(&mu_);
  cancelled_ = true;
  // TryCancel only flags the call and never calls back into us, so holding
  // mu_ is safe; it also keeps context_ alive until Detach().
  if (context_ != nullptr) context_->TryCancel();
}

bool WatchCanceller::IsCancelled() const {
  MutexLock lock(&mu_);
  return cancelled_;
}

bool WatchCanceller::Attach(grpc::ClientContext* context) {
  MutexLock lock(&mu_);
  if (cancelled_) return false;
  context_ = context;
  return true;
}

void WatchCanceller::Detach() {
  MutexLock lock(&mu_);
  context_ = nullptr;
}

// --- Client ---

absl::StatusOr<std::unique_ptr<Client>> Client::Create(
    const std::string& target, ClientOptions options) {
  const std::vector<std::string> endpoints = SplitTargetList(target);
  if (endpoints.empty()) {
    return absl::InvalidArgumentError("target must not be empty");
  }
  if (absl::Status status = ValidateOptions(options); !status.ok()) {
    return status;
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      options.credentials != nullptr ? options.credentials
                                     : grpc::InsecureChannelCredentials();
  grpc::ChannelArguments args;
  args.SetUserAgentPrefix(kUserAgentPrefix);
  if (endpoints.size() > 1) {
    // A replica that hangs (stopped, cut off) must not hold a call until
    // its deadline: unanswered pings end the connection (and the call,
    // UNAVAILABLE) within about 9 s, and the call fails over. irqbypassd
    // accepts a ping every 5 s.
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 6000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 3000);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    // Likewise a connection attempt to a hung replica gives up after 2 s
    // (gRPC's default: 20 s), not after the whole failover window.
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 2000);
    // Each replica's channel has subchannels of its own, so that Redial
    // really starts afresh (no reconnect backoff left from when the
    // replica was down).
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  }
  auto dial = [endpoints, credentials, args](
                  size_t i) -> std::shared_ptr<BypassManager::StubInterface> {
    std::shared_ptr<grpc::Channel> channel =
        grpc::CreateCustomChannel(endpoints[i], credentials, args);
    if (channel == nullptr) return nullptr;
    return BypassManager::NewStub(channel);
  };
  std::vector<std::shared_ptr<BypassManager::StubInterface>> stubs;
  for (size_t i = 0; i < endpoints.size(); ++i) {
    stubs.push_back(dial(i));
    if (stubs.back() == nullptr) {
      return absl::InternalError(
          absl::StrCat("cannot create a gRPC channel to ", endpoints[i]));
    }
  }
  std::unique_ptr<Client> client(
      new Client(std::move(stubs), endpoints, std::move(options)));
  if (endpoints.size() > 1) client->redial_ = dial;
  return client;
}

absl::StatusOr<std::unique_ptr<Client>> Client::CreateWithChannel(
    std::shared_ptr<grpc::ChannelInterface> channel, ClientOptions options) {
  if (channel == nullptr) {
    return absl::InvalidArgumentError("channel must not be null");
  }
  if (absl::Status status = ValidateOptions(options); !status.ok()) {
    return status;
  }
  std::vector<std::shared_ptr<BypassManager::StubInterface>> stubs;
  stubs.push_back(BypassManager::NewStub(channel));
  return std::unique_ptr<Client>(
      new Client(std::move(stubs), {""}, std::move(options)));
}

Client::Client(std::vector<std::shared_ptr<BypassManager::StubInterface>> stubs,
               std::vector<std::string> endpoints, ClientOptions options)
    : replicas_(stubs.size()),
      stubs_(std::move(stubs)),
      endpoints_(std::move(endpoints)),
      options_(std::move(options)) {}

std::shared_ptr<BypassManager::StubInterface> Client::Stub(size_t i) const {
  // One replica (no redial_): the stub never changes, so calls share no
  // lock.
  if (!redial_) return stubs_[i];
  MutexLock lock(&stubs_mu_);
  return stubs_[i];
}

void Client::Redial(size_t i,
                    const BypassManager::StubInterface* failed) const {
  if (!redial_) return;
  std::shared_ptr<BypassManager::StubInterface> fresh = redial_(i);
  if (fresh == nullptr) return;
  MutexLock lock(&stubs_mu_);
  // Another call may have redialled already.
  if (stubs_[i].get() == failed) stubs_[i] = std::move(fresh);
}

template <typename Response, typename Rpc>
absl::StatusOr<Response> Client::CallUnary(const Rpc& rpc) const {
  const absl::Time start = absl::Now();
  absl::Duration backoff = options_.retry_backoff;
  size_t tried_since_sleep = 0;
  while (true) {
    const size_t at = current_.load(std::memory_order_relaxed);
    grpc::ClientContext context;
    SetTimeout(options_.call_timeout, &context);
    Response response;
    const std::shared_ptr<BypassManager::StubInterface> stub = Stub(at);
    grpc::Status status = rpc(stub.get(), &context, &response);
    if (status.ok()) return response;
    absl::Status error = FromGrpcStatus(status);
    if (replicas_ == 1 || !FailsOver(error)) return error;
    // The connection failed: the next call to this replica dials afresh.
    if (!GetErrorDetail(error).has_value()) Redial(at, stub.get());
    // This replica is down, hung or a standby: the next call goes to the
    // leader it names, if that is one of ours, or else to the next one.
    size_t next = (at + 1) % replicas_;
    if (std::optional<v1::ErrorDetail> detail = GetErrorDetail(error);
        detail.has_value() && !detail->leader().empty()) {
      for (size_t i = 0; i < endpoints_.size(); ++i) {
        if (endpoints_[i] == detail->leader() && i != at) next = i;
      }
    }
    size_t expected = at;
    current_.compare_exchange_strong(expected, next);
    // A deadline spent is not retried here (the caller's budget is gone);
    // nor is anything once the failover window has passed.
    if (error.code() == absl::StatusCode::kDeadlineExceeded ||
        absl::Now() - start >= options_.failover_timeout) {
      return error;
    }
    if (++tried_since_sleep >= replicas_) {
      // Every replica refused once: an election is under way.
      tried_since_sleep = 0;
      absl::SleepFor(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(1));
    }
  }
}

std::string NewRequestId() {
  thread_local absl::BitGen gen;
  return absl::StrCat(
      "r-", absl::Hex(absl::Uniform<uint64_t>(gen), absl::kZeroPad16),
      absl::Hex(absl::Uniform<uint64_t>(gen), absl::kZeroPad16));
}

namespace {}  // namespace

// Whether another replica may answer where this one did not: it is
// unreachable or hung (no ErrorDetail: the transport's error), or a
// standby. Other UNAVAILABLE answers (no agent for the node, the store
// refused) come from the leader and stay with it.
bool Client::FailsOver(const absl::Status& status) {
  if (status.code() == absl::StatusCode::kDeadlineExceeded) return true;
  // A replica shutting down (stepping down) cancels the calls it holds;
  // unary calls are never cancelled from this side.
  if (status.code() == absl::StatusCode::kCancelled) return true;
  if (status.code() != absl::StatusCode::kUnavailable) return false;
  std::optional<v1::ErrorDetail> detail = GetErrorDetail(status);
  return !detail.has_value() || detail->reason() == v1::ErrorDetail::NOT_LEADER;
}

namespace {

bool Retryable(const absl::Status& status) {
  if (status.code() == absl::StatusCode::kUnavailable) return true;
  // The server cancelled it (shutting down): it may or may not have taken
  // effect, which the request id makes safe to ask again.
  if (status.code() == absl::StatusCode::kCancelled) return true;
  if (status.code() != absl::StatusCode::kAborted) return false;
  std::optional<v1::ErrorDetail> detail = GetErrorDetail(status);
  return detail.has_value() &&
         detail->reason() == v1::ErrorDetail::REQUEST_IN_PROGRESS;
}

}  // namespace

template <typename Response, typename Rpc>
absl::StatusOr<Response> Client::CallMutating(const Rpc& rpc) const {
  absl::Duration backoff = options_.retry_backoff;
  for (int attempt = 1;; ++attempt) {
    absl::StatusOr<Response> response = CallUnary<Response>(rpc);
    if (response.ok() || attempt >= options_.max_attempts ||
        !Retryable(response.status())) {
      return response;
    }
    // CallUnary already spent failover_timeout moving between replicas.
    if (replicas_ > 1 && FailsOver(response.status())) return response;
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(1));
  }
}

absl::StatusOr<RegisterResult> Client::RegisterProducer(
    const Producer& producer, const std::string& request_id) const {
  v1::RegisterProducerRequest request;
  *request.mutable_producer() = producer;
  request.set_request_id(request_id.empty() ? NewRequestId() : request_id);
  absl::StatusOr<v1::RegisterProducerResponse> response =
      CallMutating<v1::RegisterProducerResponse>(
          [&](BypassManager::StubInterface* stub, grpc::ClientContext* context,
              v1::RegisterProducerResponse* out) {
            return stub->RegisterProducer(context, request, out);
          });
  if (!response.ok()) return response.status();
  return RegisterResult{response->registration_id(), response->connected()};
}

absl::StatusOr<RegisterResult> Client::RegisterConsumer(
    const Consumer& consumer, const std::string& request_id) const {
  v1::RegisterConsumerRequest request;
  *request.mutable_consumer() = consumer;
  request.set_request_id(request_id.empty() ? NewRequestId() : request_id);
  absl::StatusOr<v1::RegisterConsumerResponse> response =
      CallMutating<v1::RegisterConsumerResponse>(
          [&](BypassManager::StubInterface* stub, grpc::ClientContext* context,
              v1::RegisterConsumerResponse* out) {
            return stub->RegisterConsumer(context, request, out);
          });
  if (!response.ok()) return response.status();
  return RegisterResult{response->registration_id(), response->connected()};
}

absl::StatusOr<bool> Client::UnregisterProducer(
    const std::string& token, const std::string& registration_id,
    const std::string& request_id) const {
  v1::UnregisterProducerRequest request;
  request.set_token(token);
  request.set_registration_id(registration_id);
  request.set_request_id(request_id.empty() ? NewRequestId() : request_id);
  absl::StatusOr<v1::UnregisterProducerResponse> response =
      CallMutating<v1::UnregisterProducerResponse>(
          [&](BypassManager::StubInterface* stub, grpc::ClientContext* context,
              v1::UnregisterProducerResponse* out) {
            return stub->UnregisterProducer(context, request, out);
          });
  if (!response.ok()) return response.status();
  return response->disconnected();
}

absl::StatusOr<bool> Client::UnregisterConsumer(
    const std::string& token, const std::string& registration_id,
    const std::string& request_id) const {
  v1::UnregisterConsumerRequest request;
  request.set_token(token);
  request.set_registration_id(registration_id);
  request.set_request_id(request_id.empty() ? NewRequestId() : request_id);
  absl::StatusOr<v1::UnregisterConsumerResponse> response =
      CallMutating<v1::UnregisterConsumerResponse>(
          [&](BypassManager::StubInterface* stub, grpc::ClientContext* context,
              v1::UnregisterConsumerResponse* out) {
            return stub->UnregisterConsumer(context, request, out);
          });
  if (!response.ok()) return response.status();
  return response->disconnected();
}

absl::StatusOr<v1::BatchResponse> Client::Batch(
    v1::BatchRequest request) const {
  for (v1::BatchItem& item : *request.mutable_items()) {
    std::string* id = nullptr;
    switch (item.op_case()) {
      case v1::BatchItem::kRegisterProducer:
        id = item.mutable_register_producer()->mutable_request_id();
        break;
      case v1::BatchItem::kRegisterConsumer:
        id = item.mutable_register_consumer()->mutable_request_id();
        break;
      case v1::BatchItem::kUnregisterProducer:
        id = item.mutable_unregister_producer()->mutable_request_id();
        break;
      case v1::BatchItem::kUnregisterConsumer:
        id = item.mutable_unregister_consumer()->mutable_request_id();
        break;
      case v1::BatchItem::OP_NOT_SET:
        break;  // the server names the item
    }
    if (id != nullptr && id->empty()) *id = NewRequestId();
  }
  return CallMutating<v1::BatchResponse>([&](BypassManager::StubInterface* stub,
                                             grpc::ClientContext* context,
                                             v1::BatchResponse* out) {
    return stub->Batch(context, request, out);
  });
}

absl::StatusOr<Binding> Client::GetBinding(const std::string& token) const {
  v1::GetBindingRequest request;
  request.set_token(token);
  return CallUnary<Binding>(
      [&](BypassManager::StubInterface* stub, grpc::ClientContext* context,
          Binding* out) { return stub->GetBinding(context, request, out); });
}

absl::StatusOr<std::vector<v1::Node>> Client::ListNodes() const {
  v1::ListNodesRequest request;
  absl::StatusOr<v1::ListNodesResponse> response =
      CallUnary<v1::ListNodesResponse>([&](BypassManager::StubInterface* stub,
                                           grpc::ClientContext* context,
                                           v1::ListNodesResponse* out) {
        return stub->ListNodes(context, request, out);
      });
  if (!response.ok()) return response.status();
  return std::vector<v1::Node>(response->nodes().begin(),
                               response->nodes().end());
}

absl::StatusOr<v1::Node> Client::GetNode(const std::string& node) const {
  v1::GetNodeRequest request;
  request.set_node(node);
  return CallUnary<v1::Node>(
      [&](BypassManager::StubInterface* stub, grpc::ClientContext* context,
          v1::Node* out) { return stub->GetNode(context, request, out); });
}

absl::StatusOr<ListBindingsResponse> Client::ListBindings(
    const std::string& node, int32_t page_size,
    const std::string& page_token) const {
  v1::ListBindingsRequest request;
  request.set_node(node);
  request.set_page_size(page_size);
  request.set_page_token(page_token);
  return CallUnary<ListBindingsResponse>([&](BypassManager::StubInterface* stub,
                                             grpc::ClientContext* context,
                                             ListBindingsResponse* out) {
    return stub->ListBindings(context, request, out);
  });
}

absl::StatusOr<std::vector<Binding>> Client::ListAllBindings(
    const std::string& node, int32_t page_size) const {
  std::vector<Binding> bindings;
  std::string page_token;
  do {
    absl::StatusOr<ListBindingsResponse> page =
        ListBindings(node, page_size, page_token);
    if (!page.ok()) return page.status();
    for (Binding& binding : *page->mutable_bindings()) {
      bindings.push_back(std::move(binding));
    }
    if (!page->next_page_token().empty() &&
        page->next_page_token() == page_token) {
      return absl::InternalError(
          absl::StrCat("ListBindings returned the page token it was given (\"",
                       page_token, "\"); stopping to avoid a loop"));
    }
    page_token = page->next_page_token();
  } while (!page_token.empty());
  return bindings;
}

absl::Status Client::WatchBindings(const v1::WatchBindingsRequest& request,
                                   const BindingEventCallback& on_event,
                                   WatchCanceller* canceller) const {
  // Destruction order matters: the reader goes first, then the canceller lets
  // go of the context, then the context itself.
  grpc::ClientContext context;
  SetTimeout(options_.watch_timeout, &context);
  if (canceller != nullptr && !canceller->Attach(&context)) {
    return absl::OkStatus();
  }
  absl::Cleanup detach = [canceller] {
    if (canceller != nullptr) canceller->Detach();
  };

  const size_t at = current_.load(std::memory_order_relaxed);
  std::unique_ptr<grpc::ClientReaderInterface<BindingEvent>> reader =
      Stub(at)->WatchBindings(&context, request);
  BindingEvent event;
  bool stopped_by_callback = false;
  while (reader->Read(&event)) {
    if (!on_event(event)) {
      stopped_by_callback = true;
      context.TryCancel();
      break;
    }
  }
  grpc::Status status = reader->Finish();
  if (stopped_by_callback) return absl::OkStatus();
  if (status.error_code() == grpc::StatusCode::CANCELLED &&
      canceller != nullptr && canceller->IsCancelled()) {
    return absl::OkStatus();
  }
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE && replicas_ > 1) {
    // The caller's next watch goes to another replica.
    size_t expected = at;
    current_.compare_exchange_strong(expected, (at + 1) % replicas_);
  }
  return FromGrpcStatus(status);
}

}  // namespace irqbypass::client
