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
at the same N; N=1,000,000 at K=64. Our cpu backend and faiss each run at
the kernel's thread count (MEDHASH_NUM_THREADS or the CPUs available) and on
1 thread, in interleaved rounds (benchmarks/timing.py); each ratio is ours
over faiss at the same thread count: the median of the per-round ratios, with
their min-max.
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # pylint: disable=g-import-not-at-top
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
  print(f"\n== N={n:,} Q={nq:,} K={bits} k={k}, {args.rounds} interleaved "
        "rounds")
  db = random_packed(rng, n, bits)
  q = random_packed(rng, nq, bits)
  thread_counts = sorted({threads, 1}, reverse=True)
  contenders, sizes = {}, {}
  if faiss is not None and bits % 8 == 0:
    index = faiss.IndexBinaryFlat(8 * -(-bits // 8))
    index.add(faiss_bytes(db, bits))
    qb = faiss_bytes(q, bits)
    for t in thread_counts:
      def run_faiss(_, t=t):
        faiss.omp_set_num_threads(t)
        try:
          return index.search(qb, k)
        finally:
          faiss.omp_set_num_threads(threads)
      contenders[f"faiss Flat, {t} thr"] = run_faiss
      sizes[f"faiss Flat, {t} thr"] = nq
  names = backends(args.with_reference)
  for name in names:
    qn = min(nq, args.reference_q) if name == "reference" else nq
    device = jax.devices("cpu")[0] if name in ("cpu",) else jax.devices()[0]
    qj = jax.device_put(q[:qn], device)
    dbj = jax.device_put(db, device)
    for t in (thread_counts if name == "cpu" else [None]):
      def call(_, name=name, qj=qj, dbj=dbj, device=device, t=t):
        saved = os.environ.get("MEDHASH_NUM_THREADS")
        if t:
          os.environ["MEDHASH_NUM_THREADS"] = str(t)
        try:
          with jax.default_device(device):
            return jax.block_until_ready(hamming_topk(qj, dbj, k, backend=name))
        finally:
          if t and saved is None:
            del os.environ["MEDHASH_NUM_THREADS"]
          elif t:
            os.environ["MEDHASH_NUM_THREADS"] = saved
      label = name + (f", {t} thr" if t else "")
      contenders[label] = call
      sizes[label] = qn
  slow = {l: f for l, f in contenders.items() if l.startswith("reference")}
  times, last = timing.interleaved_rounds(
      {l: f for l, f in contenders.items() if l not in slow}, args.rounds)
  if slow:  # the jnp reference: one timed call
    t_slow, last_slow = timing.interleaved_rounds(slow, 1, warmup=False)
    times.update(t_slow)
    last.update(last_slow)
  faiss_d = {l: np.asarray(v[0]) for l, v in last.items()
             if l.startswith("faiss")}
  ours = {}
  for label, (d, i) in ((l, v) for l, v in last.items()
                        if not l.startswith("faiss")):
    d, i = np.asarray(d), np.asarray(i)
    ours[label] = (d, i)
    sample = slice(0, min(len(d), 64))
    if not np.array_equal(distances_of(q[sample], db, i[sample]), d[sample]):
      raise AssertionError(f"{label}: indices do not reproduce the distances")
    for fl, fd in faiss_d.items():
      if not np.array_equal(d, fd[:len(d)]):
        raise AssertionError(f"{label}: distances differ from {fl}")
  if any(l.startswith("reference") for l in ours) and len(ours) > 1:
    rd, ri = ours["reference"]
    for name, (d, i) in ours.items():
      if not (np.array_equal(d[:len(rd)], rd) and
              np.array_equal(i[:len(ri)], ri)):
        raise AssertionError(f"{name} differs from the reference backend")
    print("all backends equal the reference (distances and indices) on the "
          f"first {len(rd)} queries")
  if faiss_d:
    print("every backend's distances equal faiss's row by row")
  print(f"{'backend':<22}{'Q':>7}{'median s (min-max)':>26}{'pairs/s':>11}"
        f"   x faiss, same threads: median (min-max) of per-round ratios")
  rows = []
  for label, secs in times.items():
    med = timing.median_spread(secs)
    rate = sizes[label] * n / med[0]
    peer = f"faiss Flat, {label.split(', ')[1]}" if ", " in label else None
    ratio = (timing.ratio_spread(np.asarray(secs) / sizes[label],
                                 np.asarray(times[peer]) / sizes[peer])
             if peer in times and not label.startswith("faiss") else None)
    rows.append({"backend": label, "queries": sizes[label],
                 "seconds": med, "pairs_per_s": rate, "x_faiss": ratio})
    print(f"{label:<22}{sizes[label]:>7}{timing.fmt(med, '.4f'):>26}"
          f"{rate:>11.3e}   {timing.fmt(ratio) if ratio else '-'}")
  gpu_rates = {r["backend"]: r["pairs_per_s"] for r in rows
               if r["backend"] in ("gpu", "matmul")}
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
  parser.add_argument("--rounds", type=int, default=7,
                      help="interleaved rounds (every contender once each); "
                      "medians and min-max are reported")
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
