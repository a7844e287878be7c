"""Orbax checkpoints: the only module of the project that imports orbax.

A checkpoint step holds two items (DESIGN.md):
  state      params, batch_stats, opt_state, step, rng (StandardSave)
  data_iter  the grain iterator state (grain.checkpoint.CheckpointSave)
Orbax writes each step to a temporary folder and renames it when complete, so a
killed run never leaves a half checkpoint under a step's name; `max_to_keep`
old steps are kept. Beside the steps, `config.json` records the run's config so
that a workdir is never silently resumed under a different one.

Resume order (`restore_or_initialize`): the workdir's latest step ->
`config.resume` (another run's checkpoint, full state) -> `config.init_from`
(weights only, matched by path and shape) -> scratch.

A damaged step (a truncated or missing file: a full disk, a copy cut short)
never stops a resume while an older step is intact: `restore` tries the
steps newest first, names each one it skips (step, path, error), and moves
it aside into `damaged/` (never deleting it) so that training can write that
step again. A save that fails (disk full, a read-only folder) raises
CheckpointSaveError naming the folder and the last intact step, which
orbax's write-then-rename leaves untouched.
"""

import json
import os
import re
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

from absl import logging
from flax import traverse_util
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from medhash_jax.train import defaults

CONFIG_FILE = "config.json"

DAMAGED_DIR = "damaged"


class ConfigMismatchError(ValueError):
  """The workdir holds a checkpoint written under a different config."""


class DamagedCheckpointError(RuntimeError):
  """No checkpoint of a folder could be restored; each is named with why."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint (or the run record) could not be written."""


def _reason(e: BaseException, limit: int = 300) -> str:
  """'TypeName: first line of the message' (TensorStore errors are long)."""
  text = str(e).strip().splitlines()
  text = text[0] if text else ""
  if len(text) > limit:
    text = text[:limit] + "..."
  return f"{type(e).__name__}: {text}"


def _all_processes_ok(ok: bool) -> bool:
  """True when `ok` holds on every process (a collective when there are
  several: each process calls it at the same point of the same sequence)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.int32(ok))
  return bool(np.all(np.asarray(flags)))


def sync_processes(name: str):
  """Waits until every process got here (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _flatten(d: Mapping[str, Any]) -> Dict[str, Any]:
  """Dotted keys; tuples as lists (as a config reads back from JSON)."""
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in traverse_util.flatten_dict(dict(d), sep=".").items()}


# What may differ from a trained run's recorded config (classes of
# `defaults.KEY_CLASSES`): on resume only operational (and logistics) keys;
# when evaluating, encoding, searching or serving, training keys too (they
# shaped the parameters, not what the codes mean); when a suite reuses a
# finished run, logistics keys only (they change nothing it computed).
RESUME = (defaults.OPERATIONAL, defaults.LOGISTICS)
INFERENCE = (defaults.OPERATIONAL, defaults.LOGISTICS, defaults.TRAINING)
REUSE = (defaults.LOGISTICS,)


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], *,
                       changeable: Iterable[str] = RESUME,
                       ignored: Iterable[str] = ()) -> Dict[str, Tuple[Any, Any]]:
  """{key: (saved value, current value)} for every key that differs and whose
  class is not in `changeable` (nor named in `ignored`)."""
  a, b = _flatten(saved), _flatten(json.loads(json.dumps(current)))
  changeable, ignored = set(changeable), set(ignored)
  out = {}
  for k in sorted(set(a) | set(b)):
    if k in ignored or defaults.key_class(k) in changeable:
      continue
    if a.get(k, "<absent>") != b.get(k, "<absent>"):
      out[k] = (a.get(k, "<absent>"), b.get(k, "<absent>"))
  return out


def check_config_compatible(saved: Mapping[str, Any], current: Mapping[str, Any],
                            where: str, *, changeable: Iterable[str] = RESUME,
                            ignored: Iterable[str] = ()):
  """Raises ConfigMismatchError naming every key that differs (and may not).

  The message never suggests deleting anything: a trained model is the
  user's work; a fresh --workdir is the way to start over.
  """
  diffs = config_differences(saved, current, changeable=changeable,
                             ignored=ignored)
  if diffs:
    lines = [f"  {k} ({defaults.key_class(k)} key): the run has {a!r}, the "
             f"config asks for {b!r}" for k, (a, b) in diffs.items()]
    raise ConfigMismatchError(
        f"{where} holds a run trained under a different config:\n" +
        "\n".join(lines[:20]) + ("\n  ..." if len(lines) > 20 else "") +
        "\nKeep the run's values for these keys (evaluate/encode/search read "
        "them from the run when --config is left out), or train into a fresh"
        " --workdir.")


def _is_step_dir(path: str) -> bool:
  return os.path.isdir(path) and re.fullmatch(r"\d+", os.path.basename(
      os.path.normpath(path))) is not None


