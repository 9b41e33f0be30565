#include "service/bypass_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <type_traits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/errno_name.h"
#include "common/log.h"
#include "service/errors.h"
#include "service/owners.h"
#include "service/validation.h"

namespace irqbypass {
namespace {

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;

// The request's CallId: its request_id, a fingerprint of the rest (and of
// the caller's owner), and the caller.
template <typename Request>
absl::StatusOr<CallId> CallIdOf(const Request& request, const Caller& caller) {
  CallId call;
  call.caller = caller;
  if (request.request_id().empty()) return call;
  if (auto s = ValidateRequestId("request_id", request.request_id()); !s.ok()) {
    return s;
  }
  Request rest = request;
  rest.clear_request_id();
  std::string bytes;
  rest.SerializeToString(&bytes);
  call.id = request.request_id();
  // Another owner reusing the id makes a different request (it must not get
  // this one's outcome, its registration id among it).
  call.fingerprint =
      StableFingerprint(bytes) ^ (uint64_t{caller.owner} * 0x9e3779b97f4a7c15);
  return call;
}

}  // namespace

void ToRpcStatus(const absl::Status& status, v1::RpcStatus* out) {
  if (status.ok()) return;  // code 0
  v1::ErrorDetail detail;
  detail.set_reason(
      static_cast<v1::ErrorDetail::Reason>(GetErrorReason(status)));
  const ErrorContext ctx = GetErrorContext(status);
  detail.set_field(ctx.field);
  detail.set_token(ctx.token);
  detail.set_node(ctx.node);
  detail.set_step(ctx.step);
  if (ctx.err != 0) {
    detail.set_errno_value(ctx.err);
    detail.set_errno_name(ErrnoName(ctx.err));
  }
  detail.set_agent_message(ctx.agent_message);
  detail.set_other_token(ctx.other_token);
  detail.set_leader(ctx.leader);
  out->set_code(static_cast<int>(status.code()));
  out->set_message(std::string(status.message()));
  out->add_details()->PackFrom(detail);
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  v1::RpcStatus rpc_status;
  ToRpcStatus(status, &rpc_status);
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()),
                      rpc_status.SerializeAsString());
}

namespace {

// A unary callback call answered inline, on the thread that received it.
grpc::ServerUnaryReactor* FinishInline(grpc::CallbackServerContext* context,
                                       grpc::Status status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(std::move(status));
  return reactor;
}

// Which of a registration's sides: the registration id's prefix.
template <typename Request>
constexpr char SideOf() {
  if constexpr (std::is_same_v<Request, v1::RegisterProducerRequest> ||
                std::is_same_v<Request, v1::UnregisterProducerRequest>) {
    return 'p';
  } else {
    return 'c';
  }
}

// The record a register request names, validated.
absl::StatusOr<ProducerRecord> RecordOf(const v1::RegisterProducerRequest& r) {
  if (!r.has_producer()) return InvalidField("producer", "producer: required");
  return ProducerFromProto(r.producer());
}
absl::StatusOr<ConsumerRecord> RecordOf(const v1::RegisterConsumerRequest& r) {
  if (!r.has_consumer()) return InvalidField("consumer", "consumer: required");
  return ConsumerFromProto(r.consumer());
}
const std::string& TokenOf(const v1::RegisterProducerRequest& r) {
  return r.producer().token();
}
const std::string& TokenOf(const v1::RegisterConsumerRequest& r) {
  return r.consumer().token();
}

// What an audit line names of a request.
std::string AuditToken(const v1::RegisterProducerRequest& r) {
  return r.producer().token();
}
std::string AuditToken(const v1::RegisterConsumerRequest& r) {
  return r.consumer().token();
}
std::string AuditToken(const v1::UnregisterProducerRequest& r) {
  return r.token();
}
std::string AuditToken(const v1::UnregisterConsumerRequest& r) {
  return r.token();
}
std::string AuditNode(const v1::RegisterProducerRequest& r) {
  return r.producer().node();
}
std::string AuditNode(const v1::RegisterConsumerRequest& r) {
  return r.consumer().node();
}
std::string AuditNode(const v1::UnregisterProducerRequest&) { return ""; }
std::string AuditNode(const v1::UnregisterConsumerRequest&) { return ""; }

// The field a Batch item's request sits in.
const char* OpField(v1::BatchItem::OpCase op) {
  switch (op) {
    case v1::BatchItem::kRegisterProducer:
      return ".register_producer";
    case v1::BatchItem::kRegisterConsumer:
      return ".register_consumer";
    case v1::BatchItem::kUnregisterProducer:
      return ".unregister_producer";
    case v1::BatchItem::kUnregisterConsumer:
      return ".unregister_consumer";
    case v1::BatchItem::OP_NOT_SET:
      break;
  }
  return "";
}

// `status` as item `i` (of kind `op`) of a batch reports it: its field (and
// the message that names it) under the item's path.
absl::Status InItem(absl::Status status, int i, v1::BatchItem::OpCase op) {
  if (status.ok()) return status;
  ErrorContext ctx = GetErrorContext(status);
  if (ctx.field.empty()) return status;
  const std::string prefix = absl::StrCat("items[", i, "]", OpField(op), ".");
  std::string message(status.message());
  if (absl::StartsWith(message, ctx.field)) {
    message = absl::StrCat(prefix, message);
  }
  ctx.field = absl::StrCat(prefix, ctx.field);
  return MakeError(status.code(), GetErrorReason(status), message, ctx);
}

}  // namespace

