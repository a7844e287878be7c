"""Semi-supervised hashing, orthogonal projections (Wang, Kumar & Chang,
CVPR 2010, "Semi-supervised hashing for scalable image retrieval").

With X (D, N) the zero-centred features (all of them, labelled or not) and
X_l (D, l) a labelled subset with pairwise labels S (l, l),

    S_ij = +1 if images i and j share at least one label, else -1,
    M    = X_l S X_l^T + eta * X X^T          (the "adjusted covariance"),

the projection W (D, K) is the K eigenvectors of M with the largest
eigenvalues; code = W^T (x - mean). An image without any positive label
shares none, so it is dissimilar to everything (itself included, S_ii = -1).

The labelled term grows like l^2 and the variance term like N, so ``eta`` is
a real trade-off to pick on the validation split (the paper does); the
default 1.0 is not tuned. ``num_labeled`` caps l (a random subset, by
``seed``) to keep S, l x l, small.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from medhash_jax.shallow._linear import check_features, encode, top_eigenvectors

__all__ = ["fit", "encode", "adjusted_covariance"]


def pairwise_similarity(labels: jax.Array) -> jax.Array:
  """S (l, l): +1 where two multi-hot label rows share a label, else -1."""
  y = (jnp.asarray(labels) > 0).astype(jnp.float32)
  return jnp.where(y @ y.T >= 1, 1.0, -1.0)


def adjusted_covariance(xc: jax.Array, labeled: jax.Array, labels: jax.Array,
                        eta: float) -> jax.Array:
  """M = X_l S X_l^T + eta X X^T with rows as examples: (D, D)."""
  xl = xc[labeled]
  s = pairwise_similarity(labels[labeled])
  return xl.T @ s @ xl + eta * (xc.T @ xc)


def fit(features, *, num_bits: int, labels=None, seed: int = 0,
        eta: float = 1.0, num_labeled: int | None = 2000) -> dict:
  """Returns {"mean", "projection" (D, K), "labeled" (l,) row indices used}.

  Args:
    features: (N, D).
    num_bits: K <= D.
    labels: (N, C) multi-hot (one-hot for single-label); required.
    seed: picks the labelled subset when N > num_labeled.
    eta: weight of the unsupervised variance term.
    num_labeled: l, the labelled rows used (None: all).
  """
  x = check_features(features, num_bits)
  if labels is None:
    raise ValueError("SSH is semi-supervised: pass labels (N, C)")
  labels = jnp.asarray(labels)
  if labels.ndim != 2 or labels.shape[0] != x.shape[0]:
    raise ValueError(f"labels must be (N={x.shape[0]}, C), got {labels.shape}")
  if num_bits > x.shape[1]:
    raise ValueError(f"SSH needs num_bits <= feature dimension {x.shape[1]}, "
                     f"got {num_bits}")
  n = x.shape[0]
  if num_labeled is None or num_labeled >= n:
    labeled = jnp.arange(n)
  else:
    labeled = jnp.sort(jax.random.permutation(jax.random.key(seed), n)[:num_labeled])
  mean = jnp.mean(x, axis=0)
  m = adjusted_covariance(x - mean, labeled, labels, eta)
  return {"mean": mean, "projection": top_eigenvectors(m, num_bits),
          "labeled": labeled}