def _manager_dir(path: str) -> str:
  """A workdir, a checkpoints folder or a step folder -> the manager folder."""
  path = os.path.abspath(path)
  if _is_step_dir(path):
    return os.path.dirname(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints")
  return path


def read_saved_config(path: str) -> Optional[Dict[str, Any]]:
  """The config recorded beside the checkpoints of a workdir (or of its
  checkpoints or step folder); None when there is none."""
  config_path = os.path.join(_manager_dir(path), CONFIG_FILE)
  if not os.path.exists(config_path):
    return None
  with open(config_path, encoding="utf-8") as f:
    return json.load(f)


class Checkpointer:
  """A CheckpointManager for (state, data iterator) plus the config record."""

  def __init__(self, directory: str, *, max_to_keep: Optional[int] = 3,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    # (step, path, reason) of each damaged step the last restore skipped.
    self.skipped = []
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save)
    self._mgr = ocp.CheckpointManager(self.directory, options=options)

  # -- config record ----------------------------------------------------------

  def saved_config(self) -> Optional[Dict[str, Any]]:
    return read_saved_config(self.directory)

  def check_or_write_config(self, config_dict: Mapping[str, Any]):
    """Refuses a workdir whose checkpoints came from another config."""
    saved = self.saved_config()
    if saved is not None and self.latest_step() is not None:
      check_config_compatible(saved, config_dict, self.directory)
    if jax.process_index() == 0:
      tmp = os.path.join(self.directory, f".{CONFIG_FILE}.tmp")
      try:
        os.makedirs(self.directory, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
          json.dump(config_dict, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, os.path.join(self.directory, CONFIG_FILE))
      except OSError as e:
        record = os.path.join(self.directory, CONFIG_FILE)
        raise CheckpointSaveError(
            f"cannot write the run record {record} ({_reason(e)}): is the "
            "--workdir writable and is there disk space?") from e

  # -- steps ------------------------------------------------------------------

  def latest_step(self) -> Optional[int]:
    return self._mgr.latest_step()

  def all_steps(self):
    return list(self._mgr.all_steps())

  def save(self, step: int, state_items: Any, data_iter=None, *,
           force: bool = False) -> bool:
    self._probe_writable(step)
    items = {"state": ocp.args.StandardSave(state_items)}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    try:
      return self._mgr.save(int(step), args=ocp.args.Composite(**items),
                            force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(e, step) from e

  def _probe_writable(self, step: int):
    """Fails fast on a folder that cannot take a file: orbax's async save on a
    read-only file system waits for a signal that never comes (minutes)."""
    probe = os.path.join(self.directory,
                         f".write-probe-{os.getpid()}-{jax.process_index()}")
    try:
      with open(probe, "wb") as f:
        f.write(b"\0")
      os.remove(probe)
    except OSError as e:
      raise self._save_error(e, step) from e

  def _save_error(self, e: BaseException, step: Optional[int]
                  ) -> CheckpointSaveError:
    """The message of a failed save: what, where, and what is still safe."""
    # A step whose write failed has no folder under its name (orbax writes
    # to a temporary one and renames it when complete).
    intact = [s for s in self.all_steps() if s != step and
              os.path.isdir(os.path.join(self.directory, str(s)))]
    keep = (f"the previous checkpoint (step {max(intact)}, "
            f"{os.path.join(self.directory, str(max(intact)))}) is intact"
            if intact else "no earlier checkpoint exists")
    what = f"step {step}" if step is not None else "a pending step"
    return CheckpointSaveError(
        f"could not write the checkpoint of {what} to {self.directory} "
        f"({_reason(e)}); {keep}. Free disk space or make the folder writable,"
        " then rerun the same command: training resumes from the last intact "
        "checkpoint.")

  def reached_preemption(self, step: int) -> bool:
    """JAX's multi-process preemption sync point (see train/preemption.py)."""
    return bool(self._mgr.reached_preemption(int(step)))

  def _restore_step(self, step: int, state_items: Any, data_iter) -> Any:
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_items)
    restored = self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    # The iterator after the state: it is restored in place, so a step whose
    # state is damaged must not move it.
    if data_iter is not None and self._has_item(step, "data_iter"):
      self._mgr.restore(step, args=ocp.args.Composite(
          data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
    return restored["state"]

  def restore(self, state_items: Any, data_iter=None,
              step: Optional[int] = None) -> Tuple[Any, int]:
    """Restores into the structure/sharding of `state_items` (live arrays).

    Without `step`, the newest step that restores: damaged newer ones are
    reported, listed in `self.skipped` and moved into `damaged/`.

    Raises:
      FileNotFoundError: no checkpoint at all.
      DamagedCheckpointError: every step failed (each is named; none is
        touched).
    """
    if step is not None:
      return self._restore_step(int(step), state_items, data_iter), int(step)
    return self._newest_restorable(
        lambda s: self._restore_step(s, state_items, data_iter))

  def _newest_restorable(self, restore_fn) -> Tuple[Any, int]:
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    self.skipped = []
    for s in steps:
      path = os.path.join(self.directory, str(s))
      try:
        out, error = restore_fn(s), None
      except Exception as e:  # pylint: disable=broad-except
        out, error = None, e
      if not _all_processes_ok(error is None):
        reason = _reason(error) if error else "failed on another process"
        logging.warning("checkpoint step %d (%s) could not be restored (%s); "
                        "trying the previous one", s, path, reason)
        self.skipped.append((s, path, reason))
        continue
      if self.skipped and not self.read_only:
        self._move_aside([k for k, _, _ in self.skipped])
      return out, s
    raise DamagedCheckpointError(
        f"no checkpoint in {self.directory} could be restored:\n" +
        "\n".join(f"  step {s} ({p}): {r}" for s, p, r in self.skipped) +
        "\nNothing was deleted or moved. Copy intact files back (e.g. from a "
        "backup), or train into a fresh --workdir to start over.")

  def _move_aside(self, steps):
    """Damaged steps -> `damaged/<step>[-<time>]`: kept, out of orbax's way."""
    moved = []
    if jax.process_index() == 0:
      root = os.path.join(self.directory, DAMAGED_DIR)
      os.makedirs(root, exist_ok=True)
      for s in steps:
        dst = os.path.join(root, str(s))
        if os.path.exists(dst):
          dst += time.strftime("-%Y%m%dT%H%M%S")
        os.replace(os.path.join(self.directory, str(s)), dst)
        moved.append(dst)
      logging.warning("moved the damaged checkpoint(s) %s aside (not deleted):"
                      " %s", steps, moved)
    sync_processes("medhash_move_damaged_checkpoints")
    self._mgr.reload()

  def restore_raw(self, step: Optional[int] = None) -> Dict[str, Any]:
    """The saved state as host arrays, without a target structure.

    Read onto this process's first device whatever the saving run's device
    count or process count was (orbax refuses a target-less restore on
    another topology).
    """
    if step is None:
      return self._newest_restorable(self._restore_raw_step)[0]
    return self._restore_raw_step(int(step))

  def _restore_raw_step(self, step: int) -> Dict[str, Any]:
    meta = ocp.StandardCheckpointer().metadata(
        os.path.join(self.directory, str(step), "state"))
    meta = getattr(meta, "item_metadata", meta)
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
    restored = self._mgr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return jax.tree.map(np.asarray, restored["state"])

  def delete(self, step: int):
    self._mgr.delete(int(step))

  def _has_item(self, step: int, name: str) -> bool:
    return os.path.isdir(os.path.join(self.directory, str(step), name))

  def wait_until_finished(self):
    try:
      self._mgr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(e, None) from e

  def close(self):
    self._mgr.wait_until_finished()
    self._mgr.close()


def open_for_reading(path: str) -> Tuple[Checkpointer, Optional[int]]:
  """(Checkpointer, step) for a workdir, checkpoints folder or step folder."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  step = int(os.path.basename(path)) if _is_step_dir(path) else None
  ckpt = Checkpointer(_manager_dir(path), read_only=True, async_save=False)
  if step is None:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"{path} holds no checkpoint")
  return ckpt, step


def _merge_weights(live: Any, loaded: Any, what: str) -> Tuple[Any, int, list]:
  """Copies loaded leaves into `live` where path and shape match."""
  loaded_flat = {jax.tree_util.keystr(p): x for p, x in
                 jax.tree_util.tree_leaves_with_path(loaded)}
  used, skipped = 0, []

  def pick(path, x):
    nonlocal used
    y = loaded_flat.get(jax.tree_util.keystr(path))
    if y is None or tuple(np.shape(y)) != tuple(x.shape):
      skipped.append(jax.tree_util.keystr(path))
      return x
    used += 1
    return jax.device_put(np.asarray(y, x.dtype), x.sharding)

  merged = jax.tree_util.tree_map_with_path(pick, live)
  if used == 0 and jax.tree.leaves(live):
    raise ValueError(f"{what}: no parameter matched the model by path and "
                     "shape; is it a checkpoint of another model?")
  return merged, used, skipped


def load_weights(path: str, params: Any, batch_stats: Any,
                 converter: Optional[Callable[[str], Dict[str, Any]]] = None):
  """Weights for `config.init_from`: an orbax checkpoint of this library, or
  a pretrained file turned into {'params', 'batch_stats'} by `converter`.

  Returns:
    (params, batch_stats) with matching leaves replaced; heads whose shape
    differs (another num_bits, another class count) keep their fresh init.
  """
  if os.path.isfile(path):
    if converter is None:
      raise ValueError(f"init_from={path!r} is a file but no converter for it "
                       "is available for this model")
    loaded = converter(path)
  else:
    ckpt, step = open_for_reading(path)
    loaded = ckpt.restore_raw(step)
    ckpt.close()
  new_params, n_p, skipped_p = _merge_weights(
      params, loaded.get("params", {}), f"init_from={path}")
  new_stats, n_s, skipped_s = (batch_stats, 0, [])
  if batch_stats and loaded.get("batch_stats"):
    new_stats, n_s, skipped_s = _merge_weights(
        batch_stats, loaded["batch_stats"], f"init_from={path} (batch_stats)")
  logging.info("init_from %s: loaded %d params and %d batch-stat arrays; kept "
               "fresh: %s", path, n_p, n_s, (skipped_p + skipped_s)[:10])
  return new_params, new_stats
