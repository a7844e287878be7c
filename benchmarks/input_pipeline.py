"""Throughput of the training input pipeline (images/s), and per CPU core.

Runs the real training pipeline of ``medhash_jax.data`` (decode, random resized
crop, flip, rotation, gray/RGB, normalisation, batching) for each image size
and worker count, and reports

  * images/s (wall clock),
  * images per CPU-second (CPU time of this process and its worker processes,
    read from /proc): the per-core figure, robust to a shared machine,
  * the 16-core projection (per-core figure x 16) against the goal of
    2,000 images/s at 224 px per 16-core GPU host.

Usage:
  PYTHONPATH=. python benchmarks/input_pipeline.py \
      [--dataset ham10000] [--sizes 28,64,224] [--workers 0,2] [--seconds 4]
      [--consumer_images_per_s 1200]   # the train step's consumption, if known
"""

from __future__ import annotations

import argparse
import itertools
import logging as py_logging
import os
import time

from medhash_jax import data

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_seconds(pid: int) -> float:
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
  except (OSError, IndexError, ValueError):
    return 0.0


def _descendants(pid: int) -> list[int]:
  children = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
      except (OSError, IndexError, ValueError):
        pass
  out, todo = [], [pid]
  while todo:
    p = todo.pop()
    for c in children.get(p, []):
      out.append(c)
      todo.append(c)
  return out


def cpu_seconds() -> float:
  """CPU time of this process (all threads) and of its live descendants."""
  me = os.getpid()
  return _proc_cpu_seconds(me) + sum(_proc_cpu_seconds(p) for p in _descendants(me))


def bench(dataset: str, size: int, workers: int, *, batch: int, seconds: float,
          root: str | None, threads: int, image_dtype: str = "float32") -> dict:
  cfg = data.default_data_config()
  cfg.name = dataset
  cfg.image_dtype = image_dtype
  if root:
    cfg.root = root
  cfg.download = False
  cfg.num_workers = workers
  cfg.read_threads = threads
  cfg.prefetch_buffer_size = 2 * batch
  cfg.worker_buffer_size = 2
  if dataset in data.MEDMNIST_2D:
    cfg.split = "official"
  ds = data.build_datasets(cfg, workdir=None, global_batch_size=batch, seed=0,
                           image_size=size, process_index=0, process_count=1)
  it = ds.train_iter
  try:
    for _ in range(3):  # warm-up: worker start, first decodes
      b = next(it)
    assert b["image"].shape == (batch, size, size, 3)
    n, c0, t0 = 0, cpu_seconds(), time.perf_counter()
    while True:
      next(it)
      n += batch
      dt = time.perf_counter() - t0
      if dt >= seconds and n >= 5 * batch:
        break
    cpu = cpu_seconds() - c0
  finally:
    ds.close()
  return dict(size=size, workers=workers, images=n, wall=dt, ips=n / dt,
              cpu=cpu, per_core=n / max(cpu, 1e-9))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--dataset", default="ham10000")
  ap.add_argument("--root", default=None, help="data root (default: $MEDHASH_DATA_DIR)")
  ap.add_argument("--sizes", default="28,64,224")
  ap.add_argument("--workers", default="0,2")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--threads", type=int, default=4, help="read threads per process")
  ap.add_argument("--seconds", type=float, default=4.0)
  ap.add_argument("--image_dtype", default="float32",
                  help="float32 (normalised in the pipeline) or uint8 "
                  "(normalised on device); comma-separated to run both")
  ap.add_argument("--consumer_images_per_s", type=float, default=0.0,
                  help="the train step's consumption, to print the headroom")
  args = ap.parse_args()
  py_logging.getLogger("absl").setLevel(py_logging.WARNING)

  ncpu = os.cpu_count() or 1
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  print(f"input pipeline benchmark: dataset={args.dataset}, batch={args.batch}, "
        f"augment on, {ncpu} CPU cores, load average {load:.1f}")
  print(f"{'dtype':>7} {'size':>5} {'workers':>7} {'images/s':>9} "
        f"{'img/CPU-s':>9} {'x16 cores':>9}  note")
  rows = []
  grid = itertools.product(args.image_dtype.split(","),
                           (int(x) for x in args.sizes.split(",")),
                           [int(x) for x in args.workers.split(",")])
  for dtype, size, w in grid:
    r = bench(args.dataset, size, w, batch=args.batch, seconds=args.seconds,
              root=args.root, threads=args.threads, image_dtype=dtype)
    rows.append(r)
    note = ""
    if size == 224:
      verdict = "meets" if r["per_core"] * 16 >= 2000 else "misses"
      note = f"{verdict} 2,000 img/s per 16-core host"
    if args.consumer_images_per_s:
      note += f"; {r['ips'] / args.consumer_images_per_s:.2f}x the train step"
    print(f"{dtype:>7} {size:>5} {w:>7} {r['ips']:>9.0f} {r['per_core']:>9.0f} "
          f"{16 * r['per_core']:>9.0f}  {note}", flush=True)
  if not args.consumer_images_per_s:
    print("train step consumption: pass --consumer_images_per_s (see "
          "benchmarks/train_step.py) to print the headroom.")
  return rows


if __name__ == "__main__":
  main()
