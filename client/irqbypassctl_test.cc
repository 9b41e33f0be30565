// Runs the irqbypassctl binary against an in-process fake BypassManager and
// checks its command-line handling, output and exit codes.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/error_detail.h"
#include "client/fake_bypass_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "protos/irqbypass/v1/irqbypass.pb.h"

extern char** environ;

namespace irqbypass::client {
namespace {

using ::irqbypass::client::testing::FakeServer;
using ::irqbypass::v1::BindingEvent;
using ::irqbypass::v1::ErrorDetail;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string CtlPath() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir == nullptr || workspace == nullptr) return "client/irqbypassctl";
  return absl::StrCat(srcdir, "/", workspace, "/client/irqbypassctl");
}

std::string TempPath(absl::string_view name) {
  static std::atomic<int> counter{0};
  const char* dir = std::getenv("TEST_TMPDIR");
  return absl::StrCat(dir != nullptr ? dir : "/tmp", "/ctl_", getpid(), "_",
                      counter++, "_", name);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Runs irqbypassctl with `args`, IRQBYPASS_SERVER and the TLS variables
// removed from the environment and `extra_env` ("NAME=value") added; the
// fake server is plaintext, so IRQBYPASS_INSECURE=1 unless `extra_env`
// sets it.
RunResult RunCtl(const std::vector<std::string>& args,
                 const std::vector<std::string>& extra_env = {}) {
  const std::string path = CtlPath();
  const std::string out_path = TempPath("out");
  const std::string err_path = TempPath("err");

  std::vector<std::string> argv_storage = {path};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : argv_storage) argv.push_back(arg.data());
  argv.push_back(nullptr);

  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!absl::StartsWith(*e, "IRQBYPASS_SERVER=") &&
        !absl::StartsWith(*e, "IRQBYPASS_TLS_") &&
        !absl::StartsWith(*e, "IRQBYPASS_INSECURE=")) {
      env_storage.push_back(*e);
    }
  }
  env_storage.insert(env_storage.end(), extra_env.begin(), extra_env.end());
  if (std::none_of(extra_env.begin(), extra_env.end(), [](const auto& v) {
        return absl::StartsWith(v, "IRQBYPASS_INSECURE=");
      })) {
    env_storage.push_back("IRQBYPASS_INSECURE=1");
  }
  std::vector<char*> envp;
  for (std::string& var : env_storage) envp.push_back(var.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null",
                                   O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  const int spawn_error = posix_spawn(&pid, path.c_str(), &actions, nullptr,
                                      argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  RunResult result;
  if (spawn_error != 0) {
    ADD_FAILURE() << "cannot run " << path << ": errno " << spawn_error;
    return result;
  }
  int wait_status = 0;
  while (waitpid(pid, &wait_status, 0) < 0) {
    if (errno != EINTR) {
      ADD_FAILURE() << "waitpid failed: errno " << errno;
      return result;
    }
  }
  result.exit_code = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status)
                                            : -WTERMSIG(wait_status);
  result.out = ReadFile(out_path);
  result.err = ReadFile(err_path);
  unlink(out_path.c_str());
  unlink(err_path.c_str());
  return result;
}

BindingEvent Event(BindingEvent::Type type, const std::string& token) {
  BindingEvent event;
  event.set_type(type);
  event.mutable_binding()->set_token(token);
  return event;
}

absl::Status WithReason(absl::Status status, ErrorDetail::Reason reason) {
  ErrorDetail detail;
  detail.set_reason(reason);
  return WithErrorDetail(std::move(status), detail);
}

class IrqbypassctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<FakeServer>> server = FakeServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  // Runs irqbypassctl against the fake server.
  RunResult Run(std::vector<std::string> args) {
    args.insert(args.begin(), absl::StrCat("--server=", server_->address()));
    return RunCtl(args);
  }

  RunResult RegisterProducer(const std::string& token) {
    return Run({"register-producer", "--token=" + token, "--node=n1",
                "--device=0000:3b:00.1", "--vector=3"});
  }

  testing::FakeBypassManager& fake() { return server_->service(); }

  std::unique_ptr<FakeServer> server_;
};

// What every plaintext call prints first (the fake server is plaintext).
const std::string kInsecureWarning =
    "irqbypassctl: warning: --insecure: plaintext, no certificate presented "
    "and the server not verified\n";

