"""Models by name: `get_model(name, **kwargs)` and the `MODELS` dict of
`ModelSpec`s.

Every spec holds a builder with an explicit keyword signature (so a config's
`model.kwargs` can be checked against it with `inspect.signature`) that
returns a Flax linen module, and what the rest of the library needs to know
about the model: its kind (a hash model or a classifier), how many views its
apply takes, and where converted ImageNet backbone weights go. Call
conventions of the modules:

  hash models ("resnet18", "resnet50", "densenet121", "mth", "sa_hash",
  "ath_two_branch"):
      model.apply(variables, x, train=False, beta=1.0)
        -> {"codes_real": (B, K), "logits": (B, C) or None, "features": (B, D)}
  two-view hash model ("ath_two_branch"): the local (masked-and-cropped) view
  is the second argument, positional or keyword `local_image`:
      model.apply(variables, x, local_image, train=False, beta=1.0)
        -> the same dict plus "codes_global" / "codes_local"; K = K_g + K_l
      (local_image=None uses x for both branches); its spec has views=2.
  classifiers (kind="classifier": "resnet18_classifier", ...):
      model.apply(variables, x, train=False)
        -> {"logits": (B, C), "features": (B, D)}

`x` is a float (B, H, W, channels) batch; in train mode pass
`mutable=["batch_stats"]` (and a "dropout" rng when dropout_rate > 0).
"""

import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn

from medhash_jax.models import attention as attention_lib
from medhash_jax.models import backbones
from medhash_jax.models.ath_net import TwoBranchHashNet
from medhash_jax.models.hashing_net import Classifier, HashingNet
from medhash_jax.models.mth_net import MTHNet
from medhash_jax.models.sa_hash_net import SAHashNet


def _attention(name: Optional[str], kwargs: Optional[Dict[str, Any]], dtype):
  if name in (None, "", "none"):
    return None
  return attention_lib.get_attention(name, dtype=dtype, **dict(kwargs or {}))


def _hash_net(backbone, *, num_bits, num_classes, attention, attention_kwargs,
              fc_dims, dropout_rate, hash_activation, dtype):
  return HashingNet(
      backbone=backbone, num_bits=int(num_bits), num_classes=int(num_classes),
      attention=_attention(attention, attention_kwargs, dtype),
      fc_dims=tuple(int(d) for d in fc_dims), dropout_rate=float(dropout_rate),
      hash_activation=hash_activation, dtype=dtype)


def resnet18(*, num_bits: int, num_classes: int = 0, small_input: bool = False,
             width: int = 64, attention: Optional[str] = None,
             attention_kwargs: Optional[Dict[str, Any]] = None,
             fc_dims: Sequence[int] = (), dropout_rate: float = 0.0,
             hash_activation: str = "tanh", dtype="float32") -> nn.Module:
  """ResNet-18 hash model (attention: None | se | cbam | spatial | mhsa)."""
  dtype = backbones.canonical_dtype(dtype)
  bb = backbones.ResNet18(width=width, small_input=small_input, dtype=dtype)
  return _hash_net(bb, num_bits=num_bits, num_classes=num_classes,
                   attention=attention, attention_kwargs=attention_kwargs,
                   fc_dims=fc_dims, dropout_rate=dropout_rate,
                   hash_activation=hash_activation, dtype=dtype)


def resnet50(*, num_bits: int, num_classes: int = 0, small_input: bool = False,
             width: int = 64, attention: Optional[str] = None,
             attention_kwargs: Optional[Dict[str, Any]] = None,
             fc_dims: Sequence[int] = (), dropout_rate: float = 0.0,
             hash_activation: str = "tanh", dtype="float32") -> nn.Module:
  """ResNet-50 hash model (attention: None | se | cbam | spatial | mhsa)."""
  dtype = backbones.canonical_dtype(dtype)
  bb = backbones.ResNet50(width=width, small_input=small_input, dtype=dtype)
  return _hash_net(bb, num_bits=num_bits, num_classes=num_classes,
                   attention=attention, attention_kwargs=attention_kwargs,
                   fc_dims=fc_dims, dropout_rate=dropout_rate,
                   hash_activation=hash_activation, dtype=dtype)


def densenet121(*, num_bits: int, num_classes: int = 0,
                small_input: bool = False, growth_rate: int = 32,
                num_init_features: int = 64,
                block_config: Sequence[int] = (6, 12, 24, 16),
                attention: Optional[str] = None,
                attention_kwargs: Optional[Dict[str, Any]] = None,
                fc_dims: Sequence[int] = (), dropout_rate: float = 0.0,
                hash_activation: str = "tanh", dtype="float32") -> nn.Module:
  """DenseNet-121 hash model (growth/blocks overridable for tiny tests)."""
  dtype = backbones.canonical_dtype(dtype)
  bb = backbones.DenseNet(block_config=tuple(block_config),
                          growth_rate=growth_rate,
                          num_init_features=num_init_features,
                          small_input=small_input, dtype=dtype)
  return _hash_net(bb, num_bits=num_bits, num_classes=num_classes,
                   attention=attention, attention_kwargs=attention_kwargs,
                   fc_dims=fc_dims, dropout_rate=dropout_rate,
                   hash_activation=hash_activation, dtype=dtype)


