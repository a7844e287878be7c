// The scan and distance kernels, written once over an ISA traits struct T.
//
// Included by kernels_{scalar,avx2,avx512}.cc, the SIMD ones inside their
// `#pragma GCC target` region so that every instantiation is compiled for
// that ISA. Each instantiation is over its own file's traits type, so no
// two files ever share (and the linker never merges) a compiled copy.
//
// T provides (all static, always inline):
//   Word, Bound      a query word / the selector bound in a register;
//   Block<W>         a database block as loaded for W words (the registers,
//                    or where to load them from when loads are cheaper than
//                    registers);
//   Dist, Hits       the 16 distances of a block; the lanes below the bound;
//   Consts           constants the distance needs (the AVX2 nibble table);
//   Qb(w)            queries per register block;
//   Broadcast, MakeBound, Load<W, kTail>, Distance<W>, DistanceAny (any w),
//   Below, Any, Hit (append the hits; refresh the bound after a Refine),
//   Store (16 distances to memory).
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

#ifndef MEDHASH_RETRIEVAL_CSRC_SCAN_H_
#define MEDHASH_RETRIEVAL_CSRC_SCAN_H_

#include "hamming.h"

#define MEDHASH_INLINE __attribute__((always_inline)) inline

namespace medhash {
namespace scan {

// kTail: the last word is a narrow tail column (t = db.t > 0); a template
// flag so that the common t = 0 case has no test in the loop.
template <class T, int W, int QB, bool kDense, bool kTail>
MEDHASH_INLINE void Sweep(const DbLayout& db, int64_t b0, int64_t b1,
                          int64_t last, uint32_t tail,
                          const typename T::Consts& c,
                          const typename T::Word (&qv)[QB][W],
                          typename T::Bound (&bv)[QB], Selector* st) {
  // Hoisted: the appends store uint32s, which may alias db's ints.
  const uint8_t* p = db.base + b0 * db.stride;
  const int64_t stride = db.stride;
  const int t = db.t;
  for (int64_t b = b0; b < b1; ++b, p += stride) {
    const typename T::template Block<W> x = T::template Load<W, kTail>(p, t);
#pragma GCC unroll 16
    for (int j = 0; j < QB; ++j) {
      const typename T::Dist d = T::template Distance<W>(x, qv[j], c);
      const typename T::Hits m = T::Below(d, bv[j]);
      if (kDense || __builtin_expect(T::Any(m), 0)) {
        T::Hit(st[j], d, m, b, last, tail, &bv[j]);
      }
    }
  }
}

// QB queries of W words over blocks [b0, b1).
template <class T, int W, int QB, bool kTail>
void ScanBlock(const DbLayout& db, int64_t b0, int64_t b1, int64_t last,
               uint32_t tail, int64_t dense_end, const uint32_t* q,
               Selector* st) {
  const typename T::Consts c = T::MakeConsts();
  typename T::Word qv[QB][W];
  typename T::Bound bv[QB];
#pragma GCC unroll 16
  for (int j = 0; j < QB; ++j) {
#pragma GCC unroll 16
    for (int k = 0; k < W; ++k) qv[j][k] = T::Broadcast(q[j * W + k]);
    bv[j] = T::MakeBound(st[j].bound);
  }
  const int64_t mid = std::min(std::max(dense_end, b0), b1);
  if (mid > b0) {
    Sweep<T, W, QB, true, kTail>(db, b0, mid, last, tail, c, qv, bv, st);
  }
  Sweep<T, W, QB, false, kTail>(db, mid, b1, last, tail, c, qv, bv, st);
}

template <class T, int W, bool kTail>
void ScanFixed(const DbLayout& db, int64_t b0, int64_t b1, int64_t last,
               uint32_t tail, int64_t dense_end, const uint32_t* q,
               Selector* st, int nq) {
  constexpr int QB = T::Qb(W);
  int j = 0;
  for (; j + QB <= nq; j += QB) {
    ScanBlock<T, W, QB, kTail>(db, b0, b1, last, tail, dense_end, q + j * W,
                               st + j);
  }
  for (; j < nq; ++j) {
    ScanBlock<T, W, 1, kTail>(db, b0, b1, last, tail, dense_end, q + j * W,
                              st + j);
  }
}

// A ScanFn for codes of exactly W words.
template <class T, int W>
void Scan(const DbLayout& db, int64_t b0, int64_t b1, int64_t last,
          uint32_t tail, int64_t dense_end, const uint32_t* q, Selector* st,
          int nq) {
  if (db.t) {
    ScanFixed<T, W, true>(db, b0, b1, last, tail, dense_end, q, st, nq);
  } else {
    ScanFixed<T, W, false>(db, b0, b1, last, tail, dense_end, q, st, nq);
  }
}

// A ScanFn for any W, one query at a time.
template <class T>
void ScanAny(const DbLayout& db, int64_t b0, int64_t b1, int64_t last,
             uint32_t tail, int64_t dense_end, const uint32_t* q,
             Selector* st, int nq) {
  const typename T::Consts c = T::MakeConsts();
  const int w = db.w, t = db.t;
  const int64_t stride = db.stride;
  for (int j = 0; j < nq; ++j) {
    const uint32_t* qj = q + j * w;
    typename T::Bound bv = T::MakeBound(st[j].bound);
    const uint8_t* p = db.base + b0 * stride;
    for (int64_t b = b0; b < b1; ++b, p += stride) {
      const typename T::Dist d = T::DistanceAny(p, w, t, qj, c);
      const typename T::Hits m = T::Below(d, bv);
      if (b < dense_end || __builtin_expect(T::Any(m), 0)) {
        T::Hit(st[j], d, m, b, last, tail, &bv);
      }
    }
  }
}

// The DistFn (any W).
template <class T>
void Dist(const DbLayout& db, int64_t b0, int64_t b1, const uint32_t* q,
          uint32_t* out) {
  const typename T::Consts c = T::MakeConsts();
  const int w = db.w, t = db.t;
  const uint8_t* p = db.base + b0 * db.stride;
  for (int64_t b = b0; b < b1; ++b, p += db.stride, out += kLanes) {
    T::Store(out, T::DistanceAny(p, w, t, q, c));
  }
}

// The kernel table: widths 1..8 words get their own unrolled scan.
template <class T>
Kernels Table(int w) {
  ScanFn scan;
  switch (w) {
    case 1: scan = &Scan<T, 1>; break;
    case 2: scan = &Scan<T, 2>; break;
    case 3: scan = &Scan<T, 3>; break;
    case 4: scan = &Scan<T, 4>; break;
    case 5: scan = &Scan<T, 5>; break;
    case 6: scan = &Scan<T, 6>; break;
    case 7: scan = &Scan<T, 7>; break;
    case 8: scan = &Scan<T, 8>; break;
    default: scan = &ScanAny<T>; break;
  }
  return Kernels{scan, &Dist<T>};
}

}  // namespace scan
}  // namespace medhash

#endif  // MEDHASH_RETRIEVAL_CSRC_SCAN_H_
