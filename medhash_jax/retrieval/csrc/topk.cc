// The drivers: tiling, threads, the buffer and two-pass top-k methods, the
// database split for few queries, and histograms (see hamming.h).

#include "topk.h"

#include <memory>

namespace medhash {
namespace {

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

// One call: queries, database layout and the kernels for it.
struct Problem {
  const uint32_t* q;
  int64_t nq, n, k;
  int max_d;        // 32 * w
  int64_t blocks;   // ceil(n / 16)
  uint32_t tail;    // valid lanes of the last block
  int64_t tile;     // blocks per L2 tile
  DbLayout db;
  Kernels kernels;
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
  p.kernels = KernelsFor(ChosenIsa(), w);
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
  const DistFn dist = p.kernels.dist;
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
  const DistFn dist = p.kernels.dist;
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
  const ScanFn scan = p.kernels.scan;
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

// Packed uint32 rows: the problem over a per-call copy in the layout.
Problem RowsProblem(const uint32_t* q, const uint32_t* db, int64_t nq,
                    int64_t n, int w, int64_t k, int threads,
                    std::unique_ptr<AlignedU32>* soa) {
  Problem p{};
  p.q = q;
  p.nq = nq;
  p.n = n;
  p.k = k;
  *soa = Prepare(p, db, w, threads);
  return p;
}

}  // namespace

void RunTopk(const uint32_t* q, const uint32_t* db, int64_t nq, int64_t n,
             int w, int64_t k, int32_t* od, int32_t* oi) {
  const int threads = ThreadsFor(nq, n, w);
  std::unique_ptr<AlignedU32> soa;
  SolveTopk(RowsProblem(q, db, nq, n, w, k, threads, &soa), threads, od, oi);
}

void RunHistogram(const uint32_t* q, const uint32_t* db, int64_t nq, int64_t n,
                  int w, int32_t* out) {
  const int threads = ThreadsFor(nq, n, w);
  std::unique_ptr<AlignedU32> soa;
  SolveHistogram(RowsProblem(q, db, nq, n, w, 0, threads, &soa), threads,
                 out);
}

void LayoutTopk(const uint8_t* layout, int64_t n, int64_t bytes,
                const uint32_t* q, int64_t nq, int64_t k, int32_t* od,
                int32_t* oi) {
  const Problem p = LayoutProblem(layout, n, bytes, q, nq, k);
  SolveTopk(p, ThreadsFor(nq, n, p.db.w), od, oi);
}

void LayoutHistogram(const uint8_t* layout, int64_t n, int64_t bytes,
                     const uint32_t* q, int64_t nq, int32_t* out) {
  const Problem p = LayoutProblem(layout, n, bytes, q, nq, 0);
  SolveHistogram(p, ThreadsFor(nq, n, p.db.w), out);
}

}  // namespace medhash
