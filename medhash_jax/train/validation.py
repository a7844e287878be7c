"""Config checks that run before anything is built (fail fast, say why)."""

from typing import Any, Mapping

import ml_collections

from medhash_jax.train import defaults
from medhash_jax.train import optim as optim_lib


class ConfigError(ValueError):
  """A config that cannot describe a valid run."""


def _keys(d: Mapping[str, Any], prefix: str = ""):
  for k, v in d.items():
    name = f"{prefix}{k}"
    yield name
    if isinstance(v, (Mapping, ml_collections.ConfigDict)) and \
        name not in defaults.FREE_FORM:
      yield from _keys(v, name + ".")


def unknown_keys(config) -> list:
  known = set(_keys(defaults.default_config()))
  return sorted(k for k in _keys(config) if k not in known)


def _positive_int(value, name):
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def validate_config(config, *, for_training: bool = True) -> None:
  """Raises ConfigError on unknown keys and impossible values.

  The batch/device check is in `mesh` (it needs the mesh). With
  `for_training` the loss is resolved and checked, and its source (file and
  sha256 for a loss outside the package) is written into config.loss.source;
  inference leaves the loss alone (its file may be gone).
  """
  bad = unknown_keys(config)
  if bad:
    raise ConfigError(f"unknown config key(s): {bad}; see "
                      "medhash_jax/train/defaults.py for the valid keys")
  _positive_int(config.num_bits, "num_bits")
  _positive_int(config.train.batch_size, "train.batch_size")
  _positive_int(config.train.num_steps, "train.num_steps")
  _positive_int(config.train.log_every_steps, "train.log_every_steps")
  for key in ("checkpoint_every_minutes", "log_every_seconds"):
    value = config.train.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
        not value >= 0:
      raise ConfigError(f"train.{key} must be a number >= 0 (0 = off), got "
                        f"{value!r}")
  if config.train.keep_checkpoints is not None and config.train.keep_checkpoints < 1:
    raise ConfigError("train.keep_checkpoints must be >= 1")
  if config.optim.name not in optim_lib.OPTIMIZERS:
    raise ConfigError(f"unknown optim.name {config.optim.name!r}; known: "
                      f"{optim_lib.OPTIMIZERS}")
  if config.optim.schedule not in optim_lib.SCHEDULES:
    raise ConfigError(f"unknown optim.schedule {config.optim.schedule!r}; "
                      f"known: {optim_lib.SCHEDULES}")
  if not config.optim.learning_rate > 0:
    raise ConfigError(f"optim.learning_rate must be > 0, got "
                      f"{config.optim.learning_rate}")
  ks = tuple(config.eval.ks)
  if not ks:
    raise ConfigError("eval.ks is empty")
  for k in ks:
    if k is not None:  # None = the whole database ("@all")
      _positive_int(k, "each of eval.ks")
  if config.eval.select_metric.split("@")[-1].split("/")[0] not in (
      [str(k) for k in ks if k is not None] + ["all"] * (None in ks)) \
      and "@" in config.eval.select_metric:
    raise ConfigError(f"eval.select_metric={config.eval.select_metric!r} "
                      f"names a cut-off that is not in eval.ks={ks}")
  if config.model.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"model.dtype must be float32 or bfloat16, got "
                      f"{config.model.dtype!r}")
  if config.model.beta.schedule not in ("constant", "hashnet"):
    raise ConfigError(f"model.beta.schedule must be 'constant' or 'hashnet', "
                      f"got {config.model.beta.schedule!r}")
  # Registry names are checked here, before any data is read.
  from medhash_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from medhash_jax import models  # pylint: disable=g-import-not-at-top
  if config.model.name not in models.MODELS:
    raise ConfigError(f"unknown model.name {config.model.name!r}; known: "
                      f"{sorted(models.MODELS)}")
  if not models.is_hash_model(config.model.name):
    raise ConfigError(f"model.name {config.model.name!r} is a classifier "
                      "without a hash layer; use one of "
                      f"{sorted(n for n in models.MODELS if models.is_hash_model(n))}")
  from medhash_jax.train import task as task_lib  # pylint: disable=g-import-not-at-top
  task_lib.check_model_kwargs(config.model.name, models.MODELS[config.model.name],
                              config.model.kwargs.to_dict())
  if for_training:
    _, sources = task_lib.resolve_training_loss(config)
    config.loss.source = tuple(sources)
  names = data_lib.source_names()
  if config.data.name not in names:
    raise ConfigError(f"unknown data.name {config.data.name!r}; known: "
                      f"{sorted(names)}")
