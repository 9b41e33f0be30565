// Random numbers nobody can predict from earlier ones: the kernel's CSPRNG
// (getrandom), read in blocks per thread. For identifiers a caller must not
// be able to guess (registration ids), not for simulation.
#ifndef IRQBYPASS_COMMON_SECURE_RANDOM_H_
#define IRQBYPASS_COMMON_SECURE_RANDOM_H_

#include <cstdint>

namespace irqbypass {

// 64 random bits. Thread-safe; aborts if the kernel cannot supply them.
uint64_t SecureRandom64();

}  // namespace irqbypass

#endif  // IRQBYPASS_COMMON_SECURE_RANDOM_H_
