"""GPU Hamming top-k: a Pallas distance kernel plus an exact integer-key top-k.

Two GPU formulations are kept, selected by `hamming_topk(backend=...)`:
- "gpu": a Pallas kernel computes a (block_q, block_n) tile of distances with
  xor + popcount on uint32 words (the words are laid out (W, n) so each row load
  is contiguous);
- "matmul": the tensor-core form d = (K' - <b_q, b_i>) / 2 with +-1 int8 codes
  and int32 accumulation (K' = 32 W; the zero padding bits agree on both sides
  and add nothing).
Both then select with `lax.top_k` on the integer key d * n + i, which is unique
per item, so the result is exactly ordered by (distance, index) with no tie
ambiguity. On a machine without a GPU the Pallas kernel runs with
`interpret=True`, which is how CI tests it.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

# The combined key d * n + i must fit in int32: (32 W + 1) * n < 2**31.
MAX_KEY = 2**31 - 1


def _next_pow2(x: int) -> int:
  return 1 << max(0, (x - 1).bit_length())


def _distance_tile_kernel(q_ref, db_ref, out_ref):
  """One (block_q, block_n) tile of distances; refs are (W, block) uint32."""
  words = q_ref.shape[0]
  acc = jnp.zeros(out_ref.shape, jnp.int32)
  for w in range(words):  # W is small and static: unrolled
    x = jnp.bitwise_xor(q_ref[w, :][:, None], db_ref[w, :][None, :])
    acc += lax.population_count(x).astype(jnp.int32)
  out_ref[...] = acc


@functools.partial(jax.jit, static_argnames=("block_q", "block_n", "interpret"))
def pallas_distances(query_packed, db_packed, *, block_q=64, block_n=256,
                     interpret=False):
  """Hamming distances (Q, N) int32 computed tile by tile in Pallas."""
  q, w = query_packed.shape
  n = db_packed.shape[0]
  wp = _next_pow2(w)  # Triton block shapes are powers of two; zero words add 0
  qp = -(-q // block_q) * block_q
  np_ = -(-n // block_n) * block_n
  qt = jnp.pad(query_packed, ((0, qp - q), (0, wp - w))).T
  dbt = jnp.pad(db_packed, ((0, np_ - n), (0, wp - w))).T
  out = pl.pallas_call(
      _distance_tile_kernel,
      out_shape=jax.ShapeDtypeStruct((qp, np_), jnp.int32),
      grid=(qp // block_q, np_ // block_n),
      in_specs=[pl.BlockSpec((wp, block_q), lambda i, j: (0, i)),
                pl.BlockSpec((wp, block_n), lambda i, j: (0, j))],
      out_specs=pl.BlockSpec((block_q, block_n), lambda i, j: (i, j)),
      interpret=interpret,
  )(qt, dbt)
  return out[:q, :n]


@jax.jit
def matmul_distances(query_packed, db_packed):
  """Hamming distances via an int8 inner product with int32 accumulation."""
  def signs(packed):
    shifts = jnp.arange(32, dtype=jnp.uint32)
    bits = (packed[:, :, None] >> shifts) & jnp.uint32(1)
    return (2 * bits.reshape(packed.shape[0], -1).astype(jnp.int8) - 1)
  kp = 32 * query_packed.shape[1]
  ip = lax.dot_general(signs(query_packed), signs(db_packed),
                       (((1,), (1,)), ((), ())),
                       preferred_element_type=jnp.int32)
  return (kp - ip) // 2


def max_db_chunk(words: int) -> int:
  """Largest database chunk whose combined keys fit in int32."""
  return MAX_KEY // (32 * words + 1)


def topk_from_distances(dist: jax.Array, k: int):
  """Exact (distance, index)-ordered top-k of an int32 (Q, n) distance matrix."""
  n = dist.shape[1]
  key = dist * n + lax.broadcasted_iota(jnp.int32, dist.shape, 1)
  neg, _ = lax.top_k(-key, k)
  key = -neg
  return key // n, key % n


@functools.partial(jax.jit, static_argnames=("k", "formulation", "interpret"))
def gpu_topk(query_packed, db_packed, k, *, formulation="pallas",
             interpret=False):
  """Top-k of one database chunk on the GPU (see module docstring)."""
  if formulation == "pallas":
    dist = pallas_distances(query_packed, db_packed, interpret=interpret)
  elif formulation == "matmul":
    dist = matmul_distances(query_packed, db_packed)
  else:
    raise ValueError(f"unknown GPU formulation {formulation!r}")
  return topk_from_distances(dist, k)
