#include "protocol/agent_protocol.h"

#include <vector>

#include "gtest/gtest.h"

namespace irqbypass {
namespace {

std::vector<std::string> Names(const v1::Command& command) {
  std::vector<std::string> names;
  for (const v1::Step& step : command.steps()) {
    names.push_back(StepName(step.kind()) + (step.always() ? "!" : "") +
                    (step.undo() != v1::STEP_UNSPECIFIED
                         ? "/" + StepName(step.undo())
                         : ""));
  }
  return names;
}

TEST(AgentProtocolTest, ConnectSteps_TheContractsOrder) {
  v1::Command command;
  AddConnectSteps(&command);
  EXPECT_EQ(Names(command),
            (std::vector<std::string>{
                "stop_producer", "stop_consumer", "add_consumer/del_consumer",
                "add_producer", "start_consumer!", "start_producer!"}));
}

TEST(AgentProtocolTest, DisconnectSteps_TheContractsOrder) {
  v1::Command command;
  AddDisconnectSteps(&command);
  EXPECT_EQ(Names(command),
            (std::vector<std::string>{"stop_producer", "stop_consumer",
                                      "del_producer", "del_consumer",
                                      "start_consumer!", "start_producer!"}));
}

TEST(AgentProtocolTest, StepName_ValidLowerCase_UnknownNumbered) {
  EXPECT_EQ(StepName(v1::ADD_PRODUCER), "add_producer");
  EXPECT_EQ(StepName(v1::DEL_CONSUMER), "del_consumer");
  // The manager used to name this "" and the agent "step_42".
  EXPECT_EQ(StepName(static_cast<v1::StepKind>(42)), "step_42");
}

}  // namespace
}  // namespace irqbypass
