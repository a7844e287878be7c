// Portable scalar kernels: SWAR popcount, one query at a time (QB = 1).

#include "hamming.h"
#include "scan.h"

namespace medhash {
namespace {

inline uint32_t Popcount32(uint32_t x) {
  x = x - ((x >> 1) & 0x55555555u);
  x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
  x = (x + (x >> 4)) & 0x0f0f0f0fu;
  return (x * 0x01010101u) >> 24;
}

struct ScalarTraits {
  using Word = uint32_t;
  using Bound = uint32_t;
  using Hits = uint32_t;  // lane mask
  struct Dist {
    uint32_t v[kLanes];
  };
  struct Consts {};
  template <int W>
  struct Block {  // loaded lane by lane in Distance
    const uint8_t* p;
    int t;
  };

  static constexpr int Qb(int /*w*/) { return 1; }
  static MEDHASH_INLINE Consts MakeConsts() { return {}; }
  static MEDHASH_INLINE Word Broadcast(uint32_t x) { return x; }
  static MEDHASH_INLINE Bound MakeBound(uint32_t bound) { return bound; }

  template <int W, bool kTail>
  static MEDHASH_INLINE Block<W> Load(const uint8_t* p, int t) {
    return {p, kTail ? t : 0};
  }

  static MEDHASH_INLINE Dist DistanceAny(const uint8_t* p, int w, int t,
                                         const uint32_t* q, const Consts&) {
    Dist d;
    for (int l = 0; l < kLanes; ++l) d.v[l] = 0;
    for (int j = 0; j < w; ++j) {
      for (int l = 0; l < kLanes; ++l) {
        d.v[l] += Popcount32(LaneWord(p, j, w, t, l) ^ q[j]);
      }
    }
    return d;
  }

  template <int W>
  static MEDHASH_INLINE Dist Distance(const Block<W>& x, const Word* qv,
                                      const Consts& c) {
    return DistanceAny(x.p, W, x.t, qv, c);
  }

  static MEDHASH_INLINE Hits Below(const Dist& d, Bound bound) {
    uint32_t mask = 0;
    for (int l = 0; l < kLanes; ++l) mask |= uint32_t(d.v[l] < bound) << l;
    return mask;
  }
  static MEDHASH_INLINE bool Any(Hits m) { return m != 0; }

  // Appends the lanes of m (ascending); refines when full.
  static MEDHASH_INLINE void Hit(Selector& s, const Dist& d, Hits m,
                                 int64_t b, int64_t last, uint32_t tail,
                                 Bound* bound) {
    if (b == last) m &= tail;
    const uint32_t base = static_cast<uint32_t>(b * kLanes);
    while (m) {
      const int l = __builtin_ctz(m);
      m &= m - 1;
      s.d[s.pos] = d.v[l];
      s.i[s.pos] = base + l;
      ++s.pos;
    }
    if (s.pos >= s.limit) *bound = s.Refine();
  }

  static MEDHASH_INLINE void Store(uint32_t* out, const Dist& d) {
    std::memcpy(out, d.v, sizeof(d.v));
  }
};

}  // namespace

Kernels ScalarKernels(int w) { return scan::Table<ScalarTraits>(w); }

}  // namespace medhash
