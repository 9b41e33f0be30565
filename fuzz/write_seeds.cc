// Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from
// the product's own encoders, so the seeds are valid inputs of today's
// formats:  bazel run //fuzz:write_seeds -- "$PWD/fuzz/corpus"
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "agent/handoff/handoff.h"
#include "protocol/agent_protocol.h"
#include "protos/irqbypass/v1/agent.pb.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"
#include "service/owners.h"
#include "service/store_codec.h"

namespace {

std::string g_root;

void Put(const std::string& target, const std::string& name,
         const std::string& bytes) {
  const std::string dir = g_root + "/" + target;
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
}

irqbypass::v1::Producer Producer(const std::string& token) {
  irqbypass::v1::Producer p;
  p.set_token(token);
  p.set_node("n1");
  p.set_device("0000:3b:00.1");
  p.set_vector(3);
  p.set_index(irqbypass::v1::IRQ_INDEX_MSIX);
  return p;
}

irqbypass::v1::Consumer Consumer(const std::string& token) {
  irqbypass::v1::Consumer c;
  c.set_token(token);
  c.set_node("n1");
  c.set_vm("vm-a");
  c.set_gsi(40);
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: write_seeds CORPUS_DIR\n");
    return 2;
  }
  g_root = argv[1];
  using namespace irqbypass;  // NOLINT

  // handoff: every request and reply form.
  int n = 0;
  for (const char* text :
       {"SERVE-VM 1 vm-a", "DEVICE 0000:3b:00.1", "VM vm-a vmm",
        "VM vm-b agent", "RELEASE-VM vm-a", "RELEASE-DEVICE 0000:3b:00.1", "OK",
        "ERR 22 VM: want 1 fd", "IRQFD 1 7 vm-a 40 assign",
        "IRQFD 1 8 vm-a 40 deassign", "IRQFD-REPLY 1 7 0",
        "IRQFD-REPLY 1 8 22 KVM_IRQFD: Invalid argument"}) {
    Put("handoff", "seed-" + std::to_string(++n), text);
  }

  // store_codec: records of each shape, and a request outcome.
  BindingState both;
  both.producer = ProducerRecord{"n1", "0000:3b:00.1", 3, 3};
  both.producer->registration_id = 0x1234;
  both.producer->owner =
      Owners::Get().Intern("spiffe://irqbypass.local/irqbypass/orchestrator/o");
  both.consumer = ConsumerRecord{"n1", "vm-a", 40};
  both.consumer->registration_id = 0x5678;
  both.connected = true;
  both.revision = 42;
  Put("store_codec", "both", EncodeBinding(both));
  BindingState producer_only = both;
  producer_only.consumer.reset();
  producer_only.connected = false;
  Put("store_codec", "producer", EncodeBinding(producer_only));
  BindingState consumer_only = both;
  consumer_only.producer.reset();
  consumer_only.connected = false;
  Put("store_codec", "consumer", EncodeBinding(consumer_only));
  RequestRecord request;
  request.id = "req-1";
  request.kind = RequestKind::kRegisterProducer;
  request.fingerprint = 99;
  request.token = "t1";
  request.registration_id = 0x1234;
  request.connected = true;
  Put("store_codec", "request", EncodeRequest(request));

  // api_request: a Batch with each kind of item.
  v1::BatchRequest batch;
  auto* rp = batch.add_items()->mutable_register_producer();
  *rp->mutable_producer() = Producer("t1");
  rp->set_request_id("r1");
  *batch.add_items()->mutable_register_consumer()->mutable_consumer() =
      Consumer("t1");
  batch.add_items()->mutable_unregister_producer()->set_token("t1");
  auto* uc = batch.add_items()->mutable_unregister_consumer();
  uc->set_token("t1");
  uc->set_registration_id("c-0000000000005678");
  Put("api_request", "batch", batch.SerializeAsString());

  // manager_message: a connect, a disconnect, and both in one batch.
  v1::Command connect;
  connect.set_id(1);
  connect.set_kind(v1::Command::CONNECT);
  connect.set_token("t1");
  *connect.mutable_producer() = Producer("t1");
  *connect.mutable_consumer() = Consumer("t1");
  AddConnectSteps(&connect);
  v1::Command disconnect = connect;
  disconnect.set_id(2);
  disconnect.set_kind(v1::Command::DISCONNECT);
  disconnect.clear_steps();
  AddDisconnectSteps(&disconnect);
  v1::ManagerMessage one;
  *one.mutable_command() = connect;
  Put("manager_message", "connect", one.SerializeAsString());
  v1::ManagerMessage two;
  *two.mutable_commands()->add_commands() = connect;
  *two.mutable_commands()->add_commands() = disconnect;
  Put("manager_message", "batch", two.SerializeAsString());
  v1::ManagerMessage hello;
  hello.mutable_hello()->set_epoch(3);
  Put("manager_message", "hello", hello.SerializeAsString());
  std::printf("seeds written under %s\n", g_root.c_str());
  return 0;
}