template <typename Request, typename Response>
void BypassService::StartRegister(const Request& request, Response* response,
                                  const Caller& caller, ItemDone done) {
  auto record = RecordOf(request);
  if (!record.ok()) return std::move(done)(record.status());
  absl::StatusOr<CallId> call = CallIdOf(request, caller);
  if (!call.ok()) return std::move(done)(call.status());
  auto finish = [response, done = std::move(done)](
                    absl::StatusOr<RegisterResult> result) mutable {
    if (result.ok()) {
      response->set_registration_id(
          FormatRegistrationId(SideOf<Request>(), result->registration_id));
      response->set_connected(result->connected);
    }
    std::move(done)(result.status());
  };
  if constexpr (SideOf<Request>() == 'p') {
    matcher_.RegisterProducerAsync(TokenOf(request), *std::move(record), &*call,
                                   std::move(finish));
  } else {
    matcher_.RegisterConsumerAsync(TokenOf(request), *std::move(record), &*call,
                                   std::move(finish));
  }
}

template <typename Request, typename Response>
void BypassService::StartUnregister(const Request& request, Response* response,
                                    const Caller& caller, ItemDone done) {
  if (auto s = ValidateToken("token", request.token()); !s.ok()) {
    return std::move(done)(s);
  }
  absl::StatusOr<uint64_t> id = ParseRegistrationId(
      "registration_id", SideOf<Request>(), request.registration_id());
  if (!id.ok()) return std::move(done)(id.status());
  absl::StatusOr<CallId> call = CallIdOf(request, caller);
  if (!call.ok()) return std::move(done)(call.status());
  auto finish = [response, done = std::move(done)](
                    absl::StatusOr<bool> disconnected) mutable {
    if (disconnected.ok()) response->set_disconnected(*disconnected);
    std::move(done)(disconnected.status());
  };
  if constexpr (SideOf<Request>() == 'p') {
    matcher_.UnregisterProducerAsync(request.token(), *id, &*call,
                                     std::move(finish));
  } else {
    matcher_.UnregisterConsumerAsync(request.token(), *id, &*call,
                                     std::move(finish));
  }
}

