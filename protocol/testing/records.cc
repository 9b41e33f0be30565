#include "protocol/testing/records.h"

#include <string>

namespace irqbypass::testing {

v1::Producer MakeProducer(absl::string_view token, absl::string_view node,
                          absl::string_view device, uint32_t vector,
                          v1::IrqIndex index) {
  v1::Producer producer;
  producer.set_token(std::string(token));
  producer.set_node(std::string(node));
  producer.set_device(std::string(device));
  producer.set_vector(vector);
  producer.set_index(index);
  return producer;
}

v1::Consumer MakeConsumer(absl::string_view token, absl::string_view node,
                          absl::string_view vm, uint32_t gsi) {
  v1::Consumer consumer;
  consumer.set_token(std::string(token));
  consumer.set_node(std::string(node));
  consumer.set_vm(std::string(vm));
  consumer.set_gsi(gsi);
  return consumer;
}

v1::Producer NodeProducer(absl::string_view device, uint32_t vector,
                          v1::IrqIndex index) {
  return MakeProducer("", kTestNode, device, vector, index);
}

v1::Consumer NodeConsumer(absl::string_view vm, uint32_t gsi) {
  return MakeConsumer("", kTestNode, vm, gsi);
}

}  // namespace irqbypass::testing
