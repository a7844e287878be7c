"""A plain image classifier trained with the trainer's parts (ATH stage 1).

`train.train_and_evaluate` trains hash models only (its config validation
rejects classifiers and its objective reads "codes_real"), so the classifier
stage reuses the pieces below it instead: the mesh, `optim.build_optimizer`,
`state.create_train_state`, the jitted `step.make_train_step` and the orbax
`checkpoint.Checkpointer` (state + grain iterator), with its own objective:

  multi-label data:  sigmoid BCE averaged over the known labels (label_mask)
  single-label data: softmax cross-entropy

A finished run (checkpoint at `num_steps`) is reused as is; an interrupted one
resumes from its latest checkpoint.
"""

import json
import os
import time
from typing import Any, Dict, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medhash_jax import data as data_lib
from medhash_jax import models
from medhash_jax.train import checkpoint as ckpt_lib
from medhash_jax.train import defaults as defaults_lib
from medhash_jax.train import mesh as mesh_lib
from medhash_jax.train import optim as optim_lib
from medhash_jax.train import state as state_lib
from medhash_jax.train import step as step_lib
from medhash_jax.train import task as task_lib

METRICS_FILE = "classifier.json"


def optim_config(cls_cfg) -> ml_collections.ConfigDict:
  """config.optim-shaped settings for the classifier (Adam by default)."""
  o = defaults_lib.default_config().optim
  o.name = cls_cfg.optimizer
  o.learning_rate = float(cls_cfg.learning_rate)
  o.b1, o.b2, o.eps = float(cls_cfg.b1), float(cls_cfg.b2), float(cls_cfg.eps)
  o.momentum = float(cls_cfg.get("momentum", 0.9))
  o.weight_decay = float(cls_cfg.weight_decay)
  o.schedule = cls_cfg.schedule
  o.head_lr_mult = 1.0
  return o


class Classifier:
  """Model, variables and data of a trained (or restored) classifier."""

  def __init__(self, model, variables, ds, mesh, step: int,
               metrics: Dict[str, Any]):
    self.model = model
    self.variables = variables
    self.ds = ds
    self.mesh = mesh
    self.step = step
    self.metrics = metrics

  def logits_fn(self):
    return jax.jit(lambda v, x: self.model.apply(v, x, train=False)["logits"])


def _objective(model, multi_label: bool):
  def objective(params, batch_stats, batch, rng, step):
    del step
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    out, updates = model.apply(variables, batch["image"], train=True,
                               rngs={"dropout": rng}, mutable=["batch_stats"])
    loss = task_lib.classification_loss(
        out["logits"], batch["labels"],
        batch.get("label_mask", jnp.ones_like(batch["labels"])), multi_label)
    return loss, ({"loss/class": loss},
                  updates.get("batch_stats", batch_stats))
  return objective


def evaluate(logits_fn, variables, eval_ds, mesh, multi_label: bool
             ) -> Dict[str, float]:
  """Accuracy (single-label: top-1; multi-label: per-label at p > 0.5)."""
  logits = np.zeros((eval_ds.size, 0), np.float32)
  for batch in eval_ds:
    out = np.asarray(logits_fn(variables, mesh_lib.shard_batch(
        batch["image"], mesh)))
    if logits.shape[1] == 0:
      logits = np.zeros((eval_ds.size, out.shape[1]), np.float32)
    keep = np.asarray(batch["valid"]) & (np.asarray(batch["index"]) >= 0)
    logits[np.asarray(batch["index"])[keep]] = out[keep]
  labels = eval_ds.labels
  if multi_label:
    acc = float(np.mean((logits > 0) == (labels > 0.5)))
  else:
    acc = float(np.mean(np.argmax(logits, 1) == np.argmax(labels, 1)))
  return {"accuracy": acc, "count": int(eval_ds.size)}


