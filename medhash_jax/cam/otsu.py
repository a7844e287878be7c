"""Otsu's threshold in jnp: histogram-based, jittable, batched.

A bit-for-bit transcription of ``skimage.filters.threshold_otsu(image,
nbins=256)`` for float32 images (scikit-image 0.26 on numpy 2.x): the masks
made here equal scikit-image's ``image > threshold_otsu(image)``, the
independent reference of the tests (tests/test_cam.py). The seed paper says
only "Otsu's method" and names no implementation:

1. Histogram (``np.histogram(image, bins=nbins)`` over [min, max]): edges
   ``e_i = fl32(fl32(i * step) + min)`` with ``step = fl32(max - min) / nbins``
   and ``e_nbins = max`` (numpy's float32 ``linspace``); a value x goes to bin
   ``floor(fl32(x - min) / fl32(max - min) * nbins)``, clamped to the last bin
   and corrected by one where that disagrees with the edges (numpy's 1-ulp
   fix-up), the last bin closed on the right. Bin centres ``(e_i + e_{i+1}) / 2``.
2. Between-class variance for every split after bin i:
   ``w1[i] * w2[i+1] * (m1[i] - m2[i+1])**2`` with w the cumulative counts and
   m the cumulative means from each end; the threshold is the centre of the
   first bin that maximises it. Foreground is ``image > threshold``.

The cumulative sums run as a sequential ``lax.scan`` because ``np.cumsum`` adds
in order, and ``jnp.cumsum`` (an associative scan on CPU/GPU) rounds
differently; near-ties in the variance would otherwise pick another bin.

Edge cases (decided to match scikit-image):
* A constant image returns its value (skimage's early return), so its mask
  ``image > t`` is empty; the local view (data/mask_crop.py) then falls back
  to the full image.
* NaN or Inf in the image: scikit-image raises; under jit the threshold is
  undefined (NaN or garbage). :func:`threshold_otsu_np_checked` checks first.
* A range [min, max] narrower than 256 float32 steps: numpy cannot make 256
  distinct edges and scikit-image raises "Too many bins"; here the threshold
  is still a bin centre inside [min, max] (Grad-CAM maps span [0, 1]).
* Images are flattened, any shape; a batch is ``vmap``-ed over the leading axis.
  More than 2**24 pixels per image would make the float32 counts inexact.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _sequential_cumsum(x: jax.Array) -> jax.Array:
  """Cumulative sum in index order, rounding exactly like ``np.cumsum``."""
  def step(carry, v):
    carry = carry + v
    return carry, carry
  _, out = jax.lax.scan(step, jnp.zeros(x.shape[1:], x.dtype), x)
  return out


def histogram(image: jax.Array, nbins: int = 256) -> tuple[jax.Array, jax.Array]:
  """``skimage.exposure.histogram(image, nbins)`` for a float image.

  Args:
    image: float array of any shape (flattened); cast to float32.
    nbins: number of equal-width bins over [min, max].

  Returns:
    (counts float32 (nbins,), bin_centers float32 (nbins,)). For a constant
    image the range is widened by +-0.5 as numpy does.
  """
  x = jnp.ravel(image).astype(jnp.float32)
  lo, hi = jnp.min(x), jnp.max(x)
  same = lo == hi
  lo = jnp.where(same, lo - 0.5, lo)
  hi = jnp.where(same, hi + 0.5, hi)
  delta = hi - lo
  step = delta / nbins
  # numpy rounds i * step before adding lo. XLA would contract the two into
  # one FMA (a single rounding: centres 1 ulp off numpy's, different
  # thresholds); the max (a no-op, the product is >= 0) stands between them.
  scaled = jnp.maximum(jnp.arange(nbins + 1, dtype=jnp.float32) * step, 0.0)
  edges = scaled + lo
  edges = edges.at[-1].set(hi)
  idx = (((x - lo) / delta) * nbins).astype(jnp.int32)
  idx = jnp.where(idx == nbins, nbins - 1, idx)
  idx = jnp.where(x < edges[idx], idx - 1, idx)
  idx = jnp.where((x >= edges[idx + 1]) & (idx != nbins - 1), idx + 1, idx)
  counts = jnp.zeros((nbins,), jnp.float32).at[idx].add(1.0)
  centers = (edges[:-1] + edges[1:]) / 2.0
  return counts, centers


def _threshold_one(image: jax.Array, nbins: int) -> jax.Array:
  x = jnp.ravel(image).astype(jnp.float32)
  counts, centers = histogram(x, nbins)
  cb = counts * centers
  # One scan for the four running sums (two from each end).
  sums = _sequential_cumsum(jnp.stack([counts, counts[::-1], cb, cb[::-1]], 1))
  weight1, weight2 = sums[:, 0], sums[::-1, 1]
  mean1 = sums[:, 2] / weight1
  mean2 = (sums[:, 3] / sums[:, 1])[::-1]
  variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
  t = centers[jnp.argmax(variance12)]
  return jnp.where(jnp.all(x == x[0]), x[0], t)


@functools.partial(jax.jit, static_argnames=("nbins",))
def threshold_otsu(images: jax.Array, *, nbins: int = 256) -> jax.Array:
  """Otsu thresholds of a batch of images.

  Args:
    images: float (B, ...) batch; each image (any shape) is thresholded alone.
    nbins: histogram bins (scikit-image's default 256).

  Returns:
    float32 (B,) thresholds, equal to ``skimage.filters.threshold_otsu`` on
    each ``images[b]`` cast to float32.
  """
  if images.ndim < 2:
    raise ValueError(f"threshold_otsu expects a batch (B, ...), got shape "
                     f"{images.shape}; use images[None] for one image")
  return jax.vmap(functools.partial(_threshold_one, nbins=nbins))(images)


@functools.partial(jax.jit, static_argnames=("nbins",))
def otsu_mask(images: jax.Array, *, nbins: int = 256) -> jax.Array:
  """Binary foreground masks ``images > threshold_otsu(images)``, bool (B, ...)."""
  t = threshold_otsu(images, nbins=nbins)
  return images.astype(jnp.float32) > t.reshape((-1,) + (1,) * (images.ndim - 1))


def threshold_otsu_np_checked(images, *, nbins: int = 256) -> np.ndarray:
  """:func:`threshold_otsu` after checking the batch is finite (not jittable)."""
  images = np.asarray(images, np.float32)
  if not np.all(np.isfinite(images)):
    bad = np.argwhere(~np.isfinite(images))[0]
    raise ValueError(f"heat maps contain NaN or Inf (first at {tuple(bad)}); "
                     "Otsu's threshold is undefined")
  return np.asarray(threshold_otsu(images, nbins=nbins))
