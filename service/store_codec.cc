#include "service/store_codec.h"

#include "absl/status/status.h"
#include "protos/irqbypass/store/v1/store.pb.h"
#include "service/owners.h"

namespace irqbypass {

std::string EncodeBinding(const BindingState& state) {
  store::v1::StoredBinding stored;
  if (state.producer) {
    store::v1::StoredProducer* p = stored.mutable_producer();
    p->set_node(state.producer->node);
    p->set_device(state.producer->device);
    p->set_vector(state.producer->vector);
    p->set_irq_index(state.producer->irq_index);
    p->set_registration_id(state.producer->registration_id);
    if (state.producer->owner != 0) {
      p->set_owner(Owners::Get().Name(state.producer->owner));
    }
  }
  if (state.consumer) {
    store::v1::StoredConsumer* c = stored.mutable_consumer();
    c->set_node(state.consumer->node);
    c->set_vm(state.consumer->vm);
    c->set_gsi(state.consumer->gsi);
    c->set_registration_id(state.consumer->registration_id);
    if (state.consumer->owner != 0) {
      c->set_owner(Owners::Get().Name(state.consumer->owner));
    }
  }
  stored.set_connected(state.connected);
  stored.set_revision(state.revision);
  return stored.SerializeAsString();
}

absl::StatusOr<BindingState> DecodeBinding(absl::string_view bytes) {
  store::v1::StoredBinding stored;
  if (!stored.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError("not an irqbypass.store.v1.StoredBinding");
  }
  BindingState state;
  if (stored.has_producer()) {
    const store::v1::StoredProducer& p = stored.producer();
    if (p.irq_index() > 255) {
      return absl::DataLossError("producer.irq_index out of range");
    }
    ProducerRecord& r = state.producer.emplace();
    r.node = p.node();
    r.device = p.device();
    r.vector = p.vector();
    r.irq_index = static_cast<uint8_t>(p.irq_index());
    r.registration_id = p.registration_id();
    r.owner = Owners::Get().Intern(p.owner());
    if (r.owner == 0 && !p.owner().empty()) {
      return absl::ResourceExhaustedError("producer.owner: owner table full");
    }
  }
  if (stored.has_consumer()) {
    const store::v1::StoredConsumer& c = stored.consumer();
    ConsumerRecord& r = state.consumer.emplace();
    r.node = c.node();
    r.vm = c.vm();
    r.gsi = c.gsi();
    r.registration_id = c.registration_id();
    r.owner = Owners::Get().Intern(c.owner());
    if (r.owner == 0 && !c.owner().empty()) {
      return absl::ResourceExhaustedError("consumer.owner: owner table full");
    }
  }
  state.connected = stored.connected();
  state.revision = stored.revision();
  return state;
}

std::string EncodeRequest(const RequestRecord& request) {
  store::v1::StoredRequest stored;
  stored.set_id(request.id);
  stored.set_kind(static_cast<uint32_t>(request.kind));
  stored.set_fingerprint(request.fingerprint);
  stored.set_expires_unix_micros(request.expires_unix_micros);
  stored.set_token(request.token);
  stored.set_registration_id(request.registration_id);
  stored.set_connected(request.connected);
  stored.set_disconnected(request.disconnected);
  return stored.SerializeAsString();
}

absl::StatusOr<RequestRecord> DecodeRequest(absl::string_view bytes) {
  store::v1::StoredRequest stored;
  if (!stored.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError("not an irqbypass.store.v1.StoredRequest");
  }
  if (stored.kind() < 1 || stored.kind() > 4) {
    return absl::DataLossError("request kind out of range");
  }
  RequestRecord r;
  r.id = stored.id();
  r.kind = static_cast<RequestKind>(stored.kind());
  r.fingerprint = stored.fingerprint();
  r.expires_unix_micros = stored.expires_unix_micros();
  r.token = stored.token();
  r.registration_id = stored.registration_id();
  r.connected = stored.connected();
  r.disconnected = stored.disconnected();
  return r;
}

}  // namespace irqbypass
