r"""Scaling with the device count: sharded Hamming search and the train step.

  # search: 10M codes of 64 bits, k=100, 256 queries, on 1/2/4 devices
  PYTHONPATH=. python benchmarks/scaling.py --part=search --devices=1,2,4
  # train step: smoke model, 16 images per device (weak scaling)
  PYTHONPATH=. python benchmarks/scaling.py --part=train --devices=1,2,4
  # the same over N processes on this machine (launch/local.py, 1 device each)
  PYTHONPATH=. python benchmarks/scaling.py --part=search --processes=2

On CPU the devices are fake (`--fake_devices`, XLA's host-platform device
count) and share the machine's cores, so the efficiency column measures the
sharding overhead on a fixed amount of hardware, not the speed-up that real
accelerators give. On GPU/TPU `--devices` takes the first N real devices.

Columns: rate (queries/s or images/s, the median of --repeats timed calls,
with their min-max), speed-up over one device, efficiency = speed-up /
devices; memory per device = codes held by each device (search) and, where
the platform reports it, peak device memory. Search: every sharded answer
(distances and indices of every query, all k) must equal the unsharded
`hamming_topk`'s, and each device count's the 1-device one's; the script
fails otherwise.
"""

import argparse
import json
import os
import resource
import sys
import time


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--part", choices=["search", "train", "all"], default="all")
  p.add_argument("--devices", default="1,2,4",
                 help="device counts to measure (each <= available)")
  p.add_argument("--fake_devices", type=int, default=4,
                 help="CPU only: XLA host-platform device count")
  p.add_argument("--processes", type=int, default=1,
                 help="> 1: run over that many local processes "
                      "(launch/local.py), 1 device each")
  p.add_argument("--db_size", type=int, default=10_000_000)
  p.add_argument("--bits", type=int, default=64)
  p.add_argument("--queries", type=int, default=256)
  p.add_argument("--k", type=int, default=100)
  p.add_argument("--per_device_batch", type=int, default=16)
  p.add_argument("--image_size", type=int, default=28)
  p.add_argument("--width", type=int, default=8,
                 help="ResNet-18 width of the train-step model (64 = full)")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--json", default="", help="write the rows here")
  p.add_argument("--worker_out", default="", help=argparse.SUPPRESS)
  return p.parse_args(argv)


ARGS = _args()
if ARGS.processes <= 1 and not ARGS.worker_out:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count="
                             f"{ARGS.fake_devices}").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # pylint: disable=wrong-import-position
from medhash_jax import distributed  # pylint: disable=wrong-import-position

if ARGS.worker_out:
  distributed.initialize()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position,wrong-import-order
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


def _peak_device_bytes(devices):
  """Max peak_bytes_in_use over devices, or None (CPU reports nothing)."""
  peaks = []
  for d in devices:
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  return max(peaks) if peaks else None


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- search -----------------------------------------------------------------

def _random_packed(rng, n, words, chunk=1 << 22):
  out = np.empty((n, words), np.uint32)
  for s in range(0, n, chunk):
    out[s:s + chunk] = rng.integers(0, 1 << 32, (min(chunk, n - s), words),
                                    dtype=np.uint32)
  if ARGS.bits % 32:
    out[:, -1] &= np.uint32((1 << (ARGS.bits % 32)) - 1)
  return out


def _rates(seconds):
  """(median, min, max) queries/s of timed calls."""
  m, lo, hi = timing.median_spread(seconds)
  return ARGS.queries / m, ARGS.queries / hi, ARGS.queries / lo


