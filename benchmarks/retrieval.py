"""Exact Hamming top-k: every available `hamming_topk` backend vs faiss.

All backends and `faiss.IndexBinaryFlat` run in one process on the same random
codes; the script prints pairs/s (query-database pairs per second), the ratio
to faiss, and whether the distances equal faiss's row by row (faiss may order
ties differently, so indices are not compared with faiss; instead our indices
are checked to reproduce our distances, and against the reference backend when
it runs).

  python benchmarks/retrieval.py                      # all standard setups
  python benchmarks/retrieval.py --n 200000 --q 1000 --bits 64 --k 100
  python benchmarks/retrieval.py --with-reference     # also the slow jnp path

Standard setups: N=200,000, Q=1,000, K=64, k=100 (the main one); K=16, 32, 128
at the same N; N=1,000,000 at K=64. faiss gets as many threads as our kernel
(MEDHASH_NUM_THREADS or the CPUs available) and is also timed on 1 thread, as
is our cpu backend; the ratio is to faiss's faster configuration.
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medhash_jax.retrieval import cpu_kernel  # pylint: disable=g-import-not-at-top
from medhash_jax.retrieval import hamming_topk  # pylint: disable=g-import-not-at-top

try:
  import faiss  # pylint: disable=g-import-not-at-top
except ImportError:  # the benchmark still times our backends
  faiss = None

MAIN = dict(n=200_000, q=1_000, bits=64, k=100)
STANDARD = [MAIN] + [dict(MAIN, bits=b) for b in (16, 32, 128)] + [
    dict(MAIN, n=1_000_000)]


def random_packed(rng, n: int, bits: int) -> np.ndarray:
  """Uniform random codes, packed (bit j in word j // 32), zero padding."""
  w = -(-bits // 32)
  packed = rng.integers(0, 2**32, (n, w), dtype=np.uint64).astype(np.uint32)
  if bits % 32:
    packed[:, -1] &= np.uint32((1 << (bits % 32)) - 1)
  return packed


def faiss_bytes(packed: np.ndarray, bits: int) -> np.ndarray:
  """The packed rows as faiss binary codes: the first ceil(K / 8) bytes."""
  return np.ascontiguousarray(packed.view(np.uint8)[:, :-(-bits // 8)])


def time_best(fn, repeats: int):
  """(best seconds, last result) over `repeats` calls after one warm-up."""
  out = fn()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t0)
  return best, out


def distances_of(q, db, idx) -> np.ndarray:
  """Hamming distances of the returned indices (checks index/distance pairs)."""
  x = np.bitwise_xor(q[:, None, :], db[idx])
  return np.unpackbits(x.view(np.uint8), axis=-1).sum(-1).astype(np.int32)


def backends(with_reference: bool):
  names = []
  if cpu_kernel.available():
    names.append("cpu")
  if jax.default_backend() == "gpu":
    names += ["gpu", "matmul"]
  if with_reference:
    names.append("reference")
  return names


def run_setup(setup, args, threads, rng):
  n, nq, bits, k = setup["n"], setup["q"], setup["bits"], setup["k"]
  print(f"\n== N={n:,} Q={nq:,} K={bits} k={k}")
  db = random_packed(rng, n, bits)
  q = random_packed(rng, nq, bits)
  rows = []
  faiss_d = None
  faiss_rate = None
  if faiss is not None and bits % 8 == 0:
    index = faiss.IndexBinaryFlat(8 * -(-bits // 8))
    index.add(faiss_bytes(db, bits))
    qb = faiss_bytes(q, bits)
    # faiss's OpenMP barriers collapse when the cores are shared with other
    # work, so it is also timed single-threaded; ratios use its best rate.
    for t in sorted({threads, 1}, reverse=True):
      faiss.omp_set_num_threads(t)
      sec, (faiss_d, _) = time_best(lambda: index.search(qb, k), args.repeats)
      rate = n * nq / sec
      faiss_rate = max(faiss_rate or 0.0, rate)
      rows.append((f"faiss Flat, {t} thr", nq, sec, rate, None, "-"))
    faiss.omp_set_num_threads(threads)
  ours = {}
  runs = [(name, None) for name in backends(args.with_reference)]
  if "cpu" in [name for name, _ in runs] and threads > 1:
    runs.insert(1, ("cpu", 1))  # per-core comparison with faiss, 1 thread
  for name, num_threads in runs:
    qn = min(nq, args.reference_q) if name == "reference" else nq
    device = jax.devices("cpu")[0] if name in ("cpu",) else jax.devices()[0]
    qj = jax.device_put(q[:qn], device)
    dbj = jax.device_put(db, device)

    def call(name=name, qj=qj, dbj=dbj):
      with jax.default_device(device):
        d, i = hamming_topk(qj, dbj, k, backend=name)
        return jax.block_until_ready((d, i))

    saved = os.environ.get("MEDHASH_NUM_THREADS")
    if num_threads:
      os.environ["MEDHASH_NUM_THREADS"] = str(num_threads)
    try:
      sec, (d, i) = time_best(call, args.repeats if name != "reference" else 1)
    finally:
      if num_threads:
        if saved is None:
          del os.environ["MEDHASH_NUM_THREADS"]
        else:
          os.environ["MEDHASH_NUM_THREADS"] = saved
    d, i = np.asarray(d), np.asarray(i)
    ours[name] = (d, i)
    rate = qn * n / sec
    same = "n/a"
    if faiss_d is not None:
      same = "yes" if np.array_equal(d, faiss_d[:qn]) else "NO"
    label = name + (f", {num_threads} thr" if num_threads else
                    f", {threads} thr" if name == "cpu" else "")
    rows.append((label, qn, sec, rate, None, same))
    sample = slice(0, min(qn, 64))
    if not np.array_equal(distances_of(q[sample], db, i[sample]), d[sample]):
      raise AssertionError(f"{name}: indices do not reproduce the distances")
  if "reference" in ours and len(ours) > 1:
    rd, ri = ours["reference"]
    for name, (d, i) in ours.items():
      if not (np.array_equal(d[:len(rd)], rd) and
              np.array_equal(i[:len(ri)], ri)):
        raise AssertionError(f"{name} differs from the reference backend")
    print("all backends equal the reference (distances and indices) on the "
          f"first {len(rd)} queries")
  print(f"{'backend':<24}{'Q':>7}{'seconds':>10}{'pairs/s':>12}"
        f"{'x faiss':>9}  dist == faiss   (x faiss: vs faiss's best row)")
  for name, qn, sec, rate, _, same in rows:
    ratio = rate / faiss_rate if faiss_rate else float("nan")
    print(f"{name:<24}{qn:>7}{sec:>10.4f}{rate:>12.3e}{ratio:>9.2f}  {same}")
  gpu_rates = {label.split(",")[0]: rate for label, _, _, rate, _, _ in rows
               if label.split(",")[0] in ("gpu", "matmul")}
  if len(gpu_rates) == 2:
    # What launch/gpu_session.sh records to set topk.GPU_DEFAULT by.
    faster = max(gpu_rates, key=gpu_rates.get)
    print(f"GPU formulations: faster is {faster} ("
          f"{gpu_rates[faster] / min(gpu_rates.values()):.2f}x; gpu = Pallas, "
          "matmul = int8 matmul)")
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--n", type=int, help="database size")
  parser.add_argument("--q", type=int, help="number of queries")
  parser.add_argument("--bits", type=int, help="code length K")
  parser.add_argument("--k", type=int, help="neighbours per query")
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed calls per backend (best is reported)")
  parser.add_argument("--with-reference", action="store_true",
                      help="also time the slow pure-jnp reference backend")
  parser.add_argument("--reference-q", type=int, default=50,
                      help="queries for the reference backend")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  if any(v is not None for v in (args.n, args.q, args.bits, args.k)):
    setups = [dict(MAIN, **{key: getattr(args, key) for key in MAIN
                            if getattr(args, key) is not None})]
  else:
    setups = STANDARD

  threads = cpu_kernel.num_threads() if cpu_kernel.available() else (
      os.cpu_count() or 1)
  if faiss is not None:
    faiss.omp_set_num_threads(threads)
  print(f"CPU: {cpu_kernel.cpu_model()} ({os.cpu_count()} logical CPUs)")
  print(f"JAX {jax.__version__}, default backend {jax.default_backend()}")
  if cpu_kernel.available():
    print(f"medhash cpu kernel: {cpu_kernel.isa()}, {threads} threads")
  else:
    print("medhash cpu kernel: unavailable")
  print(f"faiss: {'not installed' if faiss is None else faiss.__version__}, "
        f"{faiss.omp_get_max_threads() if faiss else 0} threads")
  rng = np.random.default_rng(args.seed)
  for setup in setups:
    run_setup(setup, args, threads, rng)


if __name__ == "__main__":
  main()
