"""The pure, jitted train step `(state, batch, rng) -> (state, metrics)`.

Jitted once over the mesh with `donate_argnums=0` (the old state's buffers are
reused for the new one). The batch arrives sharded on `data` and params
replicated; the objective is computed on the global batch, so pairwise losses
see every pair and the result does not depend on the device count.

`rng` is the run's root key; the step draws `fold_in(rng, state.step)`, so the
keys depend only on (seed, step), which is what makes a resumed run equal to an
uninterrupted one.
"""

import math
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import optax

from medhash_jax.train import mesh as mesh_lib
from medhash_jax.train.state import TrainState

# objective(params, batch_stats, batch, rng, step)
#   -> (loss, (terms: dict of scalars, new_batch_stats))
# Optional batch entry: int32 (global rows, n) of per-process requests (stop,
# checkpoint; `preemption.Requests`), sharded like the batch. The step returns
# its column-wise max under the same key, identical on every process, so that
# every process acts on the same requests at the same step.
CONTROL_KEY = "_control"

Objective = Callable[..., Tuple[jax.Array, Tuple[Dict[str, jax.Array], Any]]]


class NonFiniteLossError(FloatingPointError):
  """A NaN or Inf loss (or gradient): the run stops with the step named."""


def make_train_step(objective: Objective, schedule: optax.Schedule, *,
                    mesh: Optional[jax.sharding.Mesh] = None,
                    state_example: Optional[TrainState] = None,
                    jit: bool = True):
  """Builds the train step.

  Args:
    objective: the loss of one global batch (see `Objective`).
    schedule: the base learning-rate schedule, logged as `lr`.
    mesh, state_example: when both are given the output shardings are pinned
      (state replicated, metrics replicated) so they can never drift.
    jit: False returns the raw python function (for tracing tests).

  Returns:
    step(state, batch, rng) -> (state, metrics); metrics hold `loss`, every
    loss term, `lr` and `grad_norm`, all scalars.
  """

  def train_step(state: TrainState, batch: Dict[str, jax.Array],
                 rng: jax.Array) -> Tuple[TrainState, Dict[str, jax.Array]]:
    batch = dict(batch)
    control = batch.pop(CONTROL_KEY, None)
    step_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      return objective(params, state.batch_stats, batch, step_rng, state.step)

    (loss, (terms, new_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads, new_stats)
    metrics = {"loss": loss, "lr": schedule(state.step),
               "grad_norm": optax.tree.norm(grads)}
    for k, v in terms.items():
      metrics.setdefault(k, v)
    if control is not None:
      metrics[CONTROL_KEY] = jax.numpy.max(control, axis=0)
    return new_state, metrics

  if not jit:
    return train_step
  out_shardings = None
  if mesh is not None and state_example is not None:
    rep = mesh_lib.replicated(mesh)
    out_shardings = (jax.tree.map(lambda _: rep, state_example), rep)
  return jax.jit(train_step, donate_argnums=0, out_shardings=out_shardings)


def check_finite(metrics: Dict[str, Any], step: int,
                 last_good_checkpoint: Optional[str]) -> None:
  """Raises NonFiniteLossError naming the step and the last good checkpoint."""
  bad = {k: float(v) for k, v in metrics.items()
         if k in ("loss", "grad_norm") or k.startswith("loss/")
         if not math.isfinite(float(v))}
  if bad:
    where = last_good_checkpoint or "none (no checkpoint was saved yet)"
    raise NonFiniteLossError(
        f"non-finite value at step {step}: "
        + ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
        + f". Last good checkpoint: {where}. Lower optim.learning_rate or set "
        "optim.grad_clip_norm, then resume from that checkpoint.")
