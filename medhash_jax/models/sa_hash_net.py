"""SA-Hash's network (Guan et al., J. Image and Graphics 2023; seed 003).

    x -> ResNet-50 -> F (B, h, w, 2048)             (the feature map: Grad-CAM)
    global:  feature-refined block(F)              -> GAP -> g (2048)
    local:   A = spatial attention(F) from [max_c F; mean_c F; max-pool F]
             feature-refined block(F * A)          -> GAP -> l (2048)
    [g ; l] -> FC + ReLU (fc_dim) = features -> hash layer tanh(beta z) (K)
                                             -> class layer (C)

A feature-refined block is one ResNet bottleneck (1x1 -> 3x3 -> 1x1, identity
shortcut, width/4 inner channels, i.e. 512 -> 2048 at paper width) followed by
the average pool; the two blocks (global, local) do not share weights. The
spatial attention is `attention.SpatialAttention` (its docstring explains the
reading of the third "max pooling" descriptor).

Call convention of the hash models: `model.apply(v, x, train=False, beta=1.0)
-> {"codes_real", "logits", "features"}`; `backbone_features` /
`from_feature_map` split at the ResNet's last map, as in `HashingNet`, so the
backbone sits under "backbone" and converted torchvision weights load into it
with the default prefix.
"""

from typing import Any, Dict

import flax.linen as nn
import jax.numpy as jnp

from medhash_jax.models.attention import SpatialAttention
from medhash_jax.models.backbones import Bottleneck
from medhash_jax.models import heads
from medhash_jax.models.heads import FCStack

Dtype = Any


class SAHashNet(nn.Module):
  """ResNet + global/local feature-refined blocks + spatial attention.

  Attributes:
    backbone: a module returning {"feature_map", "features"}, e.g.
      backbones.ResNet50.
    num_bits: K.  num_classes: C of the class head (0 = none).
    refine_features: inner width of the feature-refined bottlenecks; their
      output is 4x this and must equal the backbone's channels (512 for
      ResNet-50's 2048).
    kernel_size, pool_size: the spatial attention's conv and max-pool sizes.
    attention_reading: "stacked" | "separate", the two readings of the third
      descriptor (attention.SpatialAttention).
    fc_dim: the FC layer after the fusion (0 = none, the hash layer reads the
      concatenation directly).
    dropout_rate: dropout after the FC layer.
  """
  backbone: nn.Module
  num_bits: int
  num_classes: int = 0
  refine_features: int = 512
  kernel_size: int = 7
  pool_size: int = 3
  attention_reading: str = "stacked"
  fc_dim: int = 1024
  dropout_rate: float = 0.0
  hash_activation: str = "tanh"
  dtype: Dtype = jnp.float32

  def setup(self):
    self.hash, self.classifier = heads.build_heads(
        self.num_bits, self.num_classes, self.hash_activation, self.dtype)
    self.global_refine = Bottleneck(self.refine_features, dtype=self.dtype)
    self.local_refine = Bottleneck(self.refine_features, dtype=self.dtype)
    self.spatial_attention = SpatialAttention(self.kernel_size, self.pool_size,
                                              self.attention_reading,
                                              self.dtype)
    self.fc = FCStack((int(self.fc_dim),) if self.fc_dim else (),
                      self.dropout_rate, self.dtype)

  def backbone_features(self, x, train: bool = False) -> Dict[str, Any]:
    return self.backbone(x, train=train)

  def from_feature_map(self, fmap, train: bool = False, beta=1.0,
                       return_feature_map: bool = False) -> Dict[str, Any]:
    if fmap.shape[-1] != 4 * self.refine_features:
      raise ValueError(f"feature map has {fmap.shape[-1]} channels; the "
                       f"feature-refined blocks output 4 x refine_features = "
                       f"{4 * self.refine_features}")
    g = jnp.mean(self.global_refine(fmap, train), axis=(1, 2))
    att = self.spatial_attention(fmap)
    l = jnp.mean(self.local_refine(att, train), axis=(1, 2))
    feats = self.fc(jnp.concatenate([g, l], axis=-1), train)
    return heads.head_outputs(self, feats, beta,
                              fmap if return_feature_map else None)

  def __call__(self, x, train: bool = False, beta=1.0,
               return_feature_map: bool = False) -> Dict[str, Any]:
    fmap = self.backbone_features(x, train)["feature_map"]
    return self.from_feature_map(fmap, train, beta, return_feature_map)
