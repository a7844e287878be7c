"""DCH (Cao et al., CVPR 2018): Cauchy cross-entropy on the normalised Hamming distance (gamma 20) + Cauchy quantisation; balanced pair weights.

  python -m medhash_jax.main --config=configs/dch.py[:smoke] --workdir=DIR

Same backbone, data and optimiser as every baseline (configs/base.py); the
loss's hyper-parameters are its defaults (medhash_jax/losses).
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # config_flags loads this file by path
  sys.path.insert(0, _ROOT)

from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  return common.pairwise_baseline("dch", arg)