def search_rows(device_counts):
  from medhash_jax import retrieval  # pylint: disable=g-import-not-at-top
  from medhash_jax.retrieval import sharded  # pylint: disable=g-import-not-at-top
  words = -(-ARGS.bits // 32)
  n, me, procs = ARGS.db_size, jax.process_index(), jax.process_count()
  # Every process draws only its own part (a real archive never sits whole
  # on one host); the parts are the same as slices of one global draw.
  lo, hi = n * me // procs, n * (me + 1) // procs
  local = _random_packed(np.random.default_rng(1000 + me), hi - lo, words)
  queries = _random_packed(np.random.default_rng(7), ARGS.queries, words)
  rows, answers = [], {}
  for d in device_counts:
    if procs > 1 and d != jax.device_count():
      continue  # across processes: the whole mesh only
    devices = jax.devices()[:d]
    mesh = jax.make_mesh((d,), ("data",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))
    t0 = time.perf_counter()
    db = sharded.assemble_database(local, mesh)
    build_s = time.perf_counter() - t0
    times, last = timing.interleaved_rounds(
        {"sharded": lambda _: jax.block_until_ready(
            sharded.sharded_topk(queries, db, ARGS.k))}, ARGS.repeats)
    rate, rate_lo, rate_hi = _rates(times["sharded"])
    answers[d] = tuple(np.asarray(a) for a in last["sharded"])
    rows.append({"part": "search", "devices": d, "processes": procs,
                 "db_size": n, "bits": ARGS.bits, "k": ARGS.k,
                 "queries": ARGS.queries, "rate": rate,
                 "rate_min_max": [rate_lo, rate_hi], "unit": "queries/s",
                 "codes_mb_per_device": db.bytes_per_device / 2**20,
                 "peak_device_mb": (_peak_device_bytes(devices) or 0) / 2**20
                                   or None,
                 "build_s": build_s, "host_rss_mb": _rss_mb()})
    del db
  # The unsharded single-device call, for reference (one process only).
  if procs == 1 and 1 in device_counts:
    dbj = jax.device_put(local, jax.devices()[0])
    times, last = timing.interleaved_rounds(
        {"unsharded": lambda _: jax.block_until_ready(
            retrieval.hamming_topk(queries, dbj, ARGS.k))}, ARGS.repeats)
    rate, rate_lo, rate_hi = _rates(times["unsharded"])
    want = tuple(np.asarray(a) for a in last["unsharded"])
    for d, got in answers.items():   # every query, every neighbour
      for what, g, w in zip(("distances", "indices"), got, want):
        if not np.array_equal(g, w):
          bad = np.flatnonzero((g != w).any(axis=1))
          raise AssertionError(
              f"{d} device(s): sharded {what} differ from the unsharded "
              f"answer in {bad.size} of {len(w)} queries (first: {bad[:5]})")
    print(f"sharded == unsharded on all {len(want[0])} queries x {ARGS.k} "
          f"neighbours for {sorted(answers)} devices", flush=True)
    rows.append({"part": "search", "devices": "1 (unsharded hamming_topk)",
                 "processes": 1, "rate": rate, "rate_min_max": [rate_lo, rate_hi],
                 "unit": "queries/s",
                 "codes_mb_per_device": local.nbytes / 2**20,
                 "same_answer": True, "rows_checked": int(len(want[0]))})
  return rows


# -- train step ---------------------------------------------------------------

def train_rows(device_counts):
  from configs import dpsh  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import optim as optim_lib  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import task as task_lib  # pylint: disable=g-import-not-at-top
  c = dpsh.get_config("smoke")
  with c.unlocked():
    c.model.kwargs.width = ARGS.width
    c.model.kwargs.small_input = ARGS.image_size < 64
    c.data.image_size = ARGS.image_size
  rows = []
  procs = jax.process_count()
  for d in device_counts:
    if procs > 1 and d != jax.device_count():
      continue
    mesh = mesh_lib.make_mesh(d)
    gb = ARGS.per_device_batch * d
    local_b = gb // procs
    rng = np.random.default_rng(jax.process_index())
    labels = np.eye(2, dtype=np.float32)[rng.integers(0, 2, local_b)]
    batch = mesh_lib.shard_batch({
        "image": rng.standard_normal(
            (local_b, ARGS.image_size, ARGS.image_size, 1)).astype(np.float32),
        "labels": labels, "label_mask": np.ones_like(labels)}, mesh)
    task = task_lib.build_task(c, num_classes=2, multi_label=False)
    variables = task.init(0, {"image": batch["image"]}, mesh)
    tx, sched = optim_lib.build_optimizer(c.optim, variables["params"], 1000)
    st = state_lib.create_train_state(apply_fn=task.model.apply,
                                      variables=variables, tx=tx,
                                      rng=state_lib.root_key(0), mesh=mesh)
    step = step_lib.make_train_step(task.objective, sched, mesh=mesh,
                                    state_example=st)
    root = jnp.array(st.rng)
    t0 = time.perf_counter()
    st, m = step(st, batch, root)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    rates = []
    for _ in range(ARGS.repeats):
      t0 = time.perf_counter()
      for _ in range(ARGS.steps):
        st, m = step(st, batch, root)
      jax.block_until_ready(m)
      rates.append(ARGS.steps * gb / (time.perf_counter() - t0))
    rows.append({"part": "train", "devices": d, "processes": procs,
                 "global_batch": gb, "image_size": ARGS.image_size,
                 "width": ARGS.width, "rate": float(np.median(rates)),
                 "rate_min_max": [min(rates), max(rates)], "unit": "images/s",
                 "compile_s": compile_s,
                 "peak_device_mb": (_peak_device_bytes(mesh.devices.flat)
                                    or 0) / 2**20 or None,
                 "loss": float(m["loss"])})
  return rows


def _table(rows):
  lines = []
  by_part = {}
  for r in rows:
    by_part.setdefault(r["part"], []).append(r)
  for part, rs in by_part.items():
    base = next((r["rate"] for r in rs if r["devices"] == 1), None)
    lines.append(f"\n{part}: " + (
        f"N={rs[0].get('db_size')}, K={rs[0].get('bits')}, k={rs[0].get('k')}, "
        f"Q={rs[0].get('queries')}" if part == "search" else
        f"{rs[0]['image_size']} px, ResNet-18 width {rs[0]['width']}, "
        f"{ARGS.per_device_batch} images per device"))
    lines.append(f"| devices | processes | {rs[0]['unit']} | speed-up | "
                 "efficiency | codes MB/device | peak device MB |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in rs:
      d = r["devices"]
      speed = r["rate"] / base if base and isinstance(d, int) else None
      eff = speed / d if speed is not None else None
      mb = r.get("codes_mb_per_device")
      peak = r.get("peak_device_mb")
      lo, hi = r.get("rate_min_max", (r["rate"], r["rate"]))
      lines.append(
          f"| {d} | {r['processes']} | {r['rate']:.1f} ({lo:.1f}-{hi:.1f}) | "
          f"{'' if speed is None else f'{speed:.2f}x'} | "
          f"{'' if eff is None else f'{eff:.2f}'} | "
          f"{'' if mb is None else f'{mb:.1f}'} | "
          f"{'' if not peak else f'{peak:.0f}'} |")
  return "\n".join(lines)


def _device_counts():
  want = [int(x) for x in ARGS.devices.split(",") if x]
  have = jax.device_count()
  return [d for d in want if d <= have] or [have]


def _run_multiprocess():
  """Re-runs this script as N local processes; returns process 0's rows."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from launch import local  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "rows.json")
    argv = [a for a in sys.argv[1:] if not a.startswith("--processes")]
    cmd = [sys.executable, os.path.abspath(__file__), *argv,
           f"--worker_out={out}", f"--devices={ARGS.processes}"]
    env = dict(os.environ, PYTHONPATH=root + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    res = local.run(cmd, ARGS.processes, log_dir=os.path.join(tmp, "logs"),
                    env=env, cwd=root, timeout=1800)
    if res.returncode:
      raise SystemExit(f"worker failed:\n{res.log(res.failed or 0)[-3000:]}")
    with open(out, encoding="utf-8") as f:
      return json.load(f)


def main():
  if ARGS.processes > 1 and not ARGS.worker_out:
    rows = _run_multiprocess()
    header = f"{ARGS.processes} local processes x 1 CPU device (gloo)"
  else:
    counts = _device_counts()
    rows = []
    if ARGS.part in ("search", "all"):
      rows += search_rows(counts)
    if ARGS.part in ("train", "all"):
      rows += train_rows(counts)
    if ARGS.worker_out:
      if jax.process_index() == 0:
        with open(ARGS.worker_out, "w", encoding="utf-8") as f:
          json.dump(rows, f)
      return
    dev = jax.devices()[0]
    header = (f"{dev.platform} {dev.device_kind} x{jax.device_count()}, jax "
              f"{jax.__version__}, {os.cpu_count()} host cores")
  print(header + _table(rows))
  if ARGS.json:
    with open(ARGS.json, "w", encoding="utf-8") as f:
      json.dump({"header": header, "rows": rows}, f, indent=2, default=str)


if __name__ == "__main__":
  main()