def train_classifier(config, cls_cfg, workdir: str, stage_dir: str, *,
                     ds=None) -> Classifier:
  """Trains (or reuses) the classifier of `cls_cfg` on `config.data`.

  Args:
    config: the run config (data, seed, model.dtype, num_devices).
    cls_cfg: the classifier section (model, kwargs, num_steps, batch_size,
      image_size, optimizer settings, log/checkpoint cadence).
    workdir: the run's workdir; the split files are shared from
      `{workdir}/splits`, so every stage sees the same split.
    stage_dir: where the classifier's checkpoints and metrics go.
    ds: optional already built datasets (no masks) at the classifier's size.
  """
  t0 = time.perf_counter()
  mesh = mesh_lib.make_mesh(config.num_devices or None)
  bs = int(cls_cfg.batch_size)
  mesh_lib.check_batch_size(bs, mesh, "ath.classifier.batch_size")
  if ds is None:
    ds = build_plain_datasets(config, workdir, bs,
                              int(cls_cfg.image_size or config.data.image_size))
  model = models.get_model(cls_cfg.model, num_classes=ds.num_classes,
                           dtype=config.model.dtype,
                           **dict(cls_cfg.kwargs.to_dict()))
  example = mesh_lib.shard_batch({"image": ds.example_batch()["image"]}, mesh)
  p_rng = jax.random.key(int(config.seed), impl="rbg")
  variables = jax.jit(lambda x: model.init({"params": p_rng}, x, train=False),
                      out_shardings=mesh_lib.replicated(mesh))(example["image"])
  variables = dict(variables)
  steps = int(cls_cfg.num_steps)
  tx, schedule = optim_lib.build_optimizer(optim_config(cls_cfg),
                                           variables["params"], steps)
  state = state_lib.create_train_state(
      apply_fn=model.apply, variables=variables, tx=tx,
      rng=state_lib.root_key(config.seed), mesh=mesh)
  ckpt = ckpt_lib.Checkpointer(os.path.join(stage_dir, "checkpoints"),
                               max_to_keep=1)
  record = run_record(config, cls_cfg, ds)
  ckpt.check_or_write_config(record)
  start = 0
  if ckpt.latest_step() is not None:
    restored, start = ckpt.restore(state.checkpoint_items(), ds.train_iter)
    state = state.replace_from_checkpoint(restored)
    logging.info("classifier: restored step %d of %d from %s", start, steps,
                 ckpt.directory)
  metrics_path = os.path.join(stage_dir, METRICS_FILE)
  if start < steps:
    train_step = step_lib.make_train_step(
        _objective(model, ds.multi_label), schedule, mesh=mesh,
        state_example=state)
    root = jnp.array(state.rng)
    log_every = max(1, int(cls_cfg.log_every_steps))
    ckpt_every = int(cls_cfg.checkpoint_every_steps)
    losses = []
    try:
      for step in range(start, steps):
        batch = next(ds.train_iter)
        sbatch = mesh_lib.shard_batch(
            {k: batch[k] for k in ("image", "labels", "label_mask")}, mesh)
        state, m = train_step(state, sbatch, root)
        done = step + 1
        if done % log_every == 0 or done == steps:
          host = {k: float(v) for k, v in jax.device_get(m).items()}
          step_lib.check_finite(host, done, None)
          losses.append(host["loss"])
          logging.info("classifier step %d/%d: loss %.4f, lr %.3g", done,
                       steps, host["loss"], host["lr"])
        if (ckpt_every > 0 and done % ckpt_every == 0) or done == steps:
          ckpt.save(done, state.checkpoint_items(), ds.train_iter,
                    force=done == steps)
    finally:
      ckpt.wait_until_finished()
    seconds = time.perf_counter() - t0
    variables = state.variables()
    clf = Classifier(model, variables, ds, mesh, int(state.step), {})
    val = evaluate(clf.logits_fn(), variables, ds.eval["val"], mesh,
                   ds.multi_label)
    clf.metrics = dict(record, step=int(state.step), val=val,
                       seconds=seconds, resumed_from=start,
                       final_loss=losses[-1] if losses else None)
    if jax.process_index() == 0:
      with open(metrics_path, "w", encoding="utf-8") as f:
        json.dump(clf.metrics, f, indent=2)
    logging.info("classifier: %d steps in %.1f s; val %s", steps - start,
                 seconds, val)
  else:
    clf = Classifier(model, state.variables(), ds, mesh, int(state.step),
                     load_metrics(stage_dir))
    logging.info("classifier: reusing the finished checkpoint (step %d) in %s",
                 start, ckpt.directory)
  ckpt.close()
  return clf


def load_for_inference(stage_dir: str):
  """(model, variables, record) of the finished classifier in `stage_dir`,
  without the data set: the architecture and class count come from the
  run record saved beside the checkpoints."""
  path = os.path.join(stage_dir, "checkpoints")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no classifier checkpoints in {path} (train the "
                            "ATH system first)")
  ckpt = ckpt_lib.Checkpointer(path, read_only=True, async_save=False)
  try:
    record = ckpt.saved_config()
    if record is None:
      raise FileNotFoundError(f"{path} has no run record; cannot rebuild the "
                              "classifier")
    raw = ckpt.restore_raw()
  finally:
    ckpt.close()
  model = models.get_model(record["model"],
                           num_classes=int(record["num_classes"]),
                           **dict(record["kwargs"]))
  variables = {k: raw[k] for k in ("params", "batch_stats") if raw.get(k)}
  return model, variables, record


def run_record(config, cls_cfg, ds) -> Dict[str, Any]:
  """What identifies a classifier run (checked when a stage dir is reused)."""
  return {"model": cls_cfg.model, "kwargs": cls_cfg.kwargs.to_dict(),
          "num_classes": ds.num_classes, "image_size": ds.image_size,
          "data": config.data.name, "split": config.data.split,
          "split_seed": int(config.data.split_seed), "seed": int(config.seed)}


def finished_step(config, cls_cfg, ds, stage_dir: str) -> Optional[int]:
  """The step of a finished classifier run in `stage_dir`, else None.

  Raises:
    ConfigMismatchError: the folder holds a classifier of another config.
  """
  path = os.path.join(stage_dir, "checkpoints")
  if not os.path.isdir(path) or not os.path.exists(
      os.path.join(stage_dir, METRICS_FILE)):
    return None
  ckpt = ckpt_lib.Checkpointer(path, read_only=True, async_save=False)
  step = ckpt.latest_step()
  saved = ckpt.saved_config()
  ckpt.close()
  if step is None or step < int(cls_cfg.num_steps):
    return None
  if saved is not None:
    ckpt_lib.check_config_compatible(saved, run_record(config, cls_cfg, ds),
                                     path, changeable=())
  return step


def load_metrics(stage_dir: str) -> Dict[str, Any]:
  path = os.path.join(stage_dir, METRICS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    out = json.load(f)
  out["reused"] = True
  return out


def build_plain_datasets(config, workdir: Optional[str], batch_size: int,
                         image_size: int):
  """config.data without the local view (no masks exist yet), unaugmented
  eval splits at `image_size`; splits shared through `{workdir}/splits`."""
  data_cfg = ml_collections.ConfigDict(config.data.to_dict())
  data_cfg.mask_dir = ""
  return data_lib.build_datasets(
      data_cfg, workdir=workdir, global_batch_size=batch_size,
      seed=int(config.seed), image_size=image_size,
      eval_batch_size=int(config.data.eval_batch_size or batch_size))
