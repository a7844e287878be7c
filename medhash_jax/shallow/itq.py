"""Iterative quantisation (Gong & Lazebnik, CVPR 2011; TPAMI 2013).

PCA to K dimensions, V = (X - mean) W (N, K); then an orthogonal rotation R
minimising the quantisation loss

    Q(B, R) = || B - V R ||_F^2,    B in {-1, +1}^{N x K},

by alternation from a random orthogonal R_0, as in the authors' ITQ.m:

    B <- sign(V R)                      (bit = V R >= 0)
    C = B^T V = U S Wt  (SVD),  R <- Wt^T U^T      (orthogonal Procrustes)

Each step cannot increase Q, so ``quantization_loss`` (Q at B = sign(V R_t),
t = 0..n_iter) is non-increasing. The final projection is W R.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from medhash_jax.shallow._linear import check_features, encode, pca

__all__ = ["fit", "encode", "itq_rotation"]


def _sign(z):
  return jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


@functools.partial(jax.jit, static_argnames=("n_iter",))
def itq_rotation(v: jax.Array, r0: jax.Array, *, n_iter: int = 50
                 ) -> tuple[jax.Array, jax.Array]:
  """Runs ``n_iter`` ITQ updates from R_0.

  Args:
    v: (N, K) zero-centred PCA projections.
    r0: (K, K) orthogonal initial rotation.
    n_iter: rotation updates.

  Returns:
    (R (K, K), quantisation losses (n_iter + 1,): Q(sign(V R_t), R_t)).
  """
  def loss(r):
    z = v @ r
    return jnp.sum((_sign(z) - z) ** 2)

  def step(r, _):
    b = _sign(v @ r)
    u, _, wt = jnp.linalg.svd(b.T @ v)
    r_new = wt.T @ u.T
    return r_new, loss(r)

  r, losses = jax.lax.scan(step, r0, None, length=n_iter)
  return r, jnp.concatenate([losses, loss(r)[None]])


def random_rotation(key, k: int) -> jax.Array:
  """A random orthogonal (K, K) matrix (Q of a Gaussian's QR)."""
  q, rr = jnp.linalg.qr(jax.random.normal(key, (k, k), jnp.float32))
  return q * jnp.sign(jnp.where(jnp.diag(rr) == 0, 1.0, jnp.diag(rr)))


def fit(features, *, num_bits: int, labels=None, seed: int = 0,
        n_iter: int = 50) -> dict:
  """Returns {"mean", "projection" (D, K) = W R, "rotation",
  "quantization_loss" (n_iter + 1,)}."""
  del labels
  x = check_features(features, num_bits)
  if num_bits > x.shape[1]:
    raise ValueError(f"ITQ needs num_bits <= feature dimension {x.shape[1]}, "
                     f"got {num_bits}")
  mean, w = pca(x, num_bits)
  r, losses = itq_rotation((x - mean) @ w,
                           random_rotation(jax.random.key(seed), num_bits),
                           n_iter=n_iter)
  return {"mean": mean, "projection": w @ r, "rotation": r,
          "quantization_loss": losses}
