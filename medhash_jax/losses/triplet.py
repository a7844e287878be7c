"""Triplet losses: DTSH and MTH's hierarchical similarity loss.

Triplets (a, p, n) are either given as an int (T, 3) array of batch indices
(rows with a negative index are padding and ignored; e.g. the trainer
concatenates anchor, positive and negative images into one batch of 3B and
passes rows (i, B + i, 2B + i)), or, when `triplets` is None, every valid
triplet of the batch is used: a != p, S_ap = 1, S_an = 0 (a (B, B, B) mask,
fine for batches of a few hundred). mean_T = average over the used triplets;
with none (a batch of one class) the triplet terms are 0.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from medhash_jax.losses import common


def dtsh(*, codes, labels, triplets=None, margin: float = 5.0,
         quantization_weight: float = 1.0):
  """DTSH: Wang, Shi, Kitani, "Deep Supervised Hashing with Triplet
  Labels", ACCV 2016.

    Theta_ij = 1/2 u_i . u_j
    L_t = mean_T log(1 + exp(-(Theta_ap - Theta_an - m)))
        (= -[(Theta_ap - Theta_an - m) - log(1 + exp(Theta_ap - Theta_an - m))])
    L_q = mean_{ik} (b_ik - u_ik)^2
    L   = L_t + lambda L_q
  For binary codes Theta_ap - Theta_an = d_H(a, n) - d_H(a, p), so the margin
  m is in Hamming-distance units.

  Args:
    codes: (B, K).  labels: (B, C) or (B,).
    triplets: optional int (T, 3); None = all valid triplets of the batch.
  Returns:
    (loss, {"triplet", "quantization"}).
  """
  u = common.check_codes(codes, "dtsh")
  t_ap, t_an, mask = common.triplet_values(0.5 * (u @ u.T), labels, triplets)
  trip = common.pair_mean(jax.nn.softplus(-(t_ap - t_an - margin)), mask)
  quant = jnp.mean((common.sign(u) - u) ** 2)
  return trip + quantization_weight * quant, {"triplet": trip,
                                              "quantization": quant}


def mth(*, codes, labels, features=None, logits=None, triplets=None,
        code_logits=None, eta: Optional[float] = None, delta: float = 0.5,
        hierarchical_weight: float = 1.0, category_weight: float = 1.0,
        multi_label: bool = False, semantic: str = "projection"):
  """MTH, multi-scale triplet hashing (seed 001): semantic term
  + alpha x hierarchical similarity + beta x category term.

    Hierarchical similarity, triplet margins on two levels:
      d_c(i, j) = ||u_i - u_j||^2 / 4          (= Hamming distance on +-1 codes)
      d_f(i, j) = ||f^_i - f^_j||^2,  f^ = f / ||f||   (deep features, in [0, 4])
      L_h = mean_T max(0, d_c(a,p) - d_c(a,n) + eta)
          + mean_T max(0, d_f(a,p) - d_f(a,n) + delta)
    Semantic term (the paper's, semantic="projection"): cross-entropy of a
    projection rho of the hash-like codes onto the C classes (the model's
    "code_logits" = rho(u), a Dense K -> C):
      L_s = softmax cross-entropy(rho(u), y)   (sigmoid BCE if multi_label)
    semantic="pairwise" is NOT the paper's term (the form used here before
    issue #21), kept as an ablation: code inner products regressed onto the
    pair similarity,
      L_s = mean_P (u_i . u_j / K - (2 S_ij - 1))^2
    Category term, the class layer beside the hash layer:
      L_c = softmax cross-entropy(logits, y)   (sigmoid BCE if multi_label)
    L = L_s + alpha L_h + beta L_c

  Args:
    codes: (B, K) hash-like codes.  labels: (B, C) or (B,).
    features: (B, D) deep features (the FC-1024 output) -- required.
    logits: (B, C) class-layer logits -- required unless category_weight = 0.
    triplets: optional int (T, 3); None = all valid triplets of the batch.
    code_logits: (B, C) rho(u) -- required when semantic="projection".
    eta: code margin in Hamming units; None = K / 8.
    delta: feature margin on unit-normalised features.
    hierarchical_weight: alpha.  category_weight: beta.
    multi_label: sigmoid BCE instead of softmax CE for the category and
      (projection) semantic terms.
    semantic: "projection" (the paper's) or "pairwise" (not the paper's).
  Returns:
    (loss, {"semantic", "hierarchical_codes", "hierarchical_features",
            "category"}).
  """
  u = common.check_codes(codes, "mth")
  if semantic not in ("projection", "pairwise"):
    raise ValueError(f"mth: semantic must be 'projection' or 'pairwise', got "
                     f"{semantic!r}")
  if semantic == "projection":
    common.require(code_logits, "code_logits", "mth",
                   "the model's projection of the codes onto the classes "
                   "(MTHNet with num_classes > 0); or semantic='pairwise'")
  f = common.require(features, "features", "mth",
                     "the model output's deep features, shape (B, D)")
  if category_weight:
    common.require(logits, "logits", "mth",
                   "the class layer's output; or set category_weight=0")
  k = u.shape[1]
  eta = k / 8.0 if eta is None else eta
  dc_ap, dc_an, mask = common.triplet_values(common.sq_dists(u) / 4.0, labels,
                                             triplets)
  h_codes = common.pair_mean(jnp.maximum(dc_ap - dc_an + eta, 0.0), mask)
  f = common.l2_normalize(jnp.asarray(f, jnp.float32))
  df_ap, df_an, _ = common.triplet_values(common.sq_dists(f), labels, triplets)
  h_feats = common.pair_mean(jnp.maximum(df_ap - df_an + delta, 0.0), mask)
  if semantic == "projection":
    sem = common.class_xent(code_logits, labels, multi_label=multi_label)
  else:
    s = common.similarity(labels)
    pmask = common.off_diagonal(u.shape[0])
    sem = common.pair_mean((u @ u.T / k - (2.0 * s - 1.0)) ** 2, pmask)
  if category_weight:
    cat = common.class_xent(logits, labels, multi_label=multi_label)
  else:
    cat = jnp.zeros((), jnp.float32)
  loss = sem + hierarchical_weight * (h_codes + h_feats) + category_weight * cat
  return loss, {"semantic": sem, "hierarchical_codes": h_codes,
                "hierarchical_features": h_feats, "category": cat}


def fang_ath(*, codes, labels, logits=None, triplets=None,
             margin: float = 5.0, quantization_weight: float = 1.0,
             classification_weight: float = 1.0, multi_label: bool = False):
  """FangATH: Fang, Fu, Liu, "Deep Triplet Hashing Network for Case-based
  Medical Image Retrieval" (Attention-based Triplet Hashing), Medical Image
  Analysis 2021. Not the seed system ATH-GradCAM (Zhu et al. 2022,
  `composite.ath`), which shares the acronym.

  A CNN with a spatial-attention module (channel max-pool, element-wise
  max and mean along the channel axis; models: attention="spatial") and the
  "triplet cross-entropy loss": a triplet likelihood on the codes, so that
  similar images are ranked above dissimilar ones, plus the classification
  cross-entropy of a class head, for class separability:
    Theta_ij = 1/2 u_i . u_j
    L_t = mean_T log(1 + exp(-(Theta_ap - Theta_an - m)))
    L_q = mean_{ik} (sgn(u_ik) - u_ik)^2
    L_c = softmax CE(logits, y)   (sigmoid BCE over classes if multi_label)
    L   = L_t + lambda L_q + mu L_c
  (L_t + lambda L_q is `dtsh`, the triplet likelihood the paper builds on.)

  Args:
    codes: (B, K).  labels: (B, C) or (B,).  logits: (B, C) class scores,
      required unless classification_weight = 0.
    triplets: optional int (T, 3); None = all valid triplets of the batch.
  Returns:
    (loss, {"triplet", "quantization", "classification"}).
  """
  base, terms = dtsh(codes=codes, labels=labels, triplets=triplets,
                     margin=margin, quantization_weight=quantization_weight)
  if classification_weight:
    common.require(logits, "logits", "fang_ath",
                   "the class head's output; or set classification_weight=0")
    ce = (common.sigmoid_xent(logits, labels) if multi_label
          else common.softmax_xent(logits, labels))
  else:
    ce = 0.0 * base
  return base + classification_weight * ce, {**terms, "classification": ce}
