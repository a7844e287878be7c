"""`hamming_topk` and `hamming_histogram`: backend choice and chunking.

Every backend returns, per query, the k nearest database rows sorted by
(Hamming distance, database index). Work is chunked over queries and over the
database so that no Q x N matrix is ever materialised; chunk results are merged
by the same (distance, index) order, so chunking never changes the answer.
The merge is also what a sharded search uses across devices.

Backends:
  reference  plain jnp, full sort; the test oracle (slow: never the default).
  cpu        C++ XLA FFI kernel: SIMD popcount, threads, histogram selection.
  gpu        Pallas distance tiles + exact integer-key top-k (interpret mode
             when no GPU is present, which is how CI runs it).
  matmul     the tensor-core formulation d = (K - <b_q, b_i>) / 2, int8 inputs,
             int32 accumulation; the default on TPU.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from medhash_jax.retrieval import gpu_kernel
from medhash_jax.retrieval import packing
from medhash_jax.retrieval import reference

BACKENDS = ("auto", "reference", "cpu", "gpu", "matmul")
# Default GPU formulation; to be revisited with measurements on a lent GPU.
GPU_DEFAULT = "gpu"

# Distance-matrix elements one chunk may hold (reference / GPU paths).
_REFERENCE_BUDGET = 1 << 24
_GPU_BUDGET = 1 << 27
_CPU_QUERY_CHUNK = 1 << 14


@functools.cache
def _warn_once(message: str):
  logging.warning(message)


def _cpu_kernel():
  from medhash_jax.retrieval import cpu_kernel  # pylint: disable=g-import-not-at-top
  return cpu_kernel


def cpu_kernel_available() -> bool:
  """True when the compiled C++ kernel is loaded and registered."""
  try:
    return _cpu_kernel().available()
  except ImportError:
    return False


def resolve_backend(backend: str) -> str:
  """Maps "auto" to the fastest exact backend for the default JAX platform."""
  if backend not in BACKENDS:
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
  if backend == "cpu" and not cpu_kernel_available():
    raise RuntimeError(
        "backend='cpu' was requested but the C++ Hamming kernel is not "
        "available (no compiler at install time?); use backend='auto' to fall "
        "back to the reference path")
  if backend != "auto":
    return backend
  platform = jax.default_backend()
  if platform == "gpu":
    return GPU_DEFAULT
  if platform == "cpu":
    if cpu_kernel_available():
      return "cpu"
    _warn_once("medhash_jax: C++ Hamming kernel unavailable; using the slow "
               "reference backend")
    return "reference"
  return "matmul"


def _chunk_sizes(backend: str, q: int, n: int, words: int):
  if backend == "cpu":
    return min(q, _CPU_QUERY_CHUNK), n
  if backend == "reference":
    n_chunk = min(n, 1 << 20)
    return max(1, min(q, _REFERENCE_BUDGET // n_chunk)), n_chunk
  n_chunk = min(n, gpu_kernel.max_db_chunk(words), 1 << 22)
  return max(1, min(q, _GPU_BUDGET // n_chunk)), n_chunk


def _chunk_topk(backend: str, q, db, k: int):
  if backend == "cpu":
    return _cpu_kernel().hamming_topk_cpu(q, db, k)
  if backend == "reference":
    return reference.reference_topk(q, db, k)
  interpret = jax.default_backend() != "gpu"
  formulation = "pallas" if backend == "gpu" else "matmul"
  return gpu_kernel.gpu_topk(q, db, k, formulation=formulation,
                             interpret=interpret)


def merge_topk(dists, indices, k: int):
  """Merges per-chunk top-k lists (global indices) into one exact top-k."""
  if len(dists) == 1:
    return dists[0][:, :k], indices[0][:, :k]
  return reference.sort_by_distance_then_index(
      jnp.concatenate(dists, axis=1), jnp.concatenate(indices, axis=1), k)


def _query_chunks(query_packed, q_chunk: int):
  """Yields (start, rows, chunk) with the last chunk zero-padded to q_chunk rows
  so that every call has the same shape and compiles once."""
  q = query_packed.shape[0]
  for start in range(0, q, q_chunk):
    chunk = query_packed[start:start + q_chunk]
    rows = chunk.shape[0]
    if rows < q_chunk and start > 0:
      chunk = jnp.pad(chunk, ((0, q_chunk - rows), (0, 0)))
    yield start, rows, chunk


def hamming_topk(query_packed, db_packed, k: int, *, backend: str = "auto"):
  """The k nearest database codes of every query by Hamming distance.

  Args:
    query_packed: uint32 (Q, W) packed codes (see `pack_codes`).
    db_packed: uint32 (N, W) packed codes.
    k: number of neighbours, 1 <= k <= N.
    backend: "auto", "reference", "cpu", "gpu" or "matmul".

  Returns:
    (distances int32 (Q, k), indices int32 (Q, k)), each row sorted ascending
    by (distance, database index).
  """
  query_packed = jnp.asarray(query_packed)
  db_packed = jnp.asarray(db_packed)
  packing.check_query_db(query_packed, db_packed)
  n = db_packed.shape[0]
  k = packing.check_k(k, n)
  backend = resolve_backend(backend)
  q_chunk, n_chunk = _chunk_sizes(backend, query_packed.shape[0], n,
                                  db_packed.shape[1])
  out_d, out_i = [], []
  for _, rows, qc in _query_chunks(query_packed, q_chunk):
    dists, indices = [], []
    for n0 in range(0, n, n_chunk):
      dbc = db_packed[n0:n0 + n_chunk]
      d, i = _chunk_topk(backend, qc, dbc, min(k, dbc.shape[0]))
      dists.append(d)
      indices.append(i + np.int32(n0))
    d, i = merge_topk(dists, indices, k)
    out_d.append(d[:rows])
    out_i.append(i[:rows])
  if not out_d:  # zero queries
    empty = jnp.zeros((0, k), jnp.int32)
    return empty, empty
  if len(out_d) == 1:
    return out_d[0], out_i[0]
  return jnp.concatenate(out_d), jnp.concatenate(out_i)


def hamming_histogram(query_packed, db_packed, *, backend: str = "auto"):
  """Per-query counts of database items at each distance 0..32W.

  Returns:
    int32 (Q, 32 W + 1); entry [q, d] = #{i : hamming(q, i) = d}.
  """
  query_packed = jnp.asarray(query_packed)
  db_packed = jnp.asarray(db_packed)
  packing.check_query_db(query_packed, db_packed)
  backend = resolve_backend(backend)
  if backend == "cpu":
    return _cpu_kernel().hamming_histogram_cpu(query_packed, db_packed)
  n = db_packed.shape[0]
  q_chunk, n_chunk = _chunk_sizes("reference", query_packed.shape[0], n,
                                  db_packed.shape[1])
  out = []
  for _, rows, qc in _query_chunks(query_packed, q_chunk):
    hist = sum(reference.reference_histogram(qc, db_packed[n0:n0 + n_chunk])
               for n0 in range(0, n, n_chunk))
    out.append(hist[:rows])
  return jnp.concatenate(out) if out else jnp.zeros(
      (0, 32 * db_packed.shape[1] + 1), jnp.int32)


def hamming_distances(query_packed, db_packed):
  """All pairwise distances int32 (Q, N); materialises Q x N, so chunk Q."""
  query_packed = jnp.asarray(query_packed)
  db_packed = jnp.asarray(db_packed)
  packing.check_query_db(query_packed, db_packed)
  return reference.hamming_distances(query_packed, db_packed)
