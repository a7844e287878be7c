"""The adapter between the trainer and the model, loss and metrics modules.

Everything the loop needs to know about *what* is trained sits here:
  init(rng, inputs, mesh)                          -> variables
  objective(params, batch_stats, batch, rng, step) -> (loss, (terms, stats))
  encode(variables, inputs)                        -> real-valued codes (B, K)
  train_inputs(batch)                              -> the arrays the step reads
so `step.py` and `loop.py` stay independent of any one method.

Conventions relied on (see medhash_jax/models and medhash_jax/losses):
  model(x, train=bool, beta=scalar) -> {"codes_real" (B, K), "logits" (B, C)
    or None, "features" (B, D)}; `beta` is the tanh(beta z) continuation.
  loss(*, codes, labels, features, logits, label_mask, triplets, code_logits,
       **hyper) ->
    (scalar, {term: scalar}) (losses/__init__.py); it is passed the inputs it
    declares (`loss_fn.inputs`) plus config.loss.kwargs.

Triplet-sampled batches (data.sampling="triplet": b anchors with `pos_*` and
`neg_*` views) are trained as one batch of 3b images [anchors; positives;
negatives]; a loss that takes `triplets` gets the rows (i, b + i, 2b + i)
(-1 where the sampler found no positive or negative), and any other loss
sees the 3b images as a plain batch (pairs over all of them).
"""

from typing import Any, Callable, Dict, Optional

import flax
import jax
import jax.numpy as jnp

from medhash_jax.config.errors import ConfigError


def _models():
  from medhash_jax import models  # pylint: disable=g-import-not-at-top
  return models


def _losses():
  from medhash_jax import losses  # pylint: disable=g-import-not-at-top
  return losses


def _report_fn():
  from medhash_jax import metrics  # pylint: disable=g-import-not-at-top
  return metrics.retrieval_report


def classification_loss(logits, labels, label_mask, multi_label: bool):
  """Sigmoid BCE (multi-label, masked) or softmax CE (one label per image)."""
  return _losses().common.class_xent(logits, labels, label_mask,
                                     multi_label=multi_label)


class Task:
  """A hashing model trained with a hashing loss (+ optional class loss)."""

  def __init__(self, config, *, model, loss_fn: Callable, multi_label: bool,
               two_view: bool = False, report_fn: Optional[Callable] = None,
               converter: Optional[Callable] = None):
    self.config = config
    self.model = model
    self.loss_fn = loss_fn
    self.multi_label = multi_label
    self.input_keys = ("image", "local_image") if two_view else ("image",)
    self._report_fn = report_fn
    self.converter = converter
    self.num_bits = int(config.num_bits)
    self.class_weight = float(config.loss.classification_weight)
    self.loss_kwargs = dict(config.loss.kwargs.to_dict()
                            if hasattr(config.loss.kwargs, "to_dict")
                            else config.loss.kwargs)
    self._loss_inputs = set(getattr(loss_fn, "inputs", ()))
    beta = config.model.beta
    self.beta_fn = _models().beta_schedule(
        beta.schedule, init=beta.init, gamma=beta.gamma, power=beta.power,
        every=beta.every)

  @property
  def report_fn(self):
    return self._report_fn or _report_fn()

  # -- model calls --------------------------------------------------------------

  def _call(self, variables, inputs, *, train: bool, beta, rngs=None,
            mutable=False):
    args = [inputs["image"]]
    if "local_image" in self.input_keys:
      args.append(inputs["local_image"])
    return self.model.apply(variables, *args, train=train, beta=beta,
                            rngs=rngs, mutable=mutable)

  def init(self, seed: int, inputs, mesh) -> Dict[str, Any]:
    """Initial variables, replicated over the mesh.

    Initialisation draws from an "rbg" key: its XLA program (RngBitGenerator)
    compiles 3-4x faster than threefry's unrolled hash for a ResNet's dozens
    of parameter tensors, and init is computed replicated, so the values do
    not depend on the device count.
    """
    from medhash_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    p_rng, d_rng = jax.random.split(jax.random.key(int(seed), impl="rbg"))

    def _init(inputs):
      args = [inputs["image"]]
      if "local_image" in self.input_keys:
        args.append(inputs["local_image"])
      return self.model.init({"params": p_rng, "dropout": d_rng}, *args,
                             train=False)

    init = jax.jit(_init, out_shardings=mesh_lib.replicated(mesh))
    return flax.core.unfreeze(init(inputs))

  def train_inputs(self, batch: Dict[str, Any]) -> Dict[str, Any]:
    """The batch arrays the objective reads (only these go to the devices)."""
    keep = set(self.input_keys) | {"labels", "label_mask"}
    if "triplet_valid" in batch:
      keep |= {p + k for p in TRIPLET_PREFIXES for k in keep} | {
          "triplet_valid"}
    return {k: v for k, v in batch.items() if k in keep}

  def objective(self, params, batch_stats, batch, rng, step):
    """Loss of one global batch; returns (loss, (terms, new batch_stats))."""
    beta = self.beta_fn(step)
    if "triplet_valid" in batch:
      batch = stack_triplet_views(batch, self.input_keys)
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    out, updates = self._call(variables, batch, train=True, beta=beta,
                              rngs={"dropout": rng}, mutable=["batch_stats"])
    candidates = {
        "codes": out["codes_real"], "labels": batch["labels"],
        "logits": out.get("logits"), "features": out.get("features"),
        "label_mask": batch.get("label_mask"),
        "triplets": batch.get("triplets"),
        "code_logits": out.get("code_logits"),   # MTH's projection rho(u)
    }
    kwargs = {k: v for k, v in candidates.items()
              if v is not None and k in self._loss_inputs}
    kwargs.update(self.loss_kwargs)
    res = self.loss_fn(**kwargs)
    if isinstance(res, tuple):
      hash_loss, terms = res
      terms = {f"loss/{k}": v for k, v in dict(terms).items()}
    else:
      hash_loss, terms = res, {}
    loss = hash_loss
    if self.class_weight > 0:
      terms["loss/hash"] = hash_loss
      if out.get("logits") is None:
        raise ConfigError("loss.classification_weight > 0 but the model has "
                          "no class head")
      ce = classification_loss(out["logits"], batch["labels"],
                               batch.get("label_mask",
                                         jnp.ones_like(batch["labels"])),
                               self.multi_label)
      terms["loss/class"] = ce
      loss = loss + self.class_weight * ce
    terms["beta"] = beta
    return loss, (terms, updates.get("batch_stats", batch_stats))

  def encode(self, variables, inputs):
    """Real-valued codes in eval mode (running BatchNorm statistics).

    beta = 1: the sign of tanh(beta z), hence the binary code, is the same for
    every beta > 0, and beta = 1 keeps the real codes comparable across
    checkpoints of a continuation run.
    """
    out = self._call(variables, inputs, train=False, beta=1.0)
    return out["codes_real"]


