// Selector: the per-query candidate buffer and its bound (see hamming.h).

#include "hamming.h"

namespace medhash {

void Selector::Reset(int64_t k, int max_d) {
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

uint32_t Selector::Refine() {
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

// Counting sort over distances, stable, so index order survives inside each
// distance.
void Selector::Emit(int32_t* out_d, int32_t* out_i) {
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

// Keeps exactly the top-k (d_k = t) in index order; rebuilds the histogram.
void Selector::Compact(uint32_t t) {
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

}  // namespace medhash
