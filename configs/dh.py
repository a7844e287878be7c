"""DH (Liong et al., CVPR 2015, "Deep Hashing"): unsupervised; quantisation - variance (balance) + bit independence.

  python -m medhash_jax.main --config=configs/dh.py[:smoke] --workdir=DIR

Same backbone and data as every baseline (configs/base.py); the loss
(losses.bit_properties.dh) uses no labels, as in the paper (its supervised
extension SDH is not this method). The paper's independence term is on the
layers' weights; here it is on the batch's codes (the loss's docstring).
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # config_flags loads this file by path
  sys.path.insert(0, _ROOT)

from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  return common.pairwise_baseline("dh", arg)
