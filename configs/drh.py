"""DRH (Conjeti et al., MICCAI 2017, Deep Residual Hashing): a ResNet + hash layer; pairwise contrastive + quantisation + bit balance + independence.

  python -m medhash_jax.main --config=configs/drh.py[:smoke] --workdir=DIR

The residual network is the shared ResNet backbone (medhash_jax/config/base.py:
ResNet-50, ResNet-18 in :smoke). The pairwise term is DSH's contrastive
form, so this config takes DSH's two settings for the same reason
(configs/dsh.py: codes collapse with tanh and lr 0.01): a linear hash layer
and lr 0.003.
"""

from medhash_jax.config import base


def get_config(arg=None):
  return base.pairwise_baseline("drh", arg, learning_rate=0.003,
                                hash_activation="identity")
