#include "common/secure_random.h"

#include <sys/random.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>

namespace irqbypass {

namespace {

constexpr size_t kBlock = 64;  // values per getrandom call

struct Block {
  uint64_t values[kBlock];
  size_t next = kBlock;  // empty
};

void Refill(Block& block) {
  auto* out = reinterpret_cast<unsigned char*>(block.values);
  size_t have = 0;
  while (have < sizeof(block.values)) {
    const ssize_t n = getrandom(out + have, sizeof(block.values) - have, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::perror("irqbypass: getrandom");
      std::abort();
    }
    have += static_cast<size_t>(n);
  }
  block.next = 0;
}

}  // namespace

uint64_t SecureRandom64() {
  thread_local Block block;
  if (block.next == kBlock) Refill(block);
  const uint64_t value = block.values[block.next];
  block.values[block.next++] = 0;  // not kept once handed out
  return value;
}

}  // namespace irqbypass
