// BypassService: the gRPC edge of irqbypass.v1.BypassManager. Validates
// requests, converts protos to the index's records, calls the Matcher, and
// maps absl::Status to grpc::Status once, here (with an ErrorDetail in the
// status details). Thread-safe.
#ifndef IRQBYPASS_SERVICE_BYPASS_SERVICE_H_
#define IRQBYPASS_SERVICE_BYPASS_SERVICE_H_

#include <atomic>
#include <chrono>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "protos/irqbypass/v1/irqbypass.grpc.pb.h"
#include "service/agent_registry.h"
#include "service/audit_log.h"
#include "service/authorizer.h"
#include "service/leadership.h"
#include "service/matcher.h"
#include "service/token_index.h"
#include "service/watch_hub.h"
#include "service/watch_stream.h"

namespace irqbypass {

// Served on gRPC's callback API: the reads (GetBinding, ListBindings)
// complete inline on the thread that received them (they touch only the
// lock-free index); registrations and unregistrations run as the matcher's
// continuations (Matcher::*Async), so no thread waits for a busy token, an
// agent's ack or the store while one is in flight (Batch starts all its
// items at once, the same way, and answers when the last has ended);
// ListNodes and GetNode complete inline too. WatchBindings is a write
// reactor (WatchStream) that holds no thread while it lives.
using BypassServiceBase = v1::BypassManager::WithCallbackMethod_GetBinding<
    v1::BypassManager::WithCallbackMethod_ListBindings<
        v1::BypassManager::WithCallbackMethod_RegisterProducer<
            v1::BypassManager::WithCallbackMethod_RegisterConsumer<
                v1::BypassManager::WithCallbackMethod_UnregisterProducer<
                    v1::BypassManager::WithCallbackMethod_UnregisterConsumer<
                        v1::BypassManager::WithCallbackMethod_ListNodes<
                            v1::BypassManager::WithCallbackMethod_GetNode<
                                v1::BypassManager::WithCallbackMethod_Batch<
                                    v1::BypassManager::
                                        WithCallbackMethod_WatchBindings<
                                            v1::BypassManager::
                                                Service>>>>>>>>>>;

class BypassService final : public BypassServiceBase {
 public:
  // None owned; all must outlive the service. `leadership` null: always
  // serving (one replica); otherwise a standby answers every call
  // UNAVAILABLE (NOT_LEADER) naming the leader.
  // `agents` (null: no node has an agent) answers ListNodes and GetNode
  // with the index's counts. `authorizer` checks every call's caller
  // (irqbypassd always has one; null, for in-process tests only: none).
  // `watch_slots` (null: no limit) bounds the open WatchBindings streams.
  BypassService(Matcher& matcher, TokenIndex& index, WatchHub& watch_hub,
                const Leadership* leadership = nullptr,
                const AgentRegistry* agents = nullptr,
                const Authorizer* authorizer = nullptr,
                WatchSlots* watch_slots = nullptr)
      : matcher_(matcher),
        index_(index),
        watch_hub_(watch_hub),
        leadership_(leadership),
        agents_(agents),
        authorizer_(authorizer),
        watch_slots_(watch_slots) {}

