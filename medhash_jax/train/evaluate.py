"""Retrieval evaluation: encode splits on all devices, index, report.

Encoding runs one jitted function over the mesh on fixed-shape, padded batches
(the data layer pads every eval batch and marks padding `valid=False`), so a
split of any size compiles once and every device works; rows are put back in
split order by `index`. Codes are the real-valued hash outputs; the binary code
is `code >= 0` (DESIGN.md), applied by `pack_codes` / `HammingIndex`.

Protocol: model selection uses val queries against the train gallery;
the reported numbers use query (= test) against database. The test split is
encoded only by `evaluate_test`, after selection.
"""

import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from medhash_jax.data import rows as rows_lib
from medhash_jax.train import mesh as mesh_lib


def _to_host(x) -> np.ndarray:
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def make_encode_fn(encode: Callable[[Any, Dict[str, jax.Array]], jax.Array],
                   mesh) -> Callable:
  """jit(encode)(variables, batch) with the output gathered replicated."""
  return jax.jit(encode, out_shardings=mesh_lib.replicated(mesh))


def map_split(fn, variables, eval_ds, mesh, *, input_keys: Sequence[str]
              ) -> Tuple[np.ndarray, float]:
  """`fn(variables, inputs)` over an EvalDataset's padded batches: float32
  (size, ...) rows in split order (codes, logits, features).

  Multi-process safe: each batch's output, positions and validity are
  gathered from every process before rows are put in place.

  Returns:
    (codes, seconds per image), the timing taken over every batch after the
    first (which compiles); with a single batch it is re-run once for timing.
  """
  rows = rows_lib.SplitRows(eval_ds.size, f"split {eval_ds.name!r}",
                           np.float32, what="output")
  timed_s, timed_n = 0.0, 0
  first = None
  for batch in eval_ds:
    inputs = mesh_lib.shard_batch({k: batch[k] for k in input_keys}, mesh)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(variables, inputs))
    dt = time.perf_counter() - t0
    if first is None:
      first = inputs
    else:
      timed_s += dt
      timed_n += out.shape[0]
    rows.put(_to_host(out), _to_host(mesh_lib.shard_batch(batch["index"], mesh)),
             _to_host(mesh_lib.shard_batch(batch["valid"], mesh)))
  codes = rows.result()
  if timed_n == 0:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(variables, first))
    timed_s = time.perf_counter() - t0
    timed_n = eval_ds.global_batch_size
  return codes, timed_s / max(timed_n, 1)


def retrieval_metrics(query_codes, db_codes, query_labels, db_labels, *, ks,
                      report_fn) -> Dict[str, float]:
  """The metrics module's report, as plain floats."""
  report = report_fn(query_codes, db_codes, query_labels, db_labels, ks=tuple(ks))
  return {k: float(v) for k, v in report.items()
          if np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.number)}


def evaluate_pair(encode_fn, variables, query_ds, db_ds, mesh, *, input_keys,
                  ks, report_fn, db_codes: Optional[np.ndarray] = None):
  """(metrics, query codes, db codes, encode s/image) for one query/db pair."""
  q_codes, s_per_image = map_split(encode_fn, variables, query_ds, mesh,
                                      input_keys=input_keys)
  if db_codes is None:
    db_codes, _ = map_split(encode_fn, variables, db_ds, mesh,
                               input_keys=input_keys)
  metrics = retrieval_metrics(q_codes, db_codes, query_ds.labels, db_ds.labels,
                              ks=ks, report_fn=report_fn)
  return metrics, q_codes, db_codes, s_per_image


def time_search(index, query_codes: np.ndarray, k: int) -> float:
  """Milliseconds per query of `index.search` (after one warm-up call)."""
  k = max(1, min(int(k), len(index)))
  index.search(query_codes[: min(8, len(query_codes))], k)
  t0 = time.perf_counter()
  index.search(query_codes, k)
  return (time.perf_counter() - t0) * 1e3 / max(len(query_codes), 1)


def log_metrics(prefix: str, metrics: Dict[str, float]):
  """The headline numbers (the writers get every key, this log only the
  index-ordered mAP / nDCG / precision)."""
  keys = [k for k in sorted(metrics)
          if "/" not in k and k.startswith(("map@", "ndcg@", "precision@"))]
  logging.info("%s: %s", prefix, ", ".join(f"{k}={metrics[k]:.4f}"
                                            for k in keys or sorted(metrics)))
