// Exact Hamming top-k and distance histograms on the CPU: shared declarations.
//
// Entry points (ffi.cc; see medhash_jax/retrieval/cpu_kernel.py):
//   XLA FFI targets (jit-compatible):
//   MedhashHammingTopk:       uint32 (Q, W), uint32 (N, W), attr k
//                             -> int32 distances (Q, k), int32 indices (Q, k),
//                             each row sorted by (distance, database index).
//   MedhashHammingHistogram:  uint32 (Q, W), uint32 (N, W)
//                             -> int32 (Q, 32 W + 1), counts per distance.
//   MedhashHammingTopkLayout: uint32 (Q, W), uint8 layout, attrs n,
//                             bytes_per_code, k -> as MedhashHammingTopk.
//   Plain C (ctypes; HammingIndex): MedhashLayoutTopk, MedhashLayoutHistogram
//   over a prebuilt layout, and MedhashStreamRead (a read-bandwidth probe).
//
// Files: hamming.h (this: layout, selector, threads), scan.h (the one scan
// template over an ISA traits struct), kernels_{scalar,avx2,avx512}.cc (the
// traits and their kernel tables), dispatch.cc (ISA and thread choice),
// selector.cc, topk.{h,cc} (the drivers), ffi.cc (entry points).
//
// How the top-k works (never sorts N):
//   * The database is read in a block layout (DbLayout below): blocks of 16
//     codes, word-major, so that one SIMD register holds word w of 16 codes;
//     narrow tail columns keep a code at ceil(K / 8) bytes. HammingIndex
//     keeps its database in this layout (built once, at add) and the layout
//     entry points read it in place, in memory or memory-mapped; the targets
//     that take uint32 rows transpose them into it once per call.
//   * Queries are processed in register blocks of QB against each 16-code
//     block (the database words are loaded once for QB queries), and groups
//     of queries sweep the database tile by tile so that a tile stays in L2.
//   * Popcount: AVX-512 VPOPCNTDQ when present, else AVX2 nibble-LUT (pshufb),
//     else portable SWAR. Chosen at run time: the extension is built without
//     -march or -m flags, each ISA's kernels are compiled for it by a
//     `#pragma GCC target` region in its own file (so no shared inline code,
//     std:: included, is ever compiled for a CPU the host may lack);
//     MEDHASH_ISA=scalar|avx2|avx512 can force a lower level.
//   * Selection is fused with the distance pass. Per query, a bound is kept
//     ("a code can still win only if d < bound"); one SIMD compare per block
//     finds the lanes below it, which are appended (distance, index) to a
//     buffer in index order (vpcompressd, or a permute table on AVX2). Every
//     few appends the buffer's distance histogram gives the current k-th
//     distance d_k and the bound drops to it: k codes with d <= d_k are held,
//     and a later code at d_k would lose the index tie-break to all of them.
//     Early in the sweep, when most blocks hit, appends are unconditional
//     (a mispredicted branch costs more than the append).
//   * At the end the buffer is cut to the exact top-k (all codes with
//     d < d_k, then the first k - #less with d == d_k in index order) and a
//     counting sort over distances writes them ordered by (distance, index).
//   * For k large relative to N (the buffer would hold much of N) a two-pass
//     variant is used instead: a distance histogram gives d_k, and a second
//     distance pass scatters the winners straight into the output by
//     counting-sort offsets. MEDHASH_TOPK_METHOD=buffer|twopass forces one.
//   * Threads (MEDHASH_NUM_THREADS, default: the CPUs this process may run
//     on), work handed out dynamically: over groups of queries when there
//     are many; over parts of the database when there are few (Q < 32 x
//     threads), each part's top-k then merged exactly by (distance, index)
//     (MEDHASH_DB_PARTS forces a number of parts).
//   * Memory: O(k) per query in flight (O(parts x k) for the database split);
//     plus, for the row-taking targets only, the per-call layout copy
//     (N * W * 4 bytes).

#ifndef MEDHASH_RETRIEVAL_CSRC_HAMMING_H_
#define MEDHASH_RETRIEVAL_CSRC_HAMMING_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#define MEDHASH_X86 1
#else
#define MEDHASH_X86 0
#endif

