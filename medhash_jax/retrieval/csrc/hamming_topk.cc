// Exact Hamming top-k and distance histograms on the CPU.
//
// Entry points (see medhash_jax/retrieval/cpu_kernel.py):
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
//     else portable SWAR. Chosen at run time (the extension is built without
//     -march flags); MEDHASH_ISA=scalar|avx2|avx512 can force a lower level.
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

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#define MEDHASH_X86 1
#include <immintrin.h>
#else
#define MEDHASH_X86 0
#endif

// The jaxlib headers warn under some GCC versions; not our code to fix.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wattributes"
#pragma GCC diagnostic ignored "-Wreturn-type"
#pragma GCC diagnostic ignored "-Wsign-compare"
#include "xla/ffi/api/ffi.h"
#pragma GCC diagnostic pop

namespace ffi = xla::ffi;

// GCC 12's AVX-512 zero-extension intrinsics (_mm512_cvtepu8/16_epi32) use
// _mm512_undefined_epi32() as a masked-off pass-through and warn about it.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace medhash {
namespace {

constexpr int kLanes = 16;  // codes per SoA block

enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

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

// The best supported level, lowered by MEDHASH_ISA (read on every call so a
// test can exercise every path in one process).
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

// Packed uint32 rows (W words) -> blocks [b0, b1) of the t = 0 layout.
void ToSoa(const uint32_t* db, int64_t n, int w, int64_t b0, int64_t b1,
           uint32_t* soa) {
  for (int64_t b = b0; b < b1; ++b) {
    uint32_t* out = soa + b * w * kLanes;
    for (int l = 0; l < kLanes; ++l) {
      const int64_t i = b * kLanes + l;
      if (i < n) {
        const uint32_t* row = db + i * w;
        for (int j = 0; j < w; ++j) out[j * kLanes + l] = row[j];
      } else {
        for (int j = 0; j < w; ++j) out[j * kLanes + l] = 0;
      }
    }
  }
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

// ---------------------------------------------------------------------------
// Per-query selection state (see the header comment).
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

  void Reset(int64_t k, int max_d) {
    k_ = k;
    cap_ = 4 * k + 256;
    // A kernel appends up to one block (16) past limit - 1 <= cap_.
    const size_t size = static_cast<size_t>(cap_ + kSlack + kLanes);
    if (dbuf_.size() < size) {
      dbuf_.resize(size);
      ibuf_.resize(size);
    }
    hist_.assign(max_d + 1, 0);
    d = dbuf_.data();
    i = ibuf_.data();
    pos = 0;
    counted_ = 0;
    limit = k_;
    bound = static_cast<uint32_t>(max_d) + 1;
  }

  // Lowers the bound to the current d_k; returns it. Needs pos >= k.
  __attribute__((noinline)) uint32_t Refine() {
    int64_t* h = hist_.data();
    for (int64_t e = counted_; e < pos; ++e) ++h[d[e]];
    counted_ = pos;
    uint32_t t = 0;
    for (int64_t cum = h[0]; cum < k_; cum += h[++t]) {
    }
    bound = t;
    if (pos + kSlack > cap_) Compact(t);
    limit = pos + kSlack;
    return t;
  }

  // Writes the k winners sorted by (distance, index): counting sort over
  // distances, stable, so index order survives inside each distance.
  void Emit(int32_t* out_d, int32_t* out_i) {
    const uint32_t t = Refine();
    Compact(t);
    int64_t* h = hist_.data();
    int64_t off = 0;
    for (uint32_t v = 0; v <= t; ++v) {
      const int64_t c = h[v];
      h[v] = off;
      off += c;
    }
    for (int64_t e = 0; e < pos; ++e) {
      const int64_t at = h[d[e]]++;
      out_d[at] = static_cast<int32_t>(d[e]);
      out_i[at] = static_cast<int32_t>(i[e]);
    }
  }

 private:
  // Keeps exactly the top-k (d_k = t) in index order; rebuilds the histogram.
  void Compact(uint32_t t) {
    int64_t* h = hist_.data();
    int64_t less = 0;
    for (uint32_t v = 0; v < t; ++v) less += h[v];
    int64_t take = k_ - less;  // tied at t, taken in index order
    int64_t w = 0;
    for (int64_t e = 0; e < pos; ++e) {  // branch-free: the keep bit is random
      const uint32_t de = d[e];
      const bool tie = de == t;
      const bool keep = de < t || (tie && take > 0);
      take -= tie & keep;
      d[w] = de;
      i[w] = i[e];
      w += keep;
    }
    pos = counted_ = w;  // == k
    std::fill(hist_.begin(), hist_.end(), 0);
    for (int64_t e = 0; e < pos; ++e) ++h[d[e]];
  }

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
//
// Blocks before `dense_end` append unconditionally (branch-free; an empty
// mask appends nothing): early in the sweep the bound is loose and most
// blocks hit, and a mispredicted "any hit?" branch in a loop this dense
// costs ~50 cycles, far more than the append. Later, hits are rare and one
// well-predicted branch per block is cheaper.
//
// The hit path is inlined and free of calls except the rare Refine(): an
// out-of-line call from a SIMD loop costs a vzeroupper plus a spill and
// reload of every live vector register.
using ScanFn = void (*)(const DbLayout& db, int64_t b0, int64_t b1,
                        int64_t last, uint32_t tail, int64_t dense_end,
                        const uint32_t* q, Selector* st, int nq);
using DistFn = void (*)(const DbLayout& db, int64_t b0, int64_t b1,
                        const uint32_t* q, uint32_t* out);

// ---------------------------------------------------------------------------
// Portable scalar kernels.

inline uint32_t Popcount32(uint32_t x) {
  x = x - ((x >> 1) & 0x55555555u);
  x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
  x = (x + (x >> 4)) & 0x0f0f0f0fu;
  return (x * 0x01010101u) >> 24;
}

template <int WT>
inline void DistBlockScalar(const uint8_t* p, int w, int t, const uint32_t* q,
                            uint32_t* d16) {
  const int W = WT > 0 ? WT : w;
  for (int l = 0; l < kLanes; ++l) d16[l] = 0;
  for (int j = 0; j < W; ++j) {
    for (int l = 0; l < kLanes; ++l) {
      d16[l] += Popcount32(LaneWord(p, j, W, t, l) ^ q[j]);
    }
  }
}

// Appends lanes of `mask` (ascending) to s; refines when full.
inline void AppendLanes(Selector& s, const uint32_t* d16, uint32_t mask,
                        uint32_t base) {
  while (mask) {
    const int l = __builtin_ctz(mask);
    mask &= mask - 1;
    s.d[s.pos] = d16[l];
    s.i[s.pos] = base + l;
    ++s.pos;
  }
  if (s.pos >= s.limit) s.Refine();
}

template <int WT>
void ScanScalar(const DbLayout& db, int64_t b0, int64_t b1, int64_t last,
                uint32_t tail, int64_t /*dense_end*/, const uint32_t* q,
                Selector* st, int nq) {
  const int W = WT > 0 ? WT : db.w;
  uint32_t d16[kLanes];
  for (int j = 0; j < nq; ++j) {
    const uint32_t* qj = q + j * W;
    Selector& s = st[j];
    const uint8_t* p = db.base + b0 * db.stride;
    for (int64_t b = b0; b < b1; ++b, p += db.stride) {
      DistBlockScalar<WT>(p, W, db.t, qj, d16);
      uint32_t mask = 0;
      for (int l = 0; l < kLanes; ++l) mask |= uint32_t(d16[l] < s.bound) << l;
      if (b == last) mask &= tail;
      if (mask) AppendLanes(s, d16, mask, static_cast<uint32_t>(b * kLanes));
    }
  }
}

template <int WT>
void DistScalar(const DbLayout& db, int64_t b0, int64_t b1, const uint32_t* q,
                uint32_t* out) {
  const int W = WT > 0 ? WT : db.w;
  const uint8_t* p = db.base + b0 * db.stride;
  for (int64_t b = b0; b < b1; ++b, p += db.stride, out += kLanes) {
    DistBlockScalar<WT>(p, W, db.t, q, out);
  }
}

#if MEDHASH_X86
// ---------------------------------------------------------------------------
// AVX-512 (F + VPOPCNTDQ) kernels.

#define MEDHASH_AVX512 \
  __attribute__((target("avx512f,avx512vpopcntdq,popcnt")))

// Query rows per register block.
constexpr int QbAvx512(int w) { return w <= 2 ? 8 : (w <= 4 ? 4 : 2); }

// The tail word (t = 1..3 bytes) of 16 codes from its narrow columns at c.
MEDHASH_AVX512 inline __m512i Tail512(const uint8_t* c, int t) {
  if (t == 1) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(
        reinterpret_cast<const __m128i*>(c)));
  }
  __m512i v = _mm512_cvtepu16_epi32(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)));
  if (t == 3) {
    v = _mm512_or_si512(
        v, _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                                 reinterpret_cast<const __m128i*>(c + 32))),
                             16));
  }
  return v;
}

