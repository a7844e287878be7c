"""CSQ (Yuan et al., CVPR 2020): central similarity to fixed class centres (Hadamard rows when K is a power of two) + quantisation.

  python -m medhash_jax.main --config=configs/csq.py[:smoke] --workdir=DIR

Same backbone, data and optimiser as every baseline
(medhash_jax/config/base.py); the loss's hyper-parameters are its defaults
(medhash_jax/losses).
"""

from medhash_jax.config import base


def get_config(arg=None):
  return base.pairwise_baseline("csq", arg)
