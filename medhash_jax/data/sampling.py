"""Batch composition for pair and triplet losses, with multi-label relevance.

Relevance: two images are relevant (similar, S_ij = 1) when their multi-hot
label vectors share at least one label. Images with no label at all (e.g.
ChestX-ray14 "No Finding" with ``no_finding="zeros"``) are treated as one
pseudo-class "none" for *sampling* only, so an all-zero anchor gets an
all-zero positive and a labelled negative.

* Pair losses use every pair of a plain random batch (``sampling="random"``);
  :func:`relevance` is the numpy reference of the similarity matrix.
* Triplet losses (``sampling="triplet"``): each anchor is drawn like a plain
  batch element; its positive is drawn by picking one of its labels uniformly,
  then a uniform other image carrying that label; its negative is uniform over
  the images sharing no label with it (rejection sampling, then an exact
  fallback). ``triplet_valid`` is False when no positive (other than the
  anchor) or no negative exists.
"""

from __future__ import annotations

import numpy as np


def relevance(labels_a: np.ndarray, labels_b: np.ndarray) -> np.ndarray:
  """bool (Na, Nb): shares at least one label."""
  a = np.asarray(labels_a, np.float32)
  b = np.asarray(labels_b, np.float32)
  return (a @ b.T) > 0


class TripletSampler:
  """Samples positives and negatives within one split (positions 0..n-1)."""

  def __init__(self, labels: np.ndarray, max_tries: int = 32):
    labels = np.asarray(labels, np.uint8)
    n, c = labels.shape
    none = labels.sum(axis=1) == 0
    # Column c is the "none" pseudo-class.
    self._labels = np.concatenate([labels, none[:, None].astype(np.uint8)], axis=1)
    self._members = [np.nonzero(self._labels[:, k])[0] for k in range(c + 1)]
    self._n = n
    self._max_tries = max_tries

  def positive(self, a: int, rng: np.random.Generator) -> tuple[int, bool]:
    classes = np.nonzero(self._labels[a])[0]
    k = int(classes[rng.integers(classes.size)])
    members = self._members[k]
    if members.size <= 1:
      return a, False
    j = int(rng.integers(members.size - 1))
    p = int(members[j])
    if p == a:  # skip the anchor itself without rejection
      p = int(members[members.size - 1])
    return p, True

  def negative(self, a: int, rng: np.random.Generator) -> tuple[int, bool]:
    la = self._labels[a]
    for _ in range(self._max_tries):
      j = int(rng.integers(self._n))
      if not np.any(self._labels[j] & la):
        return j, True
    cand = np.nonzero((self._labels @ la) == 0)[0]
    if cand.size == 0:
      return int(rng.integers(self._n)), False
    return int(cand[rng.integers(cand.size)]), True