def _classifier(backbone, *, num_classes, fc_dims, dropout_rate, dtype):
  return Classifier(backbone=backbone, num_classes=int(num_classes),
                    fc_dims=tuple(int(d) for d in fc_dims),
                    dropout_rate=float(dropout_rate), dtype=dtype)


def resnet18_classifier(*, num_classes: int, small_input: bool = False,
                        width: int = 64, fc_dims: Sequence[int] = (),
                        dropout_rate: float = 0.0, dtype="float32",
                        num_bits: int = 0) -> nn.Module:
  """ResNet-18 classifier; `num_bits` is accepted and ignored."""
  del num_bits
  dtype = backbones.canonical_dtype(dtype)
  bb = backbones.ResNet18(width=width, small_input=small_input, dtype=dtype)
  return _classifier(bb, num_classes=num_classes, fc_dims=fc_dims,
                     dropout_rate=dropout_rate, dtype=dtype)


def resnet50_classifier(*, num_classes: int, small_input: bool = False,
                        width: int = 64, fc_dims: Sequence[int] = (),
                        dropout_rate: float = 0.0, dtype="float32",
                        num_bits: int = 0) -> nn.Module:
  """ResNet-50 classifier; `num_bits` is accepted and ignored."""
  del num_bits
  dtype = backbones.canonical_dtype(dtype)
  bb = backbones.ResNet50(width=width, small_input=small_input, dtype=dtype)
  return _classifier(bb, num_classes=num_classes, fc_dims=fc_dims,
                     dropout_rate=dropout_rate, dtype=dtype)


def densenet121_classifier(*, num_classes: int, small_input: bool = False,
                           growth_rate: int = 32, num_init_features: int = 64,
                           block_config: Sequence[int] = (6, 12, 24, 16),
                           fc_dims: Sequence[int] = (),
                           dropout_rate: float = 0.0, dtype="float32",
                           num_bits: int = 0) -> nn.Module:
  """DenseNet-121 classifier (ATH stage 1); `num_bits` is ignored."""
  del num_bits
  dtype = backbones.canonical_dtype(dtype)
  bb = backbones.DenseNet(block_config=tuple(block_config),
                          growth_rate=growth_rate,
                          num_init_features=num_init_features,
                          small_input=small_input, dtype=dtype)
  return _classifier(bb, num_classes=num_classes, fc_dims=fc_dims,
                     dropout_rate=dropout_rate, dtype=dtype)


# ---------------------------------------------------------------------------
# The three seed systems
# ---------------------------------------------------------------------------

_SYSTEM_BACKBONES = ("resnet18", "resnet50")


def _system_backbone(name, *, width, small_input, dtype):
  if name not in _SYSTEM_BACKBONES:
    raise ValueError(f"unknown backbone {name!r} for this model; valid: "
                     f"{', '.join(_SYSTEM_BACKBONES)}")
  return backbones.get_backbone(name, width=int(width),
                                small_input=bool(small_input), dtype=dtype)


def ath_two_branch(*, num_bits: int, num_classes: int = 0,
                   backbone: str = "resnet50", small_input: bool = False,
                   width: int = 64, local_fraction: float = 0.5,
                   attention: Optional[str] = None,
                   attention_kwargs: Optional[Dict[str, Any]] = None,
                   fc_dims: Sequence[int] = (), dropout_rate: float = 0.0,
                   hash_activation: str = "tanh",
                   dtype="float32") -> nn.Module:
  """ATH-GradCAM: global + local ResNet branches, codes concatenated
  (ath_net.py); two-view: pass the local image as the second argument."""
  dtype = backbones.canonical_dtype(dtype)
  make = lambda: _system_backbone(backbone, width=width,
                                  small_input=small_input, dtype=dtype)
  return TwoBranchHashNet(
      global_backbone=make(), local_backbone=make(), num_bits=int(num_bits),
      num_classes=int(num_classes), local_fraction=float(local_fraction),
      attention=_attention(attention, attention_kwargs, dtype),
      fc_dims=tuple(int(d) for d in fc_dims), dropout_rate=float(dropout_rate),
      hash_activation=hash_activation, dtype=dtype)


def mth(*, num_bits: int, num_classes: int = 0, small_input: bool = False,
        filters: int = 16, growth: int = 8, num_layers: int = 4,
        kernel_sizes: Sequence[int] = (1, 3, 5),
        pool_size: Optional[int] = None, attention_size: int = 16,
        num_heads: int = 4, fc_dim: int = 1024, dropout_rate: float = 0.0,
        hash_activation: str = "tanh", dtype="float32",
        attention_chunk: int = 0) -> nn.Module:
  """MTH: multi-scale dense blocks + conv self-attention (mth_net.py);
  pool_size None = 2 for small inputs, 4 for ~224 px; attention_size=0 with
  attention_chunk > 0 = memory-efficient attention over the full map."""
  if pool_size is None:
    pool_size = 2 if small_input else 4
  return MTHNet(num_bits=int(num_bits), num_classes=int(num_classes),
                filters=int(filters), growth=int(growth),
                num_layers=int(num_layers),
                kernel_sizes=tuple(int(k) for k in kernel_sizes),
                pool_size=int(pool_size), attention_size=int(attention_size),
                num_heads=int(num_heads),
                attention_chunk=int(attention_chunk), fc_dim=int(fc_dim),
                dropout_rate=float(dropout_rate),
                hash_activation=hash_activation,
                dtype=backbones.canonical_dtype(dtype))


