"""Generic deep hashing model and plain classifier.

    image -> backbone -> feature map -> [attention] -> global average pool
          -> [FC stack] = features -> hash head  -> codes_real (B, K) float32
                                   -> class head -> logits (B, C) float32

`HashingNet.__call__(x, train=False, beta=1.0)` returns

    {"codes_real": (B, K) tanh(beta * z) in (-1, 1)  (binary code = >= 0),
     "logits":     (B, C) class scores, or None when num_classes == 0,
     "features":   (B, D) the deep features the heads read (float32)}

plus "feature_map" (B, h, w, D') when `return_feature_map=True`.

Grad-CAM needs the gradient of a class score with respect to the last
convolutional feature map. Both models are split at that map:

    fmap = model.apply(v, x, method="backbone_features")["feature_map"]
    out  = model.apply(v, fmap, method="from_feature_map")

and `__call__` is exactly their composition, so
`jax.grad(lambda f: model.apply(v, f, method="from_feature_map")["logits"]
[:, c].sum())(fmap)` is the Grad-CAM gradient with no extra collections.
"""

from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from medhash_jax.models import heads
from medhash_jax.models.heads import ClassHead, FCStack

Dtype = Any


class HashingNet(nn.Module):
  """backbone -> optional attention -> optional FC -> hash head + class head.

  Attributes:
    backbone: a module returning {"feature_map", "features"} (backbones.py).
    num_bits: K, the code length.
    num_classes: C for the class head; 0 = no class head (logits None).
    attention: optional block (B, h, w, D) -> (B, h, w, D) on the feature map.
    fc_dims: hidden Dense+ReLU sizes between the pool and the heads.
    dropout_rate: dropout after each FC layer (needs a "dropout" rng in train).
    hash_activation: "tanh" or "identity" (heads.HashHead).
    dtype: compute dtype of attention, FC and heads (outputs are float32).
  """
  backbone: nn.Module
  num_bits: int
  num_classes: int = 0
  attention: Optional[nn.Module] = None
  fc_dims: Sequence[int] = ()
  dropout_rate: float = 0.0
  hash_activation: str = "tanh"
  dtype: Dtype = jnp.float32

  def setup(self):
    self.hash, self.classifier = heads.build_heads(
        self.num_bits, self.num_classes, self.hash_activation, self.dtype)
    self.fc = FCStack(tuple(self.fc_dims), self.dropout_rate, self.dtype)

  def backbone_features(self, x, train: bool = False) -> Dict[str, Any]:
    return self.backbone(x, train=train)

  def from_feature_map(self, fmap, train: bool = False, beta=1.0,
                       return_feature_map: bool = False) -> Dict[str, Any]:
    if self.attention is not None:
      fmap = self.attention(fmap)
    pooled = jnp.mean(fmap, axis=(1, 2))
    feats = self.fc(pooled, train)
    return heads.head_outputs(self, feats, beta,
                              fmap if return_feature_map else None)

  def __call__(self, x, train: bool = False, beta=1.0,
               return_feature_map: bool = False) -> Dict[str, Any]:
    fmap = self.backbone_features(x, train)["feature_map"]
    return self.from_feature_map(fmap, train, beta, return_feature_map)


class Classifier(nn.Module):
  """backbone -> global pool -> optional FC -> class head (ATH stage 1).

  `__call__` returns {"logits": (B, C), "features": (B, D)} (+ "feature_map"
  when asked); the same backbone_features / from_feature_map split as
  HashingNet serves Grad-CAM.
  """
  backbone: nn.Module
  num_classes: int
  fc_dims: Sequence[int] = ()
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.num_classes <= 0:
      raise ValueError(f"num_classes must be > 0, got {self.num_classes}")
    self.fc = FCStack(tuple(self.fc_dims), self.dropout_rate, self.dtype)
    self.classifier = ClassHead(self.num_classes, self.dtype)

  def backbone_features(self, x, train: bool = False) -> Dict[str, Any]:
    return self.backbone(x, train=train)

  def from_feature_map(self, fmap, train: bool = False, beta=1.0,
                       return_feature_map: bool = False) -> Dict[str, Any]:
    del beta  # accepted so trainers can call every model the same way
    feats = self.fc(jnp.mean(fmap, axis=(1, 2)), train)
    out = {"logits": self.classifier(feats),
           "features": jnp.asarray(feats, jnp.float32)}
    if return_feature_map:
      out["feature_map"] = fmap
    return out

  def __call__(self, x, train: bool = False, beta=1.0,
               return_feature_map: bool = False) -> Dict[str, Any]:
    fmap = self.backbone_features(x, train)["feature_map"]
    return self.from_feature_map(fmap, train, beta, return_feature_map)
