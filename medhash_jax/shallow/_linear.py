"""Shared pieces of the shallow (linear projection) hashing methods.

Every method here is ``code = (x - mean) @ projection`` with bit = code >= 0
(DESIGN.md's convention), so one :func:`encode` serves them all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def check_features(features, num_bits: int, *, max_bits: int | None = None):
  """Validates (N, D) features and K; returns float32 jnp features."""
  x = jnp.asarray(features)
  if x.ndim != 2:
    raise ValueError(f"features must be (N, D), got shape {x.shape}")
  if x.shape[0] < 2:
    raise ValueError(f"need at least 2 feature rows to fit, got {x.shape[0]}")
  if num_bits < 1:
    raise ValueError(f"num_bits must be >= 1, got {num_bits}")
  if max_bits is not None and num_bits > max_bits:
    raise ValueError(f"num_bits={num_bits} exceeds the feature dimension "
                     f"{max_bits}; this method projects onto principal "
                     "directions")
  x = x.astype(jnp.float32)
  if not bool(jnp.all(jnp.isfinite(x))):
    bad = np.argwhere(~np.isfinite(np.asarray(x)))[0]
    raise ValueError(f"features contain NaN or Inf (first at row {bad[0]}, "
                     f"column {bad[1]})")
  return x


def fix_signs(w: jax.Array) -> jax.Array:
  """Flips each column so its largest-magnitude entry is positive.

  Eigenvectors are defined up to sign; this makes the projection (and so the
  codes) deterministic, with scikit-learn's ``svd_flip`` convention.
  """
  idx = jnp.argmax(jnp.abs(w), axis=0)
  s = jnp.sign(w[idx, jnp.arange(w.shape[1])])
  return w * jnp.where(s == 0, 1.0, s)


def top_eigenvectors(m: jax.Array, k: int) -> jax.Array:
  """The k eigenvectors of a symmetric (D, D) matrix with largest eigenvalues,
  in decreasing order, as (D, k) columns (signs fixed)."""
  m = (m + m.T) / 2            # exact symmetry for eigh
  _, vecs = jnp.linalg.eigh(m)  # ascending
  return fix_signs(vecs[:, ::-1][:, :k])


def pca(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """(mean (D,), top-k principal directions (D, k)) of (N, D) features."""
  mean = jnp.mean(x, axis=0)
  xc = x - mean
  cov = xc.T @ xc / (x.shape[0] - 1)
  return mean, top_eigenvectors(cov, k)


@jax.jit
def _encode(mean, projection, features):
  return (jnp.asarray(features, jnp.float32) - mean) @ projection


def encode(params: dict, features) -> jax.Array:
  """Real-valued codes (N, K) = (features - mean) @ projection; bit = code >= 0."""
  features = jnp.asarray(features)
  if features.ndim != 2 or features.shape[1] != params["mean"].shape[0]:
    raise ValueError(f"features must be (N, {params['mean'].shape[0]}), got "
                     f"shape {features.shape}")
  return _encode(params["mean"], params["projection"], features)
