"""Reference Hamming search in plain jnp: the oracle every fast backend is tested against.

Distances are xor + `lax.population_count`; the top-k is a full lexicographic
sort by (distance, database index). It is exact and simple, and it is slow
(O(N log N) per query), so the dispatcher never picks it while a kernel exists.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


@jax.jit
def hamming_distances(query_packed: jax.Array, db_packed: jax.Array) -> jax.Array:
  """All pairwise Hamming distances, int32 (Q, N), of packed uint32 codes."""
  x = jnp.bitwise_xor(query_packed[:, None, :], db_packed[None, :, :])
  return jnp.sum(lax.population_count(x).astype(jnp.int32), axis=-1)


def sort_by_distance_then_index(dist: jax.Array, idx: jax.Array, k: int):
  """Sorts each row by (distance, index) and keeps the first k columns."""
  dist, idx = lax.sort((dist, idx), dimension=1, num_keys=2)
  return dist[:, :k], idx[:, :k]


@functools.partial(jax.jit, static_argnames="k")
def reference_topk(query_packed: jax.Array, db_packed: jax.Array, k: int):
  """Exact top-k by (distance, index) through a full sort of every row."""
  dist = hamming_distances(query_packed, db_packed)
  idx = lax.broadcasted_iota(jnp.int32, dist.shape, 1)
  return sort_by_distance_then_index(dist, idx, k)


@jax.jit
def reference_histogram(query_packed: jax.Array, db_packed: jax.Array) -> jax.Array:
  """Counts of database items at each distance 0..32W, int32 (Q, 32W + 1)."""
  dist = hamming_distances(query_packed, db_packed)
  num_bins = 32 * query_packed.shape[1] + 1
  return jax.vmap(lambda row: jnp.bincount(row, length=num_bins))(dist).astype(
      jnp.int32)
