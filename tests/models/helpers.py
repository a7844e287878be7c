"""Test helpers: variables without running the (slow-to-compile) initialisers.

`model.init` compiles one RNG kernel per parameter shape, which takes tens of
seconds on a loaded CPU; tests take the shapes from `jax.eval_shape` and fill
them with seeded numpy values of a sensible scale instead.
"""

import math

import jax
import numpy as np


def fake_variables(model, *args, seed: int = 0, **kwargs):
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), *args, **kwargs))
  rng = np.random.RandomState(seed)

  def fill(path, s):
    name = str(getattr(path[-1], "key", path[-1]))
    shape = s.shape
    if name == "kernel":
      fan_in = max(1, math.prod(shape[:-1]))
      return (rng.randn(*shape) * math.sqrt(2.0 / fan_in)).astype(s.dtype)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, shape).astype(s.dtype)
    if name == "gamma":
      return np.full(shape, 0.5, s.dtype)
    return (0.1 * rng.randn(*shape)).astype(s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)
