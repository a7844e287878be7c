"""Hash and class heads, binarisation and the tanh continuation schedule.

Hash layer (HashNet, Cao et al. ICCV 2017): z = W x + b, codes_real =
tanh(beta * z). `beta` is a call-time argument (a Python float or a traced
scalar), so a continuation schedule that raises it during training needs no
re-initialisation and no retrace. At inference the binary code is
sign(codes_real) with sign(0) = +1 (DESIGN.md: bit = code >= 0), which is the
same rule `retrieval.pack_codes` applies.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

HASH_ACTIVATIONS = ("tanh", "identity")


class HashHead(nn.Module):
  """Dense(num_bits) -> tanh(beta * z); the result is float32 (B, num_bits).

  Attributes:
    num_bits: K, the code length (> 0).
    activation: "tanh" (default) or "identity" (DSH-style unbounded codes,
      kept near +-1 by a regulariser instead).
    dtype: compute dtype of the matmul; tanh and the output are float32 so
      the continuation at large beta stays accurate under bf16.
  """
  num_bits: int
  activation: str = "tanh"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, beta=1.0):
    if self.num_bits <= 0:
      raise ValueError(f"num_bits must be > 0, got {self.num_bits}")
    if self.activation not in HASH_ACTIVATIONS:
      raise ValueError(f"hash activation must be one of {HASH_ACTIVATIONS}, "
                       f"got {self.activation!r}")
    z = nn.Dense(self.num_bits, dtype=self.dtype, param_dtype=jnp.float32,
                 name="dense")(x)
    z = jnp.asarray(z, jnp.float32)
    if self.activation == "identity":
      return z
    return jnp.tanh(jnp.asarray(beta, jnp.float32) * z)


class ClassHead(nn.Module):
  """Dense(num_classes) -> float32 logits (softmax or sigmoid in the loss)."""
  num_classes: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      param_dtype=jnp.float32, name="dense")(x)
    return jnp.asarray(logits, jnp.float32)


def build_heads(num_bits: int, num_classes: int, activation: str, dtype):
  """(HashHead, ClassHead or None) for a model's setup; checks num_bits before
  any backbone work so a bad code length fails at once."""
  if num_bits <= 0:
    raise ValueError(f"num_bits must be > 0, got {num_bits}")
  return (HashHead(num_bits, activation, dtype),
          ClassHead(num_classes, dtype) if num_classes > 0 else None)


def head_outputs(model, feats, beta, fmap=None):
  """The output dict every single-code hash model returns.

  `model` is the calling module, with `hash` (HashHead), `classifier`
  (ClassHead) and `num_classes`; `fmap` is added as "feature_map" when given.
  """
  out = {"codes_real": model.hash(feats, beta),
         "logits": model.classifier(feats) if model.num_classes > 0 else None,
         "features": jnp.asarray(feats, jnp.float32)}
  if fmap is not None:
    out["feature_map"] = fmap
  return out


def binarize(codes_real, dtype=jnp.float32):
  """sign with sign(0) = +1: the {-1, +1} code of a real-valued code."""
  return jnp.where(codes_real >= 0, 1, -1).astype(dtype)


def hashnet_beta(step, *, init: float = 1.0, gamma: float = 0.005,
                 power: float = 0.5, every: int = 1):
  """HashNet's continuation: beta = init * (1 + gamma * s) ** power.

  s = (step // every) * every, so beta rises in stairs every `every` steps
  (HashNet raises it per epoch-like stage; every=1 is the smooth version).
  Jittable: `step` may be a traced integer.
  """
  s = (jnp.asarray(step) // every) * every
  return init * (1.0 + gamma * s.astype(jnp.float32)) ** power


def beta_schedule(name: str, **kwargs):
  """step -> beta for a config's `model.beta` ("constant" or "hashnet")."""
  init = float(kwargs.get("init", 1.0))
  if name == "constant":
    return lambda step: jnp.asarray(init, jnp.float32)
  if name == "hashnet":
    return lambda step: hashnet_beta(step, init=init,
                                     gamma=float(kwargs.get("gamma", 0.005)),
                                     power=float(kwargs.get("power", 0.5)),
                                     every=int(kwargs.get("every", 1)))
  raise ValueError(f"unknown beta schedule {name!r}; valid: constant, hashnet")


class FCStack(nn.Module):
  """Dense -> ReLU (-> Dropout) per entry of `dims`, e.g. MTH's FC-1024."""
  dims: Sequence[int] = ()
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, d in enumerate(self.dims):
      x = nn.relu(nn.Dense(int(d), dtype=self.dtype, param_dtype=jnp.float32,
                           name=f"dense{i}")(x))
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return x
