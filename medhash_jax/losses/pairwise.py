"""Pairwise losses over every pair of the global batch.

DPSH, DHN, HashNet, DCH, DSH, DFH, LCDSH and ISDH. Notation (common.py):
u codes (B, K), b = sign(u), S_ij = 1[share >= 1 label], P = pairs i != j,
mean_P = average over P, mean_{ik} = average over samples and bits.
Every function returns (loss, {term name: scalar}).
"""

import jax
import jax.numpy as jnp

from medhash_jax.losses import common


def _logcosh(x):
  ax = jnp.abs(x)
  return ax + jax.nn.softplus(-2.0 * ax) - jnp.log(2.0)


def _likelihood(theta, s):
  """-log p(s | theta) of the logistic pair model: softplus(theta) - s theta."""
  return jax.nn.softplus(theta) - s * theta


def dpsh(*, codes, labels, alpha: float = 0.5, quantization_weight: float = 0.1):
  """DPSH: Li, Zhao, Kang, "Feature Learning based Deep Supervised Hashing
  with Pairwise Labels", IJCAI 2016.

    Theta_ij = alpha u_i . u_j                      (paper: alpha = 1/2)
    L = mean_P [log(1 + exp(Theta_ij)) - S_ij Theta_ij]
        + eta mean_{ik} (u_ik - b_ik)^2

  Args:
    codes: (B, K) relaxed codes u.  labels: (B, C) multi-hot or (B,) ids.
    alpha: inner-product scale.  quantization_weight: eta.
  Returns:
    (loss, {"likelihood", "quantization"}).
  """
  u = common.check_codes(codes, "dpsh")
  s = common.similarity(labels)
  mask = common.off_diagonal(u.shape[0])
  lik = common.pair_mean(_likelihood(alpha * (u @ u.T), s), mask)
  quant = jnp.mean((u - common.sign(u)) ** 2)
  return lik + quantization_weight * quant, {"likelihood": lik,
                                             "quantization": quant}


def dhn(*, codes, labels, alpha: float = 0.5, quantization_weight: float = 0.1):
  """DHN: Zhu, Long, Wang, Cao, "Deep Hashing Network for Efficient
  Similarity Retrieval", AAAI 2016.

    Theta_ij = alpha u_i . u_j
    L = mean_P [log(1 + exp(Theta_ij)) - S_ij Theta_ij]
        + lambda mean_{ik} log cosh(|u_ik| - 1)   (smooth bimodal-Laplacian prior)

  Returns:
    (loss, {"likelihood", "quantization"}).
  """
  u = common.check_codes(codes, "dhn")
  s = common.similarity(labels)
  mask = common.off_diagonal(u.shape[0])
  lik = common.pair_mean(_likelihood(alpha * (u @ u.T), s), mask)
  quant = jnp.mean(_logcosh(jnp.abs(u) - 1.0))
  return lik + quantization_weight * quant, {"likelihood": lik,
                                             "quantization": quant}


def hashnet(*, codes, labels, alpha: float = 0.1, balanced: bool = True):
  """HashNet: Cao, Long, Wang, Yu, "HashNet: Deep Learning to Hash by
  Continuation", ICCV 2017; the weighted likelihood of seed 000 (Zhu et al.
  2022, Eq. 10), with alpha < 1 scaling the inner product.

    Theta_ij = alpha h_i . h_j,   h = tanh(beta z) (continuation in the model)
    w_ij = |P| / |S1| if S_ij = 1,   |P| / |S0| if S_ij = 0
    L = (1 / |P|) sum_P w_ij [log(1 + exp(Theta_ij)) - S_ij Theta_ij]

  |S1| / |S0| count the similar / dissimilar pairs of the batch, so L is the
  mean loss over similar pairs plus the mean over dissimilar pairs.
  `balanced=False` sets w = 1 (plain DPSH likelihood).

  Returns:
    (loss, {"likelihood"}).
  """
  u = common.check_codes(codes, "hashnet")
  s = common.similarity(labels)
  mask = common.off_diagonal(u.shape[0])
  w = common.balanced_pair_weights(s, mask) if balanced else mask
  lik = common.pair_mean(w * _likelihood(alpha * (u @ u.T), s), mask)
  return lik, {"likelihood": lik}


