"""`SplitRows`: a split's per-example outputs put back in split order.

The data layer's eval batches are fixed-shape and padded: each carries
`index` (B,) positions in the split and `valid` (B,) (False on padding).
Whatever is computed per batch (codes, logits, Grad-CAM masks, pooled
pixels) is scattered into one (N, ...) array here, with the checks every
caller needs: positions inside the split, none twice, none missing.
"""

from typing import Optional

import numpy as np


class SplitRows:
  """Collects (B, ...) batch outputs into an (N, ...) array by position."""

  def __init__(self, size: int, name: str = "split",
               dtype: Optional[np.dtype] = None, what: str = "row"):
    self.size, self.name, self.dtype, self.what = int(size), name, dtype, what
    self.rows = None
    self.seen = np.zeros((self.size,), bool)

  def put(self, out, index, valid=None):
    """Stores `out[valid]` at positions `index[valid]` (rows with a negative
    index are padding too)."""
    out, index = np.asarray(out), np.asarray(index)
    keep = (np.ones(index.shape, bool) if valid is None
            else np.asarray(valid, bool)) & (index >= 0)
    idx = index[keep]
    if idx.size and idx.max() >= self.size:
      raise ValueError(f"{self.name}: batch index {idx.min()}..{idx.max()} "
                       f"outside the split of {self.size}")
    if self.seen[idx].any() or len(np.unique(idx)) != idx.size:
      raise ValueError(f"{self.name}: position {idx[self.seen[idx]][:1]} seen "
                       "twice")
    if self.rows is None:
      self.rows = np.zeros((self.size,) + out.shape[1:],
                           self.dtype or out.dtype)
    self.rows[idx] = out[keep]
    self.seen[idx] = True

  def result(self) -> np.ndarray:
    """The (N, ...) array; raises naming the positions that got no row."""
    if self.rows is None:
      raise ValueError(f"{self.name}: the batches were empty (split of "
                       f"{self.size})")
    if not self.seen.all():
      missing = np.flatnonzero(~self.seen)
      raise ValueError(f"{self.name}: {missing.size} of {self.size} positions "
                       f"got no {self.what} (skipped as bad records?), e.g. positions "
                       f"{missing[:5].tolist()}")
    return self.rows
