"""Training: state, optimizer, mesh, jitted steps, checkpoints, writers, loop.

Entry points:
  train_and_evaluate(config, workdir) -> results dict (and results.json)
  evaluate_workdir(config, workdir)   -> results of a trained workdir
  encode(config, workdir, ...) / search(config, workdir, ...)

Inside: one loop, `fit.fit(run, cadence, workdir)`, trains any `fit.Task`
(the hash task of task.py, the classifier of classification.py); padded
evaluation batches go through `evaluate.map_split`.
"""

from medhash_jax.config.errors import ConfigError
from medhash_jax.train.defaults import default_config
from medhash_jax.train.inference import encode
from medhash_jax.train.inference import search
from medhash_jax.train.loop import evaluate_workdir
from medhash_jax.train.loop import train_and_evaluate
from medhash_jax.train.validation import validate_config

__all__ = ["ConfigError", "default_config", "encode", "evaluate_workdir",
           "search", "train_and_evaluate", "validate_config"]
