"""MTH's network: multi-scale dense blocks + conv self-attention (seed 001).

    x -> three parallel scales s in {1, 3, 5}:
           conv s x s (16 filters, stride 1, padding (s - 1) / 2)
           -> dense block (4 bottlenecks BN-ReLU-1x1 conv-BN-ReLU-3x3 conv,
              growth 8) -> max pool
      -> concatenate (3 x (16 + 4 * 8) = 144 channels)
      -> [adaptive max pool down to <= attention_size^2 positions]
      -> convolutional multi-head self-attention, residual add
      -> dense block (4 bottlenecks, growth 8; 176 channels) -> BN-ReLU
         = the feature map (Grad-CAM's layer)
      -> global average pool -> FC-1024 + ReLU = features
      -> hash layer tanh(beta z) (K)   and   class layer (C, softmax in the loss)
      -> projection rho of the hash-like codes onto the C classes
         ("code_logits", Dense K -> C): the input of the paper's semantic
         term L_s (seed 001 section 3.3, cross-entropy of rho(u))

Choices the description leaves open, made here and configurable:
  * pooling: `pool_size` x `pool_size` max pool with that stride after each
    scale's dense block (2 for small inputs, 4 for ~224 px);
  * self-attention costs O(N^2) in the N = h * w positions, so a map larger
    than `attention_size` on a side is max-pooled (window ceil(side /
    attention_size), remainder dropped) first: at 224 px 56 x 56 -> 14 x 14
    = 196 positions; small inputs are left alone;
  * the FC-1024 reads the global average pool of the final map (a flatten of
    14 x 14 x 176 would put ~35M parameters in one layer).
The bottleneck's 1x1 conv has bn_size * growth = 4 * 8 = 32 filters
(DenseNet-BC's rule). Call convention of the hash models:
`model.apply(v, x, train=False, beta=1.0) -> {"codes_real", "logits",
"features"}`, with the backbone_features / from_feature_map split of
`HashingNet` for Grad-CAM.
"""

import math
from typing import Any, Dict, Sequence

import flax.linen as nn
import jax.numpy as jnp

from medhash_jax.models.attention import ConvSelfAttention
from medhash_jax.models.backbones import DenseBlock, _conv
from medhash_jax.models import heads
from medhash_jax.models.heads import FCStack

Dtype = Any


def max_pool_blocks(x, window_h: int, window_w: int):
  """Non-overlapping max pool (stride = window, VALID: a remainder row or
  column is dropped), as a reshape + max.

  Same values as `nn.max_pool(x, (wh, ww), strides=(wh, ww))`; its gradient
  is a cheap masked broadcast, where reduce_window's select-and-scatter
  costs as much as the dense block before it on a CPU.
  """
  b, h, w, c = x.shape
  hh, ww = h // window_h, w // window_w
  if hh == 0 or ww == 0:
    raise ValueError(f"cannot max-pool a {h}x{w} map with a {window_h}x"
                     f"{window_w} window")
  x = x[:, :hh * window_h, :ww * window_w]
  x = x.reshape(b, hh, window_h, ww, window_w, c)
  return jnp.max(x, axis=(2, 4))


class MultiScaleDenseModule(nn.Module):
  """Parallel 1x1 / 3x3 / 5x5 stems, a dense block and a max pool each, concat."""
  kernel_sizes: Sequence[int] = (1, 3, 5)
  filters: int = 16
  growth: int = 8
  num_layers: int = 4
  bn_size: int = 4
  pool_size: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    outs = []
    for k in self.kernel_sizes:
      if k % 2 != 1:
        raise ValueError(f"MTH kernel sizes must be odd (padding (k-1)/2), got {k}")
      y = _conv(self.filters, k, 1, self.dtype, f"conv{k}x{k}", padding=k // 2)(x)
      y = DenseBlock(self.num_layers, self.growth, self.bn_size, self.dtype,
                     name=f"dense{k}x{k}")(y, train)
      if self.pool_size > 1:
        y = max_pool_blocks(y, self.pool_size, self.pool_size)
      outs.append(y)
    return jnp.concatenate(outs, axis=-1)


class MTHNet(nn.Module):
  """The MTH hash network (see the module docstring).

  Attributes:
    num_bits: K.  num_classes: C of the class layer (0 = none).
    filters, growth, num_layers, kernel_sizes: the multi-scale module.
    pool_size: max-pool window and stride after each scale.
    attention_size: max side of the map the self-attention sees (0 = never
      pool further).
    num_heads: heads of the self-attention.
    attention_chunk: queries per chunk of a memory-efficient attention (0 =
      naive N x N); with attention_size=0 and a chunk (e.g. 512) the
      attention sees the full map, as the paper does.
    fc_dim: the FC layer before the heads (1024).
    dropout_rate: dropout after the FC layer.
  """
  num_bits: int
  num_classes: int = 0
  filters: int = 16
  growth: int = 8
  num_layers: int = 4
  kernel_sizes: Sequence[int] = (1, 3, 5)
  pool_size: int = 2
  attention_size: int = 16
  num_heads: int = 4
  attention_chunk: int = 0
  fc_dim: int = 1024
  dropout_rate: float = 0.0
  hash_activation: str = "tanh"
  dtype: Dtype = jnp.float32

  def setup(self):
    self.hash, self.classifier = heads.build_heads(
        self.num_bits, self.num_classes, self.hash_activation, self.dtype)
    if self.num_classes > 0:
      self.projection = nn.Dense(self.num_classes, dtype=self.dtype,
                                 param_dtype=jnp.float32, name="projection")
    self.multi_scale = MultiScaleDenseModule(
        tuple(self.kernel_sizes), self.filters, self.growth, self.num_layers,
        pool_size=self.pool_size, dtype=self.dtype)
    self.attention = ConvSelfAttention(num_heads=self.num_heads,
                                       chunk_size=self.attention_chunk,
                                       dtype=self.dtype)
    self.dense = DenseBlock(self.num_layers, self.growth, 4, self.dtype)
    self.norm = nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                             param_dtype=jnp.float32)
    self.fc = FCStack((int(self.fc_dim),) if self.fc_dim else (),
                      self.dropout_rate, self.dtype)

  def backbone_features(self, x, train: bool = False) -> Dict[str, Any]:
    x = jnp.asarray(x, self.dtype)
    y = self.multi_scale(x, train)
    h, w = y.shape[1:3]
    a = self.attention_size
    if a and max(h, w) > a:
      y = max_pool_blocks(y, math.ceil(h / a), math.ceil(w / a))
    y = self.attention(y)
    y = self.dense(y, train)
    y = nn.relu(self.norm(y, use_running_average=not train))
    return {"feature_map": y, "features": jnp.mean(y, axis=(1, 2))}

  def from_feature_map(self, fmap, train: bool = False, beta=1.0,
                       return_feature_map: bool = False) -> Dict[str, Any]:
    feats = self.fc(jnp.mean(fmap, axis=(1, 2)), train)
    out = heads.head_outputs(self, feats, beta,
                             fmap if return_feature_map else None)
    if self.num_classes > 0:
      # rho: the semantic term's projection of the codes onto the classes.
      out["code_logits"] = jnp.asarray(
          self.projection(out["codes_real"]), jnp.float32)
    return out

  def __call__(self, x, train: bool = False, beta=1.0,
               return_feature_map: bool = False) -> Dict[str, Any]:
    fmap = self.backbone_features(x, train)["feature_map"]
    return self.from_feature_map(fmap, train, beta, return_feature_map)