TRIPLET_PREFIXES = ("pos_", "neg_")


def stack_triplet_views(batch: Dict[str, Any], input_keys) -> Dict[str, Any]:
  """{image, pos_image, neg_image, ...} (b each) -> one batch of 3b rows
  [anchors; positives; negatives] plus `triplets` int32 (b, 3) into it."""
  b = batch["labels"].shape[0]
  out = {}
  for k in tuple(input_keys) + ("labels", "label_mask"):
    parts = [batch.get(p + k) for p in ("",) + TRIPLET_PREFIXES]
    if k == "label_mask":  # all known where a view carries no mask
      parts = [jnp.ones_like(batch["labels"]) if v is None else v
               for v in parts]
    if any(v is None for v in parts):
      raise ValueError(f"triplet batch lacks a view of {k!r}: has "
                       f"{sorted(batch)}")
    out[k] = jnp.concatenate(parts, axis=0)
  i = jnp.arange(b, dtype=jnp.int32)
  rows = jnp.stack([i, b + i, 2 * b + i], axis=1)
  out["triplets"] = jnp.where(batch["triplet_valid"][:, None], rows, -1)
  return out


def build_task(config, *, num_classes: int, multi_label: bool,
               two_view: bool = False) -> Task:
  """Model + loss from the registries (the config passed `validate_config`,
  which checks the names and kwargs); unknown names fail with the list."""
  models, losses = _models(), _losses()
  kwargs = dict(config.model.kwargs.to_dict()
                if hasattr(config.model.kwargs, "to_dict") else
                config.model.kwargs)
  want_classes = config.loss.classification_weight > 0 or kwargs.pop(
      "class_head", False)
  try:
    model = models.get_model(
        config.model.name, num_bits=int(config.num_bits),
        num_classes=num_classes if want_classes else 0,
        dtype=config.model.dtype, **kwargs)
  except (KeyError, ValueError, TypeError) as e:
    raise ConfigError(f"model {config.model.name!r}: {e}") from e
  try:
    loss_fn = losses.get_loss(config.loss.name)
  except (KeyError, ValueError) as e:
    raise ConfigError(f"loss {config.loss.name!r}: {e}") from e
  # Fills every backbone the model has (both ATH branches, for instance).
  converter = models.pretrained_converter(config.model.name)
  return Task(config, model=model, loss_fn=loss_fn, multi_label=multi_label,
              two_view=two_view, converter=converter)
