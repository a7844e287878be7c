"""ISDH (Zhang et al., 2018): soft (cosine label) similarity likelihood, hard pairs weighted + quantisation.

  python -m medhash_jax.main --config=configs/isdh.py[:smoke] --workdir=DIR

Same backbone and data as every baseline (medhash_jax/config/base.py); the
loss's hyper-parameters are its defaults (medhash_jax/losses). The optimiser
differs: with the shared SGD at lr 0.01 (hash layer 10x) the likelihood,
weighted 10x on hard pairs (every pair of single-label data) and starting near
90, drove the codes to one code on BreastMNIST within 20 steps (48 bits, 200
steps: tie-aware mAP@all 0.611 = chance). Adam does not depend on the loss's
scale.

Picked on BreastMNIST val (tie-aware mAP@100, 48 bits, seed 0, chance
0.623): SGD lr 0.01 tanh 0.623, SGD 0.003 tanh 0.633, SGD 0.003 linear
0.625, SGD 0.01 linear diverged (NaN at step 7), Adam 1e-4 tanh 0.771,
Adam 1e-3 linear 0.727, Adam 1e-3 tanh 0.811 (this config).
"""

from medhash_jax.config import base


def get_config(arg=None):
  return base.pairwise_baseline("isdh", arg, optimizer="adam",
                                learning_rate=1e-3)
