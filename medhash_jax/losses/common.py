"""Shared pieces of the losses: label similarity, pair and triplet masks.

Notation used in every docstring of this package:

  u = codes     (B, K) real-valued relaxed codes (the hash layer's output)
  b = sign(u)   with sign(0) = +1 (DESIGN.md), never differentiated
  y = labels    (B, C) multi-hot float; int (B,) class ids are accepted
  S_ij = 1[y_i . y_j > 0]       similar iff they share >= 1 label
  P = {(i, j): i != j}, |P| = B (B - 1), the ordered pairs of the batch
  mean_P f_ij = (1 / |P|) sum_{(i,j) in P} f_ij

The diagonal i == j is excluded everywhere (a code is trivially similar to
itself and would only add a constant pull). Losses see the whole global
batch: under `jit` over a device mesh the batch axis is sharded and XLA
gathers what the pairwise products need.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax


def require(value, what: str, loss: str, hint: str = ""):
  """Raises a clear error when a loss input the trainer must supply is None."""
  if value is None:
    raise ValueError(f"loss {loss!r} needs `{what}`" +
                     (f" ({hint})" if hint else "") + " but it was not given")
  return value


def check_codes(codes, loss: str):
  require(codes, "codes", loss, "the model's codes_real, shape (B, K)")
  if codes.ndim != 2:
    raise ValueError(f"loss {loss!r}: codes must be (B, K), got shape "
                     f"{tuple(codes.shape)}")
  return jnp.asarray(codes, jnp.float32)


def as_multi_hot(labels, num_classes: Optional[int] = None):
  """(B, C) float multi-hot from multi-hot or int (B,) class ids."""
  labels = jnp.asarray(labels)
  if labels.ndim == 2:
    return labels.astype(jnp.float32)
  if labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer):
    if num_classes is None:
      raise ValueError("int class-id labels need the number of classes here; "
                       "pass multi-hot (B, C) labels")
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  raise ValueError(f"labels must be multi-hot (B, C) or int (B,), got shape "
                   f"{tuple(labels.shape)} dtype {labels.dtype}")


def similarity(labels):
  """S (B, B) float: 1 where two samples share at least one label."""
  labels = jnp.asarray(labels)
  if labels.ndim == 1:
    return (labels[:, None] == labels[None, :]).astype(jnp.float32)
  y = labels.astype(jnp.float32)
  return (y @ y.T > 0).astype(jnp.float32)


def cosine_label_similarity(labels, eps: float = 1e-5):
  """ISDH's soft similarity y_i . y_j / (||y_i|| ||y_j||) in [0, 1]."""
  labels = jnp.asarray(labels)
  if labels.ndim == 1:
    return similarity(labels)
  y = labels.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(y * y, axis=1))
  return (y @ y.T) / (norm[:, None] * norm[None, :] + eps)


def off_diagonal(b: int):
  """(B, B) float mask of P, the pairs i != j."""
  return 1.0 - jnp.eye(b, dtype=jnp.float32)


def pair_mean(values, mask):
  """sum(values * mask) / max(sum(mask), 1)."""
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def sign(u):
  """b = sign(u) with sign(0) = +1, as a constant (no gradient)."""
  return jax.lax.stop_gradient(jnp.where(u >= 0, 1.0, -1.0).astype(u.dtype))


def balanced_pair_weights(s, mask):
  """HashNet/DCH weights: |P|/|S1| on similar pairs, |P|/|S0| on the rest.

  With these weights (1/|P|) sum_P w_ij l_ij = mean_{S1} l + mean_{S0} l, so
  the rare similar pairs weigh as much as the plentiful dissimilar ones.
  """
  n_all = jnp.sum(mask)
  n_sim = jnp.sum(s * mask)
  n_dis = n_all - n_sim
  return jnp.where(s > 0, n_all / jnp.maximum(n_sim, 1.0),
                   n_all / jnp.maximum(n_dis, 1.0)) * mask


def triplet_mask(labels):
  """(B, B, B) float mask of the valid triplets: a != p, S_ap = 1, S_an = 0."""
  s = similarity(labels)
  return s[:, :, None] * (1.0 - s[:, None, :]) * off_diagonal(s.shape[0])[:, :, None]


def triplet_values(mat, labels, triplets=None):
  """(m[a, p], m[a, n], mask) for a pairwise matrix m over the triplets used.

  Args:
    mat: (B, B) pairwise values (distances, inner products).
    labels: (B, C) multi-hot or (B,) int.
    triplets: optional int (T, 3) rows (anchor, positive, negative) into the
      batch; a row with any negative index is ignored (padding). None = every
      valid triplet of the batch (`triplet_mask`).

  Returns:
    Arrays that broadcast to one shape, (T,) or (B, B, B): a loss computes
    f(ap, an) elementwise and averages it with `pair_mean(., mask)`. The
    mined case broadcasts (B, B, 1) against (B, 1, B) instead of gathering
    three (B, B, B) index grids.
  """
  if triplets is None:
    return mat[:, :, None], mat[:, None, :], triplet_mask(labels)
  triplets = jnp.asarray(triplets)
  if triplets.ndim != 2 or triplets.shape[1] != 3:
    raise ValueError(f"triplets must be int (T, 3) (anchor, positive, "
                     f"negative) rows, got shape {tuple(triplets.shape)}")
  valid = jnp.all(triplets >= 0, axis=1).astype(jnp.float32)
  t = jnp.maximum(triplets, 0)
  return mat[t[:, 0], t[:, 1]], mat[t[:, 0], t[:, 2]], valid


def l2_normalize(x, eps: float = 1e-12):
  """x / ||x|| per row, with a finite gradient at x = 0 (a dead ReLU row)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True),
                                       eps))


def sq_dists(x):
  """(B, B) squared Euclidean distances, clamped at 0 against round-off."""
  sq = jnp.sum(x * x, axis=1)
  return jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)


def softmax_xent(logits, labels):
  """mean_i -sum_c t_ic log softmax(z_i)_c, t = y / sum_c y (multi-hot rows
  become uniform targets over their labels); optax's cross-entropy."""
  z = jnp.asarray(logits, jnp.float32)
  y = as_multi_hot(labels, z.shape[-1])
  t = y / jnp.maximum(jnp.sum(y, axis=-1, keepdims=True), 1.0)
  return jnp.mean(optax.softmax_cross_entropy(z, t))


def sigmoid_xent(logits, labels, label_mask=None):
  """Mean over samples and classes of the binary cross-entropy with logits
  (optax's); `label_mask` (B, C) leaves unknown labels out of the mean."""
  z = jnp.asarray(logits, jnp.float32)
  y = as_multi_hot(labels, z.shape[-1])
  per = optax.sigmoid_binary_cross_entropy(z, y)
  if label_mask is None:
    return jnp.mean(per)
  m = jnp.asarray(label_mask, jnp.float32)
  return jnp.sum(per * m) / jnp.maximum(jnp.sum(m), 1.0)


def class_xent(logits, labels, label_mask=None, *, multi_label: bool):
  """The class loss of a data set's kind: sigmoid BCE over the known labels
  (multi-label) or softmax cross-entropy (one label per image)."""
  if multi_label:
    return sigmoid_xent(logits, labels, label_mask)
  return softmax_xent(logits, labels)


def is_power_of_two(n: int) -> bool:
  return n > 0 and (n & (n - 1)) == 0
