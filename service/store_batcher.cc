#include "service/store_batcher.h"

#include <utility>

#include "common/log.h"
#include "service/errors.h"

namespace irqbypass {

absl::Status ForCall(const absl::Status& status,
                     absl::Span<const StoreChange> changes) {
  if (status.ok()) return status;
  ErrorContext ctx = GetErrorContext(status);
  ctx.token = changes.size() == 1 ? std::string(changes[0].token) : "";
  return MakeError(status.code(), GetErrorReason(status), status.message(),
                   ctx);
}

StoreBatcher::StoreBatcher(int writers, size_t max_changes, WriteFn write)
    : max_changes_(max_changes == 0 ? 1 : max_changes),
      write_(std::move(write)) {
  if (writers < 1) writers = 1;
  {
    MutexLock lock(&mu_);
    writing_ = writers;
  }
  writers_.reserve(writers);
  for (int i = 0; i < writers; ++i) {
    writers_.emplace_back([this] { WriterLoop(); });
  }
  completer_ = std::thread([this] { CompleterLoop(); });
  for (const std::thread& t : writers_) own_ids_.push_back(t.get_id());
  own_ids_.push_back(completer_.get_id());
}

StoreBatcher::~StoreBatcher() { Stop(); }

void StoreBatcher::Write(absl::Span<const StoreChange> changes,
                         std::function<void(absl::Status)> done) {
  Call call;
  call.changes.reserve(changes.size());
  for (const StoreChange& c : changes) {
    OwnedChange owned{std::string(c.token), c.state, std::nullopt};
    if (c.request != nullptr) owned.request = *c.request;
    call.changes.push_back(std::move(owned));
  }
  call.done = std::move(done);
  {
    MutexLock lock(&mu_);
    if (!stopping_) {
      queue_.push_back(std::move(call));
      work_.Signal();
      return;
    }
  }
  call.done(MakeError(absl::StatusCode::kUnavailable,
                      ErrorReason::kStoreUnavailable, "durable store: closed",
                      {}));
}

bool StoreBatcher::OnOwnThread() const {
  const std::thread::id me = std::this_thread::get_id();
  for (const std::thread::id& id : own_ids_) {
    if (id == me) return true;
  }
  return false;
}

void StoreBatcher::Stop() {
  if (OnOwnThread()) {
    LogWarn("StoreBatcher::Stop called from a done: not waiting for it");
    MutexLock lock(&mu_);
    stopping_ = true;
    work_.SignalAll();
    return;
  }
  MutexLock stopping(&stop_mu_);
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    work_.SignalAll();
  }
  for (std::thread& t : writers_) {
    if (t.joinable()) t.join();
  }
  if (completer_.joinable()) completer_.join();
}

void StoreBatcher::WriterLoop() {
  std::vector<Call> taken;
  std::vector<StoreChange> views;
  while (true) {
    taken.clear();
    views.clear();
    {
      MutexLock lock(&mu_);
      while (queue_.empty() && !stopping_) work_.Wait(&mu_);
      if (queue_.empty()) {  // stopping, and everything is written
        if (--writing_ == 0) answered_.Signal();
        return;
      }
      // The oldest calls, whole, while they fit (the first always does:
      // a store refuses larger calls before queueing them).
      size_t changes = 0;
      while (!queue_.empty() &&
             (taken.empty() ||
              changes + queue_.front().changes.size() <= max_changes_)) {
        changes += queue_.front().changes.size();
        taken.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      // Calls left behind go to another writer, if one is idle.
      if (!queue_.empty()) work_.Signal();
    }
    for (const Call& call : taken) {
      for (const OwnedChange& c : call.changes) {
        views.push_back(StoreChange{
            c.token, c.state, c.request.has_value() ? &*c.request : nullptr});
      }
    }
    absl::Status written = write_(views);
    std::vector<Answer> answers;
    answers.reserve(taken.size());
    if (taken.size() == 1) {
      // Handed over, not shared: a status copied across threads shares its
      // reference-counted message.
      answers.push_back({std::move(taken[0].done), std::move(written)});
    } else {
      size_t at = 0;
      for (Call& call : taken) {
        const absl::Span<const StoreChange> mine(views.data() + at,
                                                 call.changes.size());
        at += call.changes.size();
        answers.push_back({std::move(call.done), ForCall(written, mine)});
      }
    }
    MutexLock lock(&mu_);
    answers_.push_back(std::move(answers));
    answered_.Signal();
  }
}

void StoreBatcher::CompleterLoop() {
  while (true) {
    std::vector<Answer> batch;
    {
      MutexLock lock(&mu_);
      while (answers_.empty() && writing_ > 0) answered_.Wait(&mu_);
      if (answers_.empty()) return;  // every writer ended; all answered
      batch = std::move(answers_.front());
      answers_.pop_front();
    }
    for (Answer& a : batch) a.done(std::move(a.status));
  }
}

}  // namespace irqbypass
