"""`fit`: the project's one training loop, for any task that follows `Task`.

    fit(run, cadence, workdir, writer=...) -> FitResult(state, train_info, val)

`run` holds what was built from a config (`Trainable`: mesh, datasets, task,
learning-rate schedule, restored state, checkpointer); the caller builds it
and restores it (the hash trainer's resume order, the classifier's own
folder), then `fit` runs the steps from `run.state.step` to
`cadence.num_steps`:

  * one jitted `step.make_train_step` over the mesh;
  * per-step metrics fetched one step late (the host never waits for the
    step it just dispatched), averaged per log interval, written to the
    metric writer and logged with steps/s and an ETA;
  * a NaN / Inf loss stops the run naming the last good checkpoint;
  * val evaluation (`evaluate(variables) -> metrics`) every
    `eval_every_steps` and at the end; with a `Selection` the best model on
    its metric is kept in `{workdir}/best` + `best.json`;
  * checkpoints (state + data iterator) by steps and by wall time;
  * SIGTERM / SIGINT / a preemption notice: finish the step, checkpoint, exit
    with status 75 (train/preemption.py); several processes agree on the step
    through the requests the step returns.

Tasks (the hash task of train/task.py, the classifier of
train/classification.py) say *what* is trained; this module says *how*.
"""

import dataclasses
import json
import os
import time
from typing import Any, Callable, Dict, Optional, Protocol, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from medhash_jax.train import checkpoint as ckpt_lib
from medhash_jax.train import mesh as mesh_lib
from medhash_jax.train import preemption
from medhash_jax.train import state as state_lib
from medhash_jax.train import step as step_lib

BEST_FILE = "best.json"

Hook = Callable[[int, state_lib.TrainState], None]


class Task(Protocol):
  """What `fit` trains (train/task.py: hashing; train/classification.py:
  a classifier)."""

  model: Any                 # flax module: model.apply is the state's apply_fn
  input_keys: Sequence[str]  # the batch entries the model reads

  def init(self, seed: int, inputs, mesh) -> Dict[str, Any]:
    """Initial variables, replicated over the mesh."""

  def objective(self, params, batch_stats, batch, rng, step):
    """(loss, (terms, new batch_stats)) of one global batch."""

  def train_inputs(self, batch: Dict[str, Any]) -> Dict[str, Any]:
    """The batch arrays the objective reads (only these go to the devices)."""


class Trainable(Protocol):
  """What `fit` needs built (train/loop.Run, systems/classifier)."""
  mesh: Any
  ds: Any          # data.Datasets: train_iter (checkpointed with the state)
  task: Task
  schedule: Callable[[Any], Any]
  state: state_lib.TrainState
  ckpt: ckpt_lib.Checkpointer


def initial_state(task: Task, ds, mesh, optim_cfg, num_steps: int, seed: int):
  """(state, schedule): the task's variables initialised on an example
  batch, its optimizer over `num_steps` and the replicated train state."""
  from medhash_jax.train import optim as optim_lib  # pylint: disable=g-import-not-at-top
  example = mesh_lib.shard_batch(
      {k: v for k, v in ds.example_batch().items() if k in task.input_keys},
      mesh)
  variables = task.init(seed, example, mesh)
  tx, schedule = optim_lib.build_optimizer(optim_cfg, variables["params"],
                                           int(num_steps))
  state = state_lib.create_train_state(
      apply_fn=task.model.apply, variables=variables, tx=tx,
      rng=state_lib.root_key(seed), mesh=mesh)
  return state, schedule


@dataclasses.dataclass(frozen=True)
class Cadence:
  """How long and how often: a config's `train` section, or any section
  with the same names (the ATH classifier's)."""
  num_steps: int
  batch_size: int
  log_every_steps: int = 1
  eval_every_steps: int = 0            # 0: evaluate at the end only
  checkpoint_every_steps: int = 0      # 0: checkpoint at the end only
  checkpoint_every_minutes: float = 0.0
  log_every_seconds: float = 0.0

  @classmethod
  def of(cls, section) -> "Cadence":
    get = section.get
    return cls(num_steps=int(section.num_steps),
               batch_size=int(section.batch_size),
               log_every_steps=max(1, int(get("log_every_steps", 1))),
               eval_every_steps=int(get("eval_every_steps", 0)),
               checkpoint_every_steps=int(get("checkpoint_every_steps", 0)),
               checkpoint_every_minutes=float(
                   get("checkpoint_every_minutes", 0) or 0),
               log_every_seconds=float(get("log_every_seconds", 0) or 0))


