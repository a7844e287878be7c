"""Hamming top-k over a database sharded across devices (and processes).

Each device searches its own shard with the fastest local backend; the
per-shard lists are gathered and merged by (distance, global index), which
gives exactly the single-device answer, ties across shard borders included.

Layout. The database is one global uint32 (D * S, W) array split on a mesh
axis of D devices, S rows per device. Device d holds `shard_valid[d]` real
rows followed by padding; its first row is database item `shard_base[d]`.
Real rows keep the database order across devices (bases increase with d), so
the merge key (distance, base + local row) is the single-device key. Padding
rows are given distance and index INT32_MAX before the merge, so they sort
after every real item; each shard returns k + (most padding rows of any shard)
candidates (capped at S), which guarantees its k best real rows are among them.

Two ways to build one:
  shard_database(db, mesh)         one process holds the whole database: it is
                                   padded at the end and split evenly.
  assemble_database(local, mesh)   every process holds a part (any sizes, also
                                   0): process p's part is database items
                                   [sum of sizes before p, ... + size_p), split
                                   over p's devices; no process ever holds more
                                   than its part (multi-process evaluation,
                                   archives larger than one host's memory).
`ShardedHammingIndex` wraps the second with HammingIndex-like search and ids.

Codes per device come in two forms: uint32 rows (`array`, any backend), or,
with `assemble_database(..., layout_bits=K)`, the C++ kernel's block layout
(`layout`, ceil(K / 8) bytes a code, layout.py), which the cpu backend reads
in place, as HammingIndex does, instead of building it on every search.
ShardedHammingIndex uses the layout whenever its backend is the cpu kernel.
"""

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from medhash_jax.retrieval import layout as layout_lib
from medhash_jax.retrieval import packing
from medhash_jax.retrieval import reference
from medhash_jax.retrieval import topk

_INT32_MAX = np.iinfo(np.int32).max


def database_mesh(axis: str = "data") -> jax.sharding.Mesh:
  """A 1-D mesh over all devices (all processes), with Auto axis semantics."""
  return jax.make_mesh((jax.device_count(),), (axis,),
                       axis_types=(jax.sharding.AxisType.Auto,))


@dataclasses.dataclass(frozen=True)
class ShardedDatabase:
  """A database split over the devices of `mesh` (see the module docstring).

  Attributes:
    array: uint32 (D * S, W) global jax.Array, sharded on `axis`; None when
      the codes are held as `layout`.
    shard_base: int32 (D,) database index of each shard's first row.
    shard_valid: int32 (D,) real rows per shard (the rest is padding).
    num_valid: database size N (real rows over all shards).
    layout: uint8 (D * L,) global jax.Array, sharded on `axis`: each
      device's S rows in the kernel layout (layout.py), or None.
    bytes_per_code: bytes a code takes in `layout` (0 without one).
    shard_rows: S (set with `layout`).
    words: W, uint32 words per query.
  """
  array: Optional[jax.Array]
  shard_base: np.ndarray
  shard_valid: np.ndarray
  num_valid: int
  mesh: jax.sharding.Mesh
  axis: str = "data"
  layout: Optional[jax.Array] = None
  bytes_per_code: int = 0
  shard_rows: int = 0
  words: int = 0

  @property
  def rows_per_shard(self) -> int:
    if self.array is None:
      return self.shard_rows
    return self.array.shape[0] // self.mesh.shape[self.axis]

  @property
  def bytes_per_device(self) -> int:
    """Bytes of codes each device holds (padding included)."""
    if self.array is None:
      return self.layout.shape[0] // self.mesh.shape[self.axis]
    return self.rows_per_shard * self.array.shape[1] * 4


def _mesh_devices(mesh, axis: str):
  devices = np.asarray(mesh.devices).reshape(-1)
  if devices.size != mesh.shape[axis]:
    raise ValueError(f"the database mesh must be 1-D over {axis!r}; got mesh "
                     f"shape {dict(mesh.shape)}")
  return list(devices)


