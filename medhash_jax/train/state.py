"""The train state: one pytree holding everything a resumed run needs.

`step`, `params`, `batch_stats`, `opt_state` and the run's root `rng` are
pytree leaves (checkpointed, donated to the step); `apply_fn` and `tx` are
static. The rng is stored as raw uint32 key data so orbax can save it; the
per-step key is `fold_in(rng, step)`, so a resumed run draws the same keys.
"""

from typing import Any, Callable, Dict

from flax import struct
import jax
import jax.numpy as jnp
import optax

from medhash_jax.train import mesh as mesh_lib


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  apply_fn: Callable = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def apply_gradients(self, grads, batch_stats=None) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    return self.replace(
        step=self.step + 1, params=params, opt_state=opt_state,
        batch_stats=self.batch_stats if batch_stats is None else batch_stats)

  def variables(self) -> Dict[str, Any]:
    """The `variables` dict for `model.apply`."""
    v = {"params": self.params}
    if self.batch_stats:
      v["batch_stats"] = self.batch_stats
    return v

  def checkpoint_items(self) -> Dict[str, Any]:
    """The saved pytree (everything but the static fields)."""
    return {"step": self.step, "params": self.params,
            "batch_stats": self.batch_stats, "opt_state": self.opt_state,
            "rng": self.rng}

  def replace_from_checkpoint(self, items: Dict[str, Any]) -> "TrainState":
    return self.replace(**items)


def root_key(seed: int) -> jax.Array:
  """Raw uint32[2] threefry key data (checkpointable, unlike typed keys)."""
  return jax.random.key_data(jax.random.key(int(seed)))


def create_train_state(*, apply_fn, variables, tx, rng, mesh) -> TrainState:
  """Builds a replicated TrainState from initial variables."""
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  opt_state = jax.jit(tx.init, out_shardings=mesh_lib.replicated(mesh))(params)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=batch_stats, opt_state=opt_state,
                     rng=jnp.asarray(rng, jnp.uint32), apply_fn=apply_fn, tx=tx)
  return mesh_lib.replicate(state, mesh)


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
