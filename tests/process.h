// Test support: starts the real binaries (irqbypassd, irqbypass-agent,
// irqbypassctl) as child processes on loopback, with their stderr in a log
// file, and waits for conditions instead of sleeping. Not thread-safe.
#ifndef IRQBYPASS_TESTS_PROCESS_H_
#define IRQBYPASS_TESTS_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "common/testing/eventually.h"  // IWYU pragma: export

namespace irqbypass::testing {

// Path of a binary built by Bazel, from the test's (or, under `bazel run`,
// the benchmark's) runfiles ("service/irqbypassd").
std::string BinaryPath(const std::string& workspace_relative);
// A fresh directory under TEST_TMPDIR.
std::string MakeTempDir(const std::string& prefix);
std::string ReadFile(const std::string& path);

// Waits for a server's --port_file to be written; the port, or 0 on timeout.
int WaitForPortFile(const std::string& path);

class Process {
 public:
  Process() = default;
  ~Process();  // SIGKILLs the child if still running
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Starts `path args...` with stderr and stdout appended to `log_path`.
  bool Start(const std::string& path, const std::vector<std::string>& args,
             const std::string& log_path);
  // Sends `sig`; returns false if not running.
  bool Signal(int sig);
  // Waits for exit; returns the exit code, 128+signal if killed, or -1 on
  // timeout.
  int Wait(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }
  std::string Log() const { return ReadFile(log_path_); }

 private:
  pid_t pid_ = -1;
  std::string log_path_;
};

// Runs a command to completion; captures stdout and stderr separately.
struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
CommandResult RunCommand(
    const std::string& path, const std::vector<std::string>& args,
    std::chrono::milliseconds timeout = std::chrono::seconds(30));

// The last `lines` lines of `text` (all of it if shorter), for failure logs.
std::string TailLines(const std::string& text, int lines);

// Counts occurrences of `needle` in `haystack`.
int CountOccurrences(const std::string& haystack, const std::string& needle);

// Whether every thread of `pid` is stopped (SIGSTOP has taken effect on all
// of them: /proc/PID/task/*/stat state 'T'); polls until `timeout`.
bool WaitAllThreadsStopped(
    pid_t pid, std::chrono::milliseconds timeout = std::chrono::seconds(10));

// The names (/proc/PID/task/*/comm, at most 15 characters) of the threads
// of `pid`; empty if it is gone.
std::vector<std::string> ThreadNames(pid_t pid);

}  // namespace irqbypass::testing

#endif  // IRQBYPASS_TESTS_PROCESS_H_
