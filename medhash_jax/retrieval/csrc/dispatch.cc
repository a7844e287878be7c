// Run-time choices: the SIMD level (CPU features, lowered by MEDHASH_ISA),
// the kernels for it, and the thread count.

#include "hamming.h"

#if defined(__linux__)
#include <sched.h>
#endif

namespace medhash {
namespace {

Isa SupportedIsa() {
#if MEDHASH_X86
  __builtin_cpu_init();
  const bool popcnt = __builtin_cpu_supports("popcnt");
  if (popcnt && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512vpopcntdq")) {
    return kAvx512;
  }
  if (popcnt && __builtin_cpu_supports("avx2")) return kAvx2;
#endif
  return kScalar;
}

}  // namespace

Isa ChosenIsa() {
  static const Isa supported = SupportedIsa();
  Isa isa = supported;
  if (const char* env = std::getenv("MEDHASH_ISA")) {
    Isa want = supported;
    if (!std::strcmp(env, "scalar")) want = kScalar;
    if (!std::strcmp(env, "avx2")) want = kAvx2;
    if (!std::strcmp(env, "avx512")) want = kAvx512;
    isa = std::min(want, supported);
  }
  return isa;
}

Kernels KernelsFor(Isa isa, int w) {
#if MEDHASH_X86
  if (isa == kAvx512) return Avx512Kernels(w);
  if (isa == kAvx2) return Avx2Kernels(w);
#endif
  (void)isa;
  return ScalarKernels(w);
}

int NumThreads() {
  if (const char* env = std::getenv("MEDHASH_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

}  // namespace medhash
