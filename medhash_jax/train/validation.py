"""Config checks that run before anything is built (fail fast, say why).

`validate_config` is the one place a config is checked, `model.kwargs` and
`loss.kwargs` against the registered signatures included; what builds the
model and loss (`task.build_task`) relies on it. This module does not import
`train/task.py` (nor it this one): both take `ConfigError` from
`medhash_jax/config/errors.py`.
"""

import inspect
from typing import Any, Callable, Dict, Mapping

import ml_collections

from medhash_jax.config.errors import ConfigError
from medhash_jax.train import defaults
from medhash_jax.train import optim as optim_lib

__all__ = ["ConfigError", "check_loss_kwargs", "check_model_kwargs",
           "unknown_keys", "validate_config"]

# Model arguments the trainer sets itself (not allowed in model.kwargs).
TRAINER_MODEL_ARGS = ("num_bits", "num_classes", "dtype")
# model.kwargs the trainer reads itself (a class head without a class loss).
TRAINER_MODEL_KWARGS = ("class_head",)


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


def check_loss_kwargs(name: str, loss_fn: Callable, kwargs: Dict[str, Any]):
  """config.loss.kwargs must be hyper-parameters of the loss."""
  hyper = getattr(loss_fn, "hyperparameters", None)
  if hyper is None:
    return
  unknown = sorted(set(kwargs) - set(hyper))
  if unknown:
    raise ConfigError(f"loss.kwargs {unknown} are not hyper-parameters of "
                      f"loss {name!r}; valid: {sorted(hyper)}")


def check_model_kwargs(name: str, builder: Callable, kwargs: Dict[str, Any]):
  """config.model.kwargs must be arguments of the registered builder."""
  params = inspect.signature(builder).parameters
  taken = sorted(set(kwargs) & set(TRAINER_MODEL_ARGS))
  if taken:
    raise ConfigError(f"model.kwargs {taken} are set by the trainer (use "
                      "num_bits / model.dtype / loss.classification_weight)")
  unknown = sorted(k for k in kwargs
                   if k not in params and k not in TRAINER_MODEL_KWARGS)
  if unknown:
    valid = sorted(p for p in params if p not in TRAINER_MODEL_ARGS)
    raise ConfigError(f"model.kwargs {unknown} are not arguments of model "
                      f"{name!r}; valid: {valid}")


def validate_config(config) -> None:
  """Raises ConfigError on unknown keys and impossible values.

  The batch/device check is in `mesh` (it needs the mesh).
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
  from medhash_jax import losses  # pylint: disable=g-import-not-at-top
  check_model_kwargs(config.model.name,
                     models.model_spec(config.model.name).build,
                     config.model.kwargs.to_dict())
  if config.loss.name not in losses.LOSSES:
    raise ConfigError(f"unknown loss.name {config.loss.name!r}; known: "
                      f"{sorted(losses.LOSSES)}")
  check_loss_kwargs(config.loss.name, losses.LOSSES[config.loss.name],
                    config.loss.kwargs.to_dict())
  names = data_lib.source_names()
  if config.data.name not in names:
    raise ConfigError(f"unknown data.name {config.data.name!r}; known: "
                      f"{sorted(names)}")