// Word j of the 16 codes of the block at p.
MEDHASH_AVX512 inline __m512i Col512(const uint8_t* p, int j, int w, int t) {
  const uint8_t* c = p + 64 * j;
  if (j < w - 1 || t == 0) return _mm512_loadu_si512(c);
  return Tail512(c, t);
}

// Appends the lanes of m (distances d, indices b*16 + lane) with vpcompressd.
MEDHASH_AVX512 inline void HitAvx512(Selector& s, __m512i d, uint32_t m,
                                     int64_t b, __m512i* bv) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                         12, 13, 14, 15);
  const __m512i idx =
      _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int>(b * kLanes)));
  _mm512_storeu_si512(s.d + s.pos, _mm512_maskz_compress_epi32(m, d));
  _mm512_storeu_si512(s.i + s.pos, _mm512_maskz_compress_epi32(m, idx));
  s.pos += _mm_popcnt_u32(m);
  if (s.pos >= s.limit) *bv = _mm512_set1_epi32(s.Refine());
}

// kTail: the last word is a narrow tail column (t = db.t > 0); a template
// flag so that the common t = 0 case has no test in the loop.
template <int W, int QB, bool kDense, bool kTail>
MEDHASH_AVX512 __attribute__((always_inline)) inline void SweepAvx512(
    const DbLayout& db, int64_t b0, int64_t b1, int64_t last, uint32_t tail,
    const __m512i (&qv)[QB][W], __m512i (&bv)[QB], Selector* st) {
  const uint8_t* p = db.base + b0 * db.stride;
  const int64_t stride = db.stride;
  for (int64_t b = b0; b < b1; ++b, p += stride) {
    __m512i x[W];
#pragma GCC unroll 16
    for (int k = 0; k < W; ++k) {
      x[k] = (kTail && k == W - 1) ? Tail512(p + 64 * k, db.t)
                                   : _mm512_loadu_si512(p + 64 * k);
    }
#pragma GCC unroll 16
    for (int j = 0; j < QB; ++j) {
      __m512i d = _mm512_popcnt_epi32(_mm512_xor_si512(x[0], qv[j][0]));
#pragma GCC unroll 16
      for (int k = 1; k < W; ++k) {
        d = _mm512_add_epi32(
            d, _mm512_popcnt_epi32(_mm512_xor_si512(x[k], qv[j][k])));
      }
      uint32_t m = _mm512_cmplt_epu32_mask(d, bv[j]);
      if (kDense || __builtin_expect(m != 0, 0)) {
        if (b == last) m &= tail;
        HitAvx512(st[j], d, m, b, &bv[j]);
      }
    }
  }
}

template <int W, int QB, bool kTail>
MEDHASH_AVX512 void ScanBlockAvx512(const DbLayout& db, int64_t b0,
                                    int64_t b1, int64_t last, uint32_t tail,
                                    int64_t dense_end, const uint32_t* q,
                                    Selector* st) {
  __m512i qv[QB][W];
  __m512i bv[QB];
#pragma GCC unroll 16
  for (int j = 0; j < QB; ++j) {
#pragma GCC unroll 16
    for (int k = 0; k < W; ++k) qv[j][k] = _mm512_set1_epi32(q[j * W + k]);
    bv[j] = _mm512_set1_epi32(st[j].bound);
  }
  const int64_t mid = std::min(std::max(dense_end, b0), b1);
  if (mid > b0) {
    SweepAvx512<W, QB, true, kTail>(db, b0, mid, last, tail, qv, bv, st);
  }
  SweepAvx512<W, QB, false, kTail>(db, mid, b1, last, tail, qv, bv, st);
}

// Any W, one query at a time.
MEDHASH_AVX512 void ScanAnyAvx512(const DbLayout& db, int64_t b0, int64_t b1,
                                  int64_t last, uint32_t tail,
                                  int64_t dense_end, const uint32_t* q,
                                  Selector* st, int nq) {
  const int w = db.w, t = db.t;
  for (int j = 0; j < nq; ++j) {
    const uint32_t* qj = q + j * w;
    __m512i bv = _mm512_set1_epi32(st[j].bound);
    const uint8_t* p = db.base + b0 * db.stride;
    for (int64_t b = b0; b < b1; ++b, p += db.stride) {
      __m512i d = _mm512_setzero_si512();
      for (int k = 0; k < w; ++k) {
        d = _mm512_add_epi32(d, _mm512_popcnt_epi32(_mm512_xor_si512(
                                    Col512(p, k, w, t),
                                    _mm512_set1_epi32(qj[k]))));
      }
      uint32_t m = _mm512_cmplt_epu32_mask(d, bv);
      if (b < dense_end || __builtin_expect(m != 0, 0)) {
        if (b == last) m &= tail;
        HitAvx512(st[j], d, m, b, &bv);
      }
    }
  }
}

template <int W, bool kTail>
void ScanAvx512Impl(const DbLayout& db, int64_t b0, int64_t b1, int64_t last,
                    uint32_t tail, int64_t dense_end, const uint32_t* q,
                    Selector* st, int nq) {
  constexpr int QB = QbAvx512(W);
  int j = 0;
  for (; j + QB <= nq; j += QB) {
    ScanBlockAvx512<W, QB, kTail>(db, b0, b1, last, tail, dense_end,
                                  q + j * W, st + j);
  }
  for (; j < nq; ++j) {
    ScanBlockAvx512<W, 1, kTail>(db, b0, b1, last, tail, dense_end, q + j * W,
                                 st + j);
  }
}

