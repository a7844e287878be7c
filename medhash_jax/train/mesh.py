"""Device mesh and sharding helpers for data-parallel `jax.jit` training.

One code path from one CPU to many accelerators (DESIGN.md): a 1-D mesh with a
`data` axis over every device, the batch sharded along it, params and optimizer
state replicated. XLA inserts the cross-device reductions, so a pairwise loss
(`labels @ labels.T`) and BatchNorm statistics see the whole global batch.

The mesh axis is `AxisType.Auto` on purpose: `jax.make_mesh` defaults to
Explicit axes, under which a pairwise product of a batch-sharded array raises
(the DESIGN.md pitfall).
"""

from typing import Any, Optional, Sequence

import jax
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS = "data"


def make_mesh(num_devices: Optional[int] = None,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D `data` mesh over `devices` (default: all, or the first N)."""
  if devices is None:
    devices = jax.devices()
    if num_devices is not None:
      if not 1 <= num_devices <= len(devices):
        raise ValueError(f"num_devices={num_devices} but {len(devices)} "
                         "devices are available")
      devices = devices[:num_devices]
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size"):
  """Fails fast, with the numbers, when a global batch cannot be split evenly."""
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
      or batch_size <= 0:
    raise ValueError(f"{what} must be a positive integer, got {batch_size!r}")
  n = mesh.size
  if batch_size % n:
    raise ValueError(
        f"{what}={batch_size} is not divisible by the {n} devices of the mesh "
        f"({jax.devices()[0].platform}); use a multiple of {n}, e.g. "
        f"{max(n, batch_size // n * n)}")
  if batch_size % jax.process_count():
    raise ValueError(f"{what}={batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """This process's slice of a global batch (numpy) -> global sharded arrays."""
  sharding = data_sharded(mesh)

  def put(x):
    x = np.asarray(x)
    if x.shape[0] * jax.process_count() % mesh.size:
      raise ValueError(
          f"a batch of {x.shape[0] * jax.process_count()} examples cannot be "
          f"split over {mesh.size} devices")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def pad_to_multiple(x: np.ndarray, multiple: int):
  """Pads axis 0 with zeros up to a multiple; returns (padded, valid mask)."""
  n = x.shape[0]
  total = -(-n // multiple) * multiple if n else multiple
  mask = np.zeros((total,), bool)
  mask[:n] = True
  if total == n:
    return x, mask
  pad = np.zeros((total - n,) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad]), mask
