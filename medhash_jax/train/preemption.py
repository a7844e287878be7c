"""Stopping a run cleanly: signals, and decisions agreed by all processes.

SLURM, Kubernetes and TPU preemption send SIGTERM (then SIGKILL after a grace
period); a user presses Ctrl-C (SIGINT). On the first of either the training
loop finishes the step it is in, writes a checkpoint (state and data-iterator
position), flushes its writers and exits with status `EXIT_RESUMABLE` (75,
EX_TEMPFAIL of sysexits.h: "try again later"), so a requeue script can tell a
resumable stop from a failure. A second signal exits at once (128 + signal).

Multi-process runs must stop, and checkpoint, at the same step on every
process: a process that saves alone waits forever in orbax's barriers. The
notice may reach one process only, or all at slightly different times, and
a wall-clock cadence ("every 10 minutes") reads a different clock on every
process. So every decision that is not a pure function of the step travels
with the batch: each process puts its local requests (`Requests.local`) into
a small array sharded like the batch, the jitted train step returns their
maximum over all devices (`step.CONTROL_KEY`), and the loop acts on the value
the step returned, which is the same on every process, one step later. No
extra collective, no extra host sync: the loop fetches each step's metrics
anyway.

JAX's own preemption service (`multihost_utils.reached_preemption_sync_point`,
started by `jax.distributed.initialize`, wrapped by orbax's
`CheckpointManager.reached_preemption`) is consulted as well, every step: it
agrees on a step from a notice that JAX itself caught. Its notifier installs a
C-level SIGTERM handler, which our Python handler replaces once training
starts (JAX offers no way to chain the two, and it knows nothing of SIGINT,
of a log line or of a second signal), so in practice it covers the window
before the loop starts and notifiers other than SIGTERM.
"""

import os
import signal
import sys
import threading
import time
from typing import Callable, Optional, Sequence

from absl import logging
import numpy as np

# Exit status of a run stopped by a signal after writing its checkpoint.
EXIT_RESUMABLE = 75

# Indices of the request vector (the step reduces it with max).
STOP, CHECKPOINT = 0, 1
NUM_REQUESTS = 2


class TrainingInterrupted(SystemExit):
  """The run stopped on a signal after saving a checkpoint; exit status 75.

  A SystemExit, so that `python -m medhash_jax.main` exits with the status
  without a traceback, and so that `except Exception` (a suite running many
  configs) does not swallow it and carry on with the next run.
  """

  def __init__(self, message: str, step: int):
    super().__init__(EXIT_RESUMABLE)
    self.message = message
    self.step = step

  def __str__(self):
    return self.message


def signal_name(signum: Optional[int]) -> str:
  try:
    return signal.Signals(signum).name
  except (TypeError, ValueError):
    return "a preemption notice"


class SignalCatcher:
  """Turns SIGTERM / SIGINT into a request the loop polls; restores on exit.

  Use as a context manager around the training steps. Handlers can only be
  installed from the main thread; elsewhere (a server thread) it does
  nothing, and the default behaviour stays.
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
               exit_fn: Optional[Callable[[int], None]] = None):
    self.signals = tuple(signals)
    self.received: Optional[int] = None
    self.received_at: Optional[float] = None
    self._previous = {}
    # os._exit: a second signal must not wait for threads, atexit hooks or
    # orbax's pending writes (orbax never leaves a half step under its name).
    self._exit = exit_fn or os._exit

  @property
  def requested(self) -> bool:
    return self.received is not None

  def handle(self, signum, frame=None):
    del frame
    if self.received is not None:
      sys.stderr.write(f"\n{signal_name(signum)} again: exiting now, without "
                       "a new checkpoint (the last completed one is kept)\n")
      sys.stderr.flush()
      self._exit(128 + int(signum))
      return
    self.received, self.received_at = int(signum), time.time()
    logging.warning("%s received: finishing the current step, then saving a "
                    "checkpoint and exiting with status %d (send it again to "
                    "exit at once)", signal_name(signum), EXIT_RESUMABLE)

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      logging.info("not in the main thread: SIGTERM/SIGINT keep their default"
                   " behaviour")
      return self
    for s in self.signals:
      self._previous[s] = signal.signal(s, self.handle)
    return self

  def __exit__(self, *exc):
    for s, h in self._previous.items():
      signal.signal(s, h if h is not None else signal.SIG_DFL)
    self._previous = {}


class Requests:
  """This process's requests for the step being built, as the step's input."""

  def __init__(self, rows: int):
    self.rows = max(1, int(rows))

  def local(self, *, stop: bool, checkpoint: bool) -> np.ndarray:
    """int32 (rows, NUM_REQUESTS): this process's part of the global array."""
    out = np.zeros((self.rows, NUM_REQUESTS), np.int32)
    out[:, STOP] = int(bool(stop))
    out[:, CHECKPOINT] = int(bool(checkpoint))
    return out


def decode(reduced) -> dict:
  """The step's reduced requests -> {'stop': bool, 'checkpoint': bool}."""
  r = np.asarray(reduced).reshape(-1)
  return {"stop": bool(r[STOP]), "checkpoint": bool(r[CHECKPOINT])}


class WallClock:
  """'Is a time-based checkpoint / log line due?' for one process."""

  def __init__(self, every_s: float, now: Callable[[], float] = time.monotonic):
    self.every_s = float(every_s or 0)
    self._now = now
    self.last = now()

  def due(self) -> bool:
    return self.every_s > 0 and self._now() - self.last >= self.every_s

  def reset(self):
    self.last = self._now()