template <int W>
void ScanAvx512(const DbLayout& db, int64_t b0, int64_t b1, int64_t last,
                uint32_t tail, int64_t dense_end, const uint32_t* q,
                Selector* st, int nq) {
  if (db.t) {
    ScanAvx512Impl<W, true>(db, b0, b1, last, tail, dense_end, q, st, nq);
  } else {
    ScanAvx512Impl<W, false>(db, b0, b1, last, tail, dense_end, q, st, nq);
  }
}

MEDHASH_AVX512 void DistAvx512(const DbLayout& db, int64_t b0, int64_t b1,
                               const uint32_t* q, uint32_t* out) {
  const int w = db.w, t = db.t;
  const uint8_t* p = db.base + b0 * db.stride;
  for (int64_t b = b0; b < b1; ++b, p += db.stride, out += kLanes) {
    __m512i d = _mm512_setzero_si512();
    for (int k = 0; k < w; ++k) {
      d = _mm512_add_epi32(d, _mm512_popcnt_epi32(_mm512_xor_si512(
                                  Col512(p, k, w, t),
                                  _mm512_set1_epi32(q[k]))));
    }
    _mm512_storeu_si512(out, d);
  }
}

// ---------------------------------------------------------------------------
// AVX2 kernels: nibble-LUT popcount (pshufb) into byte counts, summed over
// the words of a code, then bytes -> 32-bit lanes with maddubs + madd.

#define MEDHASH_AVX2 __attribute__((target("avx2,popcnt")))

constexpr int QbAvx2(int w) { return w <= 2 ? 2 : 1; }

// kCompress.v[m] lists the set lanes of the 8-bit mask m (vpermd indices):
// AVX2 has no vpcompressd.
struct CompressTable {
  alignas(64) uint8_t v[256][8];
  constexpr CompressTable() : v() {
    for (int m = 0; m < 256; ++m) {
      int n = 0;
      for (int l = 0; l < 8; ++l) {
        if (m >> l & 1) v[m][n++] = static_cast<uint8_t>(l);
      }
    }
  }
};
constexpr CompressTable kCompress{};

struct Avx2Consts {
  __m256i lut, low4, ones8, ones16;
};

MEDHASH_AVX2 inline Avx2Consts MakeAvx2Consts() {
  Avx2Consts c;
  c.lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0,
                           1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  c.low4 = _mm256_set1_epi8(0x0f);
  c.ones8 = _mm256_set1_epi8(1);
  c.ones16 = _mm256_set1_epi16(1);
  return c;
}

MEDHASH_AVX2 inline __m256i BytePopcnt(__m256i x, const Avx2Consts& c) {
  const __m256i lo = _mm256_and_si256(x, c.low4);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), c.low4);
  return _mm256_add_epi8(_mm256_shuffle_epi8(c.lut, lo),
                         _mm256_shuffle_epi8(c.lut, hi));
}

MEDHASH_AVX2 inline __m256i BytesTo32(__m256i acc, const Avx2Consts& c) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(acc, c.ones8), c.ones16);
}

// Word j of lanes 0-7 (*lo) and 8-15 (*hi) of the block at p.
MEDHASH_AVX2 inline void Col256(const uint8_t* p, int j, int w, int t,
                                __m256i* lo, __m256i* hi) {
  const uint8_t* c = p + 64 * j;
  if (j < w - 1 || t == 0) {
    *lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
    *hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 32));
    return;
  }
  if (t == 1) {
    *lo = _mm256_cvtepu8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
    *hi = _mm256_cvtepu8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + 8)));
    return;
  }
  *lo = _mm256_cvtepu16_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
  *hi = _mm256_cvtepu16_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + 16)));
  if (t == 3) {
    *lo = _mm256_or_si256(
        *lo, _mm256_slli_epi32(
                 _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                     reinterpret_cast<const __m128i*>(c + 32))),
                 16));
    *hi = _mm256_or_si256(
        *hi, _mm256_slli_epi32(
                 _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                     reinterpret_cast<const __m128i*>(c + 40))),
                 16));
  }
}

// Distances of 16 codes (two 8-lane halves) for W <= 31 words (a byte sum
// stays <= 8 * 31).
template <int W>
MEDHASH_AVX2 inline void DistPairAvx2(const uint8_t* p, int t,
                                      const __m256i* qv, const Avx2Consts& c,
                                      __m256i* d0, __m256i* d1) {
  __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
#pragma GCC unroll 16
  for (int k = 0; k < W; ++k) {
    __m256i r0, r1;
    Col256(p, k, W, t, &r0, &r1);
    a0 = _mm256_add_epi8(a0, BytePopcnt(_mm256_xor_si256(r0, qv[k]), c));
    a1 = _mm256_add_epi8(a1, BytePopcnt(_mm256_xor_si256(r1, qv[k]), c));
  }
  *d0 = BytesTo32(a0, c);
  *d1 = BytesTo32(a1, c);
}

// Any W: flushes the byte sums to 32-bit lanes every 16 words.
MEDHASH_AVX2 inline void DistPairAnyAvx2(const uint8_t* p, int w, int t,
                                         const uint32_t* q,
                                         const Avx2Consts& c, __m256i* d0,
                                         __m256i* d1) {
  __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
  for (int k0 = 0; k0 < w; k0 += 16) {
    const int k1 = std::min(w, k0 + 16);
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    for (int k = k0; k < k1; ++k) {
      __m256i r0, r1;
      Col256(p, k, w, t, &r0, &r1);
      const __m256i qk = _mm256_set1_epi32(static_cast<int>(q[k]));
      a0 = _mm256_add_epi8(a0, BytePopcnt(_mm256_xor_si256(r0, qk), c));
      a1 = _mm256_add_epi8(a1, BytePopcnt(_mm256_xor_si256(r1, qk), c));
    }
    s0 = _mm256_add_epi32(s0, BytesTo32(a0, c));
    s1 = _mm256_add_epi32(s1, BytesTo32(a1, c));
  }
  *d0 = s0;
  *d1 = s1;
}

// Any lane below the bound? Packing to 16 bits halves the compares (all
// distances are <= 32000); the hit path recomputes the exact lane mask.
MEDHASH_AVX2 inline bool AnyBelow(__m256i d0, __m256i d1, __m256i bv16) {
  const __m256i lt = _mm256_cmpgt_epi16(bv16, _mm256_packs_epi32(d0, d1));
  return !_mm256_testz_si256(lt, lt);
}

MEDHASH_AVX2 inline void Append8(Selector& s, __m256i d, __m256i idx,
                                 uint32_t m8) {
  const __m256i perm = _mm256_cvtepu8_epi32(
      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(kCompress.v[m8])));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(s.d + s.pos),
                      _mm256_permutevar8x32_epi32(d, perm));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(s.i + s.pos),
                      _mm256_permutevar8x32_epi32(idx, perm));
  s.pos += _mm_popcnt_u32(m8);
}

