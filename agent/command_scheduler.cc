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
  auto* t = new Task{std::move(keys), std::move(task)};
  MutexLock lock(&mu_);
  t->generation = generation_;
  ++tasks_;
  for (const std::string& key : t->keys) {
    std::deque<Task*>& queue = queues_[key];
    if (!queue.empty()) ++t->blockers;
    queue.push_back(t);
  }
  if (t->blockers == 0) {
    ready_.push_back(t);
    work_.Signal();
  }
}

void CommandScheduler::Retire(Task* task) {
  for (const std::string& key : task->keys) {
    auto it = queues_.find(key);
    std::deque<Task*>& queue = it->second;
    // A task starts only when it is first in each of its queues.
    queue.pop_front();
    if (queue.empty()) {
      queues_.erase(it);
    } else if (--queue.front()->blockers == 0) {
      ready_.push_back(queue.front());
      work_.Signal();
    }
  }
  delete task;
  --tasks_;
}

void CommandScheduler::WorkerLoop() {
  while (true) {
    Task* task = nullptr;
    absl::AnyInvocable<void() &&> run;
    {
      MutexLock lock(&mu_);
      while (ready_.empty() && !stopping_) work_.Wait(&mu_);
      if (ready_.empty()) return;  // stopping
      task = ready_.front();
      ready_.pop_front();
      if (task->generation != generation_) {
        Retire(task);  // dropped by a Drain
        continue;
      }
      run = std::move(task->run);
    }
    std::move(run)();
    run = nullptr;  // what it holds goes before the task is retired
    MutexLock lock(&mu_);
    Retire(task);  // the Unlock wakes a Drain waiting for the last task
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
