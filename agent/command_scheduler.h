// CommandScheduler: runs the manager's commands on a pool of workers, so
// that one slow command (a VMM that takes its time to answer an irqfd
// request, a slow host step) holds up only the commands that must follow
// it, not every other command of the node.
//
// Each task names its keys (the session uses the token, the producer's
// device vector and the consumer's VM). A task starts once every task
// submitted before it that shares one of its keys has finished, so commands
// for one token, one device vector or one VM run one at a time in the
// order received (a connect and the disconnect queued behind it, a
// disconnect freeing a vector and the connect that reuses it), and tasks
// sharing no key run concurrently, up to `workers` at once.
//
// Thread-safe.
#ifndef IRQBYPASS_AGENT_COMMAND_SCHEDULER_H_
#define IRQBYPASS_AGENT_COMMAND_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "common/mutex.h"

namespace irqbypass {
namespace agent {

class CommandScheduler {
 public:
  explicit CommandScheduler(int workers);
  ~CommandScheduler();  // Drain, then ends the workers
  CommandScheduler(const CommandScheduler&) = delete;
  CommandScheduler& operator=(const CommandScheduler&) = delete;

  // Queues `task` behind every earlier task that shares a key with it.
  void Submit(std::vector<std::string> keys,
              absl::AnyInvocable<void() &&> task);

  // Drops the tasks that have not started and waits for the running ones
  // to finish (a session ended: what is queued belongs to it, and the next
  // session's hello must report the wiring with nothing in flight). Submit
  // works again afterwards.
  void Drain();

  // Tasks queued or running.
  size_t pending() const;

 private:
  struct Task {
    std::vector<std::string> keys;
    // next[i]: the task behind this one in keys[i]'s queue (null: last).
    std::vector<Task*> next;
    absl::AnyInvocable<void() &&> run;
    uint64_t generation = 0;  // Drain drops tasks of older generations
    int blockers = 0;         // keys whose queue it is not first in
  };
  void WorkerLoop();
  // `task` has finished (or was dropped): the tasks it held back may start.
  // Wakes no one: only a worker calls it, and takes a ready task next.
  void Retire(Task* task) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MakeReady(Task* task) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Wakes one idle worker if ready tasks wait and none is on its way.
  void MaybeWake() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable Mutex mu_;
  CondVar work_;
  std::deque<Task*> ready_ ABSL_GUARDED_BY(mu_);
  // Per key, the last task that named it. The tasks naming a key form a
  // queue linked through Task::next from the first (running or next).
  absl::flat_hash_map<std::string, Task*> last_ ABSL_GUARDED_BY(mu_);
  size_t tasks_ ABSL_GUARDED_BY(mu_) = 0;  // queued or running
  // Workers waiting for work, and those signalled that have not yet taken
  // the lock back. At most one worker is woken at a time; one that takes a
  // task and leaves more ready wakes the next (a chain), so a burst of
  // short commands is run by the few workers it needs instead of waking
  // them all to contend for the lock, while commands that block (a slow
  // VMM) still each get a worker of their own until all are busy.
  int idle_ ABSL_GUARDED_BY(mu_) = 0;
  int waking_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace agent
}  // namespace irqbypass

#endif  // IRQBYPASS_AGENT_COMMAND_SCHEDULER_H_