MEDHASH_AVX2 inline void HitAvx2(Selector& s, __m256i d0, __m256i d1,
                                 int64_t b, int64_t last, uint32_t tail,
                                 __m256i* bv16) {
  const __m256i b32 = _mm256_set1_epi32(static_cast<int>(s.bound));
  uint32_t m0 = _mm256_movemask_ps(
      _mm256_castsi256_ps(_mm256_cmpgt_epi32(b32, d0)));
  uint32_t m1 = _mm256_movemask_ps(
      _mm256_castsi256_ps(_mm256_cmpgt_epi32(b32, d1)));
  if (b == last) {
    m0 &= tail & 0xffu;
    m1 &= tail >> 8;
  }
  const __m256i idx0 = _mm256_add_epi32(
      _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
      _mm256_set1_epi32(static_cast<int>(b * kLanes)));
  Append8(s, d0, idx0, m0);
  Append8(s, d1, _mm256_add_epi32(idx0, _mm256_set1_epi32(8)), m1);
  if (s.pos >= s.limit) {
    *bv16 = _mm256_set1_epi16(static_cast<int16_t>(s.Refine()));
  }
}

template <int W, int QB, bool kDense>
MEDHASH_AVX2 __attribute__((always_inline)) inline void SweepAvx2(
    const DbLayout& db, int64_t b0, int64_t b1, int64_t last, uint32_t tail,
    const Avx2Consts& c, const __m256i (&qv)[QB][W], __m256i (&bv)[QB],
    Selector* st) {
  const uint8_t* p = db.base + b0 * db.stride;
  const int t = db.t;
  for (int64_t b = b0; b < b1; ++b, p += db.stride) {
#pragma GCC unroll 16
    for (int j = 0; j < QB; ++j) {
      __m256i d0, d1;
      DistPairAvx2<W>(p, t, qv[j], c, &d0, &d1);
      if (kDense || __builtin_expect(AnyBelow(d0, d1, bv[j]), 0)) {
        HitAvx2(st[j], d0, d1, b, last, tail, &bv[j]);
      }
    }
  }
}

template <int W, int QB>
MEDHASH_AVX2 void ScanBlockAvx2(const DbLayout& db, int64_t b0, int64_t b1,
                                int64_t last, uint32_t tail, int64_t dense_end,
                                const uint32_t* q, Selector* st) {
  const Avx2Consts c = MakeAvx2Consts();
  __m256i qv[QB][W];
  __m256i bv[QB];
#pragma GCC unroll 16
  for (int j = 0; j < QB; ++j) {
#pragma GCC unroll 16
    for (int k = 0; k < W; ++k) {
      qv[j][k] = _mm256_set1_epi32(static_cast<int>(q[j * W + k]));
    }
    bv[j] = _mm256_set1_epi16(static_cast<int16_t>(st[j].bound));
  }
  const int64_t mid = std::min(std::max(dense_end, b0), b1);
  if (mid > b0) {
    SweepAvx2<W, QB, true>(db, b0, mid, last, tail, c, qv, bv, st);
  }
  SweepAvx2<W, QB, false>(db, mid, b1, last, tail, c, qv, bv, st);
}

MEDHASH_AVX2 void ScanAnyAvx2(const DbLayout& db, int64_t b0, int64_t b1,
                              int64_t last, uint32_t tail, int64_t dense_end,
                              const uint32_t* q, Selector* st, int nq) {
  const Avx2Consts c = MakeAvx2Consts();
  const int w = db.w;
  for (int j = 0; j < nq; ++j) {
    const uint32_t* qj = q + j * w;
    __m256i bv = _mm256_set1_epi16(static_cast<int16_t>(st[j].bound));
    const uint8_t* p = db.base + b0 * db.stride;
    for (int64_t b = b0; b < b1; ++b, p += db.stride) {
      __m256i d0, d1;
      DistPairAnyAvx2(p, w, db.t, qj, c, &d0, &d1);
      if (b < dense_end || __builtin_expect(AnyBelow(d0, d1, bv), 0)) {
        HitAvx2(st[j], d0, d1, b, last, tail, &bv);
      }
    }
  }
}

template <int W>
void ScanAvx2(const DbLayout& db, int64_t b0, int64_t b1, int64_t last,
              uint32_t tail, int64_t dense_end, const uint32_t* q,
              Selector* st, int nq) {
  constexpr int QB = QbAvx2(W);
  int j = 0;
  for (; j + QB <= nq; j += QB) {
    ScanBlockAvx2<W, QB>(db, b0, b1, last, tail, dense_end, q + j * W,
                         st + j);
  }
  for (; j < nq; ++j) {
    ScanBlockAvx2<W, 1>(db, b0, b1, last, tail, dense_end, q + j * W, st + j);
  }
}

MEDHASH_AVX2 void DistAvx2(const DbLayout& db, int64_t b0, int64_t b1,
                           const uint32_t* q, uint32_t* out) {
  const Avx2Consts c = MakeAvx2Consts();
  const uint8_t* p = db.base + b0 * db.stride;
  for (int64_t b = b0; b < b1; ++b, p += db.stride, out += kLanes) {
    __m256i d0, d1;
    DistPairAnyAvx2(p, db.w, db.t, q, c, &d0, &d1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), d0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), d1);
  }
}
#endif  // MEDHASH_X86

// ---------------------------------------------------------------------------
// Kernel tables.

template <template <int> class Pick>
auto ByWidth(int w) {
  switch (w) {
    case 1: return Pick<1>::fn;
    case 2: return Pick<2>::fn;
    case 3: return Pick<3>::fn;
    case 4: return Pick<4>::fn;
    case 5: return Pick<5>::fn;
    case 6: return Pick<6>::fn;
    case 7: return Pick<7>::fn;
    case 8: return Pick<8>::fn;
    default: return Pick<0>::fn;
  }
}

template <int W> struct PickScanScalar { static constexpr ScanFn fn = &ScanScalar<W>; };
template <int W> struct PickDistScalar { static constexpr DistFn fn = &DistScalar<W>; };
#if MEDHASH_X86
template <int W> struct PickScanAvx512 { static constexpr ScanFn fn = &ScanAvx512<W>; };
template <> struct PickScanAvx512<0> { static constexpr ScanFn fn = &ScanAnyAvx512; };
template <int W> struct PickScanAvx2 { static constexpr ScanFn fn = &ScanAvx2<W>; };
template <> struct PickScanAvx2<0> { static constexpr ScanFn fn = &ScanAnyAvx2; };
#endif

ScanFn GetScan(Isa isa, int w) {
#if MEDHASH_X86
  if (isa == kAvx512) return ByWidth<PickScanAvx512>(w);
  if (isa == kAvx2) return w <= 31 ? ByWidth<PickScanAvx2>(w) : &ScanAnyAvx2;
#endif
  (void)isa;
  return ByWidth<PickScanScalar>(w);
}

DistFn GetDist(Isa isa, int w) {
#if MEDHASH_X86
  if (isa == kAvx512) return &DistAvx512;
  if (isa == kAvx2) return &DistAvx2;
#endif
  (void)isa;
  return ByWidth<PickDistScalar>(w);
}

// ---------------------------------------------------------------------------
// Drivers.

struct Problem {
  const uint32_t* q;
  int64_t nq, n, k;
  int max_d;        // 32 * w
  int64_t blocks;   // ceil(n / 16)
  uint32_t tail;    // valid lanes of the last block
  int64_t tile;     // blocks per L2 tile
  DbLayout db;
  Isa isa;
};

