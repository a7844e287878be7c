"""DPSH (Li, Wang, Kang, IJCAI 2016): pairwise likelihood + quantisation.

  python -m medhash_jax.main --config=configs/dpsh.py[:smoke] --workdir=DIR
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # config_flags loads this file by path
  sys.path.insert(0, _ROOT)

from configs import base  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  c = base.get_config(arg)
  c.method = "dpsh"
  c.loss.name = "dpsh"
  return base.finalize(c)
