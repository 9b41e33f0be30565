#include "service/store.h"

#include "common/mutex.h"

namespace irqbypass {

absl::Status Store::WriteAndWait(absl::Span<const StoreChange> changes) {
  Mutex mu;
  CondVar written;
  bool done = false;
  absl::Status result;
  Write(changes, [&](absl::Status status) {
    MutexLock lock(&mu);
    result = std::move(status);
    done = true;
    written.SignalAll();
  });
  MutexLock lock(&mu);
  while (!done) written.Wait(&mu);
  return result;
}

}  // namespace irqbypass
