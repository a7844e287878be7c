"""Locality-sensitive hashing by random hyperplanes (Charikar 2002).

``code = (x - mean) @ W``, W (D, K) i.i.d. N(0, 1). For zero-centred x, y at
angle theta, each bit agrees with probability 1 - theta / pi. The mean is the
training features' (zero-centring, so the hyperplanes pass through the data).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from medhash_jax.shallow._linear import check_features, encode

__all__ = ["fit", "encode"]


def fit(features, *, num_bits: int, labels=None, seed: int = 0) -> dict:
  """Draws the projection; ``labels`` is ignored (unsupervised).

  Returns:
    {"mean": (D,), "projection": (D, K)}.
  """
  del labels
  x = check_features(features, num_bits)
  w = jax.random.normal(jax.random.key(seed), (x.shape[1], num_bits), jnp.float32)
  return {"mean": jnp.mean(x, axis=0), "projection": w}
