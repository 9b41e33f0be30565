#include "agent/agent_session.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <thread>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/agent_metrics.h"
#include "common/errno_name.h"
#include "common/log.h"
#include "common/target_list.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/status.h"
#include "protocol/agent_protocol.h"
#include "protos/irqbypass/v1/agent.grpc.pb.h"

namespace irqbypass {
namespace agent {
namespace {

using SessionStream =
    grpc::ClientReaderWriter<v1::AgentMessage, v1::ManagerMessage>;

std::string CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return absl::StrCat(static_cast<int>(code));
  }
}

std::string CommandKindName(v1::Command::Kind kind) {
  if (!v1::Command::Kind_IsValid(kind)) {
    return absl::StrCat("kind_", static_cast<int>(kind));
  }
  return absl::AsciiStrToLower(v1::Command::Kind_Name(kind));
}

// "stop_producer,stop_consumer,..."
std::string ExecutedList(const v1::CommandAck& ack) {
  std::vector<std::string> names;
  names.reserve(ack.executed_size());
  for (int kind : ack.executed()) {
    names.push_back(StepName(static_cast<v1::StepKind>(kind)));
  }
  return absl::StrJoin(names, ",");
}

// `several`: one of several manager replicas. A replica that hangs (or is
// cut off) while holding this session keeps it from the new leader until
// the pings find it dead: ping every 6 s (the manager accepts one per 5 s),
// give up after 5 s more.
std::shared_ptr<grpc::Channel> NewChannel(const AgentSessionOptions& options,
                                          const std::string& address,
                                          bool several) {
  grpc::ChannelArguments args;
  // A fresh channel per attempt that shares no subchannel (and so no
  // connection backoff state) with the previous one: every attempt really
  // dials, on our own backoff schedule rather than gRPC's (up to 120 s).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (options.keepalive_time > absl::ZeroDuration()) {
    const absl::Duration every =
        several ? std::min(options.keepalive_time, absl::Seconds(6))
                : options.keepalive_time;
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS,
                static_cast<int>(absl::ToInt64Milliseconds(every)));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, several ? 5000 : 20000);
    // The stream can be idle for long; keep pinging all the same.
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
  return grpc::CreateCustomChannel(address,
                                   options.credentials != nullptr
                                       ? options.credentials
                                       : grpc::InsecureChannelCredentials(),
                                   args);
}

