"""Two builds of the C++ Hamming kernel, A/B, through `retrieval.py`.

Each tree (a checkout with its extension built in place) runs its own
`benchmarks/retrieval.py` (which imports the package next to it) in a fresh
process; rounds interleave the two builds, alternating which goes first, so
that machine load drifts over both alike. Prints, per setting, the median
`cpu` pairs/s of each build over the rounds with its spread (min-max), and
the ratio new / old of the medians.

`--in-process` instead loads both trees' libraries into one process (ctypes)
and times `MedhashLayoutTopk` (HammingIndex's path; --bits not a multiple of
32 exercises the narrow tail columns) call by call, alternating A and B, and
checks that both builds return the same distances and indices. Under a loaded
machine this pairs each A call with a B call a few milliseconds apart.

  git archive main | tar -x -C /tmp/old && (cd /tmp/old &&
      python setup.py -q build_ext --inplace)
  python benchmarks/kernel_ab.py --old /tmp/old --new . --rounds 5 \\
      --isa avx512 --isa avx2
  python benchmarks/kernel_ab.py --old /tmp/old --new . --in-process \\
      --rounds 30 --isa avx512 --isa avx2 --bits 48
"""

import argparse
import ctypes
import glob
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

_ROW = re.compile(r"^cpu, (\d+) thr\s+\d+\s+[\d.]+\s+([\d.e+]+)", re.M)


def run_once(tree: str, isa: str, args) -> dict:
  """{threads: pairs/s} of the `cpu` rows of one retrieval.py run."""
  env = dict(os.environ, MEDHASH_ISA=isa, PYTHONPATH="")
  cmd = [sys.executable, os.path.join(tree, "benchmarks", "retrieval.py"),
         "--n", str(args.n), "--q", str(args.q), "--bits", str(args.bits),
         "--k", str(args.k), "--repeats", str(args.repeats)]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                       check=True).stdout
  if f"medhash cpu kernel: {isa}" not in out:
    raise RuntimeError(f"{tree}: the kernel did not run {isa}:\n{out}")
  rows = {int(t): float(r) for t, r in _ROW.findall(out)}
  if not rows:
    raise RuntimeError(f"{tree}: no cpu rows in\n{out}")
  return rows


def _library(tree: str):
  (path,) = glob.glob(os.path.join(
      tree, "medhash_jax", "retrieval",
      f"_hamming_cpu.cpython-{sys.version_info.major}{sys.version_info.minor}*.so"))
  lib = ctypes.CDLL(path)  # RTLD_LOCAL: the two builds' symbols stay apart
  lib.MedhashLayoutTopk.restype = ctypes.c_int
  return lib


def in_process(trees: dict, args) -> dict:
  """{(isa, build, threads): [pairs/s per call]} of MedhashLayoutTopk."""
  sys.path.insert(0, trees["new"])
  from medhash_jax.retrieval import layout as layout_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  bytes_per = layout_lib.bytes_per_code(args.bits)
  w = -(-bytes_per // 4)
  packed = rng.integers(0, 2**32, (args.n, w), dtype=np.uint64).astype(np.uint32)
  queries = rng.integers(0, 2**32, (args.q, w), dtype=np.uint64).astype(np.uint32)
  if args.bits % 32:
    packed[:, -1] &= np.uint32((1 << (args.bits % 32)) - 1)
    queries[:, -1] &= np.uint32((1 << (args.bits % 32)) - 1)
  layout = np.ascontiguousarray(layout_lib.rows_to_layout(
      layout_lib.packed_to_rows(packed, bytes_per)))
  libs = {name: _library(tree) for name, tree in trees.items()}
  ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
  i64 = ctypes.c_int64

  def call(lib):
    d = np.empty((args.q, args.k), np.int32)
    i = np.empty_like(d)
    err = ctypes.create_string_buffer(512)
    t0 = time.perf_counter()
    if lib.MedhashLayoutTopk(ptr(layout), i64(args.n), i64(bytes_per),
                             ptr(queries), i64(args.q), i64(args.k), ptr(d),
                             ptr(i), err, i64(512)):
      raise RuntimeError(err.value.decode())
    return time.perf_counter() - t0, d, i

  results = {}
  for isa in args.isa or ["avx512"]:
    os.environ["MEDHASH_ISA"] = isa
    for threads in (1, 2):
      os.environ["MEDHASH_NUM_THREADS"] = str(threads)
      answers = {name: call(lib)[1:] for name, lib in libs.items()}  # warm-up
      if not all(np.array_equal(a, b) for a, b in zip(answers["old"],
                                                      answers["new"])):
        raise AssertionError(f"{isa}: the builds' answers differ")
      for r in range(args.rounds):
        for name in (["old", "new"] if r % 2 == 0 else ["new", "old"]):
          sec = call(libs[name])[0]
          results.setdefault((isa, name, threads), []).append(
              args.n * args.q / sec)
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--old", required=True, help="tree of build A")
  parser.add_argument("--new", required=True, help="tree of build B")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--isa", action="append", default=[],
                      help="MEDHASH_ISA values (repeatable; default avx512)")
  parser.add_argument("--n", type=int, default=200_000)
  parser.add_argument("--q", type=int, default=1_000)
  parser.add_argument("--bits", type=int, default=64)
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--in-process", action="store_true",
                      help="time the layout entry point of both libraries "
                      "in one process, call by call")
  args = parser.parse_args(argv)
  trees = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
  results = {}  # (isa, build, threads) -> [pairs/s per round]
  if args.in_process:
    results = in_process(trees, args)
  for r in range(0 if args.in_process else args.rounds):
    order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
    for isa in args.isa or ["avx512"]:
      for build in order:
        for threads, rate in run_once(trees[build], isa, args).items():
          results.setdefault((isa, build, threads), []).append(rate)
    print(f"round {r + 1}/{args.rounds} done", flush=True)
  how = ("MedhashLayoutTopk calls, in one process" if args.in_process else
         "retrieval.py runs")
  print(f"\nN={args.n:,} Q={args.q:,} K={args.bits} k={args.k}; median cpu "
        f"pairs/s over {args.rounds} interleaved {how} [min-max]")
  print("new/old: median of the per-round ratios (each new run over the old "
        "run beside it) [quartiles]")
  print(f"{'ISA':<8}{'threads':>8}{'old':>32}{'new':>32}{'new/old':>22}")
  for isa, threads in sorted({(i, t) for i, _, t in results}):
    old, new = results[(isa, "old", threads)], results[(isa, "new", threads)]
    cells = [f"{statistics.median(v):.3e} [{min(v):.2e}-{max(v):.2e}]"
             for v in (old, new)]
    ratios = [b / a for a, b in zip(old, new)]
    q1, q2, q3 = (statistics.quantiles(ratios, n=4) if len(ratios) > 1
                  else ratios * 3)
    ratio = f"{q2:.3f} [{q1:.2f}-{q3:.2f}]"
    print(f"{isa:<8}{threads:>8}{cells[0]:>32}{cells[1]:>32}{ratio:>22}")


if __name__ == "__main__":
  main()
