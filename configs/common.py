"""Helpers shared by the system and baseline configs (not a config itself).

* `staged_data_root()`: where the data is when nothing says otherwise, so the
  design card's example command works as written from a checkout beside
  `../shared/data`.
* `parse_arg(arg, choices)`: the `:a,b` variant syntax of these configs.
* `is_multi_label(name)`: whether a dataset is multi-label (the seed-system
  losses take it as a hyper-parameter).
* `pairwise_baseline(loss, arg, **loss_kwargs)`: a baseline config over the
  shared backbone (base.py) in three lines, with the optimiser, learning
  rate or hash activation replaced where a baseline needs it.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # config_flags loads config files by path
  sys.path.insert(0, _ROOT)

import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import base  # pylint: disable=g-import-not-at-top,wrong-import-position

MULTI_LABEL_DATASETS = ("chestxray14", "chexpert", "chestmnist")


def staged_data_root() -> str:
  """"" when $MEDHASH_DATA_DIR is set (the data layer reads it), else the
  staged `../shared/data` beside this checkout when it exists, else ""."""
  if os.environ.get("MEDHASH_DATA_DIR"):
    return ""
  staged = os.path.join(os.path.dirname(_ROOT), "shared", "data")
  return staged if os.path.isdir(staged) else ""


def parse_arg(arg, choices=()):
  """'smoke' / 'se,smoke' / '' -> (smoke: bool, [other tokens]); unknown
  tokens raise, naming the valid ones."""
  tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
  bad = [t for t in tokens if t != "smoke" and t not in choices]
  if bad:
    raise ValueError(f"unknown config variant(s) {bad}; valid: "
                     f"{['smoke', *choices]} (comma-separated)")
  return "smoke" in tokens, [t for t in tokens if t != "smoke"]


def is_multi_label(dataset: str) -> bool:
  return dataset in MULTI_LABEL_DATASETS


def base_config(smoke: bool) -> ml_collections.ConfigDict:
  """base.get_config with the data root filled in."""
  c = base.get_config("smoke" if smoke else None)
  if not c.data.root:
    c.data.root = staged_data_root()
  return c


def pairwise_baseline(loss: str, arg=None, *, optimizer: str = "",
                      learning_rate: float = 0.0, hash_activation: str = "",
                      **loss_kwargs):
  """A baseline: base.py's backbone and data, `loss` with `loss_kwargs`;
  `optimizer`, `learning_rate` and `hash_activation` replace the shared
  settings when given (each config's docstring says why it needs to)."""
  smoke, _ = parse_arg(arg)
  c = base_config(smoke)
  c.method = loss
  c.loss.name = loss
  c.loss.kwargs = ml_collections.ConfigDict(loss_kwargs)
  if optimizer:
    c.optim.name = optimizer
  if learning_rate:
    c.optim.learning_rate = learning_rate
  if hash_activation:
    c.model.kwargs.hash_activation = hash_activation
  return base.finalize(c)
