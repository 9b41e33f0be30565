// The agent's handling of what the manager sends (agent/agent_session,
// agent/step_executor), against the sim backend: any ManagerMessage bytes
// parse or not; every command in one (single or in a batch) is ordered
// (CommandKeys) and executed step by step; each gets one ack naming its id;
// nothing crashes whatever the steps, records or ids.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "agent/agent_session.h"
#include "agent/sim/sim_backend.h"
#include "agent/step_executor.h"
#include "google/protobuf/stubs/logging.h"
#include "protos/irqbypass/v1/agent.pb.h"

// libFuzzer calls this once: protobuf's complaint about each malformed
// input (invalid UTF-8) would be most of the run's time.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  irqbypass::v1::ManagerMessage message;
  if (!message.ParseFromArray(data, static_cast<int>(size))) return 0;
  std::vector<const irqbypass::v1::Command*> commands;
  if (message.has_command()) commands.push_back(&message.command());
  for (const auto& c : message.commands().commands()) commands.push_back(&c);
  if (commands.size() > 64) return 0;  // (the agent takes 1024; keep it fast)
  irqbypass::agent::SimBackendOptions options;
  options.node = "n1";
  irqbypass::agent::SimBackend sim(options);
  irqbypass::agent::StepExecutor executor(sim);
  for (const irqbypass::v1::Command* command : commands) {
    (void)irqbypass::agent::CommandKeys(*command);
    const irqbypass::v1::CommandAck ack = executor.Execute(*command);
    if (ack.id() != command->id()) std::abort();
  }
  (void)sim.Inventory();
  return 0;
}