// --- Usage ---

TEST_F(IrqbypassctlTest, Help_ExitsZeroAndDocumentsCommandsAndExitCodes) {
  RunResult r = RunCtl({"--help"});

  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("register-producer"));
  EXPECT_THAT(r.out, HasSubstr("IRQBYPASS_SERVER"));
  EXPECT_THAT(r.out, HasSubstr("5  connect failed"));
  EXPECT_THAT(r.out, HasSubstr("8  deadline exceeded"));
}

TEST_F(IrqbypassctlTest, NoCertificatesAndNotInsecure_Exit2NamesTheFlag) {
  RunResult r = RunCtl({"--server=127.0.0.1:1", "get", "--token=t1"},
                       {"IRQBYPASS_INSECURE="});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--tls_cert: mutual TLS needs --tls_cert"));
  RunResult both = RunCtl({"--server=127.0.0.1:1", "--insecure",
                           "--tls_cert=/x.pem", "get", "--token=t1"});
  EXPECT_EQ(both.exit_code, 2);
  EXPECT_THAT(both.err, HasSubstr("--insecure: plaintext takes no"));
  RunResult missing =
      RunCtl({"--server=127.0.0.1:1", "--tls_cert=/x.pem", "--tls_key=/x.key",
              "--tls_ca=/ca.pem", "get", "--token=t1"},
             {"IRQBYPASS_INSECURE="});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_THAT(missing.err,
              HasSubstr("--tls_cert: certificate file \"/x.pem\" cannot be "
                        "read"));
}

TEST_F(IrqbypassctlTest, MissingRequiredFlag_Exit2NamesItWithoutCallingServer) {
  RunResult r =
      Run({"register-producer", "--token=t1", "--node=n1", "--vector=3"});

  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("missing required flag --device"));
  EXPECT_THAT(r.out, IsEmpty());
  EXPECT_EQ(fake().calls(), 0);
}

TEST_F(IrqbypassctlTest, EmptyRequiredFlag_CountsAsMissing) {
  RunResult r = Run({"get", "--token="});

  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("missing required flag --token"));
  EXPECT_EQ(fake().calls(), 0);
}

TEST_F(IrqbypassctlTest, FlagOfAnotherCommand_Exit2) {
  RunResult r = Run({"get", "--token=t1", "--vm=vm-x"});

  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("flag --vm does not apply to get"));
  EXPECT_EQ(fake().calls(), 0);
}

TEST_F(IrqbypassctlTest, BadUsage_Exit2) {
  EXPECT_EQ(Run({}).exit_code, 2);
  EXPECT_EQ(Run({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(Run({"get", "--token=t1", "extra"}).exit_code, 2);
  EXPECT_EQ(Run({"get", "--token=t1", "--bogus=1"}).exit_code, 2);
  EXPECT_EQ(Run({"get", "--token"}).exit_code, 2);
  EXPECT_EQ(Run({"get", "--token=t1", "--output=xml"}).exit_code, 2);
  EXPECT_EQ(Run({"get", "--token=t1", "--timeout=soon"}).exit_code, 2);
  EXPECT_EQ(Run({"get", "--token=t1", "--timeout=0s"}).exit_code, 2);
  EXPECT_EQ(Run({"register-consumer", "--token=t1", "--node=n1", "--vm=v",
                 "--gsi=-1"})
                .exit_code,
            2);
  EXPECT_EQ(Run({"register-producer", "--token=t1", "--node=n1", "--device=d",
                 "--vector=1", "--index=msi-x"})
                .exit_code,
            2);
  EXPECT_EQ(fake().calls(), 0);
}

TEST_F(IrqbypassctlTest, UsageErrorInJsonMode_AlsoPrintsJsonError) {
  RunResult r = Run({"--output=json", "get"});

  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out, StartsWith("{\"error\":{\"code\":\"INVALID_ARGUMENT\""));
}

// --- Success output ---

TEST_F(IrqbypassctlTest, RegisterProducer_Text) {
  RunResult r = RegisterProducer("t1");

  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "registered producer token=t1 registration_id=p-1 "
            "connected=false\n");
}

TEST_F(IrqbypassctlTest, FlagsWithSeparateValues_AndAfterTheCommand) {
  RunResult r = Run({"register-consumer", "--token", "t1", "--node", "n1",
                     "--vm", "vm-x", "--gsi", "42", "--output", "json"});

  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "{\"registration_id\":\"c-1\",\"connected\":false}\n");
}

