"""A plain image classifier as a `fit.Task` (ATH stage 1 trains one).

  objective: sigmoid BCE over the known labels (`label_mask`) for multi-label
             data, softmax cross-entropy otherwise (`losses.common.class_xent`)
  predict:   the class logits in eval mode
  evaluate:  accuracy on a split (single-label: top-1; multi-label: per label
             at p > 0.5), gathered over every process (`evaluate.map_split`)
"""

from typing import Any, Dict

import flax
import jax
import jax.numpy as jnp
import numpy as np

from medhash_jax.losses import common as losses_common
from medhash_jax.train import evaluate as eval_lib
from medhash_jax.train import mesh as mesh_lib


class ClassifierTask:
  """`model(x, train=bool) -> {"logits": (B, C), ...}` trained on labels."""

  input_keys = ("image",)
  converter = None

  def __init__(self, model, *, multi_label: bool):
    self.model = model
    self.multi_label = bool(multi_label)
    self._predict_fns = {}

  def init(self, seed: int, inputs, mesh) -> Dict[str, Any]:
    """Initial variables from an "rbg" key of `seed`, replicated."""
    p_rng = jax.random.key(int(seed), impl="rbg")
    init = jax.jit(lambda x: self.model.init({"params": p_rng}, x, train=False),
                   out_shardings=mesh_lib.replicated(mesh))
    return flax.core.unfreeze(init(inputs["image"]))

  def train_inputs(self, batch: Dict[str, Any]) -> Dict[str, Any]:
    return {k: batch[k] for k in ("image", "labels", "label_mask")}

  def objective(self, params, batch_stats, batch, rng, step):
    del step
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    out, updates = self.model.apply(variables, batch["image"], train=True,
                                    rngs={"dropout": rng},
                                    mutable=["batch_stats"])
    loss = losses_common.class_xent(
        out["logits"], batch["labels"],
        batch.get("label_mask", jnp.ones_like(batch["labels"])),
        multi_label=self.multi_label)
    return loss, ({"loss/class": loss},
                  updates.get("batch_stats", batch_stats))

  def predict(self, variables, inputs):
    """Class logits (B, C) in eval mode."""
    return self.model.apply(variables, inputs["image"], train=False)["logits"]

  def evaluate(self, variables, eval_ds, mesh) -> Dict[str, float]:
    """{"accuracy", "count"} of `eval_ds` (every process alike)."""
    key = id(mesh)
    if key not in self._predict_fns:
      self._predict_fns[key] = eval_lib.make_encode_fn(self.predict, mesh)
    logits, _ = eval_lib.map_split(self._predict_fns[key], variables, eval_ds,
                                   mesh, input_keys=self.input_keys)
    return {"accuracy": accuracy(logits, eval_ds.labels, self.multi_label),
            "count": int(eval_ds.size)}


def accuracy(logits: np.ndarray, labels: np.ndarray, multi_label: bool
             ) -> float:
  """Top-1 (single-label) or per-label at logit > 0 (multi-label)."""
  if multi_label:
    return float(np.mean((logits > 0) == (labels > 0.5)))
  return float(np.mean(np.argmax(logits, 1) == np.argmax(labels, 1)))
