// The top-k and histogram drivers (topk.cc), called by the entry points.
// Inputs are checked by the caller (ffi.cc); these may throw std::bad_alloc.

#ifndef MEDHASH_RETRIEVAL_CSRC_TOPK_H_
#define MEDHASH_RETRIEVAL_CSRC_TOPK_H_

#include "hamming.h"

namespace medhash {

// Over packed uint32 rows (nq x w queries, n x w database; copied into the
// kernel layout per call): the top-k, rows sorted by (distance, index), and
// the distance histograms (nq x (32 w + 1)).
void RunTopk(const uint32_t* q, const uint32_t* db, int64_t nq, int64_t n,
             int w, int64_t k, int32_t* od, int32_t* oi);
void RunHistogram(const uint32_t* q, const uint32_t* db, int64_t nq, int64_t n,
                  int w, int32_t* out);

// The same over a prebuilt layout of n codes of `bytes` bytes, read in place.
void LayoutTopk(const uint8_t* layout, int64_t n, int64_t bytes,
                const uint32_t* q, int64_t nq, int64_t k, int32_t* od,
                int32_t* oi);
void LayoutHistogram(const uint8_t* layout, int64_t n, int64_t bytes,
                     const uint32_t* q, int64_t nq, int32_t* out);

}  // namespace medhash

#endif  // MEDHASH_RETRIEVAL_CSRC_TOPK_H_
