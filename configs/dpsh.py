"""DPSH (Li, Wang, Kang, IJCAI 2016): pairwise likelihood + quantisation.

  python -m medhash_jax.main --config=configs/dpsh.py[:smoke] --workdir=DIR
"""

from medhash_jax.config import base


def get_config(arg=None):
  smoke, _ = base.parse_arg(arg)
  c = base.base_config(smoke)
  c.method = "dpsh"
  c.loss.name = "dpsh"
  return base.finalize(c)
