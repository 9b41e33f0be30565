#include "client/fake_bypass_manager.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/error_detail.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/server_context.h"

namespace irqbypass::client::testing {
namespace {

using ::irqbypass::v1::Binding;
using ::irqbypass::v1::BindingEvent;
using ::irqbypass::v1::ErrorDetail;

grpc::Status Error(absl::StatusCode code, absl::string_view message,
                   ErrorDetail::Reason reason, absl::string_view token,
                   absl::string_view field = "") {
  ErrorDetail detail;
  detail.set_reason(reason);
  detail.set_token(std::string(token));
  detail.set_field(std::string(field));
  return ToGrpcStatus(WithErrorDetail(absl::Status(code, message), detail));
}

grpc::Status InvalidToken() {
  return Error(absl::StatusCode::kInvalidArgument, "token must not be empty",
               ErrorDetail::INVALID_FIELD, "", "token");
}

// Waits for the client to cancel the call (or its deadline to pass, or the
// server to shut down). Polls: the sync API has no cancellation callback.
void AwaitCancelled(grpc::ServerContext* context) {
  while (!context->IsCancelled()) absl::SleepFor(absl::Milliseconds(1));
}

bool HasDeadline(const grpc::ServerContext* context) {
  return context->deadline() != std::chrono::system_clock::time_point::max();
}

}  // namespace

void FakeBypassManager::FailNextCall(absl::Status status) {
  MutexLock lock(&mu_);
  fail_next_ = std::move(status);
}

void FakeBypassManager::FailEveryCall(std::optional<absl::Status> status) {
  MutexLock lock(&mu_);
  fail_every_ = std::move(status);
}

void FakeBypassManager::SetHoldUnary(bool hold) {
  MutexLock lock(&mu_);
  hold_unary_ = hold;
}

void FakeBypassManager::SetWatchScript(std::vector<BindingEvent> events,
                                       bool hold_open,
                                       absl::Status end_status) {
  MutexLock lock(&mu_);
  watch_events_ = std::move(events);
  watch_hold_open_ = hold_open;
  watch_end_status_ = std::move(end_status);
}

void FakeBypassManager::PutBinding(const Binding& binding) {
  MutexLock lock(&mu_);
  bindings_[binding.token()] = binding;
}

void FakeBypassManager::RecordRequestId(const std::string& id) {
  MutexLock lock(&mu_);
  request_ids_.push_back(id);
}

std::vector<std::string> FakeBypassManager::request_ids() const {
  MutexLock lock(&mu_);
  return request_ids_;
}

int FakeBypassManager::calls() const {
  MutexLock lock(&mu_);
  return calls_;
}

bool FakeBypassManager::last_call_had_deadline() const {
  MutexLock lock(&mu_);
  return last_call_had_deadline_;
}

v1::ListBindingsRequest FakeBypassManager::last_list_request() const {
  MutexLock lock(&mu_);
  return last_list_request_;
}

v1::WatchBindingsRequest FakeBypassManager::last_watch_request() const {
  MutexLock lock(&mu_);
  return last_watch_request_;
}

int FakeBypassManager::watches_finished() const {
  MutexLock lock(&mu_);
  return watches_finished_;
}

void FakeBypassManager::AwaitWatchesFinished(int count) const {
  MutexLock lock(&mu_);
  mu_.Await([this, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return watches_finished_ >= count;
  });
}

std::optional<grpc::Status> FakeBypassManager::BeginCall(
    grpc::ServerContext* context, bool unary) {
  bool hold = false;
  {
    MutexLock lock(&mu_);
    ++calls_;
    last_call_had_deadline_ = HasDeadline(context);
    if (fail_next_.has_value()) {
      absl::Status status = std::move(*fail_next_);
      fail_next_.reset();
      return ToGrpcStatus(status);
    }
    if (fail_every_.has_value()) return ToGrpcStatus(*fail_every_);
    hold = unary && hold_unary_;
  }
  if (hold) {
    AwaitCancelled(context);
    return grpc::Status(grpc::StatusCode::CANCELLED, "held until cancelled");
  }
  return std::nullopt;
}

grpc::Status FakeBypassManager::RegisterProducer(
    grpc::ServerContext* context, const v1::RegisterProducerRequest* request,
    v1::RegisterProducerResponse* response) {
  RecordRequestId(request->request_id());
  if (auto status = BeginCall(context, /*unary=*/true)) return *status;
  const v1::Producer& producer = request->producer();
  if (producer.token().empty()) return InvalidToken();
  MutexLock lock(&mu_);
  Binding& binding = bindings_[producer.token()];
  if (binding.has_producer()) {
    return Error(
        absl::StatusCode::kAlreadyExists,
        absl::StrCat("token ", producer.token(), " already has a producer"),
        ErrorDetail::TOKEN_BUSY, producer.token());
  }
  if (binding.has_consumer() && binding.consumer().node() != producer.node()) {
    return Error(
        absl::StatusCode::kFailedPrecondition,
        absl::StrCat("producer on node ", producer.node(),
                     " but consumer on node ", binding.consumer().node()),
        ErrorDetail::NODE_MISMATCH, producer.token());
  }
  binding.set_token(producer.token());
  *binding.mutable_producer() = producer;
  binding.set_producer_registration_id(absl::StrCat("p-", next_id_++));
  binding.set_node(producer.node());
  binding.set_connected(binding.has_consumer());
  binding.set_revision(++revision_);
  response->set_registration_id(binding.producer_registration_id());
  response->set_connected(binding.connected());
  return grpc::Status::OK;
}

grpc::Status FakeBypassManager::RegisterConsumer(
    grpc::ServerContext* context, const v1::RegisterConsumerRequest* request,
    v1::RegisterConsumerResponse* response) {
  RecordRequestId(request->request_id());
  if (auto status = BeginCall(context, /*unary=*/true)) return *status;
  const v1::Consumer& consumer = request->consumer();
  if (consumer.token().empty()) return InvalidToken();
  MutexLock lock(&mu_);
  Binding& binding = bindings_[consumer.token()];
  if (binding.has_consumer()) {
    return Error(
        absl::StatusCode::kAlreadyExists,
        absl::StrCat("token ", consumer.token(), " already has a consumer"),
        ErrorDetail::TOKEN_BUSY, consumer.token());
  }
  if (binding.has_producer() && binding.producer().node() != consumer.node()) {
    return Error(
        absl::StatusCode::kFailedPrecondition,
        absl::StrCat("consumer on node ", consumer.node(),
                     " but producer on node ", binding.producer().node()),
        ErrorDetail::NODE_MISMATCH, consumer.token());
  }
  binding.set_token(consumer.token());
  *binding.mutable_consumer() = consumer;
  binding.set_consumer_registration_id(absl::StrCat("c-", next_id_++));
  binding.set_node(consumer.node());
  binding.set_connected(binding.has_producer());
  binding.set_revision(++revision_);
  response->set_registration_id(binding.consumer_registration_id());
  response->set_connected(binding.connected());
  return grpc::Status::OK;
}

grpc::Status FakeBypassManager::UnregisterProducer(
    grpc::ServerContext* context, const v1::UnregisterProducerRequest* request,
    v1::UnregisterProducerResponse* response) {
  RecordRequestId(request->request_id());
  if (auto status = BeginCall(context, /*unary=*/true)) return *status;
  if (request->token().empty()) return InvalidToken();
  MutexLock lock(&mu_);
  auto it = bindings_.find(request->token());
  if (it == bindings_.end() || !it->second.has_producer()) {
    return Error(absl::StatusCode::kNotFound,
                 absl::StrCat("token ", request->token(), " has no producer"),
                 ErrorDetail::NOT_REGISTERED, request->token());
  }
  Binding& binding = it->second;
  if (!request->registration_id().empty() &&
      request->registration_id() != binding.producer_registration_id()) {
    return Error(absl::StatusCode::kFailedPrecondition,
                 absl::StrCat("registration_id ", request->registration_id(),
                              " does not match the producer of token ",
                              request->token()),
                 ErrorDetail::REGISTRATION_MISMATCH, request->token());
  }
  response->set_disconnected(binding.connected());
  binding.clear_producer();
  binding.clear_producer_registration_id();
  binding.set_connected(false);
  binding.set_revision(++revision_);
  if (!binding.has_consumer()) bindings_.erase(it);
  return grpc::Status::OK;
}

grpc::Status FakeBypassManager::UnregisterConsumer(
    grpc::ServerContext* context, const v1::UnregisterConsumerRequest* request,
    v1::UnregisterConsumerResponse* response) {
  RecordRequestId(request->request_id());
  if (auto status = BeginCall(context, /*unary=*/true)) return *status;
  if (request->token().empty()) return InvalidToken();
  MutexLock lock(&mu_);
  auto it = bindings_.find(request->token());
  if (it == bindings_.end() || !it->second.has_consumer()) {
    return Error(absl::StatusCode::kNotFound,
                 absl::StrCat("token ", request->token(), " has no consumer"),
                 ErrorDetail::NOT_REGISTERED, request->token());
  }
  Binding& binding = it->second;
  if (!request->registration_id().empty() &&
      request->registration_id() != binding.consumer_registration_id()) {
    return Error(absl::StatusCode::kFailedPrecondition,
                 absl::StrCat("registration_id ", request->registration_id(),
                              " does not match the consumer of token ",
                              request->token()),
                 ErrorDetail::REGISTRATION_MISMATCH, request->token());
  }
  response->set_disconnected(binding.connected());
  binding.clear_consumer();
  binding.clear_consumer_registration_id();
  binding.set_connected(false);
  binding.set_revision(++revision_);
  if (!binding.has_producer()) bindings_.erase(it);
  return grpc::Status::OK;
}

grpc::Status FakeBypassManager::GetBinding(grpc::ServerContext* context,
                                           const v1::GetBindingRequest* request,
                                           Binding* response) {
  if (auto status = BeginCall(context, /*unary=*/true)) return *status;
  if (request->token().empty()) return InvalidToken();
  MutexLock lock(&mu_);
  auto it = bindings_.find(request->token());
  if (it == bindings_.end()) {
    return Error(absl::StatusCode::kNotFound,
                 absl::StrCat("token ", request->token(),
                              " holds neither a producer nor a consumer"),
                 ErrorDetail::NOT_REGISTERED, request->token());
  }
  *response = it->second;
  return grpc::Status::OK;
}

grpc::Status FakeBypassManager::ListBindings(
    grpc::ServerContext* context, const v1::ListBindingsRequest* request,
    v1::ListBindingsResponse* response) {
  if (auto status = BeginCall(context, /*unary=*/true)) return *status;
  MutexLock lock(&mu_);
  last_list_request_ = *request;
  const int page_size = request->page_size() == 0 ? 100 : request->page_size();
  if (page_size < 0 || page_size > 1000) {
    return Error(absl::StatusCode::kInvalidArgument,
                 "page_size must be in 0..1000", ErrorDetail::INVALID_FIELD, "",
                 "page_size");
  }
  // The page token is the last token of the previous page (exclusive start).
  auto it = request->page_token().empty()
                ? bindings_.begin()
                : bindings_.upper_bound(request->page_token());
  for (; it != bindings_.end(); ++it) {
    if (!request->node().empty() && it->second.node() != request->node()) {
      continue;
    }
    if (response->bindings_size() == page_size) {
      response->set_next_page_token(
          response->bindings(response->bindings_size() - 1).token());
      break;
    }
    *response->add_bindings() = it->second;
  }
  return grpc::Status::OK;
}

grpc::Status FakeBypassManager::WatchBindings(
    grpc::ServerContext* context, const v1::WatchBindingsRequest* request,
    grpc::ServerWriter<BindingEvent>* writer) {
  struct Finished {
    FakeBypassManager* self;
    ~Finished() {
      MutexLock lock(&self->mu_);
      ++self->watches_finished_;
    }
  } finished{this};
  if (auto status = BeginCall(context, /*unary=*/false)) return *status;
  std::vector<BindingEvent> events;
  bool hold_open = false;
  absl::Status end_status;
  {
    MutexLock lock(&mu_);
    last_watch_request_ = *request;
    events = watch_events_;
    hold_open = watch_hold_open_;
    end_status = watch_end_status_;
  }
  for (const BindingEvent& event : events) {
    if (!writer->Write(event)) return grpc::Status::CANCELLED;
  }
  if (hold_open) {
    AwaitCancelled(context);
    return grpc::Status::CANCELLED;
  }
  return ToGrpcStatus(end_status);
}

// --- FakeServer ---

absl::StatusOr<std::unique_ptr<FakeServer>> FakeServer::Start() {
  std::unique_ptr<FakeServer> server(new FakeServer());
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &server->port_);
  builder.RegisterService(&server->service_);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::InternalError("cannot start the fake BypassManager server");
  }
  return server;
}

FakeServer::~FakeServer() { Shutdown(); }

std::string FakeServer::address() const {
  return absl::StrCat("127.0.0.1:", port_);
}

void FakeServer::Shutdown() {
  if (server_ == nullptr) return;
  // A deadline of now cancels calls still running (held watches) at once.
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
  server_.reset();
}

}  // namespace irqbypass::client::testing
