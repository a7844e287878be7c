"""Classification losses on the class head's logits."""

from medhash_jax.losses import common


def softmax_ce(*, logits, labels):
  """Softmax cross-entropy (single-label data).

    L = mean_i -sum_c t_ic log softmax(z_i)_c,   t_i = y_i / sum_c y_ic
  (a multi-hot row becomes a uniform target over its labels).

  Args:
    logits: (B, C).  labels: (B, C) multi-hot or (B,) int class ids.
  Returns:
    (loss, {"classification"}).
  """
  common.require(logits, "logits", "softmax_ce", "the class head's output")
  ce = common.softmax_xent(logits, labels)
  return ce, {"classification": ce}


def sigmoid_bce(*, logits, labels, label_mask=None):
  """Sigmoid binary cross-entropy averaged over classes and samples
  (multi-label data; the ATH stage-1 DenseNet-121 classifier).

    L = mean_{ic} -[y_ic log sigmoid(z_ic) + (1 - y_ic) log(1 - sigmoid(z_ic))]
  over the (i, c) with label_mask_ic = 1 (all when label_mask is None).

  Args:
    logits: (B, C).  labels: (B, C) multi-hot.
    label_mask: optional (B, C), 1 where the label is known.
  Returns:
    (loss, {"classification"}).
  """
  common.require(logits, "logits", "sigmoid_bce", "the class head's output")
  bce = common.sigmoid_xent(logits, labels, label_mask)
  return bce, {"classification": bce}
