"""Multi-stage systems built on `medhash_jax.train` (ATH-GradCAM).

Most methods are one training run (`train.train_and_evaluate`). ATH-GradCAM
is three: a classifier, Grad-CAM masks, then the two-branch hash network; its
config carries an `ath` section that the plain trainer does not accept. The
two functions here dispatch on that section, so a caller (main.py, the
experiment suites) can treat every config the same way:

    results = systems.train_and_evaluate(config, workdir)  # any method
    config3 = systems.hash_config(config, workdir)  # the config to evaluate,
                                                    # encode or search with
    r = systems.open_run(path)   # a trained workdir or an exported bundle,
                                 # opened for encode / search / add / explain
                                 # (systems/retriever.py documents the API)
"""

from typing import Any, Dict, Optional

from medhash_jax.systems import ath
from medhash_jax.systems import classifier


def train_and_evaluate(config, workdir: str, **kwargs) -> Dict[str, Any]:
  """ATH's three stages for a config with an `ath` section, else the trainer."""
  if ath.is_ath(config):
    results = ath.train_and_evaluate(config, workdir, **kwargs)
    record_ath(config, workdir, results.get("stages", {}).get("multi_label"))
    return results
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


def record_ath(config, workdir: str, multi_label: Optional[bool]):
  """Adds what query-time Grad-CAM needs to the run's inference.json (the
  stage-3 config has no `ath` section): the classifier's folder (relative
  when inside the workdir), the query class mode, the mask margin."""
  import os  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import run_files  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  cls_dir = os.path.join(ath.stage_dir(config, workdir), "classifier")
  rel = os.path.relpath(cls_dir, os.path.abspath(workdir))
  run_files.update_record(workdir, ath={
      "classifier_dir": cls_dir if rel.startswith("..") else rel,
      "cam_mode": str(config[ath.SECTION].cam.modes.query),
      # The block Grad-CAM reads ("" = the model's last feature map).
      "cam_layer": ath.cam_layer(config) or "",
      "mask_margin": float(config.data.mask_margin),
      "multi_label": bool(multi_label if multi_label is not None else
                          config.loss.kwargs.get("multi_label", False))})


def open_run(path: str):
  """A trained workdir or an exported bundle, opened for encoding and
  search without training data (`retriever.Retriever`)."""
  from medhash_jax.systems import retriever  # pylint: disable=g-import-not-at-top
  return retriever.open_run(path)


def file_local_views(config, workdir: str):
  """ATH: the maker of loose files' local views (`ath.FileLocalViews`);
  None for single-view systems."""
  return ath.file_local_views(config, workdir)


__all__ = ["ath", "classifier", "file_local_views", "hash_config", "open_run",
           "record_ath", "train_and_evaluate"]
