"""torchvision / timm ResNet and DenseNet weights -> Flax variables.

    variables = load_pretrained("resnet50-0676ba61.pth")   # or .safetensors
    # {"params": {"backbone": {...}}, "batch_stats": {"backbone": {...}}}

The architecture (ResNet basic/bottleneck, stage sizes, width; DenseNet
blocks, growth rate, stem width) is read from the state dict itself, the
matching `backbones.ResNet` / `backbones.DenseNet` (standard 224 px stem) is
traced with `jax.eval_shape`, and every tensor is renamed and checked against
it in both directions: a key that maps nowhere, a model variable no key fills,
or a shape mismatch raises `ConversionError` listing them. The ImageNet
classifier (`fc.*`, `classifier.*`) and `num_batches_tracked` are dropped.

Layout changes: conv OIHW -> HWIO; BatchNorm weight/bias/running_mean/
running_var -> params scale/bias, batch_stats mean/var. Legacy torchvision
DenseNet keys (`norm.1`, `conv.2`) are accepted.

The variables sit under `prefix` ("backbone" by default), where `HashingNet`
and `Classifier` keep their backbone, so `train.checkpoint.load_weights` can
merge them by path; heads keep their fresh initialisation.
"""

import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from medhash_jax.models import backbones

_DROPPED = re.compile(r"^(fc|classifier|head|last_linear)\.|num_batches_tracked$")
_LEGACY_DENSE = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|"
    r"running_mean|running_var))$")
_WRAPPERS = ("state_dict", "model", "model_state", "state_dict_ema", "params")


class ConversionError(ValueError):
  """A state dict that does not fit the architecture it appears to be."""


# ---------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a .pth/.pt/.bin (torch, weights_only) or .safetensors state dict.

  Unwraps {"state_dict": ...}-style checkpoints and strips a DataParallel
  "module." prefix. Returns float32/int numpy arrays keyed by torch names.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"pretrained weights file not found: {path}")
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"reading {path} needs the `safetensors` package "
                        "(pip install safetensors)") from e
    sd = dict(load_file(path))
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"reading {path} needs torch (the CPU wheel is "
                        "enough), or convert it to .safetensors") from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in _WRAPPERS:
      if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
        obj = obj[key]
        break
    if not isinstance(obj, Mapping):
      raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state "
                            "dict")
    sd = {k: v.detach().cpu().float().numpy() if v.is_floating_point()
          else v.detach().cpu().numpy()
          for k, v in obj.items() if hasattr(v, "detach")}
  out = {}
  for k, v in sd.items():
    k = k[len("module."):] if k.startswith("module.") else k
    out[k] = np.asarray(v)
  return out


# ---------------------------------------------------------------------------
# Architecture detection
# ---------------------------------------------------------------------------


def _normalise_keys(sd: Mapping[str, Any]) -> Dict[str, Any]:
  out = {}
  for k, v in sd.items():
    k = k[len("module."):] if k.startswith("module.") else k
    m = _LEGACY_DENSE.match(k)
    if m:  # torchvision's own fix-up of pre-0.4 DenseNet checkpoints
      k = m.group(1) + m.group(2)
    out[k] = v
  return out


