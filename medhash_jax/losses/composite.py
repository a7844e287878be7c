"""Joint losses of the seed systems: SA-Hash and ATH."""

from medhash_jax.losses import common
from medhash_jax.losses import pairwise
from medhash_jax.losses import quantization as quant_lib


def sa_hash(*, codes, labels, logits=None, margin=None,
            regularization_weight: float = 0.01,
            classification_weight: float = 1.0, multi_label: bool = False):
  """SA-Hash (seed 003): Guan et al., "A deep hash retrieval for large-scale
  chest radiography images", J. Image and Graphics 2023.

    D_ij = ||u_i - u_j||^2
    L_con = mean_P [1/2 S_ij D_ij + 1/2 (1 - S_ij) max(m - D_ij, 0)]
    L_reg = mean_{ik} | |u_ik| - 1 |                   (quantisation regulariser)
    L_ce  = softmax CE(logits, y)   (sigmoid BCE over classes if multi_label)
    L     = L_con + lambda_1 L_reg + lambda_2 L_ce,    m = 2K by default

  Args:
    codes: (B, K).  labels: (B, C) multi-hot.
    logits: (B, C) class scores -- required unless classification_weight = 0.
  Returns:
    (loss, {"contrastive", "regularizer", "classification"}).
  """
  _, terms = pairwise.dsh(codes=codes, labels=labels, margin=margin,
                          regularization_weight=0.0)
  con = terms["contrastive"]
  reg = quant_lib.quantization_penalty(codes, "l1")
  if classification_weight:
    common.require(logits, "logits", "sa_hash",
                   "the class head's output; or set classification_weight=0")
    ce = common.class_xent(logits, labels, multi_label=multi_label)
  else:
    ce = 0.0 * con
  loss = con + regularization_weight * reg + classification_weight * ce
  return loss, {"contrastive": con, "regularizer": reg, "classification": ce}


def ath(*, codes, labels, logits=None, alpha: float = 0.1,
        classification_weight: float = 1.0, multi_label: bool = True,
        label_mask=None, reduction: str = "sum"):
  """ATH-GradCAM (seed 000): Zhu et al., "Deep hash retrieval for medical
  images based on attention mechanism", Computer Science 2022.

    L = L_HashNet(alpha) + w BCE(logits, y)
  L_HashNet is the weighted likelihood of Eq. 10 (`pairwise.hashnet`: w_ij =
  |P|/|S1| similar, |P|/|S0| dissimilar, Theta = alpha u_i . u_j with
  alpha < 1) on the concatenated global + local code; BCE is averaged over
  classes (softmax CE when multi_label=False).

  Reduction of the likelihood: Eq. 10 is a *sum* over the |P| = B(B - 1)
  ordered pairs, L = sum_P w_ij [...]; the paper's learning rate (1e-4)
  was set for that sum. reduction="sum" (default, the paper's form)
  multiplies the pair mean by |P|; reduction="mean" divides by |P| (the
  HashNet reference code's form, |P| = 992 times smaller gradients at batch
  32, and what this loss computed before issue #21).

  Args:
    codes: (B, K) the concatenated code.  labels: (B, C) multi-hot.
    logits: (B, C) -- required unless classification_weight = 0.
    label_mask: optional (B, C) known-label mask for the BCE.
    reduction: "sum" (Eq. 10 as printed) or "mean" over the pairs.
  Returns:
    (loss, {"likelihood", "classification"}).
  """
  if reduction not in ("sum", "mean"):
    raise ValueError(f"ath: reduction must be 'sum' or 'mean', got "
                     f"{reduction!r}")
  lik, _ = pairwise.hashnet(codes=codes, labels=labels, alpha=alpha)
  if reduction == "sum":
    b = codes.shape[0]
    lik = lik * float(b * (b - 1))
  if classification_weight:
    common.require(logits, "logits", "ath",
                   "the class head's output; or set classification_weight=0")
    ce = common.class_xent(logits, labels, label_mask,
                           multi_label=multi_label)
  else:
    ce = 0.0 * lik
  return lik + classification_weight * ce, {"likelihood": lik,
                                            "classification": ce}