TEST_F(IrqbypassctlTest, Unregister_Text) {
  ASSERT_EQ(RegisterProducer("t1").exit_code, 0);

  RunResult r =
      Run({"unregister-producer", "--token=t1", "--registration_id=p-1"});

  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "unregistered producer token=t1 disconnected=false\n");
}

TEST_F(IrqbypassctlTest, Get_TextBlock) {
  ASSERT_EQ(RegisterProducer("t1").exit_code, 0);

  RunResult r = Run({"get", "--token=t1"});

  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("token:                    t1\n"));
  EXPECT_THAT(r.out, HasSubstr("device=0000:3b:00.1 index=msix vector=3"));
  EXPECT_THAT(r.out, HasSubstr("consumer:                 (none)\n"));
}

TEST_F(IrqbypassctlTest, List_FollowsAllPages) {
  for (const char* token : {"a", "b", "c"}) {
    ASSERT_EQ(RegisterProducer(token).exit_code, 0);
  }

  RunResult text = Run({"list", "--page_size=1"});
  RunResult json = Run({"list", "--node=n1", "--page_size=2", "--output=json"});

  EXPECT_EQ(text.exit_code, 0) << text.err;
  std::vector<std::string> lines =
      absl::StrSplit(text.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u) << text.out;
  EXPECT_THAT(lines[0], StartsWith("TOKEN"));
  EXPECT_THAT(lines[3], StartsWith("c "));
  EXPECT_EQ(json.exit_code, 0) << json.err;
  EXPECT_EQ(std::count(json.out.begin(), json.out.end(), '\n'), 1);
  EXPECT_THAT(json.out, HasSubstr("\"token\":\"c\""));
  EXPECT_THAT(json.out, HasSubstr("\"next_page_token\":\"\""));
}

TEST_F(IrqbypassctlTest, Watch_ExitsAfterMaxEvents) {
  fake().SetWatchScript(
      {Event(BindingEvent::EXISTING, "a"), Event(BindingEvent::SYNCED, ""),
       Event(BindingEvent::UPDATED, "b")},
      /*hold_open=*/true);

  RunResult r = Run({"watch", "--include_existing", "--node=n1",
                     "--max_events=2", "--output=json"});

  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> lines =
      absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << r.out;
  EXPECT_THAT(lines[0], HasSubstr("\"type\":\"EXISTING\""));
  EXPECT_THAT(lines[1], HasSubstr("\"type\":\"SYNCED\""));
  EXPECT_TRUE(fake().last_watch_request().include_existing());
  EXPECT_EQ(fake().last_watch_request().node(), "n1");
}

TEST_F(IrqbypassctlTest, Watch_TextLines_UntilServerEnds) {
  fake().SetWatchScript({Event(BindingEvent::REMOVED, "a")},
                        /*hold_open=*/false);

  RunResult r = Run({"watch"});

  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "REMOVED token=a revision=0\n");
}

TEST_F(IrqbypassctlTest, ServerFromEnvironment_WhenFlagAbsent) {
  ASSERT_EQ(RegisterProducer("t1").exit_code, 0);

  RunResult r = RunCtl({"get", "--token=t1"},
                       {absl::StrCat("IRQBYPASS_SERVER=", server_->address())});

  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("token:                    t1\n"));
}

// --- Errors and exit codes ---

TEST_F(IrqbypassctlTest, NotFound_Exit3_TextOnStderr) {
  RunResult r = Run({"get", "--token=nope"});

  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.out, IsEmpty());
  EXPECT_THAT(r.err, StartsWith(std::string(kInsecureWarning) +
                                "irqbypassctl: NOT_FOUND: "));
}

TEST_F(IrqbypassctlTest, AlreadyExists_Exit4) {
  ASSERT_EQ(RegisterProducer("t1").exit_code, 0);
  EXPECT_EQ(RegisterProducer("t1").exit_code, 4);
}

