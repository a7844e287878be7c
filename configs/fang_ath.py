"""FangATH (Fang, Fu, Liu, Medical Image Analysis 2021, attention-based triplet hashing) -- not the seed ATH-GradCAM (configs/ath.py).

  python -m medhash_jax.main --config=configs/fang_ath.py[:smoke] --workdir=DIR

The shared ResNet backbone (medhash_jax/config/base.py) with the spatial-attention
module on its last feature map (models.attention "spatial": channel
max-pool, element-wise max and mean along the channel axis) and a class head;
loss losses.triplet.fang_ath = triplet likelihood + quantisation + class
cross-entropy ("triplet cross-entropy loss"), over every valid triplet of
a random batch, as configs/dtsh.py (data.sampling="triplet" feeds sampled
anchor/positive/negative images instead, at 3x the images per step).
"""

import ml_collections

from medhash_jax.config import base


def get_config(arg=None):
  smoke, _ = base.parse_arg(arg)
  c = base.base_config(smoke)
  c.method = "fang_ath"
  c.loss.name = "fang_ath"
  c.loss.kwargs = ml_collections.ConfigDict(dict(multi_label=False))
  c.loss.classification_weight = 0.0   # the CE term is inside the loss
  c.model.kwargs.attention = "spatial"
  c.model.kwargs.class_head = True
  return base.finalize(c)
