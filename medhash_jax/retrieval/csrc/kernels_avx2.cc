// AVX2 kernels: nibble-LUT popcount (pshufb) into byte counts, summed over
// the words of a code, then bytes -> 32-bit lanes with maddubs + madd; 16
// codes as two 8-lane halves; hits appended through a permute table (AVX2
// has no vpcompressd). Also MedhashStreamRead's AVX2 read loop.
//
// Everything after the pragma is compiled for AVX2; the standard headers
// (through hamming.h) come before it, so their inline functions keep the
// baseline target and dispatch stays safe on CPUs without AVX2.

#include "hamming.h"

#if MEDHASH_X86
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,popcnt")

#include "scan.h"

namespace medhash {
namespace {

// kCompress.v[m] lists the set lanes of the 8-bit mask m (vpermd indices).
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

MEDHASH_INLINE __m256i BytePopcnt(__m256i x, const Avx2Consts& c) {
  const __m256i lo = _mm256_and_si256(x, c.low4);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), c.low4);
  return _mm256_add_epi8(_mm256_shuffle_epi8(c.lut, lo),
                         _mm256_shuffle_epi8(c.lut, hi));
}

MEDHASH_INLINE __m256i BytesTo32(__m256i acc, const Avx2Consts& c) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(acc, c.ones8), c.ones16);
}

MEDHASH_INLINE __m256i Load8(const uint8_t* c) {
  return _mm256_cvtepu8_epi32(
      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
}

// Word j of lanes 0-7 (*lo) and 8-15 (*hi) of the block at p.
MEDHASH_INLINE void Col256(const uint8_t* p, int j, int w, int t, __m256i* lo,
                           __m256i* hi) {
  const uint8_t* c = p + 64 * j;
  if (j < w - 1 || t == 0) {
    *lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
    *hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 32));
    return;
  }
  if (t == 1) {
    *lo = Load8(c);
    *hi = Load8(c + 8);
    return;
  }
  *lo = _mm256_cvtepu16_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
  *hi = _mm256_cvtepu16_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + 16)));
  if (t == 3) {
    *lo = _mm256_or_si256(*lo, _mm256_slli_epi32(Load8(c + 32), 16));
    *hi = _mm256_or_si256(*hi, _mm256_slli_epi32(Load8(c + 40), 16));
  }
}

MEDHASH_INLINE void Append8(Selector& s, __m256i d, __m256i idx,
                            uint32_t m8) {
  const __m256i perm = Load8(kCompress.v[m8]);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(s.d + s.pos),
                      _mm256_permutevar8x32_epi32(d, perm));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(s.i + s.pos),
                      _mm256_permutevar8x32_epi32(idx, perm));
  s.pos += _mm_popcnt_u32(m8);
}

struct Avx2Traits {
  using Word = __m256i;
  using Bound = __m256i;  // 16-bit lanes (see Below)
  using Hits = __m256i;
  struct Dist {
    __m256i lo, hi;  // lanes 0-7, 8-15
  };
  using Consts = Avx2Consts;
  // Loaded per query in Distance: with 16 registers, holding W words of the
  // block for all QB queries would spill.
  template <int W>
  struct Block {
    const uint8_t* p;
    int t;
  };

  static constexpr int Qb(int w) { return w <= 2 ? 2 : 1; }

  static MEDHASH_INLINE Consts MakeConsts() {
    Consts c;
    c.lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                             0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    c.low4 = _mm256_set1_epi8(0x0f);
    c.ones8 = _mm256_set1_epi8(1);
    c.ones16 = _mm256_set1_epi16(1);
    return c;
  }
  static MEDHASH_INLINE Word Broadcast(uint32_t x) {
    return _mm256_set1_epi32(static_cast<int>(x));
  }
  static MEDHASH_INLINE Bound MakeBound(uint32_t bound) {
    return _mm256_set1_epi16(static_cast<int16_t>(bound));
  }

  template <int W, bool kTail>
  static MEDHASH_INLINE Block<W> Load(const uint8_t* p, int t) {
    return {p, kTail ? t : 0};
  }

  // W <= 31 words (a byte sum stays <= 8 * 31); the tables use W <= 8.
  template <int W>
  static MEDHASH_INLINE Dist Distance(const Block<W>& x, const Word* qv,
                                      const Consts& c) {
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
#pragma GCC unroll 16
    for (int k = 0; k < W; ++k) {
      __m256i r0, r1;
      Col256(x.p, k, W, x.t, &r0, &r1);
      a0 = _mm256_add_epi8(a0, BytePopcnt(_mm256_xor_si256(r0, qv[k]), c));
      a1 = _mm256_add_epi8(a1, BytePopcnt(_mm256_xor_si256(r1, qv[k]), c));
    }
    return {BytesTo32(a0, c), BytesTo32(a1, c)};
  }

  // Any w: flushes the byte sums to 32-bit lanes every 16 words.
  static MEDHASH_INLINE Dist DistanceAny(const uint8_t* p, int w, int t,
                                         const uint32_t* q, const Consts& c) {
    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
    for (int k0 = 0; k0 < w; k0 += 16) {
      const int k1 = std::min(w, k0 + 16);
      __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
      for (int k = k0; k < k1; ++k) {
        __m256i r0, r1;
        Col256(p, k, w, t, &r0, &r1);
        const __m256i qk = Broadcast(q[k]);
        a0 = _mm256_add_epi8(a0, BytePopcnt(_mm256_xor_si256(r0, qk), c));
        a1 = _mm256_add_epi8(a1, BytePopcnt(_mm256_xor_si256(r1, qk), c));
      }
      s0 = _mm256_add_epi32(s0, BytesTo32(a0, c));
      s1 = _mm256_add_epi32(s1, BytesTo32(a1, c));
    }
    return {s0, s1};
  }

  // Any lane below the bound? Packing to 16 bits halves the compares (all
  // distances are <= 32000); Hit recomputes the exact lane masks.
  static MEDHASH_INLINE Hits Below(const Dist& d, Bound bv16) {
    return _mm256_cmpgt_epi16(bv16, _mm256_packs_epi32(d.lo, d.hi));
  }
  static MEDHASH_INLINE bool Any(Hits lt) { return !_mm256_testz_si256(lt, lt); }

  static MEDHASH_INLINE void Hit(Selector& s, const Dist& d, Hits /*lt*/,
                                 int64_t b, int64_t last, uint32_t tail,
                                 Bound* bv16) {
    const __m256i b32 = _mm256_set1_epi32(static_cast<int>(s.bound));
    uint32_t m0 = _mm256_movemask_ps(
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(b32, d.lo)));
    uint32_t m1 = _mm256_movemask_ps(
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(b32, d.hi)));
    if (b == last) {
      m0 &= tail & 0xffu;
      m1 &= tail >> 8;
    }
    const __m256i idx0 = _mm256_add_epi32(
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_set1_epi32(static_cast<int>(b * kLanes)));
    Append8(s, d.lo, idx0, m0);
    Append8(s, d.hi, _mm256_add_epi32(idx0, _mm256_set1_epi32(8)), m1);
    if (s.pos >= s.limit) *bv16 = MakeBound(s.Refine());
  }

  static MEDHASH_INLINE void Store(uint32_t* out, const Dist& d) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), d.lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), d.hi);
  }
};

}  // namespace

Kernels Avx2Kernels(int w) { return scan::Table<Avx2Traits>(w); }

uint64_t XorRangeAvx2(const uint8_t* p, int64_t bytes) {
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

}  // namespace medhash

#pragma GCC pop_options
#endif  // MEDHASH_X86
