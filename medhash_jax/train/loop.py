"""`train_and_evaluate(config, workdir)`: the whole run, from config to results.json.

  validate config -> mesh -> checkpoint dir (config check) -> data -> model,
  loss, optimizer -> restore (workdir latest -> config.resume ->
  config.init_from -> scratch) -> steps (log, val eval + model selection,
  checkpoints) -> final test evaluation with the model selected on val ->
  {workdir}/results.json and the database index.

Every check that can fail on bad input runs before the first step.

Long runs survive (train/preemption.py): SIGTERM / SIGINT finish the step,
save a checkpoint and exit with status 75; checkpoints and progress lines
also follow wall time (`train.checkpoint_every_minutes`,
`train.log_every_seconds`), decided identically on every process; a resume
skips damaged checkpoints (train/checkpoint.py).
"""

import json
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medhash_jax import data as data_lib
from medhash_jax.train import checkpoint as ckpt_lib
from medhash_jax.train import evaluate as eval_lib
from medhash_jax.train import mesh as mesh_lib
from medhash_jax.train import optim as optim_lib
from medhash_jax.train import preemption
from medhash_jax.train import state as state_lib
from medhash_jax.train import step as step_lib
from medhash_jax.train import task as task_lib
from medhash_jax.train import validation
from medhash_jax.train import writers as writers_lib

RESULTS_FILE = "results.json"
INDEX_FILE = "index.mhi"
INDEX_META_FILE = "index_meta.npz"
BEST_FILE = "best.json"

Hook = Callable[[int, state_lib.TrainState], None]