namespace medhash {

constexpr int kLanes = 16;  // codes per SoA block

enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The best supported level, lowered by MEDHASH_ISA (read on every call so a
// test can exercise every path in one process).
Isa ChosenIsa();
// MEDHASH_NUM_THREADS, else the CPUs this process may run on.
int NumThreads();

// Runs fn(unit) for unit in [0, units) on up to `threads` threads, handing
// out units dynamically (the machine may be shared). Rethrows the first
// exception after all threads joined.
template <class Fn>
void ParallelFor(int64_t units, int threads, Fn fn) {
  threads = static_cast<int>(std::min<int64_t>(threads, units));
  if (threads <= 1) {
    for (int64_t u = 0; u < units; ++u) fn(u);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto work = [&]() {
    try {
      for (int64_t u = next++; u < units && !failed; u = next++) fn(u);
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  try {
    for (int t = 0; t + 1 < threads; ++t) pool.emplace_back(work);
  } catch (const std::system_error&) {
    // Could not start a thread (limits): the ones running share the work.
  }
  work();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

// 64-byte aligned uint32 array (one SoA block word is one cache line).
class AlignedU32 {
 public:
  explicit AlignedU32(size_t n) {
    size_t bytes = std::max<size_t>(64, (n * 4 + 63) / 64 * 64);
    p_ = static_cast<uint32_t*>(std::aligned_alloc(64, bytes));
    if (p_ == nullptr) throw std::bad_alloc();
  }
  ~AlignedU32() { std::free(p_); }
  AlignedU32(const AlignedU32&) = delete;
  AlignedU32& operator=(const AlignedU32&) = delete;
  uint32_t* get() const { return p_; }

 private:
  uint32_t* p_;
};

// The database layout every kernel reads ("kernel layout"): blocks of 16
// codes of B = ceil(K / 8) bytes, 16 * B bytes per block. With F = B / 4 full
// 32-bit words and t = B % 4 tail bytes, block b holds, in order:
//   F columns of 16 uint32 (word j of lane l at byte 64 j + 4 l),
//   when t >= 2, one column of 16 uint16 (bytes 4F, 4F + 1 of each code),
//   when t is odd, one column of 16 uint8 (byte 4F + t - 1 of each code).
// A code's tail word is then u16 | u8 << 16, its value in the packed uint32
// row. Padding lanes of the last block are zero (they are masked out anyway).
// HammingIndex builds this layout once (medhash_jax/retrieval/layout.py) and
// keeps it, in memory or memory-mapped from its file; the FFI targets that
// take packed uint32 rows build it per call with ToSoa (t = 0).
struct DbLayout {
  const uint8_t* base = nullptr;
  int w = 0;           // words per query: F + (t > 0)
  int t = 0;           // tail bytes
  int64_t stride = 0;  // bytes per block: 16 * B
};

inline int64_t BlockBytes(int w, int t) {
  return kLanes * (t ? 4 * (w - 1) + t : 4 * w);
}

// Word j of lane l of the block at p (scalar path; any t).
inline uint32_t LaneWord(const uint8_t* p, int j, int w, int t, int l) {
  const uint8_t* c = p + 64 * j;
  uint32_t v;
  if (j < w - 1 || t == 0) {
    std::memcpy(&v, c + 4 * l, 4);
    return v;
  }
  if (t == 1) return c[l];
  uint16_t h;
  std::memcpy(&h, c + 2 * l, 2);
  v = h;
  if (t == 3) v |= static_cast<uint32_t>(c[32 + l]) << 16;
  return v;
}

// Per-query selection state (see the header comment; selector.cc).
//
// The kernels append every code with d < bound (distance and index, in index
// order) without branching per lane. Every `kSlack` appends Refine() adds the
// new distances to a histogram and lowers the bound to the k-th smallest
// distance d_k held: a later code at d_k loses to the k held ones (they have
// smaller indices), so only d < d_k can still enter. When the buffer is full,
// Compact() keeps exactly the top-k (all with d < d_k, then the first
// k - #less with d == d_k, in index order).
class Selector {
 public:
  static constexpr int64_t kSlack = 32;  // appends between refinements

  uint32_t* d = nullptr;  // candidate distances, index order
  uint32_t* i = nullptr;  // candidate database indices
  int64_t pos = 0;        // candidates held
  int64_t limit = 0;      // Refine() once pos >= limit
  uint32_t bound = 0;     // a code can still win only if d < bound

  void Reset(int64_t k, int max_d);
  // Lowers the bound to the current d_k; returns it. Needs pos >= k. Out of
  // line: it is rare, and the kernels' hot loops must stay free of its code.
  __attribute__((noinline)) uint32_t Refine();
  // Writes the k winners sorted by (distance, index).
  void Emit(int32_t* out_d, int32_t* out_i);

 private:
  void Compact(uint32_t t);

  int64_t k_ = 0;
  int64_t cap_ = 0;
  int64_t counted_ = 0;  // d[0, counted_) are in hist_
  std::vector<uint32_t> dbuf_, ibuf_;
  std::vector<int64_t> hist_;
};

// Kernels. A scan runs nq queries (rows of q, W words each) over blocks
// [b0, b1) and appends hits to their selectors; `last` is the final block of
// the database and `tail` the mask of its valid lanes. A dist kernel writes
// the distances of one query to 16 * (b1 - b0) codes.
using ScanFn = void (*)(const DbLayout& db, int64_t b0, int64_t b1,
                        int64_t last, uint32_t tail, int64_t dense_end,
                        const uint32_t* q, Selector* st, int nq);
using DistFn = void (*)(const DbLayout& db, int64_t b0, int64_t b1,
                        const uint32_t* q, uint32_t* out);

struct Kernels {
  ScanFn scan;
  DistFn dist;
};

// The kernels for codes of w words at a level (dispatch.cc) and per ISA
// (kernels_*.cc; the AVX ones exist on x86 only).
Kernels KernelsFor(Isa isa, int w);
Kernels ScalarKernels(int w);
#if MEDHASH_X86
Kernels Avx2Kernels(int w);
Kernels Avx512Kernels(int w);
// XOR of `bytes` at p, read with AVX2 (MedhashStreamRead's bandwidth probe).
uint64_t XorRangeAvx2(const uint8_t* p, int64_t bytes);
#endif

}  // namespace medhash

#endif  // MEDHASH_RETRIEVAL_CSRC_HAMMING_H_
