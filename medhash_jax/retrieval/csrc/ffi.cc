// Entry points: the XLA FFI handlers and the plain C functions (ctypes).
// Every one checks its inputs, runs a driver (topk.h) and reports through
// one Status, turned into an ffi::Error or a C return code at the edge.

#include <string>
#include <utility>

#include "hamming.h"
#include "topk.h"

// The jaxlib headers warn under some GCC versions; not our code to fix.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wattributes"
#pragma GCC diagnostic ignored "-Wreturn-type"
#pragma GCC diagnostic ignored "-Wsign-compare"
#include "xla/ffi/api/ffi.h"
#pragma GCC diagnostic pop

namespace ffi = xla::ffi;

namespace medhash {
namespace {

// An entry point's outcome; the message names the entry point.
struct Status {
  enum Code { kOk, kInvalid, kNoMemory, kInternal };
  Code code = kOk;
  std::string message;
  bool ok() const { return code == kOk; }
};

Status Invalid(std::string message) {
  return {Status::kInvalid, std::move(message)};
}

// Runs a driver; its exceptions become a Status (never cross the C ABI).
template <class Fn>
Status Guarded(const char* name, Fn&& fn) {
  try {
    fn();
  } catch (const std::bad_alloc&) {
    return {Status::kNoMemory, std::string(name) + ": out of memory"};
  } catch (const std::exception& e) {
    return {Status::kInternal, std::string(name) + ": " + e.what()};
  }
  return {};
}

ffi::Error ToFfi(const Status& s) {
  switch (s.code) {
    case Status::kOk: return ffi::Error::Success();
    case Status::kInvalid: return ffi::Error::InvalidArgument(s.message);
    case Status::kNoMemory:
      return ffi::Error(ffi::ErrorCode::kResourceExhausted, s.message);
    default: return ffi::Error::Internal(s.message);
  }
}

// 0, or -1 with the message in err (truncated to err_len - 1 bytes).
int ToC(const Status& s, char* err, int64_t err_len) {
  if (s.ok()) return 0;
  if (err != nullptr && err_len > 0) {
    std::strncpy(err, s.message.c_str(), static_cast<size_t>(err_len - 1));
    err[err_len - 1] = '\0';
  }
  return -1;
}

Status CheckK(int64_t k, int64_t n) {
  if (k >= 1 && k <= n) return {};
  return Invalid("hamming_topk: need 1 <= k <= N, got k=" + std::to_string(k) +
                 ", N=" + std::to_string(n));
}

// Queries and database as (Q, W) and (N, W) uint32 rows.
Status CheckRows(const ffi::Buffer<ffi::U32>& q,
                 const ffi::Buffer<ffi::U32>& db, int64_t* nq, int64_t* n,
                 int* w) {
  const auto qd = q.dimensions();
  const auto dd = db.dimensions();
  if (qd.size() != 2 || dd.size() != 2) {
    return Invalid(
        "hamming kernel: query and database must be rank-2 uint32 arrays");
  }
  if (qd[1] != dd[1] || qd[1] <= 0) {
    return Invalid(
        "hamming kernel: query and database need the same positive number of "
        "words, got " + std::to_string(qd[1]) + " and " +
        std::to_string(dd[1]));
  }
  if (dd[0] > INT32_MAX) {
    return Invalid("hamming kernel: database too large for int32 indices");
  }
  if (qd[1] > 1000) {  // distances must fit the kernels' 16-bit compares
    return Invalid("hamming kernel: at most 1000 words (32000 bits) per code");
  }
  *nq = qd[0];
  *n = dd[0];
  *w = static_cast<int>(qd[1]);
  return {};
}

// A prebuilt layout against the queries: W = ceil(B / 4) words and at least
// ceil(n / 16) * 16 * B bytes (layout_bytes < 0: size unknown, not checked).
Status CheckLayout(const char* name, int64_t layout_bytes, int64_t n,
                   int64_t bytes, int64_t words) {
  const std::string at = std::string(name) + ": ";
  if (bytes <= 0 || bytes > 4000) {
    return Invalid(at + "bytes_per_code must be in [1, 4000], got " +
                   std::to_string(bytes));
  }
  if (words != (bytes + 3) / 4) {
    return Invalid(at + "queries have " + std::to_string(words) +
                   " words but " + std::to_string(bytes) +
                   "-byte codes need " + std::to_string((bytes + 3) / 4));
  }
  if (n < 0 || n > INT32_MAX) {
    return Invalid(at + "database size " + std::to_string(n) +
                   " is out of range");
  }
  const int64_t need = (n + kLanes - 1) / kLanes * kLanes * bytes;
  if (layout_bytes >= 0 && layout_bytes < need) {
    return Invalid(at + "layout has " + std::to_string(layout_bytes) +
                   " bytes, " + std::to_string(n) + " codes need " +
                   std::to_string(need));
  }
  return {};
}

Status Topk(ffi::Buffer<ffi::U32> q, ffi::Buffer<ffi::U32> db, int64_t k,
            ffi::ResultBuffer<ffi::S32> dist,
            ffi::ResultBuffer<ffi::S32> idx) {
  int64_t nq, n;
  int w;
  Status s = CheckRows(q, db, &nq, &n, &w);
  if (!s.ok()) return s;
  s = CheckK(k, n);
  if (!s.ok()) return s;
  const auto od = dist->dimensions();
  const auto oi = idx->dimensions();
  if (od.size() != 2 || od[0] != nq || od[1] != k || oi.size() != 2 ||
      oi[0] != nq || oi[1] != k) {
    return Invalid("hamming_topk: outputs must be (Q, k)");
  }
  if (nq == 0) return {};
  return Guarded("hamming_topk", [&] {
    RunTopk(q.typed_data(), db.typed_data(), nq, n, w, k, dist->typed_data(),
            idx->typed_data());
  });
}

Status Histogram(ffi::Buffer<ffi::U32> q, ffi::Buffer<ffi::U32> db,
                 ffi::ResultBuffer<ffi::S32> out) {
  int64_t nq, n;
  int w;
  Status s = CheckRows(q, db, &nq, &n, &w);
  if (!s.ok()) return s;
  const auto od = out->dimensions();
  if (od.size() != 2 || od[0] != nq || od[1] != 32 * int64_t{w} + 1) {
    return Invalid("hamming_histogram: output must be (Q, 32 W + 1)");
  }
  if (nq == 0) return {};
  int32_t* o = out->typed_data();
  if (n == 0) {
    std::fill(o, o + nq * od[1], 0);
    return {};
  }
  return Guarded("hamming_histogram", [&] {
    RunHistogram(q.typed_data(), db.typed_data(), nq, n, w, o);
  });
}

Status TopkOverLayout(ffi::Buffer<ffi::U32> q, ffi::Buffer<ffi::U8> layout,
                      int64_t n, int64_t bytes, int64_t k,
                      ffi::ResultBuffer<ffi::S32> dist,
                      ffi::ResultBuffer<ffi::S32> idx) {
  const auto qd = q.dimensions();
  if (qd.size() != 2 || layout.dimensions().size() != 1) {
    return Invalid(
        "hamming_topk_layout: queries (Q, W) uint32, layout (L,) uint8");
  }
  Status s = CheckLayout("hamming_topk_layout", layout.dimensions()[0], n,
                         bytes, qd[1]);
  if (!s.ok()) return s;
  s = CheckK(k, n);
  if (!s.ok()) return s;
  const int64_t nq = qd[0];
  if (nq == 0) return {};
  return Guarded("hamming_topk", [&] {
    LayoutTopk(layout.typed_data(), n, bytes, q.typed_data(), nq, k,
               dist->typed_data(), idx->typed_data());
  });
}

ffi::Error TopkImpl(ffi::Buffer<ffi::U32> q, ffi::Buffer<ffi::U32> db,
                    int64_t k, ffi::ResultBuffer<ffi::S32> dist,
                    ffi::ResultBuffer<ffi::S32> idx) {
  return ToFfi(Topk(q, db, k, dist, idx));
}

ffi::Error HistogramImpl(ffi::Buffer<ffi::U32> q, ffi::Buffer<ffi::U32> db,
                         ffi::ResultBuffer<ffi::S32> out) {
  return ToFfi(Histogram(q, db, out));
}

ffi::Error TopkLayoutImpl(ffi::Buffer<ffi::U32> q, ffi::Buffer<ffi::U8> layout,
                          int64_t n, int64_t bytes, int64_t k,
                          ffi::ResultBuffer<ffi::S32> dist,
                          ffi::ResultBuffer<ffi::S32> idx) {
  return ToFfi(TopkOverLayout(q, layout, n, bytes, k, dist, idx));
}

// Reads `bytes` at p (an XOR, so the reads cannot be optimised away).
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(MedhashHammingTopkLayout, medhash::TopkLayoutImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("bytes_per_code")
                                  .Attr<int64_t>("k")
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

// Plain C helpers for Python (ctypes): the SIMD level and thread count a call
// would use now (0 scalar, 1 AVX2, 2 AVX-512).
MEDHASH_EXPORT int MedhashHammingIsa() { return medhash::ChosenIsa(); }
MEDHASH_EXPORT int MedhashHammingNumThreads() { return medhash::NumThreads(); }

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
  Status s = CheckLayout("hamming_topk", -1, n, bytes, (bytes + 3) / 4);
  if (s.ok()) s = CheckK(k, n);
  if (s.ok() && nq > 0) {
    s = Guarded("hamming_topk",
                [&] { LayoutTopk(layout, n, bytes, q, nq, k, od, oi); });
  }
  return ToC(s, err, err_len);
}

// out: int32 (nq, 32 * ceil(bytes / 4) + 1), counts per distance.
MEDHASH_EXPORT int MedhashLayoutHistogram(const uint8_t* layout, int64_t n,
                                          int64_t bytes, const uint32_t* q,
                                          int64_t nq, int32_t* out, char* err,
                                          int64_t err_len) {
  using namespace medhash;
  Status s = CheckLayout("hamming_histogram", -1, n, bytes, (bytes + 3) / 4);
  if (!s.ok() || nq == 0) return ToC(s, err, err_len);
  if (n == 0) {
    std::fill(out, out + nq * (32 * ((bytes + 3) / 4) + 1), 0);
    return 0;
  }
  s = Guarded("hamming_histogram",
              [&] { LayoutHistogram(layout, n, bytes, q, nq, out); });
  return ToC(s, err, err_len);
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
