"""Metric writers: absl log lines, JSONL and TensorBoard event files.

clu.metric_writers would pull in TensorFlow; tensorboardX writes the same
event files without it. Only process 0 writes files; other processes get a
no-op writer. Also the one dict flattener (`flatten`) and the run logs'
filter for library chatter (`quiet_library_logs`).
"""

import json
import logging as logging_lib
import math
import os
import re
import time
from typing import Any, Dict, Mapping, Optional, Sequence

from absl import logging
from flax import traverse_util
import jax
import numpy as np
import tensorboardX
from tensorboardX import summary as tb_summary

Scalars = Mapping[str, Any]


class MetricWriter:
  """Interface: scalars per step, a one-off hparams dict, flush, close."""

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    pass

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    pass

  def flush(self) -> None:
    pass

  def close(self) -> None:
    self.flush()


def _to_float(v) -> float:
  return float(np.asarray(v))


class LoggingWriter(MetricWriter):
  """One absl INFO line per call: `[step] name=value ...`."""

  def __init__(self, prefix: str = ""):
    self._prefix = prefix

  def write_scalars(self, step, scalars):
    parts = []
    for k in sorted(scalars):
      v = _to_float(scalars[k])
      parts.append(f"{k}={v:.4g}" if abs(v) < 1e5 else f"{k}={v:.6g}")
    logging.info("%s[%d] %s", self._prefix, step, ", ".join(parts))


class JsonlWriter(MetricWriter):
  """Appends `{"step": s, "time": t, name: value, ...}` lines to a file."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Line-buffered: a row is on disk as soon as it is written, so a killed
    # run keeps its curve and tests can follow a live run.
    self._f = open(path, "a", encoding="utf-8", buffering=1)

  def write_scalars(self, step, scalars):
    row = {"step": int(step), "time": time.time()}
    for k, v in scalars.items():
      v = _to_float(v)
      row[k] = v if math.isfinite(v) else str(v)  # JSON has no NaN
    self._f.write(json.dumps(row) + "\n")

  def write_hparams(self, hparams):
    self._f.write(json.dumps({"hparams": hparams}, default=str) + "\n")

  def flush(self):
    self._f.flush()

  def close(self):
    if not self._f.closed:
      self._f.close()


class TensorBoardWriter(MetricWriter):
  """Scalars and hparams to `{logdir}/events.out.tfevents.*` (tensorboardX:
  TensorBoard's file format without TensorFlow).

  Hparams go to the same run (tensorboardX's `add_hparams` would open a sub-
  run per call): a nested config is flattened to `a.b` keys, values other
  than bool/int/float/str written as their repr. The session-end record is
  written at close, so a run killed mid-way shows as unfinished.
  """

  def __init__(self, logdir: str):
    self._w = tensorboardX.SummaryWriter(logdir)
    self._session_end = None

  def write_scalars(self, step, scalars):
    for k, v in scalars.items():
      self._w.add_scalar(tensorboard_tag(k), _to_float(v), int(step))

  def write_hparams(self, hparams):
    flat = {k: v if isinstance(v, (bool, int, float, str)) else repr(v)
            for k, v in flatten(hparams, sep=".").items()}
    experiment, start, self._session_end = tb_summary.hparams(flat, {})
    for summary in (experiment, start):
      self._w.file_writer.add_summary(summary)

  def flush(self):
    self._w.flush()

  def close(self):
    if self._session_end is not None:
      self._w.file_writer.add_summary(self._session_end)
      self._session_end = None
    self._w.close()


class MultiWriter(MetricWriter):

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = list(writers)

  def write_scalars(self, step, scalars):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_hparams(self, hparams):
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


def create_default_writer(workdir: Optional[str], *, tensorboard: bool = True,
                          log: bool = False, prefix: str = "") -> MetricWriter:
  """`{workdir}/metrics.jsonl` + `{workdir}/tensorboard/` on process 0 (and
  an absl line per call with `log`; the train loop writes its own lines).
  Other processes, and workdir=None, write no files."""
  writers = [LoggingWriter(prefix)] if log else []
  if workdir and jax.process_index() == 0:
    writers.append(JsonlWriter(os.path.join(workdir, "metrics.jsonl")))
    if tensorboard:
      writers.append(TensorBoardWriter(os.path.join(workdir, "tensorboard")))
  return MultiWriter(writers)


def tensorboard_tag(name: str) -> str:
  """'val/map@10' -> 'val/map_10': TensorBoard's legal tag characters, the
  substitution tensorboardX makes itself (here without its log line per
  name and evaluation)."""
  return re.sub(r"[^-/\w\.]", "_", name)


def flatten(d: Mapping[str, Any], sep: Optional[str] = "/") -> Dict[Any, Any]:
  """{'a': {'b': 1}} -> {'a/b': 1}; tuple keys ('a', 'b') with sep=None.

  flax's flatten_dict, the project's one flattener: nested dicts and
  FrozenDicts are descended, empty ones vanish, anything else is a leaf.
  """
  return traverse_util.flatten_dict(dict(d), sep=sep)


class _QuietLibraries(logging_lib.Filter):
  """Keeps orbax's per-save INFO chatter out of a run log (warnings stay)."""

  def filter(self, record):
    return (record.levelno >= logging_lib.WARNING or
            "/orbax/" not in record.pathname)


def quiet_library_logs() -> None:
  """Installs the filter above on absl's log handler (the CLIs call it)."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
