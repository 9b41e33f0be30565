#include "agent/sim/sim_backend.h"

#include <cerrno>
#include <map>
#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "protocol/testing/records.h"

namespace irqbypass {
namespace agent {
namespace {

using ::irqbypass::testing::NodeConsumer;
using ::irqbypass::testing::NodeProducer;

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

SimBackendOptions Options() {
  SimBackendOptions options;
  options.node = "n1";
  return options;
}

// The usual objects: a device vector and a VM GSI.
v1::Producer Dev() { return NodeProducer("0000:3b:00.1", 3); }
v1::Consumer Vm() { return NodeConsumer("vm-1", 40); }

// Both add steps, as a connect runs them.
void Wire(SimBackend& sim, const std::string& token, const v1::Producer& p,
          const v1::Consumer& c) {
  ASSERT_TRUE(sim.AddConsumer(token, p, c).ok());
  ASSERT_TRUE(sim.AddProducer(token, p, c).ok());
}

TEST(SimBackendTest, Name_IsSim) {
  SimBackend sim(Options());
  EXPECT_EQ(sim.Name(), "sim");
}

TEST(SimBackendTest, NoVmOrDeviceList_EverythingExists) {
  SimBackend sim(Options());

  EXPECT_TRUE(sim.AddConsumer("t1", Dev(), Vm()).ok());
  EXPECT_TRUE(sim.AddProducer("t1", Dev(), Vm()).ok());
}

TEST(SimBackendTest, AddProducer_VmNotHeld_FailsWithEnoentNamingVmAndNode) {
  SimBackendOptions options = Options();
  options.vms = absl::flat_hash_set<std::string>{"vm-a"};
  SimBackend sim(std::move(options));

  const StepResult result =
      sim.AddProducer("t1", Dev(), NodeConsumer("vm-x", 40));

  EXPECT_EQ(result.errno_value(), ENOENT);
  EXPECT_EQ(result.message(), "vm \"vm-x\" not held by agent on node n1");
  EXPECT_TRUE(sim.AddProducer("t1", Dev(), NodeConsumer("vm-a", 40)).ok());
}

TEST(SimBackendTest, AddConsumer_DeviceNotHeld_FailsWithEnoentNamingDevice) {
  SimBackendOptions options = Options();
  options.devices = absl::flat_hash_set<std::string>{"0000:3b:00.0"};
  SimBackend sim(std::move(options));

  const StepResult result =
      sim.AddConsumer("t1", NodeProducer("0000:3b:00.1", 3), Vm());

  EXPECT_EQ(result.errno_value(), ENOENT);
  EXPECT_EQ(result.message(),
            "device \"0000:3b:00.1\" not held by agent on node n1");
  EXPECT_TRUE(
      sim.AddConsumer("t1", NodeProducer("0000:3b:00.0", 3), Vm()).ok());
}

TEST(SimBackendTest, AddConsumer_VectorBoundToOtherToken_FailsWithEbusy) {
  SimBackend sim(Options());
  ASSERT_TRUE(sim.AddConsumer("t1", Dev(), Vm()).ok());

  const StepResult result =
      sim.AddConsumer("t2", Dev(), NodeConsumer("vm-2", 41));

  EXPECT_EQ(result.errno_value(), EBUSY);
  EXPECT_THAT(result.message(), HasSubstr("token \"t1\""));
}

TEST(SimBackendTest, AddConsumer_UnspecifiedIndexIsMsix_SoSameVectorIsBusy) {
  SimBackend sim(Options());
  ASSERT_TRUE(sim.AddConsumer("t1", Dev(), Vm()).ok());

  const StepResult result = sim.AddConsumer(
      "t2", NodeProducer("0000:3b:00.1", 3, v1::IRQ_INDEX_UNSPECIFIED), Vm());

  EXPECT_EQ(result.errno_value(), EBUSY);
}

TEST(SimBackendTest, AddConsumer_SameVectorNumberOnOtherIndex_Succeeds) {
  SimBackend sim(Options());
  ASSERT_TRUE(sim.AddConsumer("t1", Dev(), Vm()).ok());

  EXPECT_TRUE(
      sim.AddConsumer("t2", NodeProducer("0000:3b:00.1", 3, v1::IRQ_INDEX_MSI),
                      Vm())
          .ok());
}

TEST(SimBackendTest,
     AddConsumer_TokenAlreadyDrivesAnotherVector_FailsWithEbusy) {
  SimBackend sim(Options());
  ASSERT_TRUE(sim.AddConsumer("t1", Dev(), Vm()).ok());

  const StepResult result =
      sim.AddConsumer("t1", NodeProducer("0000:3b:00.1", 4), Vm());

  EXPECT_EQ(result.errno_value(), EBUSY);
}

TEST(SimBackendTest, AddSteps_SameTokenSameObjects_AreIdempotent) {
  SimBackend sim(Options());
  Wire(sim, "t1", Dev(), Vm());

  EXPECT_TRUE(sim.AddConsumer("t1", Dev(), Vm()).ok());
  EXPECT_TRUE(sim.AddProducer("t1", Dev(), Vm()).ok());
  EXPECT_THAT(sim.Inventory(), SizeIs(1));
}

TEST(SimBackendTest, AddProducer_GsiBoundToOtherToken_FailsWithEbusy) {
  SimBackend sim(Options());
  ASSERT_TRUE(sim.AddProducer("t1", Dev(), Vm()).ok());

  const StepResult result =
      sim.AddProducer("t2", NodeProducer("0000:3b:00.1", 9), Vm());

  EXPECT_EQ(result.errno_value(), EBUSY);
  EXPECT_THAT(result.message(), HasSubstr("token \"t1\""));
}

TEST(SimBackendTest, AddProducer_SameGsiInAnotherVm_Succeeds) {
  SimBackend sim(Options());
  ASSERT_TRUE(sim.AddProducer("t1", Dev(), Vm()).ok());

  EXPECT_TRUE(sim.AddProducer("t2", Dev(), NodeConsumer("vm-2", 40)).ok());
}

TEST(SimBackendTest, AddProducer_GsiAtOrAbove4096_FailsWithEinval) {
  SimBackend sim(Options());

  const StepResult result =
      sim.AddProducer("t1", Dev(), NodeConsumer("vm-1", 4096));

  EXPECT_EQ(result.errno_value(), EINVAL);
  EXPECT_THAT(result.message(), HasSubstr("gsi 4096"));
  EXPECT_TRUE(sim.AddProducer("t1", Dev(), NodeConsumer("vm-1", 4095)).ok());
}

TEST(SimBackendTest, Inventory_HalfWiredTokensReportedAsPartial) {
  SimBackend sim(Options());
  Wire(sim, "both", Dev(), Vm());
  ASSERT_TRUE(
      sim.AddConsumer("producer-only", NodeProducer("0000:3b:00.1", 5), Vm())
          .ok());
  ASSERT_TRUE(
      sim.AddProducer("consumer-only", Dev(), NodeConsumer("vm-1", 41)).ok());

  std::map<std::string, bool> partial;
  for (const v1::WiredPair& pair : sim.Inventory()) {
    partial[pair.token()] = pair.partial();
  }
  EXPECT_EQ(partial, (std::map<std::string, bool>{{"both", false},
                                                  {"producer-only", true},
                                                  {"consumer-only", true}}));
}

TEST(SimBackendTest, Inventory_ReportsProducerAndConsumerExactlyAsGiven) {
  SimBackend sim(Options());
  const v1::Producer producer =
      NodeProducer("0000:3b:00.1", 3, v1::IRQ_INDEX_UNSPECIFIED);
  Wire(sim, "t1", producer, Vm());

  const std::vector<v1::WiredPair> pairs = sim.Inventory();

  ASSERT_THAT(pairs, SizeIs(1));
  EXPECT_EQ(pairs[0].producer().SerializeAsString(),
            producer.SerializeAsString());
  EXPECT_EQ(pairs[0].consumer().SerializeAsString(), Vm().SerializeAsString());
}

TEST(SimBackendTest, RemoveDevice_UnwiresItsVectors_AddFailsUntilAddDevice) {
  SimBackend sim(Options());  // every device exists
  Wire(sim, "t1", Dev(), Vm());
  Wire(sim, "other", NodeProducer("0000:5e:00.0", 1), NodeConsumer("vm-2", 7));

  ASSERT_TRUE(sim.RemoveDevice("0000:3b:00.1"));
  EXPECT_FALSE(sim.RemoveDevice("0000:3b:00.1"));  // already gone

  // t1 keeps its VM side only (partial: the manager disconnects it); the
  // pair on another device is untouched.
  std::map<std::string, bool> partial;
  for (const v1::WiredPair& pair : sim.Inventory()) {
    partial[pair.token()] = pair.partial();
  }
  EXPECT_EQ(partial,
            (std::map<std::string, bool>{{"t1", true}, {"other", false}}));
  const StepResult gone = sim.AddConsumer("t1", Dev(), Vm());
  EXPECT_EQ(gone.errno_value(), ENOENT);
  EXPECT_EQ(gone.message(),
            "device \"0000:3b:00.1\" not held by agent on node n1");
  // The vector is free again (not left owned by t1) once the device is back.
  ASSERT_TRUE(sim.AddDevice("0000:3b:00.1"));
  EXPECT_FALSE(sim.AddDevice("0000:3b:00.1"));
  EXPECT_TRUE(sim.AddConsumer("t2", Dev(), NodeConsumer("vm-3", 9)).ok());
}

TEST(SimBackendTest, AddDevice_OutsideTheDeviceList_IsHeldUntilRemoved) {
  SimBackendOptions options = Options();
  options.devices = absl::flat_hash_set<std::string>{"0000:3b:00.0"};
  SimBackend sim(std::move(options));
  EXPECT_FALSE(sim.RemoveDevice("0000:3b:00.1"));  // never held

  ASSERT_TRUE(sim.AddDevice("0000:3b:00.1"));
  EXPECT_TRUE(sim.AddConsumer("t1", Dev(), Vm()).ok());
  ASSERT_TRUE(sim.RemoveDevice("0000:3b:00.1"));
  EXPECT_EQ(sim.AddConsumer("t2", Dev(), Vm()).errno_value(), ENOENT);
  // One from the list goes and comes back too.
  ASSERT_TRUE(sim.RemoveDevice("0000:3b:00.0"));
  EXPECT_EQ(sim.AddConsumer("t3", NodeProducer("0000:3b:00.0", 1), Vm())
                .errno_value(),
            ENOENT);
  ASSERT_TRUE(sim.AddDevice("0000:3b:00.0"));
  EXPECT_TRUE(
      sim.AddConsumer("t3", NodeProducer("0000:3b:00.0", 1), Vm()).ok());
}

TEST(SimBackendTest, Del_NothingWired_IsNoOpAndSucceeds) {
  SimBackend sim(Options());

  EXPECT_TRUE(sim.DelProducer("t1", Dev(), Vm()).ok());
  EXPECT_TRUE(sim.DelConsumer("t1", Dev(), Vm()).ok());
  EXPECT_THAT(sim.Inventory(), IsEmpty());
}

TEST(SimBackendTest, Del_BothSides_UnwiresAndFreesObjectsForOtherTokens) {
  SimBackend sim(Options());
  Wire(sim, "t1", Dev(), Vm());

  ASSERT_TRUE(sim.DelProducer("t1", Dev(), Vm()).ok());
  ASSERT_TRUE(sim.DelConsumer("t1", Dev(), Vm()).ok());

  EXPECT_THAT(sim.Inventory(), IsEmpty());
  EXPECT_TRUE(sim.AddConsumer("t2", Dev(), Vm()).ok());
  EXPECT_TRUE(sim.AddProducer("t2", Dev(), Vm()).ok());
}

TEST(SimBackendTest, DelProducer_OneSide_LeavesThePairPartialUntilBothGo) {
  SimBackend sim(Options());
  Wire(sim, "t1", Dev(), Vm());

  ASSERT_TRUE(sim.DelProducer("t1", Dev(), Vm()).ok());
  const std::vector<v1::WiredPair> half = sim.Inventory();
  ASSERT_THAT(half, SizeIs(1));
  EXPECT_TRUE(half[0].partial());
  // The side that went is named as it was wired.
  EXPECT_EQ(half[0].consumer().gsi(), Vm().gsi());

  ASSERT_TRUE(sim.DelConsumer("t1", Dev(), Vm()).ok());
  EXPECT_THAT(sim.Inventory(), IsEmpty());
}

TEST(SimBackendTest, FaultDelProducer_FailsAndChangesNothing) {
  SimBackendOptions options = Options();
  options.fault = SimFault{SimStep::kDelProducer, EIO};
  SimBackend sim(std::move(options));
  Wire(sim, "t1", Dev(), Vm());

  const StepResult result = sim.DelProducer("t1", Dev(), Vm());

  EXPECT_EQ(result.errno_value(), EIO);
  EXPECT_THAT(result.message(), HasSubstr("del_producer"));
  const std::vector<v1::WiredPair> pairs = sim.Inventory();
  ASSERT_THAT(pairs, SizeIs(1));
  EXPECT_FALSE(pairs[0].partial());
}

TEST(SimBackendTest, Del_OtherTokenOrOtherObject_LeavesWiringAlone) {
  SimBackend sim(Options());
  Wire(sim, "t1", Dev(), Vm());

  ASSERT_TRUE(sim.DelProducer("t2", Dev(), Vm()).ok());
  ASSERT_TRUE(sim.DelConsumer("t2", Dev(), Vm()).ok());
  ASSERT_TRUE(sim.DelProducer("t1", Dev(), NodeConsumer("vm-1", 41)).ok());
  ASSERT_TRUE(
      sim.DelConsumer("t1", NodeProducer("0000:3b:00.1", 4), Vm()).ok());

  EXPECT_THAT(sim.Inventory(), SizeIs(1));
}

TEST(SimBackendTest, FaultAddProducer_FailsWithGivenErrnoAndWiresNothing) {
  SimBackendOptions options = Options();
  options.fault = SimFault{SimStep::kAddProducer, EIO};
  SimBackend sim(std::move(options));

  EXPECT_TRUE(sim.AddConsumer("t1", Dev(), Vm()).ok());
  const StepResult result = sim.AddProducer("t1", Dev(), Vm());

  EXPECT_EQ(result.errno_value(), EIO);
  EXPECT_THAT(result.message(), HasSubstr("add_producer"));
  // Only the add that succeeded is wired (the executor's undo removes it).
  const std::vector<v1::WiredPair> pairs = sim.Inventory();
  ASSERT_THAT(pairs, SizeIs(1));
  EXPECT_TRUE(pairs[0].partial());
}

TEST(SimBackendTest, FaultAddConsumer_FailsWithGivenErrno) {
  SimBackendOptions options = Options();
  options.fault = SimFault{SimStep::kAddConsumer, 5};
  SimBackend sim(std::move(options));

  EXPECT_EQ(sim.AddConsumer("t1", Dev(), Vm()).errno_value(), 5);
  EXPECT_TRUE(sim.AddProducer("t1", Dev(), Vm()).ok());
}

TEST(SimBackendTest, StepDelay_MakesEachAddStepTakeAtLeastThatLong) {
  SimBackendOptions options = Options();
  options.add_step_delay = absl::Milliseconds(50);
  SimBackend sim(std::move(options));

  const absl::Time start = absl::Now();
  ASSERT_TRUE(sim.AddConsumer("t1", Dev(), Vm()).ok());
  ASSERT_TRUE(sim.AddProducer("t1", Dev(), Vm()).ok());

  EXPECT_GE(absl::Now() - start, absl::Milliseconds(100));
}

TEST(ParseSimFaultTest, StepAndErrnoName_Parse) {
  absl::StatusOr<SimFault> fault = ParseSimFault("add_producer:EIO");

  ASSERT_TRUE(fault.ok()) << fault.status();
  EXPECT_EQ(fault->step, SimStep::kAddProducer);
  EXPECT_EQ(fault->errno_value, EIO);
}

TEST(ParseSimFaultTest, StepAndErrnoNumber_Parse) {
  absl::StatusOr<SimFault> fault = ParseSimFault("add_consumer:5");

  ASSERT_TRUE(fault.ok()) << fault.status();
  EXPECT_EQ(fault->step, SimStep::kAddConsumer);
  EXPECT_EQ(fault->errno_value, 5);
}

TEST(ParseSimFaultTest, BadSpecs_AreInvalidArgument) {
  for (const char* spec :
       {"", "add_producer", "add_producer:", "start:EIO", "add_producer:ENOPE",
        "add_producer:0", "add_producer:-3"}) {
    EXPECT_EQ(ParseSimFault(spec).status().code(),
              absl::StatusCode::kInvalidArgument)
        << spec;
  }
}

}  // namespace
}  // namespace agent
}  // namespace irqbypass