// Fills the shared fields for a database of p.n codes of w words (t tail
// bytes); the caller sets p.db.base.
void Setup(Problem& p, int w, int t) {
  p.max_d = 32 * w;
  p.blocks = (p.n + kLanes - 1) / kLanes;
  const int rem = static_cast<int>(p.n % kLanes);
  p.tail = rem == 0 ? 0xffffu : (1u << rem) - 1;
  p.db.w = w;
  p.db.t = t;
  p.db.stride = BlockBytes(w, t);
  // ~128 KiB of database per tile.
  p.tile = std::max<int64_t>(1, (128 << 10) / p.db.stride);
  p.isa = ChosenIsa();
}

// Packed uint32 rows -> an owned t = 0 layout (in parallel): the per-call
// copy of the FFI targets that take rows (HammingIndex keeps its layout).
std::unique_ptr<AlignedU32> Prepare(Problem& p, const uint32_t* rows, int w,
                                    int threads) {
  Setup(p, w, 0);
  auto soa = std::make_unique<AlignedU32>(
      static_cast<size_t>(p.blocks) * w * kLanes);
  const int64_t chunk = 4096;
  const int64_t units = (p.blocks + chunk - 1) / chunk;
  uint32_t* out = soa->get();
  const int64_t n = p.n;
  ParallelFor(units, threads, [&](int64_t u) {
    ToSoa(rows, n, w, u * chunk, std::min(p.blocks, (u + 1) * chunk), out);
  });
  p.db.base = reinterpret_cast<const uint8_t*>(out);
  return soa;
}

// Queries per work unit: enough to reuse each tile, small enough to balance.
int64_t GroupSize(int64_t nq, int threads, int64_t per_query_bytes) {
  int64_t g = (nq + 4 * threads - 1) / (4 * threads);
  g = std::min<int64_t>(g, 64);
  g = std::min<int64_t>(g, std::max<int64_t>(1, (8 << 20) / per_query_bytes));
  return std::max<int64_t>(g, 1);
}

// Accumulates distance histograms of queries [q0, q1) over database blocks
// [b0, b1) into hist (rows of max_d + 1, zeroed by the caller), tile by tile.
void HistogramRange(const Problem& p, int64_t q0, int64_t q1, int64_t b0,
                    int64_t b1, int64_t* hist) {
  const DistFn dist = GetDist(p.isa, p.db.w);
  const int64_t stride = p.max_d + 1;
  std::vector<uint32_t> dbuf(static_cast<size_t>(p.tile) * kLanes);
  std::vector<int64_t> h4(4 * stride);
  for (int64_t t0 = b0; t0 < b1; t0 += p.tile) {
    const int64_t t1 = std::min(b1, t0 + p.tile);
    const int64_t items = std::min(p.n, t1 * kLanes) - t0 * kLanes;
    for (int64_t j = q0; j < q1; ++j) {
      dist(p.db, t0, t1, p.q + j * p.db.w, dbuf.data());
      std::fill(h4.begin(), h4.end(), 0);
      // Four sub-histograms break the store-to-load chain on repeated bins.
      int64_t i = 0;
      for (; i + 4 <= items; i += 4) {
        ++h4[dbuf[i]];
        ++h4[stride + dbuf[i + 1]];
        ++h4[2 * stride + dbuf[i + 2]];
        ++h4[3 * stride + dbuf[i + 3]];
      }
      for (; i < items; ++i) ++h4[dbuf[i]];
      int64_t* h = hist + (j - q0) * stride;
      for (int64_t d = 0; d < stride; ++d) {
        h[d] += h4[d] + h4[stride + d] + h4[2 * stride + d] + h4[3 * stride + d];
      }
    }
  }
}

// Histogram select: d_k from counts, then one more distance pass scatters
// the winners into the output by counting-sort offsets.
void TopkTwoPassRange(const Problem& p, int64_t q0, int64_t q1, int32_t* od,
                      int32_t* oi) {
  const int64_t nq = q1 - q0;
  const int64_t stride = p.max_d + 1;
  std::vector<int64_t> hist(nq * stride, 0);
  HistogramRange(p, q0, q1, 0, p.blocks, hist.data());
  // offsets (per query, per distance <= d_k), the tie quota and d_k.
  std::vector<int64_t> off(nq * stride), quota(nq), remaining(nq);
  std::vector<uint32_t> dk(nq);
  for (int64_t j = 0; j < nq; ++j) {
    const int64_t* h = hist.data() + j * stride;
    int64_t cum = 0;
    int d = 0;
    while (cum + h[d] < p.k) cum += h[d++];
    dk[j] = d;
    quota[j] = p.k - cum;  // items taken at distance d_k, in index order
    remaining[j] = p.k;
    int64_t o = 0;
    for (int e = 0; e <= d; ++e) {
      off[j * stride + e] = o;
      o += h[e];
    }
  }
  const DistFn dist = GetDist(p.isa, p.db.w);
  std::vector<uint32_t> dbuf(static_cast<size_t>(p.tile) * kLanes);
  for (int64_t t0 = 0; t0 < p.blocks; t0 += p.tile) {
    const int64_t t1 = std::min(p.blocks, t0 + p.tile);
    const int64_t items = std::min(p.n, t1 * kLanes) - t0 * kLanes;
    for (int64_t j = 0; j < nq; ++j) {
      if (remaining[j] == 0) continue;
      dist(p.db, t0, t1, p.q + (q0 + j) * p.db.w, dbuf.data());
      int64_t* o = off.data() + j * stride;
      int32_t* rd = od + (q0 + j) * p.k;
      int32_t* ri = oi + (q0 + j) * p.k;
      const uint32_t dkj = dk[j];
      int64_t left = remaining[j];
      for (int64_t i = 0; i < items; ++i) {
        const uint32_t d = dbuf[i];
        if (d > dkj) continue;
        if (d == dkj) {
          if (quota[j] == 0) continue;
          --quota[j];
        }
        const int64_t pos = o[d]++;
        rd[pos] = static_cast<int32_t>(d);
        ri[pos] = static_cast<int32_t>(t0 * kLanes + i);
        --left;
      }
      remaining[j] = left;
    }
  }
}

// Blocks swept branch-free at the start: the expected number of hits in
// [n, 4n) is ~k whatever n, over 3n/16 blocks, so the hit rate falls below a
// few percent (where a branch wins) after ~kDenseFactor * k codes.
int64_t DenseBlocks(int64_t k) {
  constexpr int64_t kDenseFactor = 64;  // measured: 32..128 are alike
  return (kDenseFactor * k + kLanes - 1) / kLanes;
}