def dch(*, codes, labels, gamma: float = 20.0, quantization_weight: float = 0.1,
        balanced: bool = True, eps: float = 1e-6):
  """DCH: Cao, Long, Liu, Wang, "Deep Cauchy Hashing for Hamming Space
  Retrieval", CVPR 2018.

    d_ij = (K / 2) (1 - cos(u_i, u_j))          (normalised Hamming distance)
    L_c  = (1 / |P|) sum_P w_ij [S_ij log(1 + d_ij / gamma)
                                 + (1 - S_ij) log(1 + gamma / d_ij)]
    L_q  = mean_i log(1 + d(|u_i|, 1) / gamma),  d(|u_i|, 1) = (K/2)(1 - cos(|u_i|, 1))
    L    = L_c + lambda L_q
  with the HashNet weights w (|P|/|S1|, |P|/|S0|; `balanced=False`: w = 1).
  (S log(d/gamma) + log(1 + gamma/d) in the paper is the same expression.)

  Returns:
    (loss, {"cauchy", "quantization"}).
  """
  u = common.check_codes(codes, "dch")
  k = u.shape[1]
  s = common.similarity(labels)
  mask = common.off_diagonal(u.shape[0])
  un = common.l2_normalize(u)
  d = jnp.maximum(0.5 * k * (1.0 - un @ un.T), 0.0)  # round-off on i == j
  per = s * jnp.log1p(d / gamma) + (1.0 - s) * jnp.log1p(gamma / (d + eps))
  w = common.balanced_pair_weights(s, mask) if balanced else mask
  cauchy = common.pair_mean(w * per, mask)
  cos1 = jnp.sum(common.l2_normalize(jnp.abs(u)), axis=1) / jnp.sqrt(k)
  quant = jnp.mean(jnp.log1p(jnp.maximum(0.5 * k * (1.0 - cos1), 0.0) / gamma))
  return cauchy + quantization_weight * quant, {"cauchy": cauchy,
                                                "quantization": quant}


def dsh(*, codes, labels, margin=None, regularization_weight: float = 0.01,
        balanced: bool = False):
  """DSH: Liu, Wang, Shan, Chen, "Deep Supervised Hashing for Fast Image
  Retrieval", CVPR 2016.

    D_ij = ||u_i - u_j||^2
    L_c  = mean_P w_ij [1/2 S_ij D_ij + 1/2 (1 - S_ij) max(m - D_ij, 0)]
    L_r  = mean_{ik} | |u_ik| - 1 |
    L    = L_c + alpha L_r,     m = 2K by default (the paper's choice)
  w = 1 as in the paper; `balanced=True` uses HashNet's weights (|P|/|S1|,
  |P|/|S0|), so a majority class's similar pairs cannot outweigh the push
  between classes.

  Returns:
    (loss, {"contrastive", "regularizer"}).
  """
  u = common.check_codes(codes, "dsh")
  m = 2.0 * u.shape[1] if margin is None else margin
  s = common.similarity(labels)
  mask = common.off_diagonal(u.shape[0])
  d = common.sq_dists(u)
  w = common.balanced_pair_weights(s, mask) if balanced else mask
  con = common.pair_mean(
      w * (0.5 * s * d + 0.5 * (1.0 - s) * jnp.maximum(m - d, 0.0)), mask)
  reg = jnp.mean(jnp.abs(jnp.abs(u) - 1.0))
  return con + regularization_weight * reg, {"contrastive": con,
                                             "regularizer": reg}


def dfh_class_centers(y, b, *, nu: float = 1.0, passes: int = 2):
  """DFH's discrete class-centre sub-problem on one batch (no gradient).

  Binary centres C (num_classes, K) close to their classes' codes and far
  from each other:  min_C  -tr(C^T Y^T B) + sum_{i != j} (Y^T Y + nu)_ij
  C_i . C_j, solved by discrete cyclic coordinate descent (the paper's
  DCC): one class at a time,
    C_i = sign(Q_i - sum_{j != i} ((Y^T Y)_ij + nu) C_j),  Q = Y^T B,
  from C = 0, `passes` sweeps over the classes (sign(0) = +1).

  Args:
    y: (B, C) multi-hot labels.  b: (B, K) binary codes in {-1, +1}.
  Returns:
    (C, K) float32 centres in {-1, +1}.
  """
  y = jax.lax.stop_gradient(jnp.asarray(y, jnp.float32))
  q = y.T @ jax.lax.stop_gradient(b)                      # (C, K)
  couple = y.T @ y + nu                                   # (C, C)
  num_classes = q.shape[0]
  couple = couple * (1.0 - jnp.eye(num_classes))          # j != i only

  def update(i, centers):
    row = common.sign(q[i] - couple[i] @ centers)
    return centers.at[i].set(row)

  centers = jnp.zeros_like(q)
  for _ in range(passes):
    centers = jax.lax.fori_loop(0, num_classes, update, centers)
  return centers


