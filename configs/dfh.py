"""DFH (Li et al., BMVC 2019): pairwise margin likelihood + quantisation towards
binary codes pulled to discrete class centres (solved on each batch).

  python -m medhash_jax.main --config=configs/dfh.py[:smoke] --workdir=DIR

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
  return common.pairwise_baseline("dfh", arg)
