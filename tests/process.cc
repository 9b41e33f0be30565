#include "tests/process.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace irqbypass::testing {

std::string BinaryPath(const std::string& workspace_relative) {
  // bazel test: the runfiles tree is TEST_SRCDIR; bazel run: RUNFILES_DIR
  // (and the working directory).
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir != nullptr && workspace != nullptr) {
    return std::string(srcdir) + "/" + workspace + "/" + workspace_relative;
  }
  if (const char* dir = std::getenv("RUNFILES_DIR")) {
    return std::string(dir) + "/irqbypass/" + workspace_relative;
  }
  return workspace_relative;
}

std::string MakeTempDir(const std::string& prefix) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string templ =
      std::string(base != nullptr ? base : "/tmp") + "/" + prefix + ".XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) return "";
  return std::string(buf.data());
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int WaitForPortFile(const std::string& path) {
  std::string text;
  Eventually([&] {
    text = ReadFile(path);
    return !text.empty();
  });
  return std::atoi(text.c_str());
}

namespace {

std::vector<char*> Argv(const std::string& path,
                        const std::vector<std::string>& args,
                        std::vector<std::string>* storage) {
  storage->push_back(path);
  for (const auto& a : args) storage->push_back(a);
  std::vector<char*> argv;
  for (auto& s : *storage) argv.push_back(s.data());
  argv.push_back(nullptr);
  return argv;
}

int WaitPid(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return -1;
    }
    if (r < 0) return -1;
    if (std::chrono::steady_clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace

Process::~Process() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    WaitPid(pid_, std::chrono::seconds(10));
  }
}

bool Process::Start(const std::string& path,
                    const std::vector<std::string>& args,
                    const std::string& log_path) {
  log_path_ = log_path;
  std::vector<std::string> storage;
  std::vector<char*> argv = Argv(path, args, &storage);
  pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    execv(path.c_str(), argv.data());
    _exit(127);
  }
  pid_ = pid;
  return true;
}

bool Process::Signal(int sig) {
  if (pid_ <= 0) return false;
  return kill(pid_, sig) == 0;
}

int Process::Wait(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  int code = WaitPid(pid_, timeout);
  if (code != -1) pid_ = -1;
  return code;
}

CommandResult RunCommand(const std::string& path,
                         const std::vector<std::string>& args,
                         std::chrono::milliseconds timeout) {
  CommandResult result;
  const std::string dir = MakeTempDir("cmd");
  const std::string out_path = dir + "/out";
  const std::string err_path = dir + "/err";
  std::vector<std::string> storage;
  std::vector<char*> argv = Argv(path, args, &storage);
  pid_t pid = fork();
  if (pid < 0) return result;
  if (pid == 0) {
    int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int null_in = open("/dev/null", O_RDONLY);
    dup2(out, STDOUT_FILENO);
    dup2(err, STDERR_FILENO);
    dup2(null_in, STDIN_FILENO);
    execv(path.c_str(), argv.data());
    _exit(127);
  }
  result.exit_code = WaitPid(pid, timeout);
  if (result.exit_code == -1) {
    kill(pid, SIGKILL);
    WaitPid(pid, std::chrono::seconds(5));
  }
  result.out = ReadFile(out_path);
  result.err = ReadFile(err_path);
  return result;
}

std::string TailLines(const std::string& text, int lines) {
  size_t pos = text.size();
  for (int n = 0; n < lines && pos > 0; ++n) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) return text;
  }
  return text.substr(pos + 1);
}

int CountOccurrences(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t pos = haystack.find(needle); pos != std::string::npos;
       pos = haystack.find(needle, pos + needle.size())) {
    ++n;
  }
  return n;
}

namespace {

// The /proc/PID/task/TID folders of `pid`'s threads; empty if it is gone.
std::vector<std::string> TaskDirs(pid_t pid) {
  std::vector<std::string> dirs;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(
           "/proc/" + std::to_string(pid) + "/task", ec)) {
    dirs.push_back(entry.path().string());
  }
  return dirs;
}

}  // namespace

bool WaitAllThreadsStopped(pid_t pid, std::chrono::milliseconds timeout) {
  return Eventually(
      [&] {
        const std::vector<std::string> tasks = TaskDirs(pid);
        for (const std::string& task : tasks) {
          const std::string stat = ReadFile(task + "/stat");
          // "tid (comm) S ...": the state follows the last ')'.
          const size_t paren = stat.rfind(')');
          if (paren == std::string::npos || paren + 2 >= stat.size()) {
            return false;
          }
          const char state = stat[paren + 2];
          if (state != 'T' && state != 't') return false;
        }
        return !tasks.empty();
      },
      absl::FromChrono(timeout));
}

std::vector<std::string> ThreadNames(pid_t pid) {
  std::vector<std::string> names;
  for (const std::string& task : TaskDirs(pid)) {
    std::string comm = ReadFile(task + "/comm");
    while (!comm.empty() && comm.back() == '\n') comm.pop_back();
    names.push_back(std::move(comm));
  }
  return names;
}

}  // namespace irqbypass::testing