// Top-k (k <= codes in the range) of queries [q0, q1) over database blocks
// [b0, b1); query j's row goes to od/oi + (j - q0) * ld.
void TopkBufferBlocks(const Problem& p, int64_t b0, int64_t b1, int64_t k,
                      int64_t q0, int64_t q1, int32_t* od, int32_t* oi,
                      int64_t ld, std::vector<Selector>& states) {
  const int nq = static_cast<int>(q1 - q0);
  if (states.size() < static_cast<size_t>(nq)) states.resize(nq);
  for (int j = 0; j < nq; ++j) states[j].Reset(k, p.max_d);
  const ScanFn scan = GetScan(p.isa, p.db.w);
  const int64_t last = p.blocks - 1;
  // Dense from the range's own start: its selectors start empty there.
  const int64_t dense_end = b0 + DenseBlocks(k);
  for (int64_t t0 = b0; t0 < b1; t0 += p.tile) {
    const int64_t t1 = std::min(b1, t0 + p.tile);
    scan(p.db, t0, t1, last, p.tail, dense_end, p.q + q0 * p.db.w,
         states.data(), nq);
  }
  for (int j = 0; j < nq; ++j) states[j].Emit(od + j * ld, oi + j * ld);
}

bool UseTwoPass(int64_t n, int64_t k) {
  if (const char* env = std::getenv("MEDHASH_TOPK_METHOD")) {
    if (!std::strcmp(env, "twopass")) return true;
    if (!std::strcmp(env, "buffer")) return false;
  }
  // The buffer would hold a large share of N: count twice instead.
  return k > 8192 || 16 * k > n;
}

// Threads worth starting: about 2^21 pair-words of work each (~0.1 ms),
// unless MEDHASH_NUM_THREADS asks for a number.
int ThreadsFor(int64_t nq, int64_t n, int w) {
  if (std::getenv("MEDHASH_NUM_THREADS") != nullptr) return NumThreads();
  const double work = static_cast<double>(nq) * n * w;
  const int64_t useful = static_cast<int64_t>(work / (1 << 21)) + 1;
  return static_cast<int>(std::min<int64_t>(NumThreads(), useful));
}

// Database parts for the few-query path (1 = split over queries instead).
// Splitting over queries gives a thread nothing to do when Q < threads, and
// one query over 10M codes would then run on one core; splitting the
// database lets every thread stream its own share. MEDHASH_DB_PARTS forces a
// count (tests use it to cross part borders on small databases).
int64_t DbParts(int64_t nq, int64_t blocks, int64_t k, int threads) {
  if (const char* env = std::getenv("MEDHASH_DB_PARTS")) {
    const int64_t forced = std::atoll(env);
    if (forced > 0) return std::min<int64_t>(forced, blocks);
  }
  // Below 32 queries a thread, the query path's groups (nq / (4 threads))
  // are smaller than a register block of 8 queries, and each group streams
  // the whole database; a part is streamed once for all queries (measured at
  // 10M x 64 bits, 2 threads: 3-5x faster at Q = 4..16, even at Q = 64).
  if (threads <= 1 || nq >= 32 * static_cast<int64_t>(threads) || k > 8192) {
    return 1;
  }
  if (const char* env = std::getenv("MEDHASH_TOPK_METHOD")) {
    if (!std::strcmp(env, "twopass")) return 1;
  }
  // Each part holds >= 16 k codes (where the buffer method is the right one,
  // see UseTwoPass) and >= 32k codes (so that a part outweighs the merge and
  // the thread start). A few parts per thread balance a shared machine.
  const int64_t min_blocks = std::max<int64_t>(2048, k);
  return std::max<int64_t>(
      1, std::min<int64_t>(4 * static_cast<int64_t>(threads),
                           blocks / min_blocks));
}

// Few queries: threads sweep disjoint database parts; the per-part top-k
// lists (each sorted by (distance, index), global indices) are merged exactly
// by that same key, so the answer is the single-sweep one.
void TopkSplit(const Problem& p, int64_t parts, int threads, int32_t* od,
               int32_t* oi) {
  const int64_t per = (p.blocks + parts - 1) / parts;
  parts = (p.blocks + per - 1) / per;
  const int64_t k = p.k, nq = p.nq;
  std::vector<int32_t> pd(static_cast<size_t>(parts * nq * k));
  std::vector<int32_t> pi(pd.size());
  std::vector<int64_t> pk(parts);
  ParallelFor(parts, threads, [&](int64_t u) {
    const int64_t b0 = u * per, b1 = std::min(p.blocks, b0 + per);
    const int64_t items = std::min(p.n, b1 * kLanes) - b0 * kLanes;
    const int64_t kr = std::min(k, items);
    pk[u] = kr;
    std::vector<Selector> states;
    TopkBufferBlocks(p, b0, b1, kr, 0, nq, pd.data() + u * nq * k,
                     pi.data() + u * nq * k, k, states);
  });
  std::vector<uint64_t> keys;
  for (int64_t j = 0; j < nq; ++j) {
    keys.clear();
    for (int64_t u = 0; u < parts; ++u) {
      const int32_t* d = pd.data() + (u * nq + j) * k;
      const int32_t* i = pi.data() + (u * nq + j) * k;
      for (int64_t e = 0; e < pk[u]; ++e) {
        keys.push_back(static_cast<uint64_t>(d[e]) << 32 |
                       static_cast<uint32_t>(i[e]));
      }
    }
    std::partial_sort(keys.begin(), keys.begin() + k, keys.end());
    for (int64_t e = 0; e < k; ++e) {
      od[j * k + e] = static_cast<int32_t>(keys[e] >> 32);
      oi[j * k + e] = static_cast<int32_t>(keys[e] & 0xffffffffu);
    }
  }
}

void SolveTopk(const Problem& p, int threads, int32_t* od, int32_t* oi) {
  const int64_t parts = DbParts(p.nq, p.blocks, p.k, threads);
  if (parts > 1) {
    TopkSplit(p, parts, threads, od, oi);
    return;
  }
  const int64_t nq = p.nq, k = p.k;
  const bool two_pass = UseTwoPass(p.n, k);
  // Bytes of state per query in flight (Selector buffers / pass-2 tables).
  const int64_t per_query =
      two_pass ? 3 * 8 * (p.max_d + 1) : 8 * (4 * k + 320 + p.max_d + 1);
  const int64_t g = GroupSize(nq, threads, per_query);
  const int64_t units = (nq + g - 1) / g;
  if (two_pass) {
    ParallelFor(units, threads, [&](int64_t u) {
      TopkTwoPassRange(p, u * g, std::min(nq, (u + 1) * g), od, oi);
    });
  } else {
    // One state vector per thread would be ideal; per unit is simpler and
    // the allocation is amortised over g queries x N codes.
    ParallelFor(units, threads, [&](int64_t u) {
      const int64_t q0 = u * g;
      std::vector<Selector> states;
      TopkBufferBlocks(p, 0, p.blocks, k, q0, std::min(nq, (u + 1) * g),
                       od + q0 * k, oi + q0 * k, k, states);
    });
  }
}