// Acks handed from the workers that execute commands to the thread that
// writes them. Once closed, PopAll returns nothing more: what is still
// queued belongs to a stream that ended. Thread-safe.
template <typename Message>
class MessageQueue {
 public:
  void Push(Message message) {
    MutexLock lock(&mu_);
    if (!closed_) queue_.push_back(std::move(message));
  }
  void Close() {
    MutexLock lock(&mu_);
    closed_ = true;
    queue_.clear();
  }
  // Waits for messages and takes all that are queued; false once closed.
  bool PopAll(std::vector<Message>* messages) {
    messages->clear();
    MutexLock lock(&mu_);
    mu_.Await([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !queue_.empty() || closed_;
    });
    if (closed_) return false;
    while (!queue_.empty()) {
      messages->push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    return true;
  }

 private:
  Mutex mu_;
  std::deque<Message> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// Executes one command and returns its ack.
}  // namespace

std::vector<v1::AgentMessage> HelloMessages(const std::string& node,
                                            const std::string& backend,
                                            const std::string& version,
                                            std::vector<v1::WiredPair> wired,
                                            size_t per_message) {
  if (per_message == 0) per_message = 1;
  std::vector<v1::AgentMessage> messages(1);
  v1::AgentHello& hello = *messages[0].mutable_hello();
  hello.set_node(node);
  hello.set_backend(backend);
  hello.set_agent_version(version);
  hello.set_accepts_command_batches(true);
  for (size_t i = 0; i < wired.size(); ++i) {
    if (i > 0 && i % per_message == 0) messages.emplace_back();
    if (messages.size() == 1) {
      *hello.add_wired() = std::move(wired[i]);
    } else {
      *messages.back().mutable_wired_more()->add_wired() = std::move(wired[i]);
    }
  }
  if (messages.size() > 1) {
    messages[0].mutable_hello()->set_wired_follows(true);
    messages.back().mutable_wired_more()->set_last(true);
  }
  return messages;
}

namespace {

// Most acks in one AckBatch message.
constexpr int kMaxAcksPerMessage = 1024;

v1::AgentMessage HandleCommand(StepExecutor& executor, const std::string& node,
                               const v1::Command& command,
                               AgentMetrics* metrics, bool* del_failed) {
  // The fields only debug lines need are built only when they are on.
  const bool debug = LogEnabled(LogLevel::kDebug);
  if (debug) {
    LogDebug("command received", {{"node", node},
                                  {"token", command.token()},
                                  {"id", absl::StrCat(command.id())},
                                  {"kind", CommandKindName(command.kind())}});
  }
  v1::AgentMessage out;
  v1::CommandAck& ack = *out.mutable_ack();
  const auto started = std::chrono::steady_clock::now();
  ack = executor.Execute(command, del_failed);
  if (metrics != nullptr) {
    metrics->CommandExecuted(
        command.kind(), ack.ok(),
        std::chrono::duration_cast<std::chrono::nanoseconds>(
            std::chrono::steady_clock::now() - started)
            .count());
  }
  if (ack.ok()) {
    if (debug) {
      LogDebug("command done", {{"node", node},
                                {"token", command.token()},
                                {"id", absl::StrCat(command.id())},
                                {"kind", CommandKindName(command.kind())},
                                {"executed", ExecutedList(ack)}});
    }
  } else {
    LogWarn("command failed", {{"node", node},
                               {"token", command.token()},
                               {"id", absl::StrCat(command.id())},
                               {"kind", CommandKindName(command.kind())},
                               {"failed_step", StepName(ack.failed_step())},
                               {"errno", ErrnoName(ack.errno_value())},
                               {"error", ack.message()},
                               {"executed", ExecutedList(ack)}});
  }
  return out;
}

}  // namespace

std::vector<std::string> CommandKeys(const v1::Command& command) {
  const v1::Producer& p = command.producer();
  const v1::Consumer& c = command.consumer();
  return {absl::StrCat("t/", command.token()),
          absl::StrCat("p/", p.device(), "/", static_cast<int>(p.index()), "/",
                       p.vector()),
          absl::StrCat("v/", c.vm())};
}

AgentSession::AgentSession(AgentSessionOptions options, Backend& backend)
    : options_(std::move(options)),
      managers_(SplitTargetList(options_.manager_address)),
      backend_(backend),
      executor_(backend),
      scheduler_(options_.command_workers) {}

void AgentSession::Run() {
  absl::Duration backoff = options_.initial_backoff;
  uint64_t failed_attempts = 0;
  // Resyncs: the first at once; one that follows another within
  // max_backoff waits, doubling from initial_backoff.
  absl::Time last_resync = absl::InfinitePast();
  absl::Duration resync_delay = absl::ZeroDuration();
  while (true) {
    const absl::Time started = absl::Now();
    const SessionOutcome outcome = RunOneSession();
    const bool established = outcome.established;
    const grpc::Status& status = outcome.status;
    bool resync = false;
    {
      MutexLock lock(&mu_);
      if (shutdown_) break;
      resync = std::exchange(resync_, false);
    }
    if (resync) {
      const absl::Time now = absl::Now();
      resync_delay =
          now - last_resync < options_.max_backoff
              ? std::min(std::max(resync_delay * 2, options_.initial_backoff),
                         options_.max_backoff)
              : absl::ZeroDuration();
      last_resync = now;
      LogInfo("re-reporting wiring to the manager",
              {{"node", options_.node},
               {"manager", options_.manager_address},
               {"after", absl::FormatDuration(resync_delay)}});
      if (resync_delay > absl::ZeroDuration() &&
          !SleepUnlessShutdown(resync_delay)) {
        break;
      }
      continue;
    }
    // Reset the backoff only after a session that held for a while, so a
    // manager that ends every stream at once (e.g. another agent claiming
    // this node name) is not hammered.
    if (established && absl::Now() - started >= options_.max_backoff) {
      backoff = options_.initial_backoff;
    }
    failed_attempts = established ? 0 : failed_attempts + 1;
    const absl::Duration delay = Jittered(backoff);
    // With several replicas the next one may be the new leader: keep the
    // delay short enough to find it soon after an election.
    backoff = std::min(backoff * 2,
                       managers_.size() > 1
                           ? std::min(options_.max_backoff, absl::Seconds(1))
                           : options_.max_backoff);
    const std::string ended_at = managers_.empty() ? "" : managers_[current_];
    if (!managers_.empty()) current_ = (current_ + 1) % managers_.size();

    const std::string retry_in =
        absl::FormatDuration(absl::Trunc(delay, absl::Milliseconds(1)));
    if (established && status.ok()) {
      LogDebug("session ended by manager", {{"node", options_.node},
                                            {"manager", ended_at},
                                            {"retry_in", retry_in}});
    } else {
      LogWarn(established ? "session failed" : "cannot reach manager",
              {{"node", options_.node},
               {"manager", ended_at},
               {"code", CodeName(status.error_code())},
               {"error", status.error_message()},
               {"attempt", absl::StrCat(failed_attempts)},
               {"retry_in", retry_in}});
    }
    if (!SleepUnlessShutdown(delay)) break;
  }
  LogDebug("session stopped",
           {{"node", options_.node}, {"manager", options_.manager_address}});
}

AgentSession::SessionOutcome AgentSession::RunOneSession() {
  const std::string address =
      managers_.empty() ? options_.manager_address : managers_[current_];
  std::unique_ptr<v1::AgentControl::Stub> stub = v1::AgentControl::NewStub(
      NewChannel(options_, address, managers_.size() > 1));
  grpc::ClientContext context;
  {
    MutexLock lock(&mu_);
    if (shutdown_) {
      return {false,
              grpc::Status(grpc::StatusCode::CANCELLED, "shutting down")};
    }
    context_ = &context;
    // This session's hello reports the wiring as it is now: a re-report
    // asked for before it is done.
    resync_ = false;
  }
  // Unpublish the context before it is destroyed, on every path.
  absl::Cleanup unpublish = [this] {
    MutexLock lock(&mu_);
    context_ = nullptr;
  };

  LogDebug("session connecting",
           {{"node", options_.node}, {"manager", address}});
  // Blocks until the channel connects or fails (or Shutdown cancels it).
  std::unique_ptr<SessionStream> stream = stub->Session(&context);

  std::vector<v1::AgentMessage> hello_messages =
      HelloMessages(options_.node, backend_.Name(), options_.agent_version,
                    backend_.Inventory(), kWiredPerMessage);
  size_t wired_count = 0;
  // What this session reports: a del that fails for one of these again is
  // not re-reported (the manager knows, and its disconnect just failed).
  absl::flat_hash_set<std::string> reported;
  for (const v1::AgentMessage& m : hello_messages) {
    const auto& pairs =
        m.has_hello() ? m.hello().wired() : m.wired_more().wired();
    wired_count += pairs.size();
    for (const v1::WiredPair& pair : pairs) reported.insert(pair.token());
  }
  const std::string wired = absl::StrCat(wired_count);
  bool hello_sent = true;
  for (const v1::AgentMessage& m : hello_messages) {
    if (!stream->Write(m)) {
      hello_sent = false;
      break;
    }
  }

  bool established = false;
  if (hello_sent) {
    // Commands run on the scheduler's workers: concurrently across tokens,
    // devices and VMs, in the order received within each (so a slow VMM
    // holds up only its own VM's commands). Their acks go through the
    // outbox to one writer thread, which sends everything queued at once
    // in one coalesced write (gRPC buffer hint). This thread reads.
    // With a manager that reads AckBatch messages, the acks queued at once
    // go out as one message (the rest, one message each).
    MessageQueue<v1::AgentMessage> outbox;
    std::atomic<bool> write_failed{false};
    std::atomic<bool> ack_batches{false};
    std::thread writer([&stream, &outbox, &write_failed, &context,
                        &ack_batches] {
      std::vector<v1::AgentMessage> batch;
      while (outbox.PopAll(&batch)) {
        if (ack_batches.load(std::memory_order_relaxed) && batch.size() > 1) {
          PackRuns(
              batch, kMaxAcksPerMessage,
              [](v1::AgentMessage& m) {
                return m.has_ack() ? m.mutable_ack() : nullptr;
              },
              [](v1::AgentMessage& m) {
                return m.mutable_acks()->mutable_acks();
              });
        }
        for (size_t i = 0; i < batch.size(); ++i) {
          grpc::WriteOptions write_options;
          if (i + 1 < batch.size()) write_options.set_buffer_hint();
          if (!stream->Write(batch[i], write_options)) {
            write_failed = true;
            context.TryCancel();  // ends the read loop
            return;
          }
        }
      }
    });
    // Runs one command from the manager (alone or in a CommandBatch).
    auto run = [&](v1::Command command) {
      if (command.epoch() < highest_epoch()) {
        // A deposed leader's command: never executed.
        v1::AgentMessage refusal;
        v1::CommandAck* ack = refusal.mutable_ack();
        ack->set_id(command.id());
        ack->set_ok(false);
        ack->set_message(absl::StrCat("refused: command from leader epoch ",
                                      command.epoch(), ", older than epoch ",
                                      highest_epoch(), " seen"));
        LogWarn("refused a command from a deposed leader",
                {{"node", options_.node},
                 {"token", command.token()},
                 {"epoch", absl::StrCat(command.epoch())}});
        outbox.Push(std::move(refusal));
        return;
      }
      std::vector<std::string> keys = CommandKeys(command);
      scheduler_.Submit(std::move(keys), [this, &outbox, &reported,
                                          command = std::move(command)] {
        bool del_failed = false;
        v1::AgentMessage ack = HandleCommand(executor_, options_.node, command,
                                             options_.metrics, &del_failed);
        outbox.Push(std::move(ack));
        if (!del_failed) return;
        if (!reported.contains(command.token())) {
          // Part of a pair may still be wired: re-report it (as
          // partial) so the manager disconnects it, instead of
          // waiting for some later reconnect.
          LogWarn("a del step failed; re-reporting wiring to the manager",
                  {{"node", options_.node}, {"token", command.token()}});
          Resync();
        } else {
          // This session reported it and the manager's disconnect
          // failed again: re-reporting would only repeat that, in a
          // loop. Left wired until the next session.
          LogWarn(
              "a del step failed again for wiring this session "
              "reported; left until the next session",
              {{"node", options_.node}, {"token", command.token()}});
        }
      });
    };
    v1::ManagerMessage in;
    bool stopped_early = false;
    while (stream->Read(&in)) {
      if (!established) {
        established = true;
        if (options_.metrics != nullptr) {
          options_.metrics->ManagerSessionStarted();
        }
        MutexLock lock(&mu_);
        ++sessions_established_;
      }
      if (in.has_hello()) {
        ack_batches = in.hello().accepts_ack_batches();
        const uint64_t epoch = in.hello().epoch();
        uint64_t highest;
        {
          MutexLock lock(&mu_);
          highest = highest_epoch_ = std::max(highest_epoch_, epoch);
        }
        if (epoch < highest) {
          LogWarn(
              "manager's leader epoch is older than one seen; it was "
              "deposed: trying the next manager",
              {{"node", options_.node},
               {"manager", address},
               {"epoch", absl::StrCat(epoch)},
               {"newest_epoch", absl::StrCat(highest)}});
          stopped_early = true;
          break;
        }
        LogDebug("session connected", {{"node", options_.node},
                                       {"manager", address},
                                       {"epoch", absl::StrCat(epoch)},
                                       {"wired", wired}});
      } else if (in.has_command()) {
        run(std::move(*in.mutable_command()));
      } else if (in.has_commands()) {
        for (v1::Command& command :
             *in.mutable_commands()->mutable_commands()) {
          run(std::move(command));
        }
      } else {
        LogWarn("ignoring empty message from manager",
                {{"node", options_.node}});
      }
    }
    if (write_failed.load()) {
      LogWarn(
          "could not send command acks; the manager reconciles on "
          "reconnect",
          {{"node", options_.node}});
    }
    // End the call if we stopped first; commands not started are dropped
    // (the manager reconciles from the next hello), running ones finish
    // before that hello is built, and their acks go out if they still can.
    if (stopped_early) context.TryCancel();
    scheduler_.Drain();
    outbox.Close();
    writer.join();
  }
  if (established && options_.metrics != nullptr) {
    options_.metrics->ManagerSessionEnded();
  }
  // Half-close then collect the status; both are no-ops on a dead call.
  stream->WritesDone();
  return {established, stream->Finish()};
}

bool AgentSession::SleepUnlessShutdown(absl::Duration delay) {
  MutexLock lock(&mu_);
  mu_.AwaitWithTimeout([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(
                           mu_) { return shutdown_ || resync_; },
                       delay);
  return !shutdown_;
}

absl::Duration AgentSession::Jittered(absl::Duration delay) {
  return delay * absl::Uniform(bitgen_, 0.8, 1.2);
}

void AgentSession::Shutdown() {
  MutexLock lock(&mu_);
  if (shutdown_) return;
  shutdown_ = true;  // Wakes SleepUnlessShutdown.
  // Safe before the call has started too: gRPC cancels it when it starts.
  if (context_ != nullptr) context_->TryCancel();
}

void AgentSession::Resync() {
  MutexLock lock(&mu_);
  if (shutdown_) return;
  resync_ = true;  // Wakes SleepUnlessShutdown.
  if (context_ != nullptr) context_->TryCancel();
}

uint64_t AgentSession::highest_epoch() const {
  MutexLock lock(&mu_);
  return highest_epoch_;
}

uint64_t AgentSession::sessions_established() const {
  MutexLock lock(&mu_);
  return sessions_established_;
}

}  // namespace agent
}  // namespace irqbypass
