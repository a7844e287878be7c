"""Serving latency on loopback: `python -m medhash_jax.serve` under load.

  PYTHONPATH=$PWD MEDHASH_DATA_DIR=/work/shared/data \
    python benchmarks/serve.py [--workdir=RUN] [--requests=200] [--grow=1000000]

For a run (default: the test fixture run, DPSH smoke on 168 staged COVID-19
Radiography X-rays, trained into --scratch if missing) it starts the real
server on 127.0.0.1 (ephemeral port) and sends real multipart PNG queries
(staged 128x128 chest X-rays) with httpx:

  * sequential: one request at a time;
  * concurrent: 8 client threads;

reporting client-side p50 / p95 / p99 latency and throughput, and the
server's own split of each request (decode / encode / search, from the
response's `timing_ms`). Then the database is grown to --grow cases with
synthetic random codes, appended through the API's code path
(`Retriever.add_codes`: the checks, the append-only segment file and the
snapshot swap that POST /api/cases goes through, without the encoder), the
server is restarted on it, and both loads are measured again, with the
search share of the request time. Then one POST /api/cases on the grown
database is timed (an add must not cost O(database)).

Writes JSON to --output and prints a markdown table (benchmarks/README.md).
"""

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from medhash_jax.systems import added_cases  # noqa: E402
from tests import dicom_files  # noqa: E402  (staged X-ray paths)
from tests import serve_harness  # noqa: E402


_TOKEN = "bench-token"


