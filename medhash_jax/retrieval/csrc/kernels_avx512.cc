// AVX-512 (F + VPOPCNTDQ) kernels: 16 lanes per register, vpopcntd, hits
// appended with vpcompressd.
//
// Everything after the pragma is compiled for AVX-512; the standard headers
// (through hamming.h) come before it, so their inline functions keep the
// baseline target and dispatch stays safe on CPUs without AVX-512.

#include "hamming.h"

#if MEDHASH_X86
#include <immintrin.h>

// GCC 12's AVX-512 zero-extension intrinsics (_mm512_cvtepu8/16_epi32) use
// _mm512_undefined_epi32() as a masked-off pass-through and warn about it.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vpopcntdq,popcnt")

#include "scan.h"

namespace medhash {
namespace {

// The tail word (t = 1..3 bytes) of 16 codes from its narrow columns at c.
MEDHASH_INLINE __m512i Tail512(const uint8_t* c, int t) {
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
MEDHASH_INLINE __m512i Col512(const uint8_t* p, int j, int w, int t) {
  const uint8_t* c = p + 64 * j;
  if (j < w - 1 || t == 0) return _mm512_loadu_si512(c);
  return Tail512(c, t);
}

struct Avx512Traits {
  using Word = __m512i;
  using Bound = __m512i;
  using Dist = __m512i;
  using Hits = uint32_t;  // lane mask
  struct Consts {};
  template <int W>
  struct Block {  // loaded once, shared by the QB queries
    __m512i v[W];
  };

  static constexpr int Qb(int w) { return w <= 2 ? 8 : (w <= 4 ? 4 : 2); }
  static MEDHASH_INLINE Consts MakeConsts() { return {}; }
  static MEDHASH_INLINE Word Broadcast(uint32_t x) {
    return _mm512_set1_epi32(static_cast<int>(x));
  }
  static MEDHASH_INLINE Bound MakeBound(uint32_t bound) {
    return _mm512_set1_epi32(static_cast<int>(bound));
  }

  template <int W, bool kTail>
  static MEDHASH_INLINE Block<W> Load(const uint8_t* p, int t) {
    Block<W> x;
#pragma GCC unroll 16
    for (int k = 0; k < W; ++k) {
      x.v[k] = (kTail && k == W - 1) ? Tail512(p + 64 * k, t)
                                     : _mm512_loadu_si512(p + 64 * k);
    }
    return x;
  }

  template <int W>
  static MEDHASH_INLINE Dist Distance(const Block<W>& x, const Word* qv,
                                      const Consts&) {
    __m512i d = _mm512_popcnt_epi32(_mm512_xor_si512(x.v[0], qv[0]));
#pragma GCC unroll 16
    for (int k = 1; k < W; ++k) {
      d = _mm512_add_epi32(
          d, _mm512_popcnt_epi32(_mm512_xor_si512(x.v[k], qv[k])));
    }
    return d;
  }

  static MEDHASH_INLINE Dist DistanceAny(const uint8_t* p, int w, int t,
                                         const uint32_t* q, const Consts&) {
    __m512i d = _mm512_setzero_si512();
    for (int k = 0; k < w; ++k) {
      d = _mm512_add_epi32(d, _mm512_popcnt_epi32(_mm512_xor_si512(
                                  Col512(p, k, w, t), Broadcast(q[k]))));
    }
    return d;
  }

  static MEDHASH_INLINE Hits Below(Dist d, Bound bv) {
    return _mm512_cmplt_epu32_mask(d, bv);
  }
  static MEDHASH_INLINE bool Any(Hits m) { return m != 0; }

  // Appends the lanes of m (distances d, indices b*16 + lane).
  static MEDHASH_INLINE void Hit(Selector& s, Dist d, Hits m, int64_t b,
                                 int64_t last, uint32_t tail, Bound* bv) {
    if (b == last) m &= tail;
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                           11, 12, 13, 14, 15);
    const __m512i idx = _mm512_add_epi32(
        lane, _mm512_set1_epi32(static_cast<int>(b * kLanes)));
    _mm512_storeu_si512(s.d + s.pos, _mm512_maskz_compress_epi32(m, d));
    _mm512_storeu_si512(s.i + s.pos, _mm512_maskz_compress_epi32(m, idx));
    s.pos += _mm_popcnt_u32(m);
    if (s.pos >= s.limit) *bv = MakeBound(s.Refine());
  }

  static MEDHASH_INLINE void Store(uint32_t* out, Dist d) {
    _mm512_storeu_si512(out, d);
  }
};

}  // namespace

Kernels Avx512Kernels(int w) { return scan::Table<Avx512Traits>(w); }

}  // namespace medhash

#pragma GCC pop_options
#endif  // MEDHASH_X86
