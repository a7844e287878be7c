"""Serving-grade search: one query at a time, memory, batches, a mapped 100M index.

Peers run in the same process on the same random codes, at the thread count
our kernel uses; timings are medians of interleaved rounds (each round runs
every contender once, so a burst of load from other jobs hits all of them).

  python benchmarks/serving.py                 # everything (needs ~4 GB RAM,
                                               # 0.8 GB of temp disk)
  python benchmarks/serving.py --parts=latency,batch --n=2000000

Parts:
  latency  N=10M, K=64, Q=1, k=10: HammingIndex.search (kernel layout, read
           in place) vs faiss IndexBinaryFlat vs the rows-based FFI path
           (hamming_topk, which builds the layout per call: the old index
           path), and the memory-bandwidth bound (bytes of codes / read
           bandwidth measured here by streaming the same buffer).
  memory   resident-memory growth (VmHWM after a reset, /proc/self) during
           searches, as a share of the codes' bytes; bytes per code.
  batch    Q=1000, k=100 at K=64 and K=256 (N=--batch-n): throughput vs
           faiss, distances compared on every row.
  mmap     a 100M x 64-bit index saved to a temp folder, its page cache
           dropped (posix_fadvise, this file only), opened with mmap=True,
           verified (CRC32 per chunk), searched with Q=1.
"""

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medhash_jax.retrieval import HammingIndex  # pylint: disable=g-import-not-at-top
from benchmarks import timing  # pylint: disable=g-import-not-at-top
from medhash_jax.retrieval import cpu_kernel  # pylint: disable=g-import-not-at-top
from medhash_jax.retrieval import hamming_topk  # pylint: disable=g-import-not-at-top

try:
  import faiss  # pylint: disable=g-import-not-at-top
except ImportError:
  faiss = None


