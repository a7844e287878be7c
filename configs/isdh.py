"""ISDH (Zhang et al., 2018): soft (cosine label) similarity likelihood, hard pairs weighted + quantisation.

  python -m medhash_jax.main --config=configs/isdh.py[:smoke] --workdir=DIR

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
  return common.pairwise_baseline("isdh", arg)
