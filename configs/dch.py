"""DCH (Cao et al., CVPR 2018): Cauchy cross-entropy on the normalised Hamming distance (gamma 20) + Cauchy quantisation; balanced pair weights.

  python -m medhash_jax.main --config=configs/dch.py[:smoke] --workdir=DIR

Same backbone, data and optimiser as every baseline
(medhash_jax/config/base.py); the loss's hyper-parameters are its defaults
(medhash_jax/losses).
"""

from medhash_jax.config import base


def get_config(arg=None):
  return base.pairwise_baseline("dch", arg)
