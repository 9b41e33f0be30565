#include "service/store_codec.h"

#include "absl/status/status.h"
#include "protos/irqbypass/store/v1/store.pb.h"

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
  }
  if (state.consumer) {
    store::v1::StoredConsumer* c = stored.mutable_consumer();
    c->set_node(state.consumer->node);
    c->set_vm(state.consumer->vm);
    c->set_gsi(state.consumer->gsi);
    c->set_registration_id(state.consumer->registration_id);
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
  }
  if (stored.has_consumer()) {
    const store::v1::StoredConsumer& c = stored.consumer();
    ConsumerRecord& r = state.consumer.emplace();
    r.node = c.node();
    r.vm = c.vm();
    r.gsi = c.gsi();
    r.registration_id = c.registration_id();
  }
  state.connected = stored.connected();
  state.revision = stored.revision();
  return state;
}

}  // namespace irqbypass
