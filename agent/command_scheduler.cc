#include "agent/command_scheduler.h"

#include <algorithm>
#include <utility>

namespace irqbypass {
namespace agent {

CommandScheduler::CommandScheduler(int workers) {
  if (workers < 1) workers = 1;
  workers_.reserve(workers);
  for (int i = 0; i < workers; ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
}

CommandScheduler::~CommandScheduler() {
  Drain();
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    work_.SignalAll();
  }
  for (std::thread& t : workers_) t.join();
}

void CommandScheduler::Submit(std::vector<std::string> keys,
                              absl::AnyInvocable<void() &&> task) {
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  auto* t = new Task{std::move(keys), {}, std::move(task)};
  t->next.assign(t->keys.size(), nullptr);
  MutexLock lock(&mu_);
  t->generation = generation_;
  ++tasks_;
  for (const std::string& key : t->keys) {
    Task*& last = last_[key];
    if (last != nullptr) {
      ++t->blockers;
      const size_t at = std::find(last->keys.begin(), last->keys.end(), key) -
                        last->keys.begin();
      last->next[at] = t;
    }
    last = t;
  }
  if (t->blockers == 0) MakeReady(t);
}

void CommandScheduler::MakeReady(Task* task) {
  ready_.push_back(task);
  MaybeWake();
}

void CommandScheduler::MaybeWake() {
  if (!ready_.empty() && waking_ == 0 && idle_ > 0) {
    ++waking_;
    work_.Signal();
  }
}

void CommandScheduler::Retire(Task* task) {
  for (size_t i = 0; i < task->keys.size(); ++i) {
    // A task starts only when it is first in each of its queues.
    Task* next = task->next[i];
    if (next == nullptr) {
      last_.erase(task->keys[i]);  // it was the last
    } else {
      // No wake-up: the worker retiring it takes a ready task next (and
      // wakes another if more are left).
      if (--next->blockers == 0) ready_.push_back(next);
    }
  }
  delete task;
  --tasks_;
}

void CommandScheduler::WorkerLoop() {
  Task* finished = nullptr;
  while (true) {
    Task* task = nullptr;
    absl::AnyInvocable<void() &&> run;
    {
      MutexLock lock(&mu_);
      // The Unlock after retiring the last task wakes a Drain waiting.
      if (finished != nullptr) Retire(std::exchange(finished, nullptr));
      while (task == nullptr) {
        while (ready_.empty() && !stopping_) {
          ++idle_;
          work_.Wait(&mu_);
          --idle_;
          if (waking_ > 0) --waking_;
        }
        if (ready_.empty()) return;  // stopping
        task = ready_.front();
        ready_.pop_front();
        if (task->generation != generation_) {
          Retire(std::exchange(task, nullptr));  // dropped by a Drain
        }
      }
      run = std::move(task->run);
      MaybeWake();  // more ready than this worker takes: the next worker
    }
    std::move(run)();
    run = nullptr;  // what it holds goes before the task is retired
    finished = task;
  }
}

void CommandScheduler::Drain() {
  MutexLock lock(&mu_);
  ++generation_;  // what has not started is dropped as workers reach it
  mu_.Await([this]()
                ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return tasks_ == 0; });
}

size_t CommandScheduler::pending() const {
  MutexLock lock(&mu_);
  return tasks_;
}

}  // namespace agent
}  // namespace irqbypass
