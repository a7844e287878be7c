"""`train_and_evaluate(config, workdir)`: the whole run, from config to results.json.

  validate config -> mesh -> checkpoint dir (config check) -> data -> model,
  loss, optimizer -> restore (workdir latest -> config.resume ->
  config.init_from -> scratch) -> steps (log, val eval + model selection,
  checkpoints) -> final test evaluation with the model selected on val ->
  {workdir}/results.json and the database index.

Every check that can fail on bad input runs before the first step.

The steps are the project's one loop, `fit.fit` (train/fit.py). Long runs
survive (train/preemption.py): SIGTERM / SIGINT finish the step, save a
checkpoint and exit with status 75; checkpoints and progress lines also
follow wall time (`train.checkpoint_every_minutes`,
`train.log_every_seconds`), decided identically on every process; a resume
skips damaged checkpoints (train/checkpoint.py).
"""

import json
import os
import time
from typing import Any, Dict, Optional, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from medhash_jax import data as data_lib
from medhash_jax.train import checkpoint as ckpt_lib
from medhash_jax.train import evaluate as eval_lib
from medhash_jax.train import fit as fit_lib
from medhash_jax.train import mesh as mesh_lib
from medhash_jax.train import optim as optim_lib
from medhash_jax.train import state as state_lib
from medhash_jax.train import task as task_lib
from medhash_jax.train import validation
from medhash_jax.train import writers as writers_lib

RESULTS_FILE = "results.json"
INDEX_FILE = "index.mhi"
INDEX_META_FILE = "index_meta.npz"
BEST_FILE = fit_lib.BEST_FILE


