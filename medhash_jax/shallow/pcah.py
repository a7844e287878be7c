"""PCA hashing: the sign of the top-K principal components (Wang et al. 2006;
the PCAH baseline of Gong & Lazebnik 2011). Deterministic; ``seed`` unused.
"""

from __future__ import annotations

from medhash_jax.shallow._linear import check_features, encode, pca

__all__ = ["fit", "encode"]


def fit(features, *, num_bits: int, labels=None, seed: int = 0) -> dict:
  """Returns {"mean": (D,), "projection": (D, K) principal directions}."""
  del labels, seed
  x = check_features(features, num_bits)
  if num_bits > x.shape[1]:
    raise ValueError(f"PCAH needs num_bits <= feature dimension {x.shape[1]}, "
                     f"got {num_bits}")
  mean, w = pca(x, num_bits)
  return {"mean": mean, "projection": w}