void SolveHistogram(const Problem& p, int threads, int32_t* out) {
  const int64_t nq = p.nq;
  const int64_t stride = p.max_d + 1;
  // Few queries: database parts, their counts summed (exact, any order).
  int64_t parts = DbParts(nq, p.blocks, 1, threads);
  if (parts > 1) {
    const int64_t per = (p.blocks + parts - 1) / parts;
    parts = (p.blocks + per - 1) / per;
    std::vector<int64_t> hist(static_cast<size_t>(parts * nq * stride), 0);
    ParallelFor(parts, threads, [&](int64_t u) {
      HistogramRange(p, 0, nq, u * per, std::min(p.blocks, (u + 1) * per),
                     hist.data() + u * nq * stride);
    });
    for (int64_t e = 0; e < nq * stride; ++e) {
      int64_t sum = 0;
      for (int64_t u = 0; u < parts; ++u) sum += hist[u * nq * stride + e];
      out[e] = static_cast<int32_t>(sum);
    }
    return;
  }
  const int64_t g = GroupSize(nq, threads, 8 * stride);
  const int64_t units = (nq + g - 1) / g;
  ParallelFor(units, threads, [&](int64_t u) {
    const int64_t q0 = u * g, q1 = std::min(nq, (u + 1) * g);
    std::vector<int64_t> hist((q1 - q0) * stride, 0);
    HistogramRange(p, q0, q1, 0, p.blocks, hist.data());
    for (int64_t e = 0; e < (q1 - q0) * stride; ++e) {
      out[q0 * stride + e] = static_cast<int32_t>(hist[e]);
    }
  });
}

void RunTopk(const uint32_t* q, const uint32_t* db, int64_t nq, int64_t n,
             int w, int64_t k, int32_t* od, int32_t* oi) {
  const int threads = ThreadsFor(nq, n, w);
  Problem p{};
  p.q = q;
  p.nq = nq;
  p.n = n;
  p.k = k;
  auto soa = Prepare(p, db, w, threads);
  SolveTopk(p, threads, od, oi);
}

void RunHistogram(const uint32_t* q, const uint32_t* db, int64_t nq, int64_t n,
                  int w, int32_t* out) {
  const int threads = ThreadsFor(nq, n, w);
  Problem p{};
  p.q = q;
  p.nq = nq;
  p.n = n;
  p.k = 0;
  auto soa = Prepare(p, db, w, threads);
  SolveHistogram(p, threads, out);
}

// Over a prebuilt layout of n codes of `bytes` bytes (no copy).
Problem LayoutProblem(const uint8_t* layout, int64_t n, int64_t bytes,
                      const uint32_t* q, int64_t nq, int64_t k) {
  Problem p{};
  p.q = q;
  p.nq = nq;
  p.n = n;
  p.k = k;
  Setup(p, static_cast<int>((bytes + 3) / 4), static_cast<int>(bytes % 4));
  p.db.base = layout;
  return p;
}

// ---------------------------------------------------------------------------
// FFI glue.

ffi::Error CheckInputs(const ffi::Buffer<ffi::U32>& q,
                       const ffi::Buffer<ffi::U32>& db, int64_t* nq,
                       int64_t* n, int* w) {
  const auto qd = q.dimensions();
  const auto dd = db.dimensions();
  if (qd.size() != 2 || dd.size() != 2) {
    return ffi::Error::InvalidArgument(
        "hamming kernel: query and database must be rank-2 uint32 arrays");
  }
  if (qd[1] != dd[1] || qd[1] <= 0) {
    return ffi::Error::InvalidArgument(
        "hamming kernel: query and database need the same positive number of "
        "words, got " + std::to_string(qd[1]) + " and " +
        std::to_string(dd[1]));
  }
  if (dd[0] > INT32_MAX) {
    return ffi::Error::InvalidArgument(
        "hamming kernel: database too large for int32 indices");
  }
  if (qd[1] > 1000) {  // distances must fit the kernels' 16-bit compares
    return ffi::Error::InvalidArgument(
        "hamming kernel: at most 1000 words (32000 bits) per code");
  }
  *nq = qd[0];
  *n = dd[0];
  *w = static_cast<int>(qd[1]);
  return ffi::Error::Success();
}

ffi::Error TopkImpl(ffi::Buffer<ffi::U32> q, ffi::Buffer<ffi::U32> db,
                    int64_t k, ffi::ResultBuffer<ffi::S32> dist,
                    ffi::ResultBuffer<ffi::S32> idx) {
  int64_t nq, n;
  int w;
  ffi::Error err = CheckInputs(q, db, &nq, &n, &w);
  if (err.failure()) return err;
  if (k < 1 || k > n) {
    return ffi::Error::InvalidArgument(
        "hamming_topk: need 1 <= k <= N, got k=" + std::to_string(k) +
        ", N=" + std::to_string(n));
  }
  const auto od = dist->dimensions();
  const auto oi = idx->dimensions();
  if (od.size() != 2 || od[0] != nq || od[1] != k || oi.size() != 2 ||
      oi[0] != nq || oi[1] != k) {
    return ffi::Error::InvalidArgument("hamming_topk: outputs must be (Q, k)");
  }
  if (nq == 0) return ffi::Error::Success();
  try {
    RunTopk(q.typed_data(), db.typed_data(), nq, n, w, k, dist->typed_data(),
            idx->typed_data());
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "hamming_topk: out of memory");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("hamming_topk: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error HistogramImpl(ffi::Buffer<ffi::U32> q, ffi::Buffer<ffi::U32> db,
                         ffi::ResultBuffer<ffi::S32> out) {
  int64_t nq, n;
  int w;
  ffi::Error err = CheckInputs(q, db, &nq, &n, &w);
  if (err.failure()) return err;
  const auto od = out->dimensions();
  if (od.size() != 2 || od[0] != nq || od[1] != 32 * int64_t{w} + 1) {
    return ffi::Error::InvalidArgument(
        "hamming_histogram: output must be (Q, 32 W + 1)");
  }
  if (nq == 0) return ffi::Error::Success();
  int32_t* o = out->typed_data();
  if (n == 0) {
    std::fill(o, o + nq * od[1], 0);
    return ffi::Error::Success();
  }
  try {
    RunHistogram(q.typed_data(), db.typed_data(), nq, n, w, o);
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "hamming_histogram: out of memory");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("hamming_histogram: ") + e.what());
  }
  return ffi::Error::Success();
}


// Checks a prebuilt layout against the queries: W = ceil(B / 4) words and
// at least ceil(n / 16) * 16 * B bytes.
std::string CheckLayout(int64_t layout_bytes, int64_t n, int64_t bytes,
                        int64_t words) {
  if (bytes <= 0 || bytes > 4000) {
    return "bytes_per_code must be in [1, 4000], got " + std::to_string(bytes);
  }
  if (words != (bytes + 3) / 4) {
    return "queries have " + std::to_string(words) + " words but " +
           std::to_string(bytes) + "-byte codes need " +
           std::to_string((bytes + 3) / 4);
  }
  if (n < 0 || n > INT32_MAX) {
    return "database size " + std::to_string(n) + " is out of range";
  }
  const int64_t need = (n + kLanes - 1) / kLanes * kLanes * bytes;
  if (layout_bytes >= 0 && layout_bytes < need) {
    return "layout has " + std::to_string(layout_bytes) + " bytes, " +
           std::to_string(n) + " codes need " + std::to_string(need);
  }
  return "";
}

