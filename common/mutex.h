// The product's one mutex type. Mutex, MutexLock and CondVar are thin
// wrappers over std::mutex / std::condition_variable that
//   - carry Abseil's thread-safety annotations, so ABSL_GUARDED_BY and
//     friends are checked by the clang build (`--config=thread_safety`,
//     run by scripts/test.sh);
//   - stay visible to ThreadSanitizer (the system's Abseil libraries are not
//     built with it, so TSan cannot see inside absl::Mutex);
//   - offer absl::Mutex's Await: wait, with the mutex released, until a
//     condition over the state it guards holds.
// Thread-safe.
#ifndef IRQBYPASS_COMMON_MUTEX_H_
#define IRQBYPASS_COMMON_MUTEX_H_

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace irqbypass {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) {
    return mu_.try_lock();
  }
  // Wakes the threads in Await, if any, to re-check their conditions. The
  // notify comes before the unlock: once the mutex is free, an awaiter may
  // return and destroy the object that holds it (as absl::Mutex allows).
  void Unlock() ABSL_UNLOCK_FUNCTION() {
    if (awaiting_ > 0) released_.notify_all();
    mu_.unlock();
  }
  // For code the analysis cannot follow (a callback run under the lock).
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

  // Returns once condition() holds, releasing the mutex while it does not.
  // condition() is called with the mutex held and must have no side
  // effects; it is re-evaluated each time another thread releases the
  // mutex, as absl::Mutex::Await does.
  template <typename F>
  void Await(F&& condition) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    AwaitUntil(condition, std::chrono::steady_clock::time_point::max());
  }
  // As Await, giving up after `timeout`; returns condition()'s last value.
  template <typename F>
  bool AwaitWithTimeout(F&& condition, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    const auto now = std::chrono::steady_clock::now();
    // Longer than the clock can count (InfiniteDuration, or centuries from a
    // flag): no deadline, rather than an overflowed one in the past.
    if (timeout >=
        absl::FromChrono(std::chrono::steady_clock::time_point::max() - now)) {
      Await(condition);
      return true;
    }
    return AwaitUntil(condition, now + absl::ToChronoNanoseconds(timeout));
  }

 private:
  friend class CondVar;

  // The caller may have changed the guarded state before it waits without
  // going through Unlock: let the other awaiters re-check.
  void WakeAwaitersBeforeWait() ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    if (awaiting_ > 0) released_.notify_all();
  }

  // The analysis cannot tell that `this` is the mutex condition() needs (its
  // callers' lambdas are checked where they are written, and Await requires
  // this mutex), so it is off inside.
  template <typename F>
  bool AwaitUntil(F& condition, std::chrono::steady_clock::time_point deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (condition()) return true;
    WakeAwaitersBeforeWait();
    ++awaiting_;
    std::unique_lock<std::mutex> lock(mu_, std::adopt_lock);
    bool holds = false;
    while (!(holds = condition())) {
      // Between wake-ups this thread changes nothing, so waiting again needs
      // no wake-up of the others (two awaiters would wake each other).
      if (deadline == std::chrono::steady_clock::time_point::max()) {
        released_.wait(lock);
      } else if (released_.wait_until(lock, deadline) ==
                 std::cv_status::timeout) {
        holds = condition();
        break;
      }
    }
    lock.release();
    --awaiting_;
    return holds;
  }

  std::mutex mu_;
  std::condition_variable released_;
  int awaiting_ = 0;  // threads in Await; read and written with mu_ held
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->Lock();
  }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

// Takes over a mutex its caller already holds (after a successful TryLock)
// and unlocks it at the end of the scope, also on unwind.
class ABSL_SCOPED_LOCKABLE AdoptedMutexLock {
 public:
  explicit AdoptedMutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu)
      : mu_(mu) {}
  ~AdoptedMutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  AdoptedMutexLock(const AdoptedMutexLock&) = delete;
  AdoptedMutexLock& operator=(const AdoptedMutexLock&) = delete;

 private:
  Mutex* const mu_;
};

class CondVar {
 public:
  // Atomically releases *mu, waits for a signal, re-acquires *mu.
  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    mu->WakeAwaitersBeforeWait();
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();
  }
  // As Wait, with a deadline; returns false when it passed.
  template <typename Clock, typename Duration>
  bool WaitUntil(Mutex* mu,
                 const std::chrono::time_point<Clock, Duration>& deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    mu->WakeAwaitersBeforeWait();
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    const bool signalled =
        cv_.wait_until(lock, deadline) == std::cv_status::no_timeout;
    lock.release();
    return signalled;
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace irqbypass

#endif  // IRQBYPASS_COMMON_MUTEX_H_
