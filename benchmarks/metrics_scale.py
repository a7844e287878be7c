"""Time `retrieval_report` at evaluation scale (default 20k queries x 100k db).

Synthetic multi-label data: each item has a multi-hot label vector (about
`--labels` labels in all, ~2 per item) and a code that is the sum of its labels'
random prototypes plus noise, so the metrics are far from chance and ties in
Hamming distance are common, as with trained codes.

  python benchmarks/metrics_scale.py        # 20,000 x 100,000, K=64
  python benchmarks/metrics_scale.py --queries 2000 --db 50000 --bits 32

Prints the wall time of the whole report (first chunk's compilation included,
and separately a warm-up-free estimate), queries/s and query-database pairs/s,
and the main metric values.
"""

import argparse
import os
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medhash_jax import metrics  # pylint: disable=g-import-not-at-top
from medhash_jax import retrieval  # pylint: disable=g-import-not-at-top


def synthetic(rng, n, protos, noise):
  num_labels, bits = protos.shape
  labels = (rng.random((n, num_labels)) < 2.0 / num_labels).astype(np.int8)
  empty = labels.sum(1) == 0
  labels[empty, rng.integers(0, num_labels, empty.sum())] = 1
  codes = labels.astype(np.float32) @ protos
  codes += noise * rng.standard_normal((n, bits)).astype(np.float32)
  return codes, labels


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--queries", type=int, default=20_000)
  ap.add_argument("--db", type=int, default=100_000)
  ap.add_argument("--bits", type=int, default=64)
  ap.add_argument("--labels", type=int, default=10)
  ap.add_argument("--noise", type=float, default=1.0)
  ap.add_argument("--ks", default="10,100,1000,all")
  ap.add_argument("--query-chunk", type=int, default=None)
  ap.add_argument("--backend", default="auto")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  ks = tuple(None if k == "all" else int(k) for k in args.ks.split(","))

  rng = np.random.default_rng(args.seed)
  protos = rng.standard_normal((args.labels, args.bits)).astype(np.float32)
  qc, ql = synthetic(rng, args.queries, protos, args.noise)
  dc, dl = synthetic(rng, args.db, protos, args.noise)
  qp, dp = retrieval.pack_codes(qc), retrieval.pack_codes(dc)
  jax.block_until_ready((qp, dp))
  backend = retrieval.resolve_backend(args.backend)
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"CPUs, jax {jax.__version__} on {jax.default_backend()}, backend "
        f"{backend}")
  print(f"# Q={args.queries} N={args.db} K={args.bits} L={args.labels} "
        f"ks={args.ks}")

  # One chunk alone first: its time includes compilation, which the full run
  # (same chunk shape) then reuses.
  # pylint: disable-next=protected-access
  chunk = args.query_chunk or max(1, metrics._CHUNK_ELEMENTS // args.db)
  chunk = min(chunk, args.queries)
  t0 = time.perf_counter()
  metrics.compute_stats(qp[:chunk], dp, ql[:chunk], dl, ks, num_bits=args.bits,
                        backend=args.backend, query_chunk=chunk)
  first = time.perf_counter() - t0

  t0, c0 = time.perf_counter(), time.process_time()
  stats = metrics.compute_stats(qp, dp, ql, dl, ks, num_bits=args.bits,
                                backend=args.backend, query_chunk=chunk)
  t_stats = time.perf_counter() - t0
  t0 = time.perf_counter()
  report = metrics.report_from_stats(stats)
  curve = metrics.pr_curve_from_stats(stats)
  t_host = time.perf_counter() - t0
  total = t_stats + t_host
  cpu = time.process_time() - c0
  print(f"first chunk ({chunk} queries, incl. compile): {first:.2f} s")
  print(f"device stats: {t_stats:.1f} s   host closed forms: {t_host:.2f} s")
  print(f"TOTAL {total:.1f} s   {args.queries / total:,.0f} queries/s   "
        f"{args.queries * args.db / total:.3g} pairs/s   (process CPU time "
        f"{cpu:.1f} s; 1-min load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs: other processes slow the wall time)")
  for key in sorted(report):
    print(f"  {key:28s} {report[key]:.4f}")
  print("  PR curve precision r=0..4:",
        " ".join(f"{p:.3f}" for p in curve["precision"][:5]))


if __name__ == "__main__":
  main()
