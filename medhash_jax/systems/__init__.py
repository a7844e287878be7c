"""Multi-stage systems built on `medhash_jax.train` (ATH-GradCAM).

Most methods are one training run (`train.train_and_evaluate`). ATH-GradCAM
is three: a classifier, Grad-CAM masks, then the two-branch hash network; its
config carries an `ath` section that the plain trainer does not accept. The
two functions here dispatch on that section, so a caller (main.py, the
experiment suites) can treat every config the same way:

    results = systems.train_and_evaluate(config, workdir)  # any method
    config3 = systems.hash_config(config, workdir)  # the config to evaluate,
                                                    # encode or search with
"""

from typing import Any, Dict

from medhash_jax.systems import ath
from medhash_jax.systems import classifier


def train_and_evaluate(config, workdir: str, **kwargs) -> Dict[str, Any]:
  """ATH's three stages for a config with an `ath` section, else the trainer."""
  if ath.is_ath(config):
    return ath.train_and_evaluate(config, workdir, **kwargs)
  from medhash_jax import train  # pylint: disable=g-import-not-at-top
  return train.train_and_evaluate(config, workdir, **kwargs)


def hash_config(config, workdir: str):
  """The single-run config of a trained workdir (ATH: stage 3's), for
  `--mode=evaluate|encode|search`."""
  if not ath.is_ath(config):
    return config
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  multi_label = None
  path = os.path.join(workdir, ath.STAGES_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      multi_label = json.load(f).get("multi_label")
  return ath.hash_config(config, workdir, multi_label=multi_label)


def file_local_views(config, workdir: str):
  """ATH: the maker of loose files' local views (`ath.FileLocalViews`);
  None for single-view systems."""
  return ath.file_local_views(config, workdir)


__all__ = ["ath", "classifier", "file_local_views", "hash_config",
           "train_and_evaluate"]