  grpc::ServerUnaryReactor* RegisterProducer(
      grpc::CallbackServerContext* context,
      const v1::RegisterProducerRequest* request,
      v1::RegisterProducerResponse* response) override;
  grpc::ServerUnaryReactor* RegisterConsumer(
      grpc::CallbackServerContext* context,
      const v1::RegisterConsumerRequest* request,
      v1::RegisterConsumerResponse* response) override;
  grpc::ServerUnaryReactor* UnregisterProducer(
      grpc::CallbackServerContext* context,
      const v1::UnregisterProducerRequest* request,
      v1::UnregisterProducerResponse* response) override;
  grpc::ServerUnaryReactor* UnregisterConsumer(
      grpc::CallbackServerContext* context,
      const v1::UnregisterConsumerRequest* request,
      v1::UnregisterConsumerResponse* response) override;
  grpc::ServerUnaryReactor* GetBinding(grpc::CallbackServerContext* context,
                                       const v1::GetBindingRequest* request,
                                       v1::Binding* response) override;
  grpc::ServerUnaryReactor* ListBindings(
      grpc::CallbackServerContext* context,
      const v1::ListBindingsRequest* request,
      v1::ListBindingsResponse* response) override;
  grpc::ServerWriteReactor<v1::BindingEvent>* WatchBindings(
      grpc::CallbackServerContext* context,
      const v1::WatchBindingsRequest* request) override;
  grpc::ServerUnaryReactor* ListNodes(grpc::CallbackServerContext* context,
                                      const v1::ListNodesRequest* request,
                                      v1::ListNodesResponse* response) override;
  grpc::ServerUnaryReactor* GetNode(grpc::CallbackServerContext* context,
                                    const v1::GetNodeRequest* request,
                                    v1::Node* response) override;
  grpc::ServerUnaryReactor* Batch(grpc::CallbackServerContext* context,
                                  const v1::BatchRequest* request,
                                  v1::BatchResponse* response) override;

  // Every mutation also writes an audit line to `audit` (may be null); set
  // before serving.
  void SetAuditLog(const AuditLog* audit) { audit_ = audit; }

  // Most items in one Batch call.
  static constexpr int kMaxBatchItems = 4096;
  // How often a progress_notify watcher is considered for a PROGRESS event.
  static constexpr std::chrono::milliseconds kProgressInterval{1000};

 private:
  grpc::Status DoGetBinding(const v1::GetBindingRequest& request,
                            v1::Binding* response);
  grpc::Status DoListBindings(const v1::ListBindingsRequest& request,
                              v1::ListBindingsResponse* response);
  // One mutating call (unary, or an item of a Batch), validated and
  // started: `done` gets its outcome once (`response` filled when OK).
  using ItemDone = absl::AnyInvocable<void(absl::Status) &&>;
  template <typename Request, typename Response>
  void StartRegister(const Request& request, Response* response,
                     const Caller& caller, ItemDone done);
  template <typename Request, typename Response>
  void StartUnregister(const Request& request, Response* response,
                       const Caller& caller, ItemDone done);
  // The four unary mutating methods: StartRegister / StartUnregister, the
  // reactor finished with the outcome.
  template <typename Request, typename Response>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context,
                                  const Request* request, Response* response,
                                  absl::string_view method);
  // OK if the caller may make a call of `access` to `method`; otherwise the
  // refusal to answer with.
  grpc::Status Authorize(const grpc::CallbackServerContext& context,
                         Access access, absl::string_view method) const;
  // For a mutating call: the caller (its owner interned), or the refusal;
  // `who` gets its identity (unset with --insecure).
  absl::StatusOr<Caller> WriteCaller(const grpc::CallbackServerContext& context,
                                     absl::string_view method,
                                     security::Identity* who) const;
  // `done`, writing an audit line with its outcome first (or `done`
  // itself, without an audit log).
  ItemDone Audited(ItemDone done, const security::Identity& who,
                   std::string method, std::string token, std::string node,
                   std::string peer) const;
  grpc::Status DoListNodes(v1::ListNodesResponse* response);
  grpc::Status DoGetNode(const v1::GetNodeRequest& request, v1::Node* response);

  Matcher& matcher_;
  TokenIndex& index_;
  WatchHub& watch_hub_;
  const Leadership* const leadership_;
  const AgentRegistry* const agents_;
  const Authorizer* const authorizer_;
  WatchSlots* const watch_slots_;
  const AuditLog* audit_ = nullptr;
  ProgressTicker progress_ticker_{kProgressInterval};
};

// absl::Status from this service -> grpc::Status whose error_details hold an
// irqbypass.v1.RpcStatus carrying an ErrorDetail.
grpc::Status ToGrpcStatus(const absl::Status& status);
// The same as an RpcStatus (nothing set for OK): a Batch item's outcome.
void ToRpcStatus(const absl::Status& status, v1::RpcStatus* out);

}  // namespace irqbypass

#endif  // IRQBYPASS_SERVICE_BYPASS_SERVICE_H_
