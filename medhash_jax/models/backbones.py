"""Convolutional backbones: ResNet-18/50 and DenseNet-121 (Flax linen, NHWC).

Every backbone maps an image batch (B, H, W, C) to a dict

    {"feature_map": (B, h, w, D)  the last convolutional feature map (after
                                  its final ReLU) -- the map Grad-CAM weights,
     "features":    (B, D)        its global average pool}

so Grad-CAM, the attention blocks and the heads all read the same map.

Submodule names mirror torchvision's state-dict keys (`conv1`, `bn1`,
`layer3_2/conv2`, `denseblock2/denselayer5/norm1`, ...) so `convert.py` is a
mechanical rename. The layer definitions match torchvision exactly (ResNet
v1.5: the stride sits on the 3x3 conv of the bottleneck; BatchNorm eps 1e-5,
torch momentum 0.1 == Flax momentum 0.9), which is what lets converted
ImageNet weights reproduce torch outputs.

Stems: `small_input=False` is the standard ImageNet stem (7x7/2 conv + 3x3/2
max-pool, /4 overall) for ~224 px inputs. `small_input=True` is the CIFAR-style
stem (3x3/1 conv, no pool) for 28-64 px inputs, where /4 at the start would
leave a 1x1 map after the last stage. Pretrained weights fit the standard stem
only (the small stem's conv1 has another shape and keeps its fresh init).

`dtype` is the compute dtype (e.g. jnp.bfloat16); parameters and BatchNorm
statistics stay float32 (`param_dtype`), outputs come back in `dtype`.
"""

import functools
from typing import Any, Dict, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

# torchvision initialises convs with kaiming_normal(fan_out, relu).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def canonical_dtype(dtype) -> Dtype:
  """'bfloat16' / 'float32' / a jnp dtype -> the jnp dtype (for configs)."""
  if isinstance(dtype, str):
    names = {"float32": jnp.float32, "fp32": jnp.float32,
             "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
             "float16": jnp.float16, "fp16": jnp.float16}
    if dtype not in names:
      raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(names)}")
    return names[dtype]
  return jnp.dtype(dtype).type if dtype is not None else jnp.float32


def _norm(train: bool, dtype: Dtype, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


def _conv(features: int, kernel: int, stride: int, dtype: Dtype, name: str,
          padding=None) -> nn.Conv:
  pad = kernel // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=_conv_init, dtype=dtype, param_dtype=jnp.float32,
                 name=name)


def _max_pool_3x3_s2(x):
  # torch MaxPool2d(3, 2, padding=1): padding counts as -inf, as in flax.
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


# ---------------------------------------------------------------------------
# ResNet
# ---------------------------------------------------------------------------


