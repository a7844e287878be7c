"""Losses built from the properties of good bits: quantisation, balance and
independence. DH (unsupervised, Liong et al. 2015) and DRH (pairwise +
those terms, Conjeti et al. 2017).

Both papers put the independence (orthogonality) term on the weights of
the layers (DH: every layer, DRH: the hash layer). A loss of this package
sees model outputs only, so here independence is asked of the codes
themselves: the batch's bit correlation (1/B) U^T U should be the identity
(uncorrelated bits of unit power). Both docstrings say so beside the paper's
formula.
"""

import jax.numpy as jnp

from medhash_jax.losses import common
from medhash_jax.losses import pairwise
from medhash_jax.losses import quantization as quant_lib


def bit_variance(u):
  """mean_k Var_i(u_ik): the spread of each bit over the batch."""
  return jnp.mean(jnp.var(u, axis=0))


def bit_balance(u):
  """mean_k (mean_i u_ik)^2: 0 when each bit is +1 for half the batch."""
  return jnp.mean(jnp.mean(u, axis=0) ** 2)


def bit_independence(u):
  """||(1/B) U^T U - I_K||_F^2 / K^2: 0 for uncorrelated unit-power bits."""
  b, k = u.shape
  corr = u.T @ u / b
  return jnp.sum((corr - jnp.eye(k, dtype=u.dtype)) ** 2) / (k * k)


def dh(*, codes, variance_weight: float = 0.5,
       independence_weight: float = 1.0):
  """DH: Liong, Lu, Wang, Moulin, Zhou, "Deep Hashing for Compact Binary
  Codes Learning", CVPR 2015 (the unsupervised form; no labels).

  The paper, for a network of M layers with outputs H^M (K x N) and
  B = sgn(H^M):
    J = 1/2 ||B - H^M||_F^2 - lambda_1 / (2N) tr(H^M H^M^T)
        + lambda_2 / 2 sum_m ||W^m W^m^T - I||_F^2
        + lambda_3 / 2 sum_m (||W^m||_F^2 + ||c^m||_2^2)
  (quantisation loss, variance maximisation -- balanced, informative bits --,
  independence of the projections, weight decay). Here, per batch, with the
  independence term on the codes (module docstring) and the weight decay
  left to the optimiser:
    L_q = mean_{ik} (sgn(u_ik) - u_ik)^2 / 2
    L_v = mean_k Var_i(u_ik)
    L_o = ||(1/B) U^T U - I||_F^2 / K^2
    L   = L_q - lambda_1 L_v + lambda_2 L_o

  Args:
    codes: (B, K) relaxed codes (tanh outputs: L_v is bounded by 1).
  Returns:
    (loss, {"quantization", "variance", "independence"}).
  """
  u = common.check_codes(codes, "dh")
  quant = 0.5 * jnp.mean((common.sign(u) - u) ** 2)
  var = bit_variance(u)
  ind = bit_independence(u)
  loss = quant - variance_weight * var + independence_weight * ind
  return loss, {"quantization": quant, "variance": var, "independence": ind}


def drh(*, codes, labels, margin=None, quantization_weight: float = 0.01,
        balance_weight: float = 0.01, independence_weight: float = 0.01):
  """DRH: Conjeti, Roy, Katouzian, Navab, "Hashing with Residual Networks
  for Image Retrieval" (Deep Residual Hashing), MICCAI 2017.

  A residual network (the ResNet backbone) with a hash layer, trained with
    J = J_S + lambda_q J_Q + lambda_b J_B + lambda_o J_O
  J_S: similarity-preserving pairwise loss (the contrastive form, margin m):
    D_ij = ||u_i - u_j||^2
    J_S  = mean_P [1/2 S_ij D_ij + 1/2 (1 - S_ij) max(m - D_ij, 0)]
  J_Q: quantisation, the smooth log cosh surrogate of | |u| - 1 |:
    J_Q  = mean_{ik} log cosh(|u_ik| - 1)
  J_B: bit balance (each bit +1 for half the images):
    J_B  = mean_k (mean_i u_ik)^2
  J_O: independence; the paper asks orthogonality of the hash layer's
  weights (W^T W = I), here of the codes (module docstring):
    J_O  = ||(1/B) U^T U - I||_F^2 / K^2
  m = 2K by default.

  Args:
    codes: (B, K).  labels: (B, C) multi-hot or (B,).
  Returns:
    (loss, {"similarity", "quantization", "balance", "independence"}).
  """
  u = common.check_codes(codes, "drh")
  _, terms = pairwise.dsh(codes=u, labels=labels, margin=margin,
                          regularization_weight=0.0)
  sim = terms["contrastive"]
  quant = quant_lib.quantization_penalty(u, "logcosh")
  bal = bit_balance(u)
  ind = bit_independence(u)
  loss = (sim + quantization_weight * quant + balance_weight * bal
          + independence_weight * ind)
  return loss, {"similarity": sim, "quantization": quant, "balance": bal,
                "independence": ind}
