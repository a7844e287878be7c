"""ATH stage 1: a plain image classifier, trained by the one loop.

The task (objective, prediction, accuracy) is `train.classification.
ClassifierTask`; this module builds it from the `ath.classifier` section
(model, optimizer, batch size, image size) and hands it to `train.fit.fit`,
which brings the metric writer ({stage_dir}/metrics.jsonl, tensorboard/),
NaN reports naming the last good checkpoint, checkpoints of state + data
iterator, SIGTERM handling (status 75, resumable) and multi-process
evaluation. The checkpoint folder carries a run record (`run_record`)
instead of a config.

A finished run (checkpoint at `num_steps` and classifier.json) is reused as
is; an interrupted one resumes from its latest checkpoint.
"""

import json
import os
import time
from typing import Any, Dict, Optional

from absl import logging
import jax
import ml_collections

from medhash_jax import data as data_lib
from medhash_jax import models
from medhash_jax.train import checkpoint as ckpt_lib
from medhash_jax.train import classification
from medhash_jax.train import defaults as defaults_lib
from medhash_jax.train import fit as fit_lib
from medhash_jax.train import mesh as mesh_lib
from medhash_jax.train import writers as writers_lib

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


class _Stage1:
  """What `fit` trains (a `fit.Trainable`): the classifier's mesh, data,
  task, optimizer, state and checkpointer, restored when a checkpoint
  exists."""

  def __init__(self, config, cls_cfg, ds, stage_dir: str):
    self.mesh = mesh_lib.make_mesh(config.num_devices or None)
    mesh_lib.check_batch_size(int(cls_cfg.batch_size), self.mesh,
                              "ath.classifier.batch_size")
    self.ds = ds
    model = models.get_model(cls_cfg.model, num_classes=ds.num_classes,
                             dtype=config.model.dtype,
                             **dict(cls_cfg.kwargs.to_dict()))
    self.task = classification.ClassifierTask(model,
                                              multi_label=ds.multi_label)
    self.state, self.schedule = fit_lib.initial_state(
        self.task, ds, self.mesh, optim_config(cls_cfg),
        int(cls_cfg.num_steps), config.seed)
    self.record = run_record(config, cls_cfg, ds)
    self.ckpt = ckpt_lib.Checkpointer(os.path.join(stage_dir, "checkpoints"),
                                      max_to_keep=1)
    self.ckpt.check_or_write_config(self.record)
    self.start = 0
    if self.ckpt.latest_step() is not None:
      restored, self.start = self.ckpt.restore(self.state.checkpoint_items(),
                                               ds.train_iter)
      self.state = self.state.replace_from_checkpoint(restored)
      logging.info("classifier: restored step %d of %d from %s", self.start,
                   int(cls_cfg.num_steps), self.ckpt.directory)
    elif cls_cfg.get("init_from", ""):
      # Weights only, before the first step (the paper fine-tunes an
      # ImageNet DenseNet-121): an orbax checkpoint or a torchvision file.
      params, stats = ckpt_lib.load_weights(
          str(cls_cfg.init_from), self.state.params, self.state.batch_stats,
          converter=models.pretrained_converter(cls_cfg.model))
      self.state = self.state.replace(params=params, batch_stats=stats)
      logging.info("classifier: initialised from %s", cls_cfg.init_from)

  def classifier(self, metrics) -> Classifier:
    return Classifier(self.task.model, self.state.variables(), self.ds,
                      self.mesh, int(self.state.step), metrics)


def train_classifier(config, cls_cfg, workdir: str, stage_dir: str, *,
                     ds=None, hooks=()) -> Classifier:
  """Trains (or reuses) the classifier of `cls_cfg` on `config.data`.

  Args:
    config: the run config (data, seed, model.dtype, num_devices).
    cls_cfg: the classifier section (model, kwargs, num_steps, batch_size,
      image_size, optimizer settings, log/checkpoint cadence).
    workdir: the run's workdir; the split files are shared from
      `{workdir}/splits`, so every stage sees the same split.
    stage_dir: where the classifier's checkpoints and metrics go.
    ds: optional already built datasets (no masks) at the classifier's size.
    hooks: `fit` hooks, hook(step, state) after every step (tests).

  Raises:
    preemption.TrainingInterrupted: stopped by a signal (checkpoint saved;
      the same call resumes).
  """
  t0 = time.perf_counter()
  if ds is None:
    ds = build_plain_datasets(config, workdir, int(cls_cfg.batch_size),
                              int(cls_cfg.image_size or config.data.image_size))
  run = _Stage1(config, cls_cfg, ds, stage_dir)
  steps = int(cls_cfg.num_steps)
  if run.start >= steps:
    run.ckpt.close()
    logging.info("classifier: reusing the finished checkpoint (step %d) in %s",
                 run.start, run.ckpt.directory)
    return run.classifier(load_metrics(stage_dir))
  writer = writers_lib.create_default_writer(stage_dir)
  if run.start == 0:
    writer.write_hparams(run.record)
  try:
    fitted = fit_lib.fit(
        run, fit_lib.Cadence.of(cls_cfg), workdir, writer=writer, hooks=hooks,
        evaluate=lambda v: run.task.evaluate(v, ds.eval["val"], run.mesh),
        name="classifier")
  finally:
    writer.close()
    run.ckpt.close()
  run.state = fitted.state
  seconds = time.perf_counter() - t0
  clf = run.classifier(dict(
      run.record, step=int(run.state.step), val=fitted.val, seconds=seconds,
      resumed_from=run.start, final_loss=fitted.train_info["last_step_loss"]))
  if jax.process_index() == 0:
    fit_lib.write_json(os.path.join(stage_dir, METRICS_FILE), clf.metrics)
  logging.info("classifier: %d steps in %.1f s; val %s", steps - run.start,
               seconds, fitted.val)
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
  record = {"model": cls_cfg.model, "kwargs": cls_cfg.kwargs.to_dict(),
            "num_classes": ds.num_classes, "image_size": ds.image_size,
            "data": config.data.name, "split": config.data.split,
            "split_seed": int(config.data.split_seed),
            "seed": int(config.seed)}
  if cls_cfg.get("init_from", ""):  # absent when unset: older records match
    record["init_from"] = str(cls_cfg.init_from)
  return record


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