template <typename Request, typename Response>
grpc::ServerUnaryReactor* BypassService::Unary(
    grpc::CallbackServerContext* context, const Request* request,
    Response* response, absl::string_view method) {
  security::Identity who;
  absl::StatusOr<Caller> caller = WriteCaller(*context, method, &who);
  if (!caller.ok()) return FinishInline(context, ToGrpcStatus(caller.status()));
  if (leadership_ != nullptr) {
    if (absl::Status s = leadership_->Check(); !s.ok()) {
      return FinishInline(context, ToGrpcStatus(s));
    }
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  ItemDone done =
      Audited([reactor](absl::Status s) { reactor->Finish(ToGrpcStatus(s)); },
              who, std::string(method), AuditToken(*request),
              AuditNode(*request), context->peer());
  if constexpr (std::is_same_v<Request, v1::RegisterProducerRequest> ||
                std::is_same_v<Request, v1::RegisterConsumerRequest>) {
    StartRegister(*request, response, *caller, std::move(done));
  } else {
    StartUnregister(*request, response, *caller, std::move(done));
  }
  return reactor;
}

grpc::ServerUnaryReactor* BypassService::RegisterProducer(
    grpc::CallbackServerContext* context,
    const v1::RegisterProducerRequest* request,
    v1::RegisterProducerResponse* response) {
  return Unary(context, request, response, "RegisterProducer");
}

grpc::ServerUnaryReactor* BypassService::RegisterConsumer(
    grpc::CallbackServerContext* context,
    const v1::RegisterConsumerRequest* request,
    v1::RegisterConsumerResponse* response) {
  return Unary(context, request, response, "RegisterConsumer");
}

grpc::ServerUnaryReactor* BypassService::UnregisterProducer(
    grpc::CallbackServerContext* context,
    const v1::UnregisterProducerRequest* request,
    v1::UnregisterProducerResponse* response) {
  return Unary(context, request, response, "UnregisterProducer");
}

grpc::ServerUnaryReactor* BypassService::UnregisterConsumer(
    grpc::CallbackServerContext* context,
    const v1::UnregisterConsumerRequest* request,
    v1::UnregisterConsumerResponse* response) {
  return Unary(context, request, response, "UnregisterConsumer");
}

grpc::ServerUnaryReactor* BypassService::Batch(
    grpc::CallbackServerContext* context, const v1::BatchRequest* request,
    v1::BatchResponse* response) {
  security::Identity who;
  absl::StatusOr<Caller> caller = WriteCaller(*context, "Batch", &who);
  if (!caller.ok()) return FinishInline(context, ToGrpcStatus(caller.status()));
  const std::string peer = audit_ != nullptr ? context->peer() : "";
  if (leadership_ != nullptr) {
    if (absl::Status s = leadership_->Check(); !s.ok()) {
      return FinishInline(context, ToGrpcStatus(s));
    }
  }
  const int n = request->items_size();
  if (n == 0 || n > kMaxBatchItems) {
    return FinishInline(
        context,
        ToGrpcStatus(InvalidField(
            "items", absl::StrCat("items: ", n, " items; a batch holds 1..",
                                  kMaxBatchItems))));
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  for (int i = 0; i < n; ++i) response->add_results();
  // The call ends when its last item does (on whichever thread that is);
  // each item writes only its own result.
  struct Call {
    grpc::ServerUnaryReactor* reactor;
    std::atomic<int> remaining;
  };
  auto* call = new Call{reactor, n + 1};  // + 1: until every item started
  auto end_one = [call] {
    if (call->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      call->reactor->Finish(grpc::Status::OK);
      delete call;
    }
  };
  for (int i = 0; i < n; ++i) {
    const v1::BatchItem& item = request->items(i);
    v1::BatchResult* result = response->mutable_results(i);
    ItemDone done = [result, end_one, i, op = item.op_case()](absl::Status s) {
      ToRpcStatus(InItem(std::move(s), i, op), result->mutable_status());
      end_one();
    };
    if (audit_ != nullptr) {
      std::string token, node;
      switch (item.op_case()) {
        case v1::BatchItem::kRegisterProducer:
          token = AuditToken(item.register_producer());
          node = AuditNode(item.register_producer());
          break;
        case v1::BatchItem::kRegisterConsumer:
          token = AuditToken(item.register_consumer());
          node = AuditNode(item.register_consumer());
          break;
        case v1::BatchItem::kUnregisterProducer:
          token = item.unregister_producer().token();
          break;
        case v1::BatchItem::kUnregisterConsumer:
          token = item.unregister_consumer().token();
          break;
        case v1::BatchItem::OP_NOT_SET:
          break;
      }
      done = Audited(std::move(done), who,
                     absl::StrCat("Batch[", i, "]", OpField(item.op_case())),
                     std::move(token), std::move(node), peer);
    }
    switch (item.op_case()) {
      case v1::BatchItem::kRegisterProducer:
        StartRegister(item.register_producer(),
                      result->mutable_register_producer(), *caller,
                      std::move(done));
        break;
      case v1::BatchItem::kRegisterConsumer:
        StartRegister(item.register_consumer(),
                      result->mutable_register_consumer(), *caller,
                      std::move(done));
        break;
      case v1::BatchItem::kUnregisterProducer:
        StartUnregister(item.unregister_producer(),
                        result->mutable_unregister_producer(), *caller,
                        std::move(done));
        break;
      case v1::BatchItem::kUnregisterConsumer:
        StartUnregister(item.unregister_consumer(),
                        result->mutable_unregister_consumer(), *caller,
                        std::move(done));
        break;
      case v1::BatchItem::OP_NOT_SET:
        std::move(done)(
            InvalidField("op",
                         "op: one of register_producer, register_consumer, "
                         "unregister_producer, unregister_consumer is "
                         "required"));
        break;
    }
  }
  end_one();
  return reactor;
}

grpc::ServerUnaryReactor* BypassService::GetBinding(
    grpc::CallbackServerContext* context, const v1::GetBindingRequest* request,
    v1::Binding* response) {
  if (grpc::Status s = Authorize(*context, Access::kRead, "GetBinding");
      !s.ok()) {
    return FinishInline(context, std::move(s));
  }
  return FinishInline(context, DoGetBinding(*request, response));
}

grpc::ServerUnaryReactor* BypassService::ListBindings(
    grpc::CallbackServerContext* context,
    const v1::ListBindingsRequest* request,
    v1::ListBindingsResponse* response) {
  if (grpc::Status s = Authorize(*context, Access::kRead, "ListBindings");
      !s.ok()) {
    return FinishInline(context, std::move(s));
  }
  return FinishInline(context, DoListBindings(*request, response));
}

grpc::Status BypassService::DoGetBinding(const v1::GetBindingRequest& request,
                                         v1::Binding* response) {
  if (leadership_ != nullptr) {
    if (absl::Status s = leadership_->Check(); !s.ok()) return ToGrpcStatus(s);
  }
  if (auto s = ValidateToken("token", request.token()); !s.ok()) {
    return ToGrpcStatus(s);
  }
  // Straight from the committed state into the response, without a copy.
  if (!index_.Read(request.token(), [&](const BindingState& st) {
        BindingToProto(request.token(), st, response);
      })) {
    ErrorContext ctx;
    ctx.token = request.token();
    return ToGrpcStatus(
        MakeError(absl::StatusCode::kNotFound, ErrorReason::kNotRegistered,
                  absl::StrCat("token \"", request.token(),
                               "\" holds neither a producer nor a consumer"),
                  ctx));
  }
  return grpc::Status::OK;
}

grpc::Status BypassService::DoListBindings(
    const v1::ListBindingsRequest& request,
    v1::ListBindingsResponse* response) {
  if (leadership_ != nullptr) {
    if (absl::Status s = leadership_->Check(); !s.ok()) return ToGrpcStatus(s);
  }
  if (!request.node().empty()) {
    if (auto s = ValidateNode("node", request.node()); !s.ok()) {
      return ToGrpcStatus(s);
    }
  }
  int page_size = request.page_size();
  if (page_size < 0 || page_size > kMaxPageSize) {
    return ToGrpcStatus(InvalidField(
        "page_size",
        absl::StrCat("page_size: ", page_size, " not in 0..", kMaxPageSize)));
  }
  if (page_size == 0) page_size = kDefaultPageSize;
  auto page = index_.List(request.node(), static_cast<size_t>(page_size),
                          request.page_token());
  if (!page.ok()) {
    return ToGrpcStatus(InvalidField("page_token", page.status().message()));
  }
  for (const auto& [token, st] : page->items) {
    BindingToProto(token, st, response->add_bindings());
  }
  response->set_next_page_token(page->next_page_token);
  return grpc::Status::OK;
}

namespace {

int64_t UnixMicros(absl::Time t) {
  return t == absl::InfinitePast() ? 0 : absl::ToUnixMicros(t);
}

void NodeToProto(const std::string& name, const TokenIndex::Counts* counts,
                 const AgentRegistry::NodeStatus* status, v1::Node* out) {
  out->set_name(name);
  if (counts != nullptr) {
    out->set_producers(counts->producers);
    out->set_consumers(counts->consumers);
    out->set_connected_pairs(counts->connected);
  }
  if (status == nullptr) return;
  const AgentRegistry::NodeInfo& info = status->info;
  out->set_agent_connected(status->connected);
  out->set_reconciled(status->reconciled);
  out->set_commands_in_flight(status->commands_in_flight);
  out->set_backend(info.backend);
  out->set_agent_version(info.agent_version);
  out->set_peer(info.peer);
  out->set_session_started_unix_micros(UnixMicros(info.started));
  if (!status->connected) {
    out->set_session_ended_unix_micros(UnixMicros(info.ended));
  }
  if (info.last_reconcile.has_value()) {
    v1::Reconciliation* r = out->mutable_last_reconciliation();
    r->set_kept(info.last_reconcile->kept);
    r->set_disconnected(info.last_reconcile->disconnected);
    r->set_reconnected(info.last_reconcile->reconnected);
    r->set_failed(info.last_reconcile->failed);
    r->set_refused(info.last_reconcile->refused);
    r->set_duration_ms(absl::ToInt64Milliseconds(info.last_reconcile_duration));
    r->set_finished_unix_micros(UnixMicros(info.last_reconcile_finished));
  }
}

}  // namespace

grpc::ServerUnaryReactor* BypassService::ListNodes(
    grpc::CallbackServerContext* context, const v1::ListNodesRequest*,
    v1::ListNodesResponse* response) {
  if (grpc::Status s = Authorize(*context, Access::kRead, "ListNodes");
      !s.ok()) {
    return FinishInline(context, std::move(s));
  }
  return FinishInline(context, DoListNodes(response));
}

grpc::ServerUnaryReactor* BypassService::GetNode(
    grpc::CallbackServerContext* context, const v1::GetNodeRequest* request,
    v1::Node* response) {
  if (grpc::Status s = Authorize(*context, Access::kRead, "GetNode"); !s.ok()) {
    return FinishInline(context, std::move(s));
  }
  return FinishInline(context, DoGetNode(*request, response));
}

grpc::Status BypassService::DoListNodes(v1::ListNodesResponse* response) {
  if (leadership_ != nullptr) {
    if (absl::Status s = leadership_->Check(); !s.ok()) return ToGrpcStatus(s);
  }
  absl::flat_hash_map<std::string, TokenIndex::Counts> by_node;
  index_.CountAll(&by_node);
  std::vector<AgentRegistry::NodeStatus> statuses;
  if (agents_ != nullptr) statuses = agents_->NodeStatuses();
  std::map<std::string, const AgentRegistry::NodeStatus*> names;
  for (const auto& [name, counts] : by_node) names[name] = nullptr;
  for (const AgentRegistry::NodeStatus& st : statuses) names[st.node] = &st;
  for (const auto& [name, status] : names) {
    auto counts = by_node.find(name);
    NodeToProto(name, counts != by_node.end() ? &counts->second : nullptr,
                status, response->add_nodes());
  }
  return grpc::Status::OK;
}

grpc::Status BypassService::DoGetNode(const v1::GetNodeRequest& request,
                                      v1::Node* response) {
  if (leadership_ != nullptr) {
    if (absl::Status s = leadership_->Check(); !s.ok()) return ToGrpcStatus(s);
  }
  if (auto s = ValidateNode("node", request.node()); !s.ok()) {
    return ToGrpcStatus(s);
  }
  std::optional<AgentRegistry::NodeStatus> status;
  if (agents_ != nullptr) status = agents_->FindNodeStatus(request.node());
  // The node's bindings: one pass over the index, as the gauges do.
  absl::flat_hash_map<std::string, TokenIndex::Counts> by_node;
  index_.CountAll(&by_node);
  auto counts = by_node.find(request.node());
  if (!status.has_value() && counts == by_node.end()) {
    ErrorContext ctx;
    ctx.node = request.node();
    return ToGrpcStatus(MakeError(
        absl::StatusCode::kNotFound, ErrorReason::kUnspecified,
        absl::StrCat("node \"", request.node(),
                     "\" has no bindings and its agent had no session since "
                     "this manager started"),
        ctx));
  }
  NodeToProto(request.node(),
              counts != by_node.end() ? &counts->second : nullptr,
              status.has_value() ? &*status : nullptr, response);
  return grpc::Status::OK;
}

grpc::ServerWriteReactor<v1::BindingEvent>* BypassService::WatchBindings(
    grpc::CallbackServerContext* context,
    const v1::WatchBindingsRequest* request) {
  grpc::Status refusal;
  std::string identity = "insecure";
  std::optional<security::Identity> who;
  if (authorizer_ != nullptr) {
    absl::StatusOr<security::Identity> id =
        authorizer_->Check(*context, Access::kRead, "WatchBindings");
    if (!id.ok()) {
      refusal = ToGrpcStatus(id.status());
    } else if (!authorizer_->insecure()) {
      identity = id->uri;
      who = *std::move(id);
    }
  }
  std::unique_ptr<WatchSlots::Slot> slot;
  if (refusal.ok() && watch_slots_ != nullptr) {
    absl::StatusOr<std::unique_ptr<WatchSlots::Slot>> taken =
        watch_slots_->Take(identity);
    if (taken.ok()) {
      slot = *std::move(taken);
    } else {
      refusal = ToGrpcStatus(taken.status());
      if (authorizer_ != nullptr) {
        authorizer_->NoteDenied("WatchBindings", taken.status(),
                                context->peer(), who ? &*who : nullptr);
      }
    }
  }
  return WatchStream::Start(*request, index_, watch_hub_, leadership_,
                            progress_ticker_, std::move(refusal),
                            std::move(slot));
}

absl::StatusOr<Caller> BypassService::WriteCaller(
    const grpc::CallbackServerContext& context, absl::string_view method,
    security::Identity* who) const {
  Caller caller;  // no authorizer (in-process tests): unrestricted
  if (authorizer_ == nullptr) return caller;
  absl::StatusOr<security::Identity> id =
      authorizer_->Check(context, Access::kWrite, method);
  if (!id.ok()) return id.status();
  if (authorizer_->insecure()) return caller;
  *who = *id;
  caller.admin = id->role == security::Role::kAdmin;
  caller.owner = Owners::Get().Intern(id->uri);
  if (caller.owner == 0) {
    return absl::ResourceExhaustedError(absl::StrCat(
        method, ": more than ", Owners::kMaxOwners,
        " distinct identities have registered; this one cannot be recorded"));
  }
  return caller;
}

BypassService::ItemDone BypassService::Audited(
    ItemDone done, const security::Identity& who, std::string method,
    std::string token, std::string node, std::string peer) const {
  if (audit_ == nullptr) return done;
  return [audit = audit_, identity = who.uri,
          role = who.uri.empty() ? std::string()
                                 : std::string(security::RoleName(who.role)),
          method = std::move(method), token = std::move(token),
          node = std::move(node), peer = std::move(peer),
          done = std::move(done)](absl::Status s) mutable {
    AuditEntry entry;
    entry.identity = identity;
    entry.role = role;
    entry.method = method;
    entry.token = token;
    entry.node = node;
    entry.code = s.code();
    entry.peer = peer;
    audit->Write(entry);
    std::move(done)(std::move(s));
  };
}

grpc::Status BypassService::Authorize(
    const grpc::CallbackServerContext& context, Access access,
    absl::string_view method) const {
  if (authorizer_ == nullptr) return grpc::Status::OK;
  absl::StatusOr<security::Identity> id =
      authorizer_->Check(context, access, method);
  return id.ok() ? grpc::Status::OK : ToGrpcStatus(id.status());
}

}  // namespace irqbypass