ffi::Error TopkLayoutImpl(ffi::Buffer<ffi::U32> q, ffi::Buffer<ffi::U8> layout,
                          int64_t n, int64_t bytes, int64_t k,
                          ffi::ResultBuffer<ffi::S32> dist,
                          ffi::ResultBuffer<ffi::S32> idx) {
  const auto qd = q.dimensions();
  if (qd.size() != 2 || layout.dimensions().size() != 1) {
    return ffi::Error::InvalidArgument(
        "hamming_topk_layout: queries (Q, W) uint32, layout (L,) uint8");
  }
  const std::string bad =
      CheckLayout(layout.dimensions()[0], n, bytes, qd[1]);
  if (!bad.empty()) {
    return ffi::Error::InvalidArgument("hamming_topk_layout: " + bad);
  }
  if (k < 1 || k > n) {
    return ffi::Error::InvalidArgument(
        "hamming_topk: need 1 <= k <= N, got k=" + std::to_string(k) +
        ", N=" + std::to_string(n));
  }
  const int64_t nq = qd[0];
  if (nq == 0) return ffi::Error::Success();
  try {
    const Problem p =
        LayoutProblem(layout.typed_data(), n, bytes, q.typed_data(), nq, k);
    SolveTopk(p, ThreadsFor(nq, n, p.db.w), dist->typed_data(),
              idx->typed_data());
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "hamming_topk: out of memory");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("hamming_topk: ") + e.what());
  }
  return ffi::Error::Success();
}

int Fail(char* err, int64_t err_len, const std::string& msg) {
  if (err != nullptr && err_len > 0) {
    std::strncpy(err, msg.c_str(), static_cast<size_t>(err_len - 1));
    err[err_len - 1] = '\0';
  }
  return -1;
}

// Reads `bytes` at p once over `threads` threads; returns an XOR of the data
// (so that the reads cannot be optimised away). The benchmark's bandwidth
// bound.
#if MEDHASH_X86
__attribute__((target("avx2"))) uint64_t XorRangeAvx2(const uint8_t* p,
                                                       int64_t bytes) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 128 <= bytes; i += 128) {
    const __m256i* v = reinterpret_cast<const __m256i*>(p + i);
    a0 = _mm256_xor_si256(a0, _mm256_loadu_si256(v));
    a1 = _mm256_xor_si256(a1, _mm256_loadu_si256(v + 1));
    a2 = _mm256_xor_si256(a2, _mm256_loadu_si256(v + 2));
    a3 = _mm256_xor_si256(a3, _mm256_loadu_si256(v + 3));
  }
  a0 = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), a0);
  uint64_t x = lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
  for (; i < bytes; ++i) x ^= p[i];
  return x;
}
#endif

uint64_t XorRange(const uint8_t* p, int64_t bytes) {
#if MEDHASH_X86
  if (ChosenIsa() >= kAvx2) return XorRangeAvx2(p, bytes);
#endif
  uint64_t x = 0;
  for (int64_t i = 0; i < bytes; ++i) x ^= p[i];
  return x;
}

}  // namespace
}  // namespace medhash

#define MEDHASH_EXPORT extern "C" __attribute__((visibility("default")))

MEDHASH_EXPORT XLA_FFI_Error* MedhashHammingTopk(XLA_FFI_CallFrame* frame);
MEDHASH_EXPORT XLA_FFI_Error* MedhashHammingHistogram(XLA_FFI_CallFrame* frame);
MEDHASH_EXPORT XLA_FFI_Error* MedhashHammingTopkLayout(XLA_FFI_CallFrame* frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(MedhashHammingTopk, medhash::TopkImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Attr<int64_t>("k")
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MedhashHammingHistogram, medhash::HistogramImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

// Plain C helpers for Python (ctypes): the SIMD level and thread count a call
// would use now (0 scalar, 1 AVX2, 2 AVX-512).
MEDHASH_EXPORT int MedhashHammingIsa() { return medhash::ChosenIsa(); }
MEDHASH_EXPORT int MedhashHammingNumThreads() { return medhash::NumThreads(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(MedhashHammingTopkLayout, medhash::TopkLayoutImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("bytes_per_code")
                                  .Attr<int64_t>("k")
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

// Plain C entry points over a prebuilt layout (HammingIndex calls them
// through ctypes, which releases the GIL): the database is read in place,
// never copied, and may be a memory-mapped file. `layout` holds n codes of
// `bytes` bytes in the kernel layout (see DbLayout), `q` nq rows of
// ceil(bytes / 4) uint32 words. They return 0, or -1 with a message in err.
MEDHASH_EXPORT int MedhashLayoutTopk(const uint8_t* layout, int64_t n,
                                     int64_t bytes, const uint32_t* q,
                                     int64_t nq, int64_t k, int32_t* od,
                                     int32_t* oi, char* err, int64_t err_len) {
  using namespace medhash;
  const std::string bad = CheckLayout(-1, n, bytes, (bytes + 3) / 4);
  if (!bad.empty()) return Fail(err, err_len, "hamming_topk: " + bad);
  if (k < 1 || k > n) {
    return Fail(err, err_len, "hamming_topk: need 1 <= k <= N, got k=" +
                                  std::to_string(k) + ", N=" +
                                  std::to_string(n));
  }
  if (nq == 0) return 0;
  try {
    const Problem p = LayoutProblem(layout, n, bytes, q, nq, k);
    SolveTopk(p, ThreadsFor(nq, n, p.db.w), od, oi);
  } catch (const std::bad_alloc&) {
    return Fail(err, err_len, "hamming_topk: out of memory");
  } catch (const std::exception& e) {
    return Fail(err, err_len, std::string("hamming_topk: ") + e.what());
  }
  return 0;
}

// out: int32 (nq, 32 * ceil(bytes / 4) + 1), counts per distance.
MEDHASH_EXPORT int MedhashLayoutHistogram(const uint8_t* layout, int64_t n,
                                          int64_t bytes, const uint32_t* q,
                                          int64_t nq, int32_t* out, char* err,
                                          int64_t err_len) {
  using namespace medhash;
  const std::string bad = CheckLayout(-1, n, bytes, (bytes + 3) / 4);
  if (!bad.empty()) return Fail(err, err_len, "hamming_histogram: " + bad);
  const int64_t w = (bytes + 3) / 4;
  if (nq == 0) return 0;
  if (n == 0) {
    std::fill(out, out + nq * (32 * w + 1), 0);
    return 0;
  }
  try {
    const Problem p = LayoutProblem(layout, n, bytes, q, nq, 0);
    SolveHistogram(p, ThreadsFor(nq, n, p.db.w), out);
  } catch (const std::bad_alloc&) {
    return Fail(err, err_len, "hamming_histogram: out of memory");
  } catch (const std::exception& e) {
    return Fail(err, err_len, std::string("hamming_histogram: ") + e.what());
  }
  return 0;
}

MEDHASH_EXPORT uint64_t MedhashStreamRead(const uint8_t* p, int64_t bytes,
                                          int threads) {
  using namespace medhash;
  threads = std::max(1, threads);
  const int64_t units = 4 * static_cast<int64_t>(threads);
  const int64_t per = (bytes + units - 1) / units;
  std::vector<uint64_t> acc(units, 0);
  ParallelFor(units, threads, [&](int64_t u) {
    const int64_t lo = std::min(bytes, u * per);
    const int64_t hi = std::min(bytes, lo + per);
    acc[u] = XorRange(p + lo, hi - lo);
  });
  uint64_t x = 0;
  for (uint64_t a : acc) x ^= a;
  return x;
}