class Run:
  """Everything built from a config that training, evaluation and encoding share."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Optional[str],
               *, for_training: bool = True):
    validation.validate_config(config)
    self.config = config
    self.workdir = workdir
    self.mesh = mesh_lib.make_mesh(config.num_devices or None)
    mesh_lib.check_batch_size(config.train.batch_size, self.mesh,
                              "train.batch_size")
    self.eval_batch_size = int(config.data.eval_batch_size or
                               config.train.batch_size)
    mesh_lib.check_batch_size(self.eval_batch_size, self.mesh,
                              "data.eval_batch_size")
    self.ckpt = None
    if workdir:
      self.ckpt = ckpt_lib.Checkpointer(
          os.path.join(workdir, "checkpoints"),
          max_to_keep=config.train.keep_checkpoints, read_only=not for_training)
      if for_training:
        self.ckpt.check_or_write_config(config.to_dict())
      elif self.ckpt.saved_config() is not None:
        ckpt_lib.check_config_compatible(self.ckpt.saved_config(),
                                         config.to_dict(), workdir,
                                         changeable=ckpt_lib.INFERENCE)
    self.ds = data_lib.build_datasets(
        config.data, workdir=workdir, global_batch_size=config.train.batch_size,
        seed=config.seed, image_size=config.data.image_size,
        eval_batch_size=self.eval_batch_size)
    self.task = task_lib.build_task(config, num_classes=self.ds.num_classes,
                                    multi_label=self.ds.multi_label,
                                    two_view=self.ds.two_view)
    self.state, self.schedule = fit_lib.initial_state(
        self.task, self.ds, self.mesh, config.optim, config.train.num_steps,
        config.seed)
    self.encode_fn = eval_lib.make_encode_fn(self.task.encode, self.mesh)
    groups = optim_lib.describe_groups(self.state.params,
                                       tuple(config.optim.head_patterns))
    logging.info("model %s: %d params (%s); %d devices %s", config.model.name,
                 state_lib.count_params(self.state.params), groups,
                 self.mesh.size, jax.devices()[0].platform)

  # -- restore ----------------------------------------------------------------

  def restore_or_initialize(self) -> str:
    """Resume order: workdir latest -> config.resume -> config.init_from."""
    cfg = self.config
    items = self.state.checkpoint_items()
    if self.ckpt is not None and self.ckpt.latest_step() is not None:
      restored, step = self.ckpt.restore(items, self.ds.train_iter)
      self.state = self.state.replace_from_checkpoint(restored)
      origin = f"workdir checkpoint step {step}"
      if self.ckpt.skipped:
        origin += " (skipped damaged " + ", ".join(
            f"step {s} at {p}: {r}" for s, p, r in self.ckpt.skipped) + ")"
        logging.warning("resuming from step %d, the newest checkpoint that "
                        "restores; %s", step, origin)
      return origin
    if cfg.resume:
      other, step = ckpt_lib.open_for_reading(cfg.resume)
      if other.saved_config() is not None:
        ckpt_lib.check_config_compatible(other.saved_config(), cfg.to_dict(),
                                         cfg.resume)
      # A workdir or checkpoints folder: its newest step that restores; a
      # step folder: that step.
      named = os.path.basename(os.path.normpath(cfg.resume)).isdigit()
      restored, step = other.restore(items, self.ds.train_iter,
                                     step if named else None)
      other.close()
      self.state = self.state.replace_from_checkpoint(restored)
      return f"config.resume={cfg.resume} step {step}"
    if cfg.init_from:
      params, stats = ckpt_lib.load_weights(
          cfg.init_from, self.state.params, self.state.batch_stats,
          converter=self.task.converter)
      self.state = self.state.replace(params=params, batch_stats=stats)
      return f"config.init_from={cfg.init_from} (weights only)"
    return "scratch"

  def selected_variables(self):
    """Variables of the model selected on val (best/), else the live state."""
    best_dir = os.path.join(self.workdir, "best") if self.workdir else None
    if best_dir and os.path.isdir(best_dir):
      best = ckpt_lib.Checkpointer(best_dir, read_only=True, async_save=False)
      if best.latest_step() is not None:
        target = {"params": self.state.params,
                  "batch_stats": self.state.batch_stats}
        restored, step = best.restore(target)
        best.close()
        return restored, step
      best.close()
    return ({"params": self.state.params,
             "batch_stats": self.state.batch_stats}, int(self.state.step))

  def variables_of(self, items) -> Dict[str, Any]:
    v = {"params": items["params"]}
    if items.get("batch_stats"):
      v["batch_stats"] = items["batch_stats"]
    return v

  # -- evaluation ---------------------------------------------------------------

  def evaluate_val(self, variables, *, return_gallery: bool = False):
    """Val queries against the train gallery (model selection)."""
    metrics, _, gallery, _ = eval_lib.evaluate_pair(
        self.encode_fn, variables, self.ds.eval["val"], self.ds.eval["train"],
        self.mesh, input_keys=self.task.input_keys, ks=self.config.eval.ks,
        report_fn=self.task.report_fn)
    return (metrics, gallery) if return_gallery else metrics

  def evaluate_test(self, variables, val: Optional[Dict[str, float]] = None
                    ) -> Dict[str, Any]:
    """Val and test metrics, the database index and efficiency numbers.

    Args:
      variables: the selected model.
      val: its val metrics when already known (skips one val pass).
    """
    from medhash_jax.retrieval import HammingIndex  # pylint: disable=g-import-not-at-top
    db_codes = None
    splits = self.ds.splits
    same_gallery = np.array_equal(splits.train, splits.database)
    if val is None:
      val, gallery = self.evaluate_val(variables, return_gallery=True)
      if same_gallery:  # official splits: the database is the train split
        db_codes = gallery
    test, q_codes, db_codes, s_per_image = eval_lib.evaluate_pair(
        self.encode_fn, variables, self.ds.eval["query"],
        self.ds.eval["database"], self.mesh, input_keys=self.task.input_keys,
        ks=self.config.eval.ks, report_fn=self.task.report_fn,
        db_codes=db_codes)
    index = HammingIndex(self.config.num_bits)
    index.add(db_codes)
    ks = [k or len(index) for k in self.config.eval.ks]
    ms_per_query = eval_lib.time_search(index, q_codes, max(ks))
    out = {"val": val, "test": test, "index": index, "db_codes": db_codes,
           "efficiency": {"encode_ms_per_image": s_per_image * 1e3,
                          "query_ms_per_query": ms_per_query,
                          "index_bytes": int(index.nbytes)}}
    return out


_read_json = fit_lib.read_json
_best_record = fit_lib.best_record
_write_json = fit_lib.write_json


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       hooks: Sequence[fit_lib.Hook] = ()) -> Dict[str, Any]:
  """Trains (`fit.fit`), selects on val, evaluates on test, writes
  results.json.

  Args:
    config: a config from `configs/<method>.py`.
    workdir: run directory (checkpoints, metrics, results, index).
    hooks: called as hook(step, state) after every step (tests use one to
      simulate a crash).

  Returns:
    The results dict written to `{workdir}/results.json`.
  """
  t_begin = time.time()
  os.makedirs(workdir, exist_ok=True)
  run = Run(config, workdir, for_training=True)
  origin = run.restore_or_initialize()
  total, start = int(config.train.num_steps), int(run.state.step)
  logging.info("starting at step %d of %d (from %s)", start, total, origin)
  writer = writers_lib.create_default_writer(workdir)
  if start == 0:
    writer.write_hparams(config.to_dict())
  fitted = fit_lib.fit(run, fit_lib.Cadence.of(config.train), workdir,
                       writer=writer, evaluate=run.evaluate_val,
                       selection=fit_lib.Selection(config.eval.select_metric),
                       hooks=hooks)
  train_seconds = fitted.train_info["seconds"]
  if start >= total:
    logging.info("nothing to train: the checkpoint is at step %d", start)
    # A re-run that only re-evaluates keeps the training time it measured.
    train_seconds = _previous_train_seconds(workdir, train_seconds)
  run.state = fitted.state
  results = final_evaluation(run, train_info=dict(
      fitted.train_info, seconds=train_seconds, resumed_from=origin,
      wall_seconds=time.time() - t_begin))
  writer.write_scalars(int(run.state.step), writers_lib.flatten(
      {"test": results["metrics"]["test"]}))
  writer.close()
  run.ckpt.close()
  return results


def final_evaluation(run: Run, train_info: Dict[str, Any], *,
                     reuse_val: bool = True) -> Dict[str, Any]:
  """Test metrics of the val-selected model; writes results.json + index.

  With `reuse_val`, the val metrics recorded when the model was selected are
  reported instead of being recomputed (same model, same data).
  """
  cfg, workdir = run.config, run.workdir
  items, selected_step = run.selected_variables()
  best = _best_record(workdir) if workdir else None
  known_val = (best["val"] if reuse_val and best and
               best.get("step") == selected_step else None)
  ev = run.evaluate_test(run.variables_of(items), val=known_val)
  eval_lib.log_metrics(f"test (model of step {selected_step})", ev["test"])
  results = {
      "method": cfg.method,
      "dataset": cfg.data.name,
      "num_bits": int(cfg.num_bits),
      "image_size": int(cfg.data.image_size),
      "split_sizes": {k: int(v) for k, v in run.ds.split_sizes.items()},
      "config": cfg.to_dict(),
      "train": dict(train_info),
      "selection": {"metric": cfg.eval.select_metric, "split": "val",
                    "step": int(selected_step)},
      "metrics": {"val": ev["val"], "test": ev["test"]},
      # What a user sees does not depend on database order: the headline
      # uses the tie-aware columns (index-ordered ones stay in metrics).
      "headline": {k: v for k, v in ev["test"].items()
                   if k.endswith("/tie_aware")},
      "efficiency": ev["efficiency"],
      "device": {"platform": jax.devices()[0].platform,
                 "kind": jax.devices()[0].device_kind,
                 "count": int(run.mesh.size)},
  }
  if jax.process_index() == 0:
    index_path = os.path.join(workdir, INDEX_FILE)
    ev["index"].save(index_path)
    # The rest of the product (run_files: metadata, thumbnails, preprocessing
    # record): search and serving need no training data.
    from medhash_jax.train import run_files  # pylint: disable=g-import-not-at-top
    run_files.write_run_files(workdir, cfg, run.ds,
                              model_step=int(selected_step))
    results["index_file"] = index_path
    results["efficiency"]["index_file_bytes"] = os.path.getsize(index_path)
    _write_json(os.path.join(workdir, RESULTS_FILE), results)
    logging.info("wrote %s and %s", os.path.join(workdir, RESULTS_FILE),
                 index_path)
  return results


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str
                     ) -> Dict[str, Any]:
  """`--mode=evaluate`: final evaluation of a trained workdir."""
  run = Run(config, workdir, for_training=False)
  if run.ckpt.latest_step() is None:
    raise FileNotFoundError(f"{workdir} holds no checkpoint to evaluate")
  restored, step = run.ckpt.restore(run.state.checkpoint_items())
  run.state = run.state.replace_from_checkpoint(restored)
  previous = {}
  path = os.path.join(workdir, RESULTS_FILE)
  if os.path.exists(path):
    previous = _read_json(path).get("train", {})
  train_info = previous or {"steps": int(step), "final_loss": None,
                            "seconds": None}
  results = final_evaluation(run, train_info, reuse_val=False)
  run.ckpt.close()
  return results


def _previous_train_seconds(workdir: str, default: float) -> float:
  """`train.seconds` of an earlier results.json in workdir, else `default`."""
  try:
    with open(os.path.join(workdir, RESULTS_FILE)) as f:
      seconds = json.load(f)["train"]["seconds"]
  except (OSError, ValueError, KeyError, TypeError):
    return default
  return float(seconds) if seconds is not None else default

