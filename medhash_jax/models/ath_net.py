"""ATH-GradCAM's two-branch hash network (Zhu et al., Computer Science 2022).

    x  (global image) -> ResNet-50 "global_backbone" -> GAP -> f'  -> hash -> b'
    x' (local image)  -> ResNet-50 "local_backbone"  -> GAP -> f'' -> hash -> b''
    code = [b' ; b'']                       (e.g. 24 + 24 = 48 bits)
    logits = class head([f' ; f''])         (the BCE term of the ATH loss)

x' is the Grad-CAM + Otsu mask-and-crop of x (medhash_jax.cam ->
data.mask_dir -> the data layer's `local_image`). The two branches do not
share weights (the paper trains two ResNet-50s). The class head reads the
concatenated features so the classification term shapes both branches.

Call convention (the hash models' one, plus the local view):

    out = model.apply(variables, x, local_image, train=False, beta=1.0)
    out = model.apply(variables, x, local_image=x_local)       # same
    -> {"codes_real": (B, K) = concat(global K_g, local K - K_g),
        "logits": (B, C) or None, "features": (B, 2 D),
        "codes_global": (B, K_g), "codes_local": (B, K - K_g)}

`local_image` is the second positional argument so the trainer's two-view
call `model.apply(v, image, local_image, ...)` works; when it is None the
global image is used for both branches, which is exactly what the data layer
feeds when a mask is empty (its `local_fallback`), and lets the model run in
single-view code paths (registry tests, Grad-CAM of the global branch).

The Table 4 ablations of the paper ("-A": no attention branch, "-A + SE",
"-A + CBAM") are single-branch models: the registry's "resnet50" with
attention=None / "se" / "cbam" and a class head (configs/ath.py).
"""

from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from medhash_jax.models.heads import ClassHead, FCStack, HashHead

Dtype = Any


def split_bits(num_bits: int, local_fraction: float = 0.5):
  """(global bits, local bits) of a K-bit two-branch code; both >= 1."""
  if num_bits < 2:
    raise ValueError(f"a two-branch code needs num_bits >= 2, got {num_bits}")
  if not 0.0 < local_fraction < 1.0:
    raise ValueError(f"local_fraction must be in (0, 1), got {local_fraction}")
  local = min(max(int(round(num_bits * local_fraction)), 1), num_bits - 1)
  return num_bits - local, local


class TwoBranchHashNet(nn.Module):
  """Global + local branches, one hash layer each, codes concatenated.

  Attributes:
    global_backbone, local_backbone: modules returning {"feature_map", ...}
      (two separate instances: the branches do not share weights).
    num_bits: K, the total code length (split by `local_fraction`).
    num_classes: C of the class head on [f'; f'']; 0 = no class head.
    local_fraction: share of the K bits given to the local code (0.5: 24+24).
    attention: optional block applied to each branch's feature map (a fresh
      copy per branch; None in the paper).
    fc_dims, dropout_rate: optional FC stack in each branch (after the pool).
    hash_activation: "tanh" (tanh(beta z)) or "identity".
    dtype: compute dtype of the heads.
  """
  global_backbone: nn.Module
  local_backbone: nn.Module
  num_bits: int
  num_classes: int = 0
  local_fraction: float = 0.5
  attention: Optional[nn.Module] = None
  fc_dims: Sequence[int] = ()
  dropout_rate: float = 0.0
  hash_activation: str = "tanh"
  dtype: Dtype = jnp.float32

  def setup(self):
    k_g, k_l = split_bits(self.num_bits, self.local_fraction)
    if self.attention is not None:  # one fresh copy per branch
      self.global_attention = self.attention.clone(parent=None)
      self.local_attention = self.attention.clone(parent=None)
    self.global_fc = FCStack(tuple(self.fc_dims), self.dropout_rate, self.dtype)
    self.local_fc = FCStack(tuple(self.fc_dims), self.dropout_rate, self.dtype)
    self.global_hash = HashHead(k_g, self.hash_activation, self.dtype)
    self.local_hash = HashHead(k_l, self.hash_activation, self.dtype)
    if self.num_classes > 0:
      self.classifier = ClassHead(self.num_classes, self.dtype)

  def _branch(self, which: str, x, train: bool):
    backbone = self.global_backbone if which == "global" else self.local_backbone
    fmap = backbone(x, train=train)["feature_map"]
    if self.attention is not None:
      att = self.global_attention if which == "global" else self.local_attention
      fmap = att(fmap)
    fc = self.global_fc if which == "global" else self.local_fc
    return fc(jnp.mean(fmap, axis=(1, 2)), train)

  def __call__(self, x, local_image=None, train: bool = False, beta=1.0
               ) -> Dict[str, Any]:
    if local_image is None:
      local_image = x
    if local_image.shape != x.shape:
      raise ValueError(f"local_image shape {local_image.shape} != image shape "
                       f"{x.shape}")
    f_g = self._branch("global", x, train)
    f_l = self._branch("local", local_image, train)
    b_g = self.global_hash(f_g, beta)
    b_l = self.local_hash(f_l, beta)
    feats = jnp.concatenate([f_g, f_l], axis=-1)
    return {"codes_real": jnp.concatenate([b_g, b_l], axis=-1),
            "logits": self.classifier(feats) if self.num_classes > 0 else None,
            "features": jnp.asarray(feats, jnp.float32),
            "codes_global": b_g, "codes_local": b_l}
