"""Models by name: `get_model(name, **kwargs)` and the `MODELS` dict.

Every entry is a builder with an explicit keyword signature (so a config's
`model.kwargs` can be checked against it with `inspect.signature`) that
returns a Flax linen module. Call conventions of the modules:

  hash models ("resnet18", "resnet50", "densenet121"):
      model.apply(variables, x, train=False, beta=1.0)
        -> {"codes_real": (B, K), "logits": (B, C) or None, "features": (B, D)}
  classifiers ("*_classifier"):
      model.apply(variables, x, train=False)
        -> {"logits": (B, C), "features": (B, D)}

`x` is a float (B, H, W, channels) batch; in train mode pass
`mutable=["batch_stats"]` (and a "dropout" rng when dropout_rate > 0).
"""

from typing import Any, Callable, Dict, Optional, Sequence

import flax.linen as nn

from medhash_jax.models import attention as attention_lib
from medhash_jax.models import backbones
from medhash_jax.models.hashing_net import Classifier, HashingNet


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


MODELS: Dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "densenet121": densenet121,
    "resnet18_classifier": resnet18_classifier,
    "resnet50_classifier": resnet50_classifier,
    "densenet121_classifier": densenet121_classifier,
}


def get_model(name: str, **kwargs) -> nn.Module:
  """Builds the registered model `name` with `kwargs` (see the builders)."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; valid names: "
                     f"{', '.join(sorted(MODELS))}")
  return MODELS[name](**kwargs)


def is_hash_model(name: str) -> bool:
  """True for entries whose output holds "codes_real"."""
  return name in MODELS and not name.endswith("_classifier")