def shard_database(db_packed, mesh: jax.sharding.Mesh, axis: str = "data"):
  """Pads a host database to a multiple of the device count and shards it.

  Single-process (or every process passing the same whole database).

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


def _trailing_layout(n_rows: int, num_valid: int, devices: int):
  """(shard_base, shard_valid) of an evenly split array padded at the end."""
  shard = n_rows // devices
  base = np.arange(devices, dtype=np.int64) * shard
  valid = np.clip(num_valid - base, 0, shard)
  return base.astype(np.int32), valid.astype(np.int32)


def process_sizes(n_local: int) -> np.ndarray:
  """int64 (process_count,): every process's `n_local` (a collective)."""
  if jax.process_count() == 1:
    return np.array([n_local], np.int64)
  got = multihost_utils.process_allgather(np.array([n_local], np.int32))
  return np.asarray(got).reshape(-1).astype(np.int64)


def assemble_database(local_packed, mesh: Optional[jax.sharding.Mesh] = None,
                      axis: str = "data", *,
                      layout_bits: Optional[int] = None) -> ShardedDatabase:
  """One global sharded database from every process's part (a collective).

  Args:
    local_packed: uint32 (n_p, W), this process's rows; n_p may differ between
      processes (and be 0), W may not. Process p's rows are database items
      offset_p .. offset_p + n_p - 1, offset_p = n_0 + ... + n_{p-1}.
    mesh: 1-D mesh over the devices to use (default: all, all processes).
    axis: its axis name.
    layout_bits: K; when given, each device holds its rows in the kernel
      layout (ceil(K / 8) bytes a code) instead of uint32 rows, searched in
      place by the cpu backend (the only backend that reads it).

  Returns:
    A ShardedDatabase; search it with `sharded_topk` for the same answer as
    `hamming_topk` on the concatenation of all parts.
  """
  mesh = database_mesh(axis) if mesh is None else mesh
  local_packed = np.ascontiguousarray(np.asarray(local_packed))
  if local_packed.ndim != 2 or local_packed.dtype != np.uint32:
    raise ValueError("local_packed must be uint32 (n, words) packed codes, got "
                     f"{local_packed.dtype} {local_packed.shape}")
  words = local_packed.shape[1]
  if words == 0:
    raise ValueError("local_packed has zero words")
  bytes_per = 0
  if layout_bits is not None:
    if packing.num_words(layout_bits) != words:
      raise ValueError(f"layout_bits={layout_bits} does not fit {words} words "
                       "per code")
    bytes_per = layout_lib.bytes_per_code(layout_bits)
  devices = _mesh_devices(mesh, axis)
  sizes = process_sizes(local_packed.shape[0])
  words_all = process_sizes(words)
  if np.any(words_all != words):
    raise ValueError(f"processes hold codes of different lengths (words per "
                     f"code by process: {words_all.tolist()})")
  total = int(sizes.sum())
  if total == 0:
    raise ValueError("the database is empty on every process")
  if total > _INT32_MAX:
    raise ValueError(f"{total} database items exceed int32 global indices")
  owners = np.array([d.process_index for d in devices])
  per_proc = np.bincount(owners, minlength=sizes.size)
  if np.any((per_proc == 0) & (sizes > 0)):
    bad = np.flatnonzero((per_proc == 0) & (sizes > 0)).tolist()
    raise ValueError(f"processes {bad} hold database rows but no device of the"
                     " mesh")
  with np.errstate(divide="ignore", invalid="ignore"):
    need = np.where(per_proc > 0, -(-sizes // np.maximum(per_proc, 1)), 0)
  rows = max(1, int(need.max()))
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  base = np.zeros(len(devices), np.int64)
  valid = np.zeros(len(devices), np.int64)
  slot = np.zeros(sizes.size, np.int64)  # next local shard of each process
  me = jax.process_index()
  local_arrays = []
  for d, dev in enumerate(devices):
    p = dev.process_index
    j = slot[p]
    slot[p] += 1
    base[d] = offsets[p] + j * rows
    valid[d] = np.clip(sizes[p] - j * rows, 0, rows)
    if p == me:
      chunk = local_packed[j * rows: j * rows + valid[d]]
      if chunk.shape[0] < rows:
        chunk = np.pad(chunk, ((0, rows - chunk.shape[0]), (0, 0)))
      if bytes_per:
        chunk = layout_lib.rows_to_layout(
            layout_lib.packed_to_rows(chunk, bytes_per))
      local_arrays.append(jax.device_put(chunk, dev))
  # Padding shards of processes with no rows keep a base past their part's
  # start; clip so the bases stay in database order (they hold no real rows).
  base = np.minimum(base, total)
  common = dict(shard_base=base.astype(np.int32),
                shard_valid=valid.astype(np.int32), num_valid=total, mesh=mesh,
                axis=axis, words=words)
  if bytes_per:
    per_device = layout_lib.layout_nbytes(rows, bytes_per)
    lay = jax.make_array_from_single_device_arrays(
        (per_device * len(devices),), NamedSharding(mesh, P(axis)),
        local_arrays)
    return ShardedDatabase(array=None, layout=lay, bytes_per_code=bytes_per,
                           shard_rows=rows, **common)
  array = jax.make_array_from_single_device_arrays(
      (rows * len(devices), words), NamedSharding(mesh, P(axis)), local_arrays)
  return ShardedDatabase(array=array, **common)


@functools.partial(jax.jit, static_argnames=("k", "local_k", "mesh", "axis",
                                             "backend", "shard_rows",
                                             "bytes_per"))
def _sharded_topk(query_packed, db_sharded, shard_base, shard_valid, *, k,
                  local_k, mesh, axis, backend, shard_rows=0, bytes_per=0):
  devices = mesh.shape[axis]

  def local(q, db_shard, base, valid):
    if bytes_per:  # the shard is in the kernel layout: read in place
      from medhash_jax.retrieval import cpu_kernel  # pylint: disable=g-import-not-at-top
      dist, idx = cpu_kernel.layout_topk_ffi(q, db_shard, shard_rows,
                                             bytes_per, local_k)
    else:
      dist, idx = topk.hamming_topk(q, db_shard, local_k, backend=backend)
    real = idx < valid[0]
    # Padding sorts after every real item, so it never enters the top k.
    dist = jnp.where(real, dist, _INT32_MAX)
    idx = jnp.where(real, idx + base[0], _INT32_MAX)
    return dist[None], idx[None]

  # check_vma=False: Pallas and FFI calls carry no varying-axis annotations.
  dist, idx = jax.shard_map(local, mesh=mesh,
                            in_specs=(P(), P(axis), P(axis), P(axis)),
                            out_specs=(P(axis), P(axis)),
                            check_vma=False)(query_packed, db_sharded,
                                             shard_base, shard_valid)
  q = query_packed.shape[0]
  dist = jnp.moveaxis(dist, 0, 1).reshape(q, devices * local_k)
  idx = jnp.moveaxis(idx, 0, 1).reshape(q, devices * local_k)
  dist, idx = reference.sort_by_distance_then_index(dist, idx, k)
  # Replicated: every process can read the answer.
  rep = NamedSharding(mesh, P())
  return (jax.lax.with_sharding_constraint(dist, rep),
          jax.lax.with_sharding_constraint(idx, rep))


def _replicated_queries(query_packed, mesh):
  """Queries on every device of the mesh (same value on every process)."""
  if isinstance(query_packed, jax.Array) and query_packed.sharding.is_equivalent_to(
      NamedSharding(mesh, P()), query_packed.ndim):
    return query_packed
  q = np.asarray(query_packed)
  packing.check_packed(q, "query_packed")
  if jax.process_count() == 1:
    return jax.device_put(q, NamedSharding(mesh, P()))
  return jax.make_array_from_process_local_data(NamedSharding(mesh, P()), q)


def sharded_topk(query_packed, db_sharded, k: int, *, num_valid=None,
                 mesh=None, axis: str = "data", backend: str = "auto"):
  """Exact top-k of queries against a device-sharded database.

  Args:
    query_packed: uint32 (Q, W), the same on every process.
    db_sharded: a ShardedDatabase (`assemble_database`); or uint32 (N', W), a
      host array (sharded here) or a jax.Array already sharded on `axis` of
      `mesh` with N' divisible by the device count and rows >= num_valid
      padding.
    k: 1 <= k <= number of real rows.
    num_valid: for an array: rows >= num_valid are padding (default: none).
    mesh: the device mesh (default: the database's, else `database_mesh`).
    axis: mesh axis the database is split on.
    backend: local backend per device (see `hamming_topk`).

  Returns:
    (distances int32 (Q, k), global indices int32 (Q, k)), replicated on the
    mesh, identical to `hamming_topk` on the unsharded database.
  """
  if isinstance(db_sharded, ShardedDatabase):
    db = db_sharded
    if num_valid is not None and int(num_valid) != db.num_valid:
      raise ValueError(f"num_valid={num_valid} but the ShardedDatabase holds "
                       f"{db.num_valid} rows")
  else:
    mesh = database_mesh(axis) if mesh is None else mesh
    if not isinstance(db_sharded, jax.Array):
      db_sharded, host_valid = shard_database(db_sharded, mesh, axis)
      num_valid = host_valid if num_valid is None else num_valid
    packing.check_packed(db_sharded, "db_sharded")
    n = db_sharded.shape[0]
    num_valid = n if num_valid is None else int(num_valid)
    if not 0 < num_valid <= n:
      raise ValueError(f"num_valid={num_valid} must be in [1, {n}] (rows of "
                       f"db_sharded {tuple(db_sharded.shape)})")
    if n % mesh.shape[axis]:
      raise ValueError(f"db_sharded has {n} rows, not a multiple of the "
                       f"{mesh.shape[axis]} devices on mesh axis {axis!r}")
    base, valid = _trailing_layout(n, num_valid, mesh.shape[axis])
    db = ShardedDatabase(array=db_sharded, shard_base=base, shard_valid=valid,
                         num_valid=num_valid, mesh=mesh, axis=axis)
  query = _replicated_queries(query_packed, db.mesh)
  backend = topk.resolve_backend(backend)
  if db.layout is not None:
    packing.check_packed(query, "query_packed")
    if query.shape[1] != db.words:
      raise ValueError(f"query_packed {tuple(query.shape)} does not match the "
                       f"database's {db.words} words per code")
    if backend != "cpu":
      raise ValueError("a database held in the kernel layout is searched by "
                       f"the cpu backend, not {backend!r}; assemble it "
                       "without layout_bits for other backends")
  else:
    packing.check_query_db(query, db.array)
  k = packing.check_k(k, db.num_valid)
  shard = db.rows_per_shard
  max_pad = int(shard - db.shard_valid.min())
  codes = db.array if db.layout is None else db.layout
  return _sharded_topk(query, codes, db.shard_base, db.shard_valid, k=k,
                       local_k=min(k + max_pad, shard), mesh=db.mesh,
                       axis=db.axis, backend=backend, shard_rows=shard,
                       bytes_per=db.bytes_per_code)


class ShardedHammingIndex:
  """Exact Hamming search over codes split across devices and processes.

  Every process builds it with its own part of the database (collective:
  all processes call the constructor and `search` together, with the same
  queries). Results equal `HammingIndex.search` on the concatenation of the
  parts in process order, ids included.

    local = HammingIndex(64); local.add(my_codes, ids=my_ids)
    index = ShardedHammingIndex.from_index(local)        # on every process
    dist, ids = index.search(queries, k=10)              # same on every process
  """

  def __init__(self, num_bits: int, local_codes_or_packed, *,
               ids: Optional[np.ndarray] = None,
               mesh: Optional[jax.sharding.Mesh] = None, axis: str = "data",
               backend: str = "auto"):
    from medhash_jax.retrieval.index import HammingIndex  # pylint: disable=g-import-not-at-top
    local = HammingIndex(num_bits)
    if len(local_codes_or_packed):
      local.add(local_codes_or_packed, ids=ids)
    self._init(local, mesh, axis, backend)

  @classmethod
  def from_index(cls, index, *, mesh=None, axis: str = "data",
                 backend: str = "auto") -> "ShardedHammingIndex":
    """From a HammingIndex holding this process's part (ids kept)."""
    self = cls.__new__(cls)
    self._init(index, mesh, axis, backend)
    return self

  def _init(self, local, mesh, axis, backend):
    self.num_bits = local.num_bits
    self.backend = backend
    mesh = database_mesh(axis) if mesh is None else mesh
    # The cpu kernel reads each shard in the kernel layout in place (as
    # HammingIndex does); other backends need uint32 rows.
    on_cpu = all(d.platform == "cpu" for d in _mesh_devices(mesh, axis))
    use_layout = on_cpu and topk.resolve_backend(backend) == "cpu"
    self.db = assemble_database(
        local.packed, mesh, axis,
        layout_bits=self.num_bits if use_layout else None)
    sizes = process_sizes(len(local))
    self._lo = int(sizes[:jax.process_index()].sum())
    self._n_local = len(local)
    explicit = local._ids is not None  # pylint: disable=protected-access
    # Ids are mapped only when some process has explicit ones; a process
    # without them contributes its rows' global positions.
    self._local_ids = None
    if process_sizes(int(explicit)).any():
      self._local_ids = (local.ids if explicit else np.arange(
          self._lo, self._lo + self._n_local, dtype=np.int64))

  def __len__(self) -> int:
    return self.db.num_valid

  def __repr__(self) -> str:
    return (f"ShardedHammingIndex(num_bits={self.num_bits}, count={len(self)},"
            f" devices={self.db.mesh.shape[self.db.axis]}, "
            f"processes={jax.process_count()})")

  @property
  def bytes_per_device(self) -> int:
    return self.db.bytes_per_device

  def search(self, queries, k: int):
    """(distances int32 (Q, k), ids int64 (Q, k)) on every process."""
    if isinstance(queries, np.ndarray) and queries.dtype != np.uint32:
      packing.check_real_codes(queries, "queries")
      queries = packing.pack_codes(queries)
    q = np.asarray(queries)
    if q.ndim != 2 or q.shape[1] != self.db.words:
      raise ValueError(f"queries {q.dtype}{q.shape} do not match the index's "
                       f"{self.num_bits}-bit codes")
    dist, pos = sharded_topk(q, self.db, k, backend=self.backend)
    dist, pos = np.asarray(dist), np.asarray(pos).astype(np.int64)
    return dist, self._map_ids(pos)

  def _map_ids(self, pos: np.ndarray) -> np.ndarray:
    """Global positions -> ids; each process knows only its part's ids."""
    if self._local_ids is None:
      return pos
    mine = (pos >= self._lo) & (pos < self._lo + self._n_local)
    local = np.zeros(pos.shape, np.int64)
    if self._n_local:
      local[mine] = self._local_ids[pos[mine] - self._lo]
    if jax.process_count() == 1:
      return local
    # One owner per position, zeros elsewhere: sum the owners' 64-bit ids,
    # sent as two uint32 halves (jax without x64 would truncate int64).
    u = local.view(np.uint64)
    halves = np.stack([(u & 0xFFFFFFFF).astype(np.uint32),
                       (u >> np.uint64(32)).astype(np.uint32)])
    got = np.asarray(multihost_utils.process_allgather(halves)).astype(np.uint64)
    owner_sum = got.sum(axis=0)
    return (owner_sum[0] | (owner_sum[1] << np.uint64(32))).view(np.int64)