def _cpu() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True,
                         check=False).stdout
    for line in out.splitlines():
      if line.startswith("Model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def _pct(xs, q):
  return float(np.percentile(np.asarray(xs, np.float64), q))


def _load(url: str, queries, n: int, concurrency: int, k: int):
  """n searches, `concurrency` at a time; client latencies + server splits."""

  def one(i):
    with_client = clients[i % concurrency]
    t = time.perf_counter()
    r = with_client.post("/api/search", data={"k": str(k)},
                         files={"file": ("q.png", queries[i % len(queries)])})
    dt = (time.perf_counter() - t) * 1000.0
    r.raise_for_status()
    return dt, r.json()["timing_ms"]

  clients = [httpx.Client(base_url=url, timeout=120) for _ in range(concurrency)]
  try:
    for i in range(min(8, n)):      # warm connections and code paths
      one(i)
    t0 = time.perf_counter()
    if concurrency == 1:
      res = [one(i) for i in range(n)]
    else:
      with concurrent.futures.ThreadPoolExecutor(concurrency) as ex:
        res = list(ex.map(one, range(n)))
    wall = time.perf_counter() - t0
  finally:
    for c in clients:
      c.close()
  lat = [r[0] for r in res]
  split = {p: [r[1][p] for r in res] for p in ("read", "decode", "encode",
                                              "search", "total")}
  out = {"requests": n, "concurrency": concurrency, "k": k,
         "throughput_rps": n / wall,
         "latency_ms": {"p50": _pct(lat, 50), "p95": _pct(lat, 95),
                        "p99": _pct(lat, 99), "mean": float(np.mean(lat))},
         "server_ms_p50": {p: _pct(v, 50) for p, v in split.items()},
         "server_ms_mean": {p: float(np.mean(v)) for p, v in split.items()}}
  out["search_share_of_request"] = (out["server_ms_mean"]["search"] /
                                    out["latency_ms"]["mean"])
  out["search_share_of_server_time"] = (out["server_ms_mean"]["search"] /
                                        out["server_ms_mean"]["total"])
  return out


def _measure(run: str, queries, args, log_dir: str, label: str):
  with serve_harness.Server(run, log_dir=log_dir, timeout=900,
                            token=_TOKEN) as s:
    info = httpx.get(s.url + "/api/info", timeout=60).json()
    print(f"[{label}] {info['num_cases']} cases, {info['num_bits']} bits",
          flush=True)
    seq = _load(s.url, queries, args.requests, 1, args.k)
    conc = _load(s.url, queries, args.requests, args.concurrency, args.k)
    add = _adds(s.url, queries, label)
  return {"num_cases": info["num_cases"], "num_bits": info["num_bits"],
          "sequential": seq, "concurrent": conc, "add_case_ms": add}


def _adds(url: str, queries, label: str, n: int = 5):
  """Client latency of n POST /api/cases (encode + segment write + swap)."""
  lat = []
  with httpx.Client(base_url=url, timeout=120) as c:
    for j in range(n):
      t = time.perf_counter()
      r = c.post("/api/cases", headers={"Authorization": "Bearer " + _TOKEN},
                 files={"file": ("a.png", queries[j % len(queries)])},
                 data={"id": f"bench-add/{label}-{j}"})
      lat.append((time.perf_counter() - t) * 1000.0)
      r.raise_for_status()
  return {"p50": _pct(lat, 50), "max": float(max(lat)), "n": n}


def _grow(run: str, target: int, seed: int = 0) -> float:
  from medhash_jax import systems  # pylint: disable=g-import-not-at-top
  r = systems.open_run(run)
  n = r.info["num_cases"]
  if n >= target:
    return 0.0
  m = target - n
  rng = np.random.default_rng(seed)
  codes = rng.standard_normal((m, r.num_bits)).astype(np.float32)
  ids = [f"synthetic/{j:07d}" for j in range(m)]
  labels = [[r.class_names[j % len(r.class_names)]] for j in range(m)]
  t = time.perf_counter()
  r.add_codes(codes, ids, labels)
  return time.perf_counter() - t


def _row(name, n, d):
  lat, sp = d["latency_ms"], d["server_ms_p50"]
  return (f"| {name} | {n:,} | {d['concurrency']} | {lat['p50']:.1f} | "
          f"{lat['p95']:.1f} | {lat['p99']:.1f} | {d['throughput_rps']:.1f} | "
          f"{sp['decode']:.2f} | {sp['encode']:.2f} | {sp['search']:.2f} | "
          f"{100 * d['search_share_of_request']:.1f} % |")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", default="", help="a trained run or bundle")
  ap.add_argument("--scratch", default="/tmp/medhash_serve_bench")
  ap.add_argument("--data_dir", default=os.environ.get("MEDHASH_DATA_DIR", ""))
  ap.add_argument("--requests", type=int, default=200)
  ap.add_argument("--concurrency", type=int, default=8)
  ap.add_argument("--k", type=int, default=10)
  ap.add_argument("--grow", type=int, default=1_000_000)
  ap.add_argument("--output", default="")
  args = ap.parse_args()
  os.makedirs(args.scratch, exist_ok=True)
  src = args.workdir or serve_harness.train_run(
      args.data_dir, os.path.join(args.scratch, "fixture"))
  run = os.path.join(args.scratch, "served")
  if os.path.exists(run):
    shutil.rmtree(run)
  shutil.copytree(src, run, ignore=shutil.ignore_patterns("added_cases.npz", "added"))
  queries = []
  for cls in ("COVID", "Normal"):
    for i in range(300, 316):
      with open(dicom_files.staged_xray(args.data_dir, cls, i), "rb") as f:
        queries.append(f.read())
  result = {"machine": {"cpu": _cpu(), "cores": os.cpu_count(),
                        "python": platform.python_version()},
            "query": "staged 128x128 grayscale PNG chest X-rays, multipart"}
  result["base"] = _measure(run, queries, args, args.scratch, "base")
  if args.grow:
    t_grow = _grow(run, args.grow)
    print(f"grew the database to {args.grow:,} cases in {t_grow:.1f} s",
          flush=True)
    result["grow_seconds"] = t_grow
    result["added_cases_bytes"] = sum(
        os.path.getsize(p) for p in added_cases.segment_paths(run))
    result["grown"] = _measure(run, queries, args, args.scratch, "grown")
  out = args.output or os.path.join(args.scratch, "serve_bench.json")
  with open(out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  print(f"\nmachine: {result['machine']['cpu']} ({result['machine']['cores']} "
        "cores)")
  print("| database | cases | clients | p50 ms | p95 ms | p99 ms | req/s | "
        "decode ms | encode ms | search ms | search / request |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for key in ("base", "grown"):
    if key in result:
      r = result[key]
      for mode in ("sequential", "concurrent"):
        print(_row(key, r["num_cases"], r[mode]))
  for key in ("base", "grown"):
    if key in result:
      a = result[key]["add_case_ms"]
      print(f"POST /api/cases on {key} ({result[key]['num_cases']:,} cases): "
            f"p50 {a['p50']:.1f} ms, max {a['max']:.1f} ms over {a['n']}")
  print(f"\nJSON: {out}")


if __name__ == "__main__":
  main()
