"""DPN (Fan et al., IJCAI 2020): polarisation loss towards fixed class centres (margin 1).

  python -m medhash_jax.main --config=configs/dpn.py[:smoke] --workdir=DIR

Same backbone and data as every baseline (medhash_jax/config/base.py); the
loss's hyper-parameters are its defaults (medhash_jax/losses). Two settings
differ, both because of the same failure: with the shared tanh hash layer and
SGD at lr 0.01 (hash layer 10x) the codes collapsed to one code on BreastMNIST
(48 bits, 200 steps: tie-aware mAP@all 0.611 = chance; the gradient norm fell
from 0.78 at step 10 to below 0.01 by step 40). The hinge is averaged over
bits, so each output gets a gradient ~1/(B K); Adam does not depend on that
scale. A linear hash layer is where the hinge can be met (|u| >= 1 on the
target side), as in the paper; with tanh it never is.

Picked on BreastMNIST val (tie-aware mAP@100, 48 bits, seed 0, chance
0.623): SGD lr 0.01 tanh 0.623, SGD 0.003 tanh 0.623, SGD 0.01 linear
0.631, SGD 0.003 linear 0.623, Adam 1e-4 tanh 0.623, Adam 1e-3 tanh 0.706,
Adam 1e-3 linear 0.778 (this config).
"""

from medhash_jax.config import base


def get_config(arg=None):
  return base.pairwise_baseline("dpn", arg, optimizer="adam",
                                learning_rate=1e-3, hash_activation="identity")