def dfh(*, codes, labels, margin: float = 3.0, alpha: float = 0.5,
        quantization_weight: float = 0.5, center_weight: float = 0.1,
        center_nu: float = 1.0, center_passes: int = 2):
  """DFH: Li, Pei, Zha, van Gemert, "Push for Quantization: Deep Fisher
  Hashing", BMVC 2019.

    Theta_ij = alpha u_i . u_j
    L_m = mean_P [S_ij log(1 + exp(m - Theta_ij))
                  + (1 - S_ij) log(1 + exp(m + Theta_ij))]
    C   = binary class centres of the batch (`dfh_class_centers`, the
          Fisher part: codes near their class centre, centres apart)
    b_i = sign(mu C^T y_i + u_i)          (the paper's b-step, mu = center_weight)
    L_q = mean_{ik} (b_ik - u_ik)^2
    L   = L_m + eta L_q
  The paper keeps C and every training code between batches and alternates
  C-, b- and network steps; this pure batch loss solves the C- and b-steps
  on the global batch at each step (the centres see only the batch's codes).
  center_weight = 0 gives b = sign(u).

  Returns:
    (loss, {"margin_likelihood", "quantization"}).
  """
  u = common.check_codes(codes, "dfh")
  s = common.similarity(labels)
  mask = common.off_diagonal(u.shape[0])
  theta = alpha * (u @ u.T)
  per = (s * jax.nn.softplus(margin - theta) +
         (1.0 - s) * jax.nn.softplus(margin + theta))
  lm = common.pair_mean(per, mask)
  b = common.sign(u)
  if center_weight:
    y = common.as_multi_hot(labels)
    centers = dfh_class_centers(y, b, nu=center_nu, passes=center_passes)
    b = common.sign(center_weight * (y @ centers) + u)
  quant = jnp.mean((b - u) ** 2)
  return lm + quantization_weight * quant, {"margin_likelihood": lm,
                                            "quantization": quant}


def lcdsh(*, codes, labels, alpha: float = 0.5, locality_weight: float = 3.0):
  """LCDSH: Zhu, Gao, "Locality-Constrained Deep Supervised Hashing for
  Image Retrieval", IJCAI 2017.

    s~_ij = 2 S_ij - 1,  Theta_ij = alpha u_i . u_j,  Theta^b_ij = alpha b_i . b_j
    L_1 = mean_P log(1 + exp(-s~_ij Theta_ij))
    L_2 = mean_P (sigmoid(Theta_ij) - sigmoid(Theta^b_ij))^2   (locality constraint)
    L   = L_1 + lambda L_2           (lambda = locality_weight)

  Returns:
    (loss, {"likelihood", "locality"}).
  """
  u = common.check_codes(codes, "lcdsh")
  s = 2.0 * common.similarity(labels) - 1.0
  mask = common.off_diagonal(u.shape[0])
  theta = alpha * (u @ u.T)
  b = common.sign(u)
  l1 = common.pair_mean(jax.nn.softplus(-s * theta), mask)
  l2 = common.pair_mean((jax.nn.sigmoid(theta) -
                         jax.nn.sigmoid(alpha * (b @ b.T))) ** 2, mask)
  return l1 + locality_weight * l2, {"likelihood": l1, "locality": l2}


def isdh(*, codes, labels, alpha: float = 0.5, hard_weight: float = 10.0,
         quantization_weight: float = 0.1):
  """ISDH: Zhang, Peng, Yuan, Zhao, "Instance Similarity Deep Hashing for
  Multi-Label Image Retrieval" (arXiv 1803.02987, 2018); soft similarity for
  multi-label data.

    s_ij = y_i . y_j / (||y_i|| ||y_j||)        (in [0, 1])
    M_ij = 1 if s_ij > 0.99 or s_ij < 0.01      (hard pairs)
    Theta_ij = alpha u_i . u_j
    L_s = mean_P [gamma M_ij (log(1 + exp(Theta_ij)) - s_ij Theta_ij)
                  + (1 - M_ij) (s_ij - sigmoid(Theta_ij))^2]
    L_q = mean_{ik} | |u_ik| - 1 |
    L   = L_s + lambda L_q
  With single-label data every pair is hard and L_s is gamma x DPSH's term.

  Returns:
    (loss, {"similarity", "quantization"}).
  """
  u = common.check_codes(codes, "isdh")
  s = common.cosine_label_similarity(labels)
  hard = ((s > 0.99) | (s < 0.01)).astype(jnp.float32)
  mask = common.off_diagonal(u.shape[0])
  theta = alpha * (u @ u.T)
  per = (hard_weight * hard * _likelihood(theta, s) +
         (1.0 - hard) * (s - jax.nn.sigmoid(theta)) ** 2)
  sim = common.pair_mean(per, mask)
  quant = jnp.mean(jnp.abs(jnp.abs(u) - 1.0))
  return sim + quantization_weight * quant, {"similarity": sim,
                                             "quantization": quant}