def infer_architecture(sd: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
  """("resnet" | "densenet", backbone kwargs) read off the state dict."""
  keys = set(sd)
  if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
    stages = []
    for i in range(1, 10):
      blocks = {int(k.split(".")[1]) for k in keys if k.startswith(f"layer{i}.")}
      if not blocks:
        break
      stages.append(max(blocks) + 1)
    block = "bottleneck" if "layer1.0.conv3.weight" in keys else "basic"
    width = int(np.shape(sd["conv1.weight"])[0])
    return "resnet", dict(stage_sizes=tuple(stages), block=block, width=width)
  if "features.conv0.weight" in keys:
    blocks = []
    for b in range(1, 10):
      layers = {int(m.group(1)) for k in keys for m in
                [re.match(rf"features\.denseblock{b}\.denselayer(\d+)\.", k)] if m}
      if not layers:
        break
      blocks.append(max(layers))
    growth = int(np.shape(sd["features.denseblock1.denselayer1.conv2.weight"])[0])
    bn_out = int(np.shape(sd["features.denseblock1.denselayer1.conv1.weight"])[0])
    return "densenet", dict(
        block_config=tuple(blocks), growth_rate=growth,
        num_init_features=int(np.shape(sd["features.conv0.weight"])[0]),
        bn_size=bn_out // growth)
  raise ConversionError(
      "not a torchvision/timm ResNet or DenseNet state dict (no conv1.weight + "
      f"layer1.* nor features.conv0.weight); first keys: {sorted(keys)[:8]}")


def build_backbone(kind: str, arch: Mapping[str, Any]):
  return (backbones.ResNet if kind == "resnet" else backbones.DenseNet)(
      small_input=False, **arch)


# ---------------------------------------------------------------------------
# Renaming
# ---------------------------------------------------------------------------


def _flax_path(kind: str, key: str) -> Optional[Tuple[str, Tuple[str, ...]]]:
  """torch key -> (collection, flax path), or None when it maps nowhere."""
  module, _, leaf = key.rpartition(".")
  if kind == "resnet":
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.[01])", module)
    if m:
      sub = {"downsample.0": "downsample_conv",
             "downsample.1": "downsample_bn"}.get(m.group(3), m.group(3))
      path = (f"layer{m.group(1)}_{m.group(2)}", sub)
    elif module in ("conv1", "bn1"):
      path = (module,)
    else:
      return None
  else:
    if not module.startswith("features."):
      return None
    parts = module[len("features."):].split(".")
    if not all(re.fullmatch(r"(conv|norm)\d|denseblock\d+|denselayer\d+|"
                            r"transition\d+|norm|conv", p) for p in parts):
      return None
    path = tuple(parts)
  is_conv = path[-1].startswith("conv") or path[-1] == "downsample_conv"
  if is_conv:
    return ("params", path + ("kernel",)) if leaf == "weight" else None
  table = {"weight": ("params", "scale"), "bias": ("params", "bias"),
           "running_mean": ("batch_stats", "mean"),
           "running_var": ("batch_stats", "var")}
  if leaf not in table:
    return None
  coll, name = table[leaf]
  return coll, path + (name,)


def _set(tree: Dict[str, Any], path: Tuple[str, ...], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def adapt_input_conv(kernel: np.ndarray, in_channels: int) -> np.ndarray:
  """An RGB stem kernel (HWIO, I = 3) for `in_channels` inputs.

  1 channel: the sum over RGB (a grey image x gives the response the RGB
  image (x, x, x) gave). Otherwise the RGB kernel is tiled over the channels
  and rescaled by 3 / in_channels, as timm's `adapt_input_conv` does.
  """
  if in_channels == kernel.shape[2]:
    return kernel
  if kernel.shape[2] != 3:
    raise ConversionError(f"cannot adapt a stem with {kernel.shape[2]} input "
                          f"channels to {in_channels}")
  if in_channels == 1:
    return kernel.sum(axis=2, keepdims=True)
  reps = -(-in_channels // 3)
  return (np.tile(kernel, (1, 1, reps, 1))[:, :, :in_channels] *
          (3.0 / in_channels)).astype(kernel.dtype)


def convert_state_dict(state_dict: Mapping[str, Any], *,
                       prefix: Optional[str] = "backbone",
                       in_channels: int = 3,
                       dtype=np.float32) -> Dict[str, Any]:
  """A torchvision/timm ResNet or DenseNet state dict -> Flax variables.

  Args:
    state_dict: torch key -> array (numpy or torch tensors).
    prefix: where the backbone lives in the model's variables, "/"-separated
      ("backbone" in HashingNet and Classifier; e.g. "global_net/backbone"
      in a two-branch model); None or "" returns the bare backbone variables.
    in_channels: channels of the model's input images; the stem kernel is
      adapted (`adapt_input_conv`) when it is not 3, e.g. 1 for grey X-rays.
    dtype: dtype of the returned arrays.

  Returns:
    {"params": ..., "batch_stats": ...} as nested dicts of numpy arrays.

  Raises:
    ConversionError: listing unmatched torch keys, unfilled model variables
      and shape mismatches.
  """
  sd = _normalise_keys({k: (v.detach().cpu().numpy() if hasattr(v, "detach")
                            else np.asarray(v)) for k, v in state_dict.items()})
  kind, arch = infer_architecture(sd)
  stem = "conv1.weight" if kind == "resnet" else "features.conv0.weight"
  model = build_backbone(kind, arch)
  expected = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), False))
  want = {(coll,) + path: tuple(leaf.shape) for coll in ("params", "batch_stats")
          for path, leaf in traverse_util.flatten_dict(
              dict(expected[coll])).items()}

  got: Dict[Tuple[str, ...], np.ndarray] = {}
  stem_path = None
  unmatched: List[str] = []
  dropped: List[str] = []
  for key, value in sorted(sd.items()):
    if _DROPPED.search(key):
      dropped.append(key)
      continue
    target = _flax_path(kind, key)
    if target is None or (target[0],) + target[1] not in want:
      unmatched.append(key)
      continue
    coll, path = target
    if value.ndim == 4:  # conv OIHW -> HWIO
      value = np.transpose(value, (2, 3, 1, 0))
    got[(coll,) + path] = np.asarray(value, dtype)
    if key == stem:  # checked against the 3-channel model, adapted below
      stem_path = (coll,) + path

  missing = sorted("/".join(p) for p in want if p not in got)
  bad_shape = sorted(f"{'/'.join(p)}: file {got[p].shape} vs model {want[p]}"
                     for p in got if got[p].shape != want[p])
  if unmatched or missing or bad_shape:
    raise ConversionError(
        f"state dict does not fit the inferred {kind} {arch}:\n"
        f"  unmatched torch keys ({len(unmatched)}): {unmatched[:20]}\n"
        f"  model variables with no torch key ({len(missing)}): {missing[:20]}\n"
        f"  shape mismatches ({len(bad_shape)}): {bad_shape[:20]}")

  got[stem_path] = adapt_input_conv(got[stem_path], int(in_channels))
  logging.info("converted a %s %s: %d arrays; dropped %d (classifier, "
               "num_batches_tracked)", kind, arch, len(got), len(dropped))
  variables: Dict[str, Any] = {"params": {}, "batch_stats": {}}
  head = tuple(p for p in (prefix or "").split("/") if p)
  for (coll, *path), value in got.items():
    _set(variables[coll], head + tuple(path), value)
  return variables


def load_pretrained(path: str, *, prefix: Optional[str] = "backbone",
                    in_channels: int = 3, dtype=np.float32) -> Dict[str, Any]:
  """`load_state_dict` + `convert_state_dict`: the `config.init_from` hook,
  e.g. `functools.partial(load_pretrained, in_channels=1)` for grey images."""
  return convert_state_dict(load_state_dict(path), prefix=prefix,
                            in_channels=in_channels, dtype=dtype)
