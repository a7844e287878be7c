"""Hash-centre losses: CSQ and DPN.

Each class c gets a fixed target code c_c in {-1, +1}^K (`hash_centers`):
rows of a Sylvester Hadamard matrix and their negations when K is a power of
two and C <= 2K (pairwise Hamming distance K/2, the CSQ construction),
otherwise seeded Bernoulli(1/2) codes (the best of a few draws by minimum
pairwise distance). A sample's target is its class centre; a multi-label
sample's target is the centroid of its labels' centres, binarised by sign,
with ties (bits where its centres split evenly) set to 0 -- "no target" --
instead of CSQ's random tie-break, which keeps the loss deterministic.
The centres are numpy constants built at trace time from (C, K).
"""

import functools
from typing import Optional

import jax.numpy as jnp
import numpy as np

from medhash_jax.losses import common


def sylvester_hadamard(n: int) -> np.ndarray:
  """The n x n Sylvester Hadamard matrix (n a power of two)."""
  if not common.is_power_of_two(n):
    raise ValueError(f"Sylvester Hadamard needs a power of two, got {n}")
  h = np.ones((1, 1), np.float32)
  while h.shape[0] < n:
    h = np.block([[h, h], [h, -h]])
  return h


@functools.lru_cache(maxsize=64)
def _centers(num_classes: int, num_bits: int, seed: int) -> np.ndarray:
  if common.is_power_of_two(num_bits) and num_classes <= 2 * num_bits:
    h = sylvester_hadamard(num_bits)
    return np.concatenate([h, -h], axis=0)[:num_classes].astype(np.float32)
  rng = np.random.RandomState(seed)
  best, best_d = None, -1
  for _ in range(20):
    c = np.where(rng.rand(num_classes, num_bits) < 0.5, -1.0, 1.0)
    d = (num_bits - c @ c.T) / 2 + np.eye(num_classes) * num_bits
    if d.min() > best_d:
      best, best_d = c, d.min()
  return best.astype(np.float32)


def hash_centers(num_classes: int, num_bits: int, seed: int = 0) -> np.ndarray:
  """(C, K) float32 {-1, +1} class centres (see the module docstring)."""
  if num_classes <= 0 or num_bits <= 0:
    raise ValueError(f"need num_classes > 0 and num_bits > 0, got "
                     f"{num_classes}, {num_bits}")
  return _centers(int(num_classes), int(num_bits), int(seed)).copy()


def sample_targets(labels, centers):
  """(B, K) targets in {-1, 0, +1}: sign of the mean centre of each sample's
  labels (0 on ties and for samples without labels)."""
  y = common.as_multi_hot(labels, centers.shape[0])
  return jnp.sign(y @ jnp.asarray(centers, jnp.float32))


def _targets(codes, labels, centers, seed, loss):
  u = common.check_codes(codes, loss)
  y = common.as_multi_hot(labels)
  if centers is None:
    centers = hash_centers(y.shape[1], u.shape[1], seed)
  centers = jnp.asarray(centers, jnp.float32)
  if centers.shape != (y.shape[1], u.shape[1]):
    raise ValueError(f"loss {loss!r}: centers must be (num_classes, num_bits) = "
                     f"{(y.shape[1], u.shape[1])}, got {tuple(centers.shape)}")
  return u, sample_targets(y, centers)


def csq(*, codes, labels, quantization_weight: float = 1e-4,
        centers: Optional[np.ndarray] = None, seed: int = 0, eps: float = 1e-7):
  """CSQ: Yuan, Wang, Yin, Li, Zheng, Xiang, Feng, "Central Similarity
  Quantization for Efficient Image and Video Retrieval", CVPR 2020.

    t_i = target centre of sample i (module docstring), in {-1, 0, +1}^K
    L_c = mean_{ik} -[t'_ik log p_ik + (1 - t'_ik) log(1 - p_ik)],
          t' = (t + 1) / 2,  p = (u + 1) / 2 clipped to [eps, 1 - eps]
    L_q = mean_{ik} (|u_ik| - 1)^2
    L   = L_c + lambda L_q
  A tie bit (t = 0) has target 1/2: it is pulled to neither side.

  Args:
    codes: (B, K) in (-1, 1).  labels: (B, C) multi-hot.
    centers: optional (C, K) centres; None = `hash_centers(C, K, seed)`.
  Returns:
    (loss, {"central", "quantization"}).
  """
  u, t = _targets(codes, labels, centers, seed, "csq")
  p = jnp.clip((u + 1.0) / 2.0, eps, 1.0 - eps)
  tt = (t + 1.0) / 2.0
  central = jnp.mean(-(tt * jnp.log(p) + (1.0 - tt) * jnp.log1p(-p)))
  quant = jnp.mean((jnp.abs(u) - 1.0) ** 2)
  return central + quantization_weight * quant, {"central": central,
                                                 "quantization": quant}


def dpn(*, codes, labels, margin: float = 1.0,
        centers: Optional[np.ndarray] = None, seed: int = 0):
  """DPN: Fan, Liu, Wang, Tao, Wang, "Deep Polarized Network for Supervised
  Learning of Accurate Binary Hashing Codes", IJCAI 2020.

    L = (1 / |T|) sum_{(i,k) in T} max(m - u_ik t_ik, 0)
  the bit-wise hinge-like polarisation loss towards the target codes t
  (module docstring), over the bits with a target, T = {(i, k): t_ik != 0}.

  Returns:
    (loss, {"polarization"}).
  """
  u, t = _targets(codes, labels, centers, seed, "dpn")
  has = (t != 0).astype(jnp.float32)
  pol = common.pair_mean(jnp.maximum(margin - u * t, 0.0), has)
  return pol, {"polarization": pol}
