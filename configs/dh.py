"""DH (Liong et al., CVPR 2015, "Deep Hashing"): unsupervised; quantisation - variance (balance) + bit independence.

  python -m medhash_jax.main --config=configs/dh.py[:smoke] --workdir=DIR

Same backbone and data as every baseline (medhash_jax/config/base.py); the loss
(losses.bit_properties.dh) uses no labels, as in the paper (its supervised
extension SDH is not this method). The paper's independence term is on the
layers' weights; here it is on the batch's codes (the loss's docstring).
"""

from medhash_jax.config import base


def get_config(arg=None):
  return base.pairwise_baseline("dh", arg)
