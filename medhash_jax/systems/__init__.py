"""Trainable systems (`System`, systems/system.py) built on `medhash_jax.train`.

Most methods are one training run (`System`, the plain trainer).
ATH-GradCAM is three: a classifier, Grad-CAM masks, then the two-branch hash
network (`ath.AthSystem`); its config carries an `ath` section that the plain
trainer does not accept. `system_of(config)` picks the system, so a caller
(main.py, the experiment suites, inference) treats every config the same way
and never reads a system's own files:

    system = systems.system_of(config)
    results = system.train_and_evaluate(config, workdir)
    config3 = system.inference_config(config, workdir)  # to evaluate, encode
                                                        # or search with
    r = systems.open_run(path)   # a trained workdir or an exported bundle,
                                 # opened for encode / search / add / explain
                                 # (systems/retriever.py documents the API)

The functions below are the same calls for one-off use.
"""

from typing import Any, Dict

from medhash_jax.systems import ath
from medhash_jax.systems import classifier
from medhash_jax.systems.system import System


def system_of(config) -> System:
  """The system a config describes (ATH: it has an `ath` section)."""
  return ath.AthSystem() if ath.is_ath(config) else System()


def train_and_evaluate(config, workdir: str, **kwargs) -> Dict[str, Any]:
  """Trains every stage of the config's system; its results dict."""
  return system_of(config).train_and_evaluate(config, workdir, **kwargs)


def hash_config(config, workdir: str):
  """The single-run config of a trained workdir (ATH: stage 3's), for
  `--mode=evaluate|encode|search`."""
  return system_of(config).inference_config(config, workdir)


def file_local_views(config, workdir: str):
  """The maker of loose files' local views (ATH: `ath.FileLocalViews`);
  None for single-view systems."""
  return system_of(config).local_views(config, workdir)


def plain_datasets(config, workdir, batch_size: int, image_size: int):
  """config.data without any second view, at `image_size` (raw-pixel
  features, a classifier); splits shared through `{workdir}/splits`."""
  return classifier.build_plain_datasets(config, workdir, batch_size,
                                         image_size)


def open_run(path: str):
  """A trained workdir or an exported bundle, opened for encoding and
  search without training data (`retriever.Retriever`)."""
  from medhash_jax.systems import retriever  # pylint: disable=g-import-not-at-top
  return retriever.open_run(path)


__all__ = ["System", "ath", "classifier", "file_local_views", "hash_config",
           "open_run", "plain_datasets", "system_of", "train_and_evaluate"]