TEST_F(IrqbypassctlTest, ConnectFailed_Exit5_HumanMessage) {
  ErrorDetail detail;
  detail.set_reason(ErrorDetail::CONNECT_FAILED);
  detail.set_node("n1");
  detail.set_step("add_producer");
  detail.set_errno_name("ENOENT");
  detail.set_agent_message("vm \"vm-x\" not held");
  fake().FailNextCall(
      WithErrorDetail(absl::FailedPreconditionError("connect failed"), detail));

  RunResult r = RegisterProducer("t1");

  EXPECT_EQ(r.exit_code, 5);
  EXPECT_EQ(r.err,
            kInsecureWarning +
                "irqbypassctl: FAILED_PRECONDITION: connect step add_producer "
                "failed on node n1: ENOENT (vm \"vm-x\" not held)\n");
}

TEST_F(IrqbypassctlTest, ConnectFailed_JsonErrorOnStdout) {
  fake().FailNextCall(
      WithReason(absl::FailedPreconditionError("connect failed"),
                 ErrorDetail::CONNECT_FAILED));

  RunResult r = Run({"--output=json", "register-consumer", "--token=t1",
                     "--node=n1", "--vm=vm-x", "--gsi=1"});

  EXPECT_EQ(r.exit_code, 5);
  // Only the warning that the call was plaintext (the fake server is).
  EXPECT_EQ(r.err, kInsecureWarning);
  EXPECT_EQ(r.out,
            "{\"error\":{\"code\":\"FAILED_PRECONDITION\",\"message\":"
            "\"connect failed\",\"detail\":{\"reason\":\"CONNECT_FAILED\","
            "\"field\":\"\",\"token\":\"\",\"node\":\"\",\"step\":\"\","
            "\"errno_value\":0,\"errno_name\":\"\",\"agent_message\":\"\","
            "\"other_token\":\"\",\"leader\":\"\"}}}\n");
}

TEST_F(IrqbypassctlTest, OtherFailedPrecondition_Exit6) {
  ASSERT_EQ(RegisterProducer("t1").exit_code, 0);

  RunResult mismatch =
      Run({"unregister-producer", "--token=t1", "--registration_id=p-999"});

  EXPECT_EQ(mismatch.exit_code, 6);
}

TEST_F(IrqbypassctlTest, ServerSideInvalidArgument_Exit2) {
  fake().FailNextCall(WithReason(absl::InvalidArgumentError("token too long"),
                                 ErrorDetail::INVALID_FIELD));
  EXPECT_EQ(Run({"get", "--token=t1"}).exit_code, 2);
  EXPECT_EQ(fake().calls(), 1);
}

TEST_F(IrqbypassctlTest, Unavailable_RetriedWithItsRequestId) {
  fake().FailNextCall(WithReason(absl::UnavailableError("agent n1 is gone"),
                                 ErrorDetail::AGENT_UNAVAILABLE));
  EXPECT_EQ(RegisterProducer("t1").exit_code, 0);
  EXPECT_EQ(fake().calls(), 2);
}

TEST_F(IrqbypassctlTest, Unavailable_NoRetries_Exit7) {
  fake().FailNextCall(WithReason(absl::UnavailableError("agent n1 is gone"),
                                 ErrorDetail::AGENT_UNAVAILABLE));
  EXPECT_EQ(Run({"register-producer", "--token=t1", "--node=n1",
                 "--device=0000:3b:00.1", "--attempts=1"})
                .exit_code,
            7);
  EXPECT_EQ(fake().calls(), 1);

  server_->Shutdown();
  EXPECT_EQ(Run({"get", "--token=t1"}).exit_code, 7);
}

TEST_F(IrqbypassctlTest, DeadlineExceeded_Exit8) {
  fake().SetHoldUnary(true);

  RunResult r = Run({"get", "--token=t1", "--timeout=200ms"});

  EXPECT_EQ(r.exit_code, 8);
  EXPECT_THAT(r.err, HasSubstr("DEADLINE_EXCEEDED"));
}

TEST_F(IrqbypassctlTest, OtherError_Exit1) {
  fake().FailNextCall(absl::InternalError("boom"));
  EXPECT_EQ(Run({"get", "--token=t1"}).exit_code, 1);
}

}  // namespace
}  // namespace irqbypass::client
