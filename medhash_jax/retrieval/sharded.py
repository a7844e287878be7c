"""Hamming top-k over a database sharded across devices (and processes).

Each device searches its own shard with the fastest local backend; the
per-shard lists are gathered and merged by (distance, global index), which
gives exactly the single-device answer, ties across shard borders included.
Padding rows (added so the database splits evenly, or marked by `num_valid`)
get global indices >= num_valid and are removed before the merge; asking every
shard for k + (number of padding rows) candidates guarantees k real ones.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from medhash_jax.retrieval import packing
from medhash_jax.retrieval import reference
from medhash_jax.retrieval import topk


def database_mesh(axis: str = "data") -> jax.sharding.Mesh:
  """A 1-D mesh over all devices (all processes), with Auto axis semantics."""
  return jax.make_mesh((jax.device_count(),), (axis,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def shard_database(db_packed, mesh: jax.sharding.Mesh, axis: str = "data"):
  """Pads a host database to a multiple of the device count and shards it.

  Returns:
    (sharded uint32 (N', W) jax.Array, num_valid N).
  """
  db_packed = np.asarray(db_packed)
  packing.check_packed(db_packed, "db_packed")
  n = db_packed.shape[0]
  devices = mesh.shape[axis]
  padded = -(-n // devices) * devices
  db_packed = np.pad(db_packed, ((0, padded - n), (0, 0)))
  return jax.device_put(db_packed, NamedSharding(mesh, P(axis))), n


@functools.partial(jax.jit, static_argnames=("k", "num_valid", "mesh", "axis",
                                             "backend"))
def _sharded_topk(query_packed, db_sharded, *, k, num_valid, mesh, axis,
                  backend):
  devices = mesh.shape[axis]
  shard = db_sharded.shape[0] // devices
  pad = db_sharded.shape[0] - num_valid
  local_k = min(k + pad, shard)

  def local(q, db_shard):
    dist, idx = topk.hamming_topk(q, db_shard, local_k, backend=backend)
    idx = idx + lax.axis_index(axis) * shard
    return dist[None], idx[None]

  # check_vma=False: Pallas and FFI calls carry no varying-axis annotations.
  dist, idx = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis)),
                            out_specs=(P(axis), P(axis)),
                            check_vma=False)(query_packed,
                                                          db_sharded)
  q = query_packed.shape[0]
  dist = jnp.moveaxis(dist, 0, 1).reshape(q, devices * local_k)
  idx = jnp.moveaxis(idx, 0, 1).reshape(q, devices * local_k)
  # Padding rows sort after every real item, so they never enter the top k.
  dist = jnp.where(idx >= num_valid, jnp.iinfo(jnp.int32).max, dist)
  return reference.sort_by_distance_then_index(dist, idx, k)


def sharded_topk(query_packed, db_sharded, k: int, *, num_valid=None,
                 mesh=None, axis: str = "data", backend: str = "auto"):
  """Exact top-k of queries against a device-sharded database.

  Args:
    query_packed: uint32 (Q, W), replicated to every device.
    db_sharded: uint32 (N', W); a host array (sharded here) or a jax.Array
      already sharded on `axis` of `mesh` with N' divisible by the device count.
    k: 1 <= k <= num_valid.
    num_valid: rows >= num_valid are padding (default: all rows are real).
    mesh: the device mesh (default: `database_mesh(axis)`).
    axis: mesh axis the database is split on.
    backend: local backend per device (see `hamming_topk`).

  Returns:
    (distances int32 (Q, k), global indices int32 (Q, k)), identical to
    `hamming_topk` on the unsharded database.
  """
  mesh = database_mesh(axis) if mesh is None else mesh
  if not isinstance(db_sharded, jax.Array):
    db_sharded, host_valid = shard_database(db_sharded, mesh, axis)
    num_valid = host_valid if num_valid is None else num_valid
  query_packed = jnp.asarray(query_packed)
  packing.check_query_db(query_packed, db_sharded)
  n = db_sharded.shape[0]
  num_valid = n if num_valid is None else int(num_valid)
  if not 0 < num_valid <= n:
    raise ValueError(f"num_valid={num_valid} must be in [1, {n}] (rows of "
                     f"db_sharded {tuple(db_sharded.shape)})")
  if n % mesh.shape[axis]:
    raise ValueError(f"db_sharded has {n} rows, not a multiple of the "
                     f"{mesh.shape[axis]} devices on mesh axis {axis!r}")
  k = packing.check_k(k, num_valid)
  return _sharded_topk(query_packed, db_sharded, k=k, num_valid=num_valid,
                       mesh=mesh, axis=axis,
                       backend=topk.resolve_backend(backend))