@dataclasses.dataclass(frozen=True)
class Selection:
  """Model selection on val: the best value of `metric` (higher is better)
  is kept in `{workdir}/best` with its record in `{workdir}/best.json`."""
  metric: str


@dataclasses.dataclass
class FitResult:
  state: state_lib.TrainState
  train_info: Dict[str, Any]        # steps, final_loss, last_step_loss, seconds
  val: Optional[Dict[str, float]]   # the last val evaluation (None: none ran)


def read_json(path: str, remedy: str = "it is written again by training or "
              "--mode=evaluate") -> Any:
  """json.load that names the file (and the remedy) when it is truncated or
  corrupt."""
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f"{path} is corrupt or truncated ({e}); {remedy}") from e


def best_record(workdir: str) -> Optional[Dict[str, Any]]:
  path = os.path.join(workdir, BEST_FILE)
  return read_json(path) if os.path.exists(path) else None


def _finite(obj):
  """JSON has no NaN/Inf: they become null."""
  if isinstance(obj, float):
    return obj if np.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  return obj


def write_json(path: str, obj: Any):
  """Atomic JSON (a temporary file renamed), NaN/Inf as null."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(_finite(obj), f, indent=2, sort_keys=False, default=str)
  os.replace(tmp, path)


class IntervalMeter:
  """Averages the per-step metrics of one log interval on the host (the
  training loop and each variant of a sweep)."""

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


class _Best:
  """The val-selected model: `{workdir}/best` (params + batch_stats) and
  `best.json`; a re-reached step after a resume replaces its old save."""

  def __init__(self, workdir: str, selection: Selection):
    self.workdir, self.metric = workdir, selection.metric
    self.ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "best"),
                                      max_to_keep=1, async_save=False)
    self.record = best_record(workdir)

  def offer(self, done: int, state, val: Dict[str, float]):
    if self.metric not in val:
      raise KeyError(f"eval.select_metric={self.metric!r} is not in the "
                     f"report; available: {sorted(val)}")
    if self.record is not None and val[self.metric] <= self.record["value"]:
      return
    if done in self.ckpt.all_steps():  # re-reached after a resume
      self.ckpt.delete(done)
    self.ckpt.save(done, {"params": state.params,
                          "batch_stats": state.batch_stats}, force=True)
    self.ckpt.wait_until_finished()
    self.record = {"step": done, "metric": self.metric,
                   "value": val[self.metric], "val": val}
    if jax.process_index() == 0:
      write_json(os.path.join(self.workdir, BEST_FILE), self.record)

  def close(self):
    self.ckpt.close()


def fit(run: Trainable, cadence: Cadence, workdir: str, *, writer,
        evaluate: Optional[Callable[[Dict[str, Any]], Dict[str, float]]] = None,
        selection: Optional[Selection] = None, hooks: Sequence[Hook] = (),
        name: str = "") -> FitResult:
  """Trains `run.state` from its step to `cadence.num_steps`.

  Args:
    run: the built and restored run (`Trainable`).
    cadence: steps, batch size and the log / eval / checkpoint cadence.
    workdir: the run's folder (best model, the resume hint of a stop).
    writer: the metric writer (train/ and val/ scalars).
    evaluate: val metrics of a variables dict, run every
      `eval_every_steps` and at the last step; None: no evaluation.
    selection: keep the best model on val (needs `evaluate`).
    hooks: called as hook(step, state) after every step (tests simulate a
      crash with one).
    name: prefix of the log lines ("classifier").

  Returns:
    The trained state, the train record and the last val metrics.

  Raises:
    step.NonFiniteLossError: a NaN / Inf loss, naming the last good
      checkpoint.
    preemption.TrainingInterrupted: stopped by a signal after a checkpoint.
  """
  total, start = int(cadence.num_steps), int(run.state.step)
  loop = _Loop(run, cadence, workdir, writer, name)
  best = _Best(workdir, selection) if selection is not None else None
  state, val = run.state, None
  t_train = time.perf_counter()
  try:
    with preemption.SignalCatcher() as catcher:
      for step in range(start, total):
        state, stop, time_ckpt = loop.step(state, step, catcher, hooks)
        done = step + 1
        if ((cadence.eval_every_steps > 0 and
             done % cadence.eval_every_steps == 0) or done == total) and (
                 evaluate is not None):
          val = loop.evaluate(done, state, evaluate)
          if best is not None:
            best.offer(done, state, val)
        if ((cadence.checkpoint_every_steps > 0 and
             done % cadence.checkpoint_every_steps == 0) or done == total or
            time_ckpt or stop):
          loop.flush()
          run.ckpt.save(done, state.checkpoint_items(), run.ds.train_iter,
                        force=done == total or time_ckpt or stop)
          loop.ckpt_clock.reset()
        if stop and done < total:
          loop.stop(catcher, done)
      loop.flush()
  finally:
    run.ckpt.wait_until_finished()
    if best is not None:
      best.close()
    writer.flush()
  step_fn = loop.train_step
  if hasattr(step_fn, "_cache_size") and step_fn._cache_size() > 1:  # pylint: disable=protected-access
    logging.warning("the train step was traced %d times (expected 1)",
                    step_fn._cache_size())  # pylint: disable=protected-access
  return FitResult(state=state, val=val, train_info={
      "steps": int(state.step), "final_loss": loop.final_loss,
      "last_step_loss": loop.last_loss,
      "seconds": time.perf_counter() - t_train})


class _Loop:
  """The per-step work of `fit`: dispatch, one-step-late metrics, logging,
  the agreed stop / time-checkpoint requests."""

  def __init__(self, run: Trainable, cadence: Cadence, workdir: str, writer,
               name: str):
    self.run, self.cadence, self.workdir, self.writer = (run, cadence,
                                                         workdir, writer)
    self.prefix = f"{name} " if name else ""
    self.total, self.start = int(cadence.num_steps), int(run.state.step)
    self.train_step = step_lib.make_train_step(
        run.task.objective, run.schedule, mesh=run.mesh, state_example=run.state)
    self.root = jnp.array(run.state.rng)  # its own buffer: the state is donated
    self.meter = IntervalMeter()
    self.pending = None
    self.last_loss = self.final_loss = float("nan")
    self.log_clock = preemption.WallClock(cadence.log_every_seconds)
    self.ckpt_clock = preemption.WallClock(60.0 * cadence.checkpoint_every_minutes)
    # Several processes must take every non-step decision (stop, a time-based
    # checkpoint) at the same step: they act on the requests the step
    # returned (the max over all processes, preemption.py), one step late.
    # One process acts on its own at once.
    self.multi = jax.process_count() > 1
    self.requests = preemption.Requests(run.mesh.size // jax.process_count())
    self.agreed = {}  # step -> requests reduced over all processes by then
    # Steps/s excludes val passes (`paused`).
    self.t_log, self.steps_logged, self.paused = time.perf_counter(), 0, 0.0
    self.first_s = float("nan")

  def last_good(self) -> Optional[str]:
    s = self.run.ckpt.latest_step()
    return None if s is None else os.path.join(self.run.ckpt.directory, str(s))

  def flush(self):
    """Fetches the pending step's metrics: NaN check, requests, meter."""
    if self.pending is None:
      return
    done, metrics = self.pending
    self.pending = None
    host = dict(jax.device_get(metrics))
    control = host.pop(step_lib.CONTROL_KEY, None)
    if control is not None:
      self.agreed[done] = preemption.decode(control)
    host = {k: float(v) for k, v in host.items()}
    step_lib.check_finite(host, done, self.last_good())
    self.last_loss = host["loss"]
    self.meter.add(host)

  def step(self, state, step: int, catcher, hooks):
    """One train step; returns (state, stop, time_checkpoint)."""
    run = self.run
    batch = next(run.ds.train_iter)
    inputs = dict(run.task.train_inputs(batch))
    inputs[step_lib.CONTROL_KEY] = self.requests.local(
        stop=catcher.requested, checkpoint=self.ckpt_clock.due())
    state, metrics = self.train_step(state, mesh_lib.shard_batch(inputs, run.mesh),
                                     self.root)
    self.flush()
    done = step + 1
    self.pending = (done, metrics)
    self.steps_logged += 1
    first = step == self.start
    if first:
      # The first step compiles; keep it out of steps/s and the ETA.
      jax.block_until_ready(metrics)
      self.first_s = time.perf_counter() - self.t_log
    for hook in hooks:
      hook(done, state)
    if self.multi:
      # Step done-1's requests are on the host by now, on every process.
      req = self.agreed.pop(done - 1, None) or {}
      stop, time_ckpt = req.get("stop", False), req.get("checkpoint", False)
    else:
      stop, time_ckpt = catcher.requested, self.ckpt_clock.due()
    # JAX's own multi-process preemption sync point (a notice its notifier
    # caught before our handler was installed). It compares call counters
    # exactly, and every process starts this loop at the same step, so count
    # calls from 1.
    stop = stop or run.ckpt.reached_preemption(done - self.start)
    if (done % self.cadence.log_every_steps == 0 or done == self.total or
        first or stop or self.log_clock.due()):
      self.log(done, first)
    return state, stop, time_ckpt

  def log(self, done: int, first: bool):
    self.flush()
    scalars = {f"train/{k}": v for k, v in self.meter.pop().items()}
    if first:
      line = (f"first step (with compilation) took {self.first_s:.1f} s, "
              + _log_line(scalars, float("nan"), float("nan")))
    else:
      dt = time.perf_counter() - self.t_log - self.paused
      n = self.steps_logged
      sps = n / dt if n and dt > 0 else float("nan")
      eta = (self.total - done) / sps if sps > 0 else float("nan")
      scalars["train/steps_per_sec"] = sps
      scalars["train/images_per_sec"] = sps * self.cadence.batch_size
      scalars["train/eta_sec"] = eta
      line = _log_line(scalars, sps, eta)
    logging.info("%sstep %d/%d: %s", self.prefix, done, self.total, line)
    self.writer.write_scalars(done, scalars)
    self.final_loss = scalars["train/loss"]
    self.t_log, self.steps_logged, self.paused = time.perf_counter(), 0, 0.0
    self.log_clock.reset()

  def evaluate(self, done: int, state, evaluate) -> Dict[str, float]:
    from medhash_jax.train import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
    self.flush()
    t_eval = time.perf_counter()
    val = evaluate(state.variables())
    self.writer.write_scalars(done, {f"val/{k}": v for k, v in val.items()})
    eval_lib.log_metrics(f"{self.prefix}val step {done}", val)
    self.paused += time.perf_counter() - t_eval
    return val

  def stop(self, catcher, done: int):
    """After the stop step's checkpoint: wait for it, tell how to resume,
    exit (TrainingInterrupted)."""
    self.run.ckpt.wait_until_finished()
    self.writer.flush()
    # No process may exit before every process's part is committed.
    ckpt_lib.sync_processes("medhash_stop")
    why = (preemption.signal_name(catcher.received) if catcher.requested else
           "a stop request of another process" if jax.process_count() > 1
           else "a preemption notice")
    msg = (f"stopped by {why} at {self.prefix}step {done} of {self.total}; "
           f"checkpoint {os.path.join(self.run.ckpt.directory, str(done))} is "
           f"saved. To resume, run the same command again (same "
           f"--workdir={self.workdir}): training continues from step {done}. "
           f"Exit status {preemption.EXIT_RESUMABLE}.")
    logging.warning(msg)
    raise preemption.TrainingInterrupted(msg, done)


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


def _hms(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
