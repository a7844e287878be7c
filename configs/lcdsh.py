"""LCDSH (Zhu and Gao, IJCAI 2017): pairwise likelihood + locality constraint between relaxed and binary codes.

  python -m medhash_jax.main --config=configs/lcdsh.py[:smoke] --workdir=DIR

Same backbone and data as every baseline (medhash_jax/config/base.py); the
loss's hyper-parameters are its defaults (medhash_jax/losses). Two settings
differ, both because with the shared tanh hash layer and SGD at lr 0.01 (hash
layer 10x) the model ended at chance on BreastMNIST (48 bits, 200 steps:
tie-aware mAP@all 0.608, chance 0.611), as DSH, DPN and ISDH did.

Picked on BreastMNIST val (tie-aware mAP@100, 48 bits, seed 0, chance
0.623): Adam 1e-4 tanh 0.722, Adam 1e-3 tanh 0.722, Adam 1e-3 linear 0.732
(this config; the SGD settings of DPN and ISDH were not rerun here).
"""

from medhash_jax.config import base


def get_config(arg=None):
  return base.pairwise_baseline("lcdsh", arg, optimizer="adam",
                                learning_rate=1e-3, hash_activation="identity")