class BasicBlock(nn.Module):
  """ResNet-18/34 block: 3x3 -> 3x3, projection shortcut when the shape changes."""
  features: int
  stride: int = 1
  downsample: bool = False
  dtype: Dtype = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = _conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
    y = nn.relu(_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
    y = _norm(train, self.dtype, "bn2")(y)
    if self.downsample:
      x = _conv(self.features, 1, self.stride, self.dtype, "downsample_conv")(x)
      x = _norm(train, self.dtype, "downsample_bn")(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """ResNet-50 block (v1.5): 1x1 -> 3x3 (stride) -> 1x1 (x4 channels)."""
  features: int
  stride: int = 1
  downsample: bool = False
  dtype: Dtype = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = _conv(self.features, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.features, 3, self.stride, self.dtype, "conv2")(y)
    y = nn.relu(_norm(train, self.dtype, "bn2")(y))
    y = _conv(self.features * 4, 1, 1, self.dtype, "conv3")(y)
    y = _norm(train, self.dtype, "bn3")(y)
    if self.downsample:
      x = _conv(self.features * 4, 1, self.stride, self.dtype,
                "downsample_conv")(x)
      x = _norm(train, self.dtype, "downsample_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet (He et al., CVPR 2016) in torchvision's layout.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    block: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101).
    width: channels of the stem and of the first stage (64 in the paper;
      smaller for tests).
    small_input: CIFAR-style stem for 28-64 px inputs (see module docstring).
    dtype: compute dtype.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  block: str = "bottleneck"
  width: int = 64
  small_input: bool = False
  dtype: Dtype = jnp.float32

  @property
  def out_features(self) -> int:
    return self.width * 2 ** (len(self.stage_sizes) - 1) * (
        4 if self.block == "bottleneck" else 1)

  @nn.compact
  def __call__(self, x, train: bool = False) -> Dict[str, Any]:
    if self.block not in ("basic", "bottleneck"):
      raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
    block_cls = Bottleneck if self.block == "bottleneck" else BasicBlock
    x = jnp.asarray(x, self.dtype)
    if self.small_input:
      x = _conv(self.width, 3, 1, self.dtype, "conv1")(x)
      x = nn.relu(_norm(train, self.dtype, "bn1")(x))
    else:
      x = _conv(self.width, 7, 2, self.dtype, "conv1")(x)
      x = nn.relu(_norm(train, self.dtype, "bn1")(x))
      x = _max_pool_3x3_s2(x)
    in_ch = self.width
    for i, n_blocks in enumerate(self.stage_sizes):
      feats = self.width * 2 ** i
      for j in range(n_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        down = j == 0 and (stride != 1 or in_ch != feats * block_cls.expansion)
        x = block_cls(feats, stride=stride, downsample=down, dtype=self.dtype,
                      name=f"layer{i + 1}_{j}")(x, train)
        in_ch = feats * block_cls.expansion
    return {"feature_map": x, "features": jnp.mean(x, axis=(1, 2))}


# ---------------------------------------------------------------------------
# DenseNet
# ---------------------------------------------------------------------------


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv (bn_size * growth) - BN-ReLU-3x3 conv (growth), concat."""
  growth_rate: int
  bn_size: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.relu(_norm(train, self.dtype, "norm1")(x))
    y = _conv(self.bn_size * self.growth_rate, 1, 1, self.dtype, "conv1")(y)
    y = nn.relu(_norm(train, self.dtype, "norm2")(y))
    y = _conv(self.growth_rate, 3, 1, self.dtype, "conv2")(y)
    return jnp.concatenate([x, y], axis=-1)


class DenseBlock(nn.Module):
  num_layers: int
  growth_rate: int
  bn_size: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in range(self.num_layers):
      x = DenseLayer(self.growth_rate, self.bn_size, self.dtype,
                     name=f"denselayer{i + 1}")(x, train)
    return x


class Transition(nn.Module):
  """BN-ReLU-1x1 conv (halve channels) - 2x2 average pool."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(_norm(train, self.dtype, "norm")(x))
    x = _conv(self.features, 1, 1, self.dtype, "conv")(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """DenseNet-BC (Huang et al., CVPR 2017) in torchvision's layout.

  Attributes:
    block_config: layers per dense block; (6, 12, 24, 16) is DenseNet-121.
    growth_rate: channels each layer adds (32).
    num_init_features: stem channels (64).
    bn_size: bottleneck multiplier of the 1x1 conv (4).
    small_input: 3x3/1 stem without pooling, for 28-64 px inputs.
    dtype: compute dtype.
  The feature map is `relu(norm5(...))`, torchvision's `features` + ReLU.
  """
  block_config: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  num_init_features: int = 64
  bn_size: int = 4
  small_input: bool = False
  dtype: Dtype = jnp.float32

  @property
  def out_features(self) -> int:
    ch = self.num_init_features
    for i, n in enumerate(self.block_config):
      ch += n * self.growth_rate
      if i != len(self.block_config) - 1:
        ch //= 2
    return ch

  @nn.compact
  def __call__(self, x, train: bool = False) -> Dict[str, Any]:
    x = jnp.asarray(x, self.dtype)
    if self.small_input:
      x = _conv(self.num_init_features, 3, 1, self.dtype, "conv0")(x)
      x = nn.relu(_norm(train, self.dtype, "norm0")(x))
    else:
      x = _conv(self.num_init_features, 7, 2, self.dtype, "conv0")(x)
      x = nn.relu(_norm(train, self.dtype, "norm0")(x))
      x = _max_pool_3x3_s2(x)
    ch = self.num_init_features
    for i, n in enumerate(self.block_config):
      x = DenseBlock(n, self.growth_rate, self.bn_size, self.dtype,
                     name=f"denseblock{i + 1}")(x, train)
      ch += n * self.growth_rate
      if i != len(self.block_config) - 1:
        ch //= 2
        x = Transition(ch, self.dtype, name=f"transition{i + 1}")(x, train)
    x = nn.relu(_norm(train, self.dtype, "norm5")(x))
    return {"feature_map": x, "features": jnp.mean(x, axis=(1, 2))}


# ---------------------------------------------------------------------------
# Named configurations
# ---------------------------------------------------------------------------

ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic")
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck")
DenseNet121 = functools.partial(DenseNet, block_config=(6, 12, 24, 16),
                                growth_rate=32, num_init_features=64)

BACKBONES = {
    "resnet18": ResNet18,
    "resnet50": ResNet50,
    "densenet121": DenseNet121,
}


def get_backbone(name: str, **kwargs) -> nn.Module:
  """A backbone by name; kwargs override its attributes (e.g. width=8)."""
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; valid names: "
                     f"{', '.join(sorted(BACKBONES))}")
  if "dtype" in kwargs:
    kwargs["dtype"] = canonical_dtype(kwargs["dtype"])
  return BACKBONES[name](**kwargs)


def feature_map_stride(small_input: bool, num_stages: int = 4) -> int:
  """Total downsampling of the feature map (for sizing inputs and CAMs)."""
  return (1 if small_input else 4) * 2 ** (num_stages - 1)


__all__ = ["ResNet", "DenseNet", "BasicBlock", "Bottleneck", "DenseLayer",
           "DenseBlock", "Transition", "ResNet18", "ResNet50", "DenseNet121",
           "BACKBONES", "get_backbone", "canonical_dtype", "feature_map_stride"]