def random_packed(rng, n: int, bits: int) -> np.ndarray:
  w = -(-bits // 32)
  packed = rng.integers(0, 2**32, (n, w), dtype=np.uint32)
  if bits % 32:
    packed[:, -1] &= np.uint32((1 << (bits % 32)) - 1)
  return packed


def faiss_rows(packed: np.ndarray, bits: int) -> np.ndarray:
  return np.ascontiguousarray(packed.view(np.uint8)[:, :-(-bits // 8)])


def faiss_one_thread(fi, q, k, threads):
  """faiss on one thread: its OpenMP barriers collapse when other jobs share
  the cores, so it is timed both ways and compared at its best."""
  faiss.omp_set_num_threads(1)
  try:
    return fi.search(q, k)
  finally:
    faiss.omp_set_num_threads(threads)


def rss_kib() -> int:
  with open("/proc/self/statm", encoding="ascii") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_growth_kib(fn, calls: int) -> int:
  """Peak resident-memory growth (KiB) over `calls` calls of fn.

  Resets the peak (VmHWM) with /proc/self/clear_refs where allowed, else
  samples /proc/self/statm from a thread every 0.2 ms.
  """
  gc.collect()
  base = rss_kib()
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
    for _ in range(calls):
      fn()
    with open("/proc/self/status", encoding="ascii") as f:
      hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
    return max(0, hwm - base)
  except OSError:
    import threading  # pylint: disable=g-import-not-at-top
    peak, stop = [base], threading.Event()

    def sample():
      while not stop.is_set():
        peak[0] = max(peak[0], rss_kib())
        time.sleep(0.0002)
    t = threading.Thread(target=sample)
    t.start()
    for _ in range(calls):
      fn()
    stop.set()
    t.join()
    return max(0, peak[0] - base)


def interleaved(contenders: dict, rounds: int):
  """({name: median seconds}, {name: seconds per round});
  contenders[name](r) runs round r's call."""
  times, _ = timing.interleaved_rounds(contenders, rounds)
  return {name: float(np.median(t)) for name, t in times.items()}, times


def faiss_ratio(times, ours: str, label: str):
  """Ours vs faiss at the same thread count (faiss seconds / ours per round):
  (median, min, max), printed with `label`."""
  ratio = timing.ratio_spread(times[ours], times["faiss IndexBinaryFlat"])
  print(f"  {label}: x{timing.fmt(ratio)} of faiss at the same thread count "
        "(median (min-max) of per-round ratios)")
  return ratio


def part_latency(args, threads, rng, report):
  n, bits, k = args.n, 64, 10
  print(f"\n== latency: N={n:,} K={bits} Q=1 k={k}, {args.rounds} interleaved "
        "rounds, medians")
  packed = random_packed(rng, n, bits)
  queries = random_packed(rng, args.rounds + 1, bits)
  t0 = time.perf_counter()
  index = HammingIndex(bits)
  index.add(packed)
  print(f"HammingIndex.add of {n:,} codes: {time.perf_counter() - t0:.2f} s")
  contenders = {"HammingIndex.search": lambda r: index.search(queries[r:r + 1], k)}
  fi = None
  if faiss is not None:
    fi = faiss.IndexBinaryFlat(bits)
    fi.add(faiss_rows(packed, bits))
    fq = faiss_rows(queries, bits)
    contenders["faiss IndexBinaryFlat"] = lambda r: fi.search(fq[r:r + 1], k)
    if threads > 1:
      contenders["faiss, 1 thread"] = lambda r: faiss_one_thread(
          fi, fq[r:r + 1], k, threads)
  pj = jax.device_put(packed)
  qj = jax.device_put(queries)
  contenders["hamming_topk rows (old path)"] = lambda r: jax.block_until_ready(
      hamming_topk(qj[r:r + 1], pj, k, backend="cpu"))
  layout = index.layout
  contenders["stream codes once"] = lambda r: cpu_kernel.stream_read(layout,
                                                                     threads)
  med, times = interleaved(contenders, args.rounds)
  ours = med["HammingIndex.search"]
  bound = med.pop("stream codes once")
  bw = layout.nbytes / bound
  print(f"read bandwidth, {threads} threads: {bw / 1e9:.1f} GB/s -> bound for "
        f"{layout.nbytes / 1e6:.0f} MB of codes: {bound * 1e3:.2f} ms")
  for name, sec in med.items():
    print(f"  {name:<32}{sec * 1e3:9.2f} ms   x{sec / ours:6.2f} of ours")
  print(f"  ours / bandwidth bound: {ours / bound:.2f}")
  if fi is not None:
    speed = faiss_ratio(times, "HammingIndex.search", "Q=1 speed")
    ratio = 1.0 / speed[0]     # our latency over faiss's
    fd, _ = fi.search(fq, k)
    d, _ = index.search(queries, k)
    same = np.array_equal(fd, d)
    print(f"  distances == faiss on all {len(queries)} queries: {same}")
    report.append(("Q=1 latency <= 0.5x faiss (same threads)", ratio <= 0.5,
                   f"{ratio:.2f}x"))
    report.append(("Q=1 distances == faiss", same, ""))
  report.append(("Q=1 within 2x of the bandwidth bound", ours <= 2 * bound,
                 f"{ours / bound:.2f}x"))
  for nq in (4, 16):  # small batches: the database split serves them too
    small = {"HammingIndex.search": lambda r, nq=nq: index.search(
        queries[:nq], k)}
    if fi is not None:
      small["faiss IndexBinaryFlat"] = lambda r, nq=nq: fi.search(fq[:nq], k)
      if threads > 1:
        small["faiss, 1 thread"] = lambda r, nq=nq: faiss_one_thread(
            fi, fq[:nq], k, threads)
    med_small, _ = interleaved(small, max(3, args.rounds // 3))
    line = ", ".join(f"{name} {sec * 1e3:.1f} ms"
                     for name, sec in med_small.items())
    print(f"  Q={nq}: {line}")
  return index, packed, queries, fi, pj, qj


def part_memory(args, state, report):
  index, packed, queries, fi, pj, qj = state
  codes_kib = packed.shape[0] * 8 / 1024
  print(f"\n== memory: resident growth during {args.rounds} Q=1 searches, "
        f"as a share of the codes' {codes_kib / 1024:.0f} MiB")
  print(f"  bytes per code: HammingIndex {index.nbytes / len(index):.2f} "
        f"(ceil(64/8) = 8), faiss {fi.code_size if fi is not None else '-'}")
  rows = [("HammingIndex.search", lambda r: index.search(queries[r:r + 1], 10))]
  if fi is not None:
    fq = faiss_rows(queries, 64)
    rows.append(("faiss IndexBinaryFlat", lambda r: fi.search(fq[r:r + 1], 10)))
  rows.append(("hamming_topk rows (old path)", lambda r: jax.block_until_ready(
      hamming_topk(qj[r:r + 1], pj, 10, backend="cpu"))))
  for name, fn in rows:
    calls = iter(range(10**9))
    growth = peak_growth_kib(lambda fn=fn, calls=calls: fn(next(calls) %
                                                          args.rounds),
                             min(args.rounds, 10))
    share = growth / codes_kib
    print(f"  {name:<32}{growth / 1024:9.1f} MiB  ({100 * share:5.1f} %)")
    if name == "HammingIndex.search":
      report.append(("RSS growth <= 10 % of codes", share <= 0.10,
                     f"{100 * share:.1f} %"))
  report.append(("bytes per code = ceil(K/8)",
                 index.bytes_per_code == 8 and
                 index.nbytes <= 8 * (len(index) + 15), ""))


def part_batch(args, threads, rng, report):
  for bits in (64, 256):
    n, nq, k = args.batch_n, 1000, 100
    print(f"\n== batch: N={n:,} K={bits} Q={nq} k={k}, {args.batch_rounds} "
          "interleaved rounds")
    packed = random_packed(rng, n, bits)
    queries = random_packed(rng, nq, bits)
    index = HammingIndex(bits)
    index.add(packed)
    contenders = {"HammingIndex.search": lambda r: index.search(queries, k)}
    if faiss is not None:
      fi = faiss.IndexBinaryFlat(bits)
      fi.add(faiss_rows(packed, bits))
      fq = faiss_rows(queries, bits)
      contenders["faiss IndexBinaryFlat"] = lambda r: fi.search(fq, k)
      if threads > 1:
        contenders["faiss, 1 thread"] = lambda r: faiss_one_thread(
            fi, fq, k, threads)
    med, times = interleaved(contenders, args.batch_rounds)
    for name, sec in med.items():
      print(f"  {name:<32}{sec:9.4f} s  {n * nq / sec:10.3e} pairs/s")
    if faiss is not None:
      speedup = faiss_ratio(times, "HammingIndex.search", f"Q={nq}")[0]
      fd, _ = fi.search(fq, k)
      same = np.array_equal(fd, index.search(queries, k)[0])
      print(f"  distances == faiss on every row: {same}")
      report.append((f"Q=1000 K={bits} >= 3x faiss", speedup >= 3,
                     f"{speedup:.1f}x"))
      report.append((f"Q=1000 K={bits} distances == faiss", same, ""))
    del index, packed


def part_mmap(args, rng, report):
  n, bits = args.mmap_n, 64
  folder = tempfile.mkdtemp(prefix="medhash_serving_", dir=args.tmp)
  path = os.path.join(folder, "big.mhidx")
  print(f"\n== mmap: {n:,} x {bits}-bit index in {folder}")
  try:
    index = HammingIndex(bits)
    t0 = time.perf_counter()
    step = 10_000_000
    for s in range(0, n, step):
      index.add(random_packed(rng, min(step, n - s), bits))
    print(f"  built by {-(-n // step)} adds: {time.perf_counter() - t0:.1f} s")
    query = random_packed(rng, 1, bits)
    want = index.search(query, 10)
    t0 = time.perf_counter()
    index.save(path)
    print(f"  saved ({os.path.getsize(path) / 1e6:.0f} MB): "
          f"{time.perf_counter() - t0:.1f} s")
    del index
    gc.collect()
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cold: from disk
    os.close(fd)
    t0 = time.perf_counter()
    mapped = HammingIndex.load(path, mmap=True)
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    mapped.verify()
    t_verify = time.perf_counter() - t0
    times = []
    for _ in range(5):
      t0 = time.perf_counter()
      got = mapped.search(query, 10)
      times.append(time.perf_counter() - t0)
    t_search = float(np.median(times))
    same = np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    print(f"  open (mmap=True): {t_open * 1e3:.1f} ms; verify (cold page "
          f"cache, CRC32 per 4 MiB chunk): {t_verify:.2f} s "
          f"({os.path.getsize(path) / t_verify / 1e9:.2f} GB/s); Q=1 k=10 "
          f"search: {t_search * 1e3:.1f} ms (median of 5); answer == the "
          f"in-memory index's: {same}")
    report.append(("100M mmap opens < 1 s", t_open < 1, f"{t_open * 1e3:.1f} ms"))
    report.append(("100M mmap Q=1 < 0.5 s once verified", t_search < 0.5,
                   f"{t_search * 1e3:.1f} ms"))
    report.append(("100M mmap answer == in-memory", same, ""))
    del mapped
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--parts", default="latency,memory,batch,mmap")
  parser.add_argument("--n", type=int, default=10_000_000)
  parser.add_argument("--batch-n", type=int, default=1_000_000)
  parser.add_argument("--mmap-n", type=int, default=100_000_000)
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--batch-rounds", type=int, default=5,
                      help="interleaved rounds of the Q=1000 batch part")
  parser.add_argument("--tmp", default=None, help="folder for the mmap file")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  parts = set(args.parts.split(","))
  if not cpu_kernel.available():
    sys.exit("the C++ kernel is not available; build it first")
  threads = cpu_kernel.num_threads()
  if faiss is not None:
    faiss.omp_set_num_threads(threads)
  print(f"CPU: {cpu_kernel.cpu_model()} ({os.cpu_count()} logical CPUs), "
        f"load average {os.getloadavg()[0]:.1f} at start")
  print(f"medhash kernel: {cpu_kernel.isa()}, {threads} threads; faiss "
        f"{faiss.__version__ if faiss else 'not installed'}, "
        f"{faiss.omp_get_max_threads() if faiss else 0} threads")
  rng = np.random.default_rng(args.seed)
  report = []
  if parts & {"latency", "memory"}:
    state = part_latency(args, threads, rng, report)
    if "memory" in parts:
      part_memory(args, state, report)
    del state
    gc.collect()
  if "batch" in parts:
    part_batch(args, threads, rng, report)
  if "mmap" in parts:
    part_mmap(args, rng, report)
  print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
  print("acceptance (issue 15):")
  for name, ok, value in report:
    print(f"  [{'ok' if ok else 'MISS'}] {name} {value}")


if __name__ == "__main__":
  main()