class Run:
  """Everything built from a config that training, evaluation and encoding share."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Optional[str],
               *, for_training: bool = True):
    validation.validate_config(config, for_training=for_training)
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
                                    two_view=self.ds.two_view,
                                    for_training=for_training)
    rng = state_lib.root_key(config.seed)
    example = mesh_lib.shard_batch(
        {k: v for k, v in self.ds.example_batch().items()
         if k in self.task.input_keys}, self.mesh)
    variables = self.task.init(config.seed, example, self.mesh)
    self.tx, self.schedule = optim_lib.build_optimizer(
        config.optim, variables["params"], config.train.num_steps)
    self.state = state_lib.create_train_state(
        apply_fn=self.task.model.apply, variables=variables, tx=self.tx,
        rng=rng, mesh=self.mesh)
    self.encode_fn = eval_lib.make_encode_fn(self.task.encode, self.mesh)
    groups = optim_lib.describe_groups(variables["params"],
                                       tuple(config.optim.head_patterns))
    logging.info("model %s: %d params (%s); %d devices %s", config.model.name,
                 state_lib.count_params(variables["params"]), groups,
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


def _read_json(path: str) -> Any:
  """json.load that names the file when it is truncated or corrupt."""
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f"{path} is corrupt or truncated ({e}); it is written "
                       "again by training or --mode=evaluate") from e


def _best_record(workdir: str) -> Optional[Dict[str, Any]]:
  path = os.path.join(workdir, BEST_FILE)
  if not os.path.exists(path):
    return None
  return _read_json(path)


def _finite(obj):
  """JSON has no NaN/Inf: they become null."""
  if isinstance(obj, float):
    return obj if np.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  return obj


def _write_json(path: str, obj: Any):
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(_finite(obj), f, indent=2, sort_keys=False, default=str)
  os.replace(tmp, path)


class _Meter:
  """Averages the per-step metrics of one log interval on the host."""

  def __init__(self):
    self.sums, self.n = {}, 0

  def add(self, metrics: Dict[str, float]):
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + v
    self.n += 1

  def pop(self) -> Dict[str, float]:
    out = {k: v / max(self.n, 1) for k, v in self.sums.items()}
    self.sums, self.n = {}, 0
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       hooks: Sequence[Hook] = ()) -> Dict[str, Any]:
  """Trains, selects on val, evaluates on test, writes results.json.

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
  cfg = config
  total = int(cfg.train.num_steps)
  start = int(run.state.step)
  logging.info("starting at step %d of %d (from %s)", start, total, origin)
  writer = writers_lib.create_default_writer(workdir)
  if start == 0:
    writer.write_hparams(cfg.to_dict())
  is_writer = jax.process_index() == 0
  best_dir = os.path.join(workdir, "best")
  best_ckpt = ckpt_lib.Checkpointer(best_dir, max_to_keep=1, async_save=False)
  best = _best_record(workdir)
  select = cfg.eval.select_metric

  train_step = step_lib.make_train_step(run.task.objective, run.schedule,
                                        mesh=run.mesh, state_example=run.state)
  root = jnp.array(run.state.rng)  # its own buffer: the state is donated
  state = run.state
  meter = _Meter()
  pending = None
  last_loss = final_loss = float("nan")
  log_every = max(1, int(cfg.train.log_every_steps))
  eval_every = int(cfg.train.eval_every_steps)
  ckpt_every = int(cfg.train.checkpoint_every_steps)
  log_clock = preemption.WallClock(cfg.train.get("log_every_seconds", 0))
  ckpt_clock = preemption.WallClock(
      60.0 * cfg.train.get("checkpoint_every_minutes", 0))
  # Several processes must take every non-step decision (stop, a time-based
  # checkpoint) at the same step: they act on the requests the step returned
  # (the max over all processes, preemption.py), one step late. One process
  # acts on its own at once.
  multi = jax.process_count() > 1
  requests = preemption.Requests(run.mesh.size // jax.process_count())
  agreed = {}  # step -> requests reduced over all processes by that step
  # Steps/s excludes val passes (`paused`); `seconds` in results includes them.
  t_log, steps_logged, paused = time.perf_counter(), 0, 0.0
  t_train = time.perf_counter()

  def last_good() -> Optional[str]:
    s = run.ckpt.latest_step()
    return None if s is None else os.path.join(run.ckpt.directory, str(s))

  def flush():
    nonlocal pending, last_loss
    if pending is None:
      return
    done, metrics = pending
    pending = None
    host = dict(jax.device_get(metrics))
    control = host.pop(step_lib.CONTROL_KEY, None)
    if control is not None:
      agreed[done] = preemption.decode(control)
    host = {k: float(v) for k, v in host.items()}
    step_lib.check_finite(host, done, last_good())
    last_loss = host["loss"]
    meter.add(host)

  try:
    with preemption.SignalCatcher() as catcher:
      for step in range(start, total):
        batch = next(run.ds.train_iter)
        inputs = dict(run.task.train_inputs(batch))
        inputs[step_lib.CONTROL_KEY] = requests.local(
            stop=catcher.requested, checkpoint=ckpt_clock.due())
        sbatch = mesh_lib.shard_batch(inputs, run.mesh)
        state, metrics = train_step(state, sbatch, root)
        # Fetch the previous step's metrics only now, so the host never waits
        # for the step it just dispatched.
        flush()
        done = step + 1
        pending = (done, metrics)
        steps_logged += 1
        first = step == start
        if first:
          # The first step compiles; keep it out of steps/s and the ETA.
          jax.block_until_ready(metrics)
          first_s = time.perf_counter() - t_log
        for hook in hooks:
          hook(done, state)
        if multi:
          # Step done-1's requests are on the host by now (flushed above or
          # at an earlier log line), on every process alike.
          req = agreed.pop(done - 1, None) or {}
          stop, time_ckpt = req.get("stop", False), req.get("checkpoint", False)
        else:
          stop, time_ckpt = catcher.requested, ckpt_clock.due()
        # JAX's own multi-process preemption sync point (a notice its
        # notifier caught before our handler was installed). It compares
        # call counters exactly, and every process starts this loop at the
        # same step, so count calls from 1 (a resumed run's first step would
        # never meet a sync point computed from counters still at 0).
        stop = stop or run.ckpt.reached_preemption(done - start)
        if (done % log_every == 0 or done == total or first or stop or
            log_clock.due()):
          flush()
          scalars = {f"train/{k}": v for k, v in meter.pop().items()}
          if first:
            line = (f"first step (with compilation) took {first_s:.1f} s, "
                    + _log_line(scalars, float("nan"), float("nan")))
          else:
            dt = time.perf_counter() - t_log - paused
            sps = steps_logged / dt if steps_logged and dt > 0 else float("nan")
            eta = (total - done) / sps if sps > 0 else float("nan")
            scalars["train/steps_per_sec"] = sps
            scalars["train/images_per_sec"] = sps * cfg.train.batch_size
            scalars["train/eta_sec"] = eta
            line = _log_line(scalars, sps, eta)
          logging.info("step %d/%d: %s", done, total, line)
          writer.write_scalars(done, scalars)
          final_loss = scalars["train/loss"]
          t_log, steps_logged, paused = time.perf_counter(), 0, 0.0
          log_clock.reset()
        if (eval_every > 0 and done % eval_every == 0) or done == total:
          flush()
          t_eval = time.perf_counter()
          val = run.evaluate_val(state.variables())
          writer.write_scalars(done, {f"val/{k}": v for k, v in val.items()})
          eval_lib.log_metrics(f"val step {done}", val)
          if select not in val:
            raise KeyError(f"eval.select_metric={select!r} is not in the "
                           f"report; available: {sorted(val)}")
          if best is None or val[select] > best["value"]:
            if done in best_ckpt.all_steps():  # re-reached after a resume
              best_ckpt.delete(done)
            best_ckpt.save(done, {"params": state.params,
                                  "batch_stats": state.batch_stats}, force=True)
            best_ckpt.wait_until_finished()
            best = {"step": done, "metric": select, "value": val[select],
                    "val": val}
            if is_writer:
              _write_json(os.path.join(workdir, BEST_FILE), best)
          paused += time.perf_counter() - t_eval
        if ((ckpt_every > 0 and done % ckpt_every == 0) or done == total or
            time_ckpt or stop):
          flush()
          run.ckpt.save(done, state.checkpoint_items(), run.ds.train_iter,
                        force=done == total or time_ckpt or stop)
          ckpt_clock.reset()
        if stop and done < total:
          _stop(run, writer, catcher, done, total, workdir)
      flush()
  finally:
    run.ckpt.wait_until_finished()
    best_ckpt.close()
    writer.flush()
  train_seconds = time.perf_counter() - t_train
  if start >= total:
    logging.info("nothing to train: the checkpoint is at step %d", start)
    # A re-run that only re-evaluates keeps the training time it measured.
    train_seconds = _previous_train_seconds(workdir, train_seconds)
  if hasattr(train_step, "_cache_size") and train_step._cache_size() > 1:  # pylint: disable=protected-access
    logging.warning("the train step was traced %d times (expected 1)",
                    train_step._cache_size())  # pylint: disable=protected-access
  run.state = state
  results = final_evaluation(run, train_info={
      "steps": int(state.step), "final_loss": final_loss,
      "last_step_loss": last_loss,
      "seconds": train_seconds, "resumed_from": origin,
      "wall_seconds": time.time() - t_begin})
  writer.write_scalars(int(state.step), writers_lib.flatten(
      {"test": results["metrics"]["test"]}))
  writer.close()
  run.ckpt.close()
  return results


def _stop(run: Run, writer, catcher, done: int, total: int, workdir: str):
  """After the stop step's checkpoint: wait for it, tell how to resume, exit."""
  run.ckpt.wait_until_finished()
  writer.flush()
  # No process may exit before every process's part is committed.
  ckpt_lib.sync_processes("medhash_stop")
  why = (preemption.signal_name(catcher.received) if catcher.requested else
         "a stop request of another process" if jax.process_count() > 1 else
         "a preemption notice")
  msg = (f"stopped by {why} at step {done} of {total}; checkpoint "
         f"{os.path.join(run.ckpt.directory, str(done))} is saved. To resume, "
         f"run the same command again (same --workdir={workdir}): training "
         f"continues from step {done}. Exit status "
         f"{preemption.EXIT_RESUMABLE}.")
  logging.warning(msg)
  raise preemption.TrainingInterrupted(msg, done)


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


def _log_line(scalars: Dict[str, float], sps: float, eta: float) -> str:
  """'12.3 steps/s, ETA 0:01:40, lr 0.01, loss 0.73 (hash 0.73, ...), ...'."""
  terms = ", ".join(f"{k[len('train/loss/'):]} {v:.4g}"
                    for k, v in sorted(scalars.items())
                    if k.startswith("train/loss/"))
  extra = ", ".join(f"{k[len('train/'):]} {v:.4g}"
                    for k, v in sorted(scalars.items())
                    if k in ("train/grad_norm", "train/beta"))
  speed = (f"{sps:.2f} steps/s ({1 / sps:.3g} s/step)" if sps > 0 else
           "? steps/s")
  return (f"{speed}, ETA {_hms(eta)}, lr {scalars['train/lr']:.3g}, "
          f"loss {scalars['train/loss']:.4f} ({terms}), {extra}")


def _previous_train_seconds(workdir: str, default: float) -> float:
  """`train.seconds` of an earlier results.json in workdir, else `default`."""
  try:
    with open(os.path.join(workdir, RESULTS_FILE)) as f:
      seconds = json.load(f)["train"]["seconds"]
  except (OSError, ValueError, KeyError, TypeError):
    return default
  return float(seconds) if seconds is not None else default


def _hms(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
