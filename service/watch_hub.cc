#include "service/watch_hub.h"

#include <algorithm>

#include "service/validation.h"

namespace irqbypass {

WatchHub::Subscriber::Result WatchHub::Subscriber::Next(
    v1::BindingEvent* event, std::chrono::steady_clock::time_point deadline) {
  MutexLock lock(&mu_);
  while (queue_.empty()) {
    if (overflow_) return Result::kOverflow;
    if (closed_) return Result::kClosed;
    if (!cv_.WaitUntil(&mu_, deadline) && queue_.empty()) {
      if (overflow_) return Result::kOverflow;
      return closed_ ? Result::kClosed : Result::kTimeout;
    }
  }
  *event = std::move(queue_.front());
  queue_.pop_front();
  return Result::kEvent;
}

std::shared_ptr<WatchHub::Subscriber> WatchHub::Subscribe(
    const std::string& node) {
  std::shared_ptr<Subscriber> sub(new Subscriber(node));
  MutexLock lock(&mu_);
  if (shut_down_) {
    // Arrived after Shutdown: closed from the start, so its stream ends now.
    MutexLock sub_lock(&sub->mu_);
    sub->closed_ = true;
  }
  subscribers_.push_back(sub);
  count_.fetch_add(1, std::memory_order_relaxed);
  return sub;
}

void WatchHub::Unsubscribe(const std::shared_ptr<Subscriber>& subscriber) {
  MutexLock lock(&mu_);
  auto it = std::find(subscribers_.begin(), subscribers_.end(), subscriber);
  if (it != subscribers_.end()) {
    subscribers_.erase(it);
    count_.fetch_sub(1, std::memory_order_relaxed);
  }
}

void WatchHub::Shutdown() {
  MutexLock lock(&mu_);
  shut_down_ = true;
  for (auto& sub : subscribers_) {
    MutexLock sub_lock(&sub->mu_);
    sub->closed_ = true;
    sub->cv_.SignalAll();
  }
}

void WatchHub::OnCommit(absl::string_view token, const BindingState& before,
                        const BindingState& after) {
  if (count_.load(std::memory_order_relaxed) == 0) return;
  v1::BindingEvent event;
  if (after.empty()) {
    event.set_type(v1::BindingEvent::REMOVED);
    event.mutable_binding()->set_token(std::string(token));
    event.mutable_binding()->set_node(before.node());
    event.mutable_binding()->set_revision(after.revision);
  } else {
    event.set_type(v1::BindingEvent::UPDATED);
    BindingToProto(token, after, event.mutable_binding());
  }
  const std::string& node = event.binding().node();
  MutexLock lock(&mu_);
  for (auto& sub : subscribers_) {
    if (!sub->node_.empty() && sub->node_ != node) continue;
    MutexLock sub_lock(&sub->mu_);
    if (sub->overflow_ || sub->closed_) continue;
    if (sub->queue_.size() >= max_queue_) {
      sub->overflow_ = true;
      sub->queue_.clear();
    } else {
      sub->queue_.push_back(event);
    }
    sub->cv_.SignalAll();
  }
}

}  // namespace irqbypass
