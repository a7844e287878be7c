"""DTSH (Wang et al., ACCV 2016): triplet likelihood over every valid triplet of the batch + quantisation.

  python -m medhash_jax.main --config=configs/dtsh.py[:smoke] --workdir=DIR

Same backbone, data and optimiser as every baseline
(medhash_jax/config/base.py); the loss's hyper-parameters are its defaults
(medhash_jax/losses).
"""

from medhash_jax.config import base


def get_config(arg=None):
  return base.pairwise_baseline("dtsh", arg)