def sa_hash(*, num_bits: int, num_classes: int = 0, backbone: str = "resnet50",
            small_input: bool = False, width: int = 64, kernel_size: int = 7,
            pool_size: int = 3, fc_dim: int = 1024, dropout_rate: float = 0.0,
            hash_activation: str = "tanh", dtype="float32",
            attention_reading: str = "stacked") -> nn.Module:
  """SA-Hash: ResNet + feature-refined blocks + spatial attention
  (sa_hash_net.py); attention_reading = the third descriptor's reading."""
  dtype = backbones.canonical_dtype(dtype)
  bb = _system_backbone(backbone, width=width, small_input=small_input,
                        dtype=dtype)
  return SAHashNet(backbone=bb, num_bits=int(num_bits),
                   num_classes=int(num_classes),
                   refine_features=bb.out_features // 4,
                   kernel_size=int(kernel_size), pool_size=int(pool_size),
                   attention_reading=str(attention_reading),
                   fc_dim=int(fc_dim), dropout_rate=float(dropout_rate),
                   hash_activation=hash_activation, dtype=dtype)


HASHING, CLASSIFIER = "hashing", "classifier"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registered model.

  Attributes:
    build: keyword-only builder -> flax module (its signature is what
      `model.kwargs` is checked against).
    kind: HASHING (output holds "codes_real") or CLASSIFIER (logits and
      features only; ATH's stage 1).
    views: 1, or 2 for models whose apply takes (image, local_image).
    pretrained_prefixes: where a converted ImageNet backbone goes in the
      model's variables (both ATH branches start from it); () for a model
      without one (MTH has no stem: its init_from is an orbax checkpoint).
  """
  build: Callable[..., nn.Module]
  kind: str = HASHING
  views: int = 1
  pretrained_prefixes: Tuple[str, ...] = ("backbone",)

  def __post_init__(self):
    if self.kind not in (HASHING, CLASSIFIER):
      raise ValueError(f"ModelSpec kind must be {HASHING!r} or "
                       f"{CLASSIFIER!r}, got {self.kind!r}")
    if self.views not in (1, 2):
      raise ValueError(f"ModelSpec views must be 1 or 2, got {self.views!r}")


MODELS: Dict[str, ModelSpec] = {
    "resnet18": ModelSpec(resnet18),
    "resnet50": ModelSpec(resnet50),
    "densenet121": ModelSpec(densenet121),
    "resnet18_classifier": ModelSpec(resnet18_classifier, kind=CLASSIFIER),
    "resnet50_classifier": ModelSpec(resnet50_classifier, kind=CLASSIFIER),
    "densenet121_classifier": ModelSpec(densenet121_classifier,
                                        kind=CLASSIFIER),
    "ath_two_branch": ModelSpec(
        ath_two_branch, views=2,
        pretrained_prefixes=("global_backbone", "local_backbone")),
    "mth": ModelSpec(mth, pretrained_prefixes=()),
    "sa_hash": ModelSpec(sa_hash),
}


def model_spec(name: str) -> ModelSpec:
  """The spec of the registered model `name`; unknown names list the known."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; valid names: "
                     f"{', '.join(sorted(MODELS))}")
  return MODELS[name]


def pretrained_converter(name: str, **kwargs
                         ) -> Optional[Callable[[str], Dict[str, Any]]]:
  """`path -> variables` for `config.init_from` with a torchvision/timm file:
  the converted backbone under every prefix the model `name` has (kwargs go
  to `convert.convert_state_dict`, e.g. in_channels=1); None for a model
  with no backbone to fill (a file init_from is then refused, naming it)."""
  from medhash_jax.models import convert  # pylint: disable=g-import-not-at-top
  prefixes = model_spec(name).pretrained_prefixes
  if not prefixes:
    return None

  def load(path: str) -> Dict[str, Any]:
    sd = convert.load_state_dict(path)
    out: Dict[str, Any] = {"params": {}, "batch_stats": {}}
    for prefix in prefixes:
      v = convert.convert_state_dict(sd, prefix=prefix, **kwargs)
      for coll in out:
        out[coll].update(v[coll])
    return out

  return load


def get_model(name: str, **kwargs) -> nn.Module:
  """Builds the registered model `name` with `kwargs` (see the builders)."""
  return model_spec(name).build(**kwargs)


def is_two_view(name: str) -> bool:
  """True for entries that take (image, local_image)."""
  return name in MODELS and MODELS[name].views == 2


def is_hash_model(name: str) -> bool:
  """True for entries whose output holds "codes_real"."""
  return name in MODELS and MODELS[name].kind == HASHING
