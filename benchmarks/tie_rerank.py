r"""What users see at the top of a ranking with heavy Hamming ties.

  python benchmarks/tie_rerank.py --workdir=RUN [--k=10] [--out=results/DIR]

For the query split of a trained run (images the model did not train on),
encoded through the product path (`systems.open_run(...).encode_images` on
the decoded files), against the run's database, per class c:

  index      fraction of class-c hits in the top k of `hamming_topk` (ties
             broken by database index: the CLI before issue #12)
  tie_aware  its expectation over a uniformly random order of each tie group
             (what `precision@k/tie_aware` measures)
  seeded     ties in the seeded id-hash order only (query codes replaced by
             their signs, so the asymmetric term is constant in a group)
  rerank     what `Retriever.search` shows: asymmetric distance, then seeded

plus the share of queries whose k hits all lie at one distance, and
P@k (any shared label) under each order. Needs the run's data set for the
query split's files and labels.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from medhash_jax import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from medhash_jax import systems  # pylint: disable=g-import-not-at-top,wrong-import-position
from medhash_jax.retrieval import hamming_distances, hamming_topk, pack_codes  # pylint: disable=g-import-not-at-top,wrong-import-position
from medhash_jax.retrieval import rerank  # pylint: disable=g-import-not-at-top,wrong-import-position
from medhash_jax.train import inference  # pylint: disable=g-import-not-at-top,wrong-import-position


def _cpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def _query_split(workdir: str):
  cfg = inference.run_config(workdir)
  ds = data_lib.build_datasets(
      cfg.data, workdir=workdir, global_batch_size=cfg.train.batch_size,
      seed=cfg.seed, image_size=cfg.data.image_size,
      eval_batch_size=int(cfg.data.eval_batch_size or cfg.train.batch_size))
  q = ds.eval["query"]
  paths = np.asarray(ds.source.paths)[q.indices]
  labels = q.labels
  ds.close()
  return [str(p) for p in paths], labels


def measure(workdir: str, k: int):
  r = systems.open_run(workdir)
  snap = r._snap  # pylint: disable=protected-access
  db_labels = snap.labels > 0.5
  paths, q_labels = _query_split(workdir)
  q_labels = q_labels > 0.5
  t0 = time.perf_counter()
  _, images, _ = inference.read_images(paths)
  codes = r.encode_images(images)
  encode_s = time.perf_counter() - t0
  qp = np.asarray(pack_codes(codes))
  d_all = np.asarray(hamming_distances(qp, snap.packed))
  _, idx_index = hamming_topk(qp, snap.packed, k)
  idx_index = np.asarray(idx_index)
  t0 = time.perf_counter()
  _, idx_rerank, _ = rerank.rerank_topk(codes, snap.packed, k, keys=snap.keys)
  rerank_ms = (time.perf_counter() - t0) * 1e3 / len(codes)
  signs = np.where(codes >= 0, 1.0, -1.0).astype(np.float32)
  _, idx_seeded, _ = rerank.rerank_topk(signs, snap.packed, k, keys=snap.keys)
  kth = np.sort(d_all, axis=1)[:, k - 1]
  all_tied = float(np.mean(np.sort(d_all, axis=1)[:, 0] == kth))

  def frac(idx, c):   # mean over class-c queries of class-c share of the hits
    rows = np.flatnonzero(q_labels[:, c])
    return float(np.mean(db_labels[idx[rows]][:, :, c].mean(1)))

  def expected(c):
    rows = np.flatnonzero(q_labels[:, c])
    vals = []
    for qi in rows:
      less = d_all[qi] < kth[qi]
      group = d_all[qi] == kth[qi]
      share = db_labels[group, c].mean()
      vals.append((db_labels[less, c].sum() + (k - less.sum()) * share) / k)
    return float(np.mean(vals))

  def precision(idx):
    rel = (db_labels[idx] & q_labels[:, None, :]).any(-1)
    return float(rel.mean())

  def precision_expected():
    rel_all = (q_labels.astype(np.int32) @ db_labels.T.astype(np.int32)) > 0
    vals = []
    for qi in range(len(codes)):
      less = d_all[qi] < kth[qi]
      group = d_all[qi] == kth[qi]
      vals.append((rel_all[qi, less].sum() + (k - less.sum()) *
                   rel_all[qi, group].mean()) / k)
    return float(np.mean(vals))

  per_class = {}
  for c, name in enumerate(r.class_names):
    per_class[name] = {
        "queries": int(q_labels[:, c].sum()),
        "index": frac(idx_index, c), "tie_aware": expected(c),
        "seeded": frac(idx_seeded, c), "rerank": frac(idx_rerank, c)}
  return {
      "run": workdir, "info": {k_: v for k_, v in r.info.items()
                               if k_ != "path"},
      "k": k, "queries": len(codes), "database": len(snap),
      "queries_all_k_hits_tied": all_tied,
      "mean_boundary_group": float(np.mean(
          [(d_all[i] == kth[i]).sum() for i in range(len(codes))])),
      "class_share_in_top_k": per_class,
      f"precision@{k}": {"index": precision(idx_index),
                         "tie_aware": precision_expected(),
                         "seeded": precision(idx_seeded),
                         "rerank": precision(idx_rerank)},
      "encode_seconds": encode_s, "rerank_ms_per_query": rerank_ms,
      "machine": {"cpu_model": _cpu_model(), "python": platform.python_version()},
  }


def _markdown(m) -> str:
  k = m["k"]
  lines = [f"# Tie re-ranking: {m['info']['method']}, {m['info']['num_bits']} "
           f"bits, {m['info']['dataset']}", "",
           f"{m['queries']} query-split images (not trained on) against the "
           f"run's database of {m['database']} cases (stored class by class); "
           f"k = {k}. {100 * m['queries_all_k_hits_tied']:.1f} % of queries "
           f"have all {k} hits at one Hamming distance; the boundary tie group"
           f" holds {m['mean_boundary_group']:.0f} cases on average.", "",
           f"| queries of class | n | index order (old CLI) | tie-aware "
           f"expectation | seeded only | asymmetric re-rank (shown now) |",
           "|---|---|---|---|---|---|"]
  for name, v in m["class_share_in_top_k"].items():
    lines.append(f"| {name} (share of {name} in top {k}) | {v['queries']} | "
                 f"{v['index']:.3f} | {v['tie_aware']:.3f} | {v['seeded']:.3f}"
                 f" | {v['rerank']:.3f} |")
  p = m[f"precision@{k}"]
  lines.append(f"| all (P@{k}) | {m['queries']} | {p['index']:.3f} | "
               f"{p['tie_aware']:.3f} | {p['seeded']:.3f} | {p['rerank']:.3f} |")
  lines += ["", f"Re-ranking costs {m['rerank_ms_per_query']:.2f} ms per query"
            f" (whole boundary group collected). Machine: "
            f"{m['machine']['cpu_model']}."]
  return "\n".join(lines) + "\n"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--k", type=int, default=10)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  m = measure(args.workdir, args.k)
  md = _markdown(m)
  print(md)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tie_rerank.json"), "w") as f:
      json.dump(m, f, indent=2)
    with open(os.path.join(args.out, "README.md"), "w") as f:
      f.write(md)


if __name__ == "__main__":
  main()
