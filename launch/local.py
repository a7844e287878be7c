#!/usr/bin/env python3
r"""N processes of one command on this machine, wired up as a jax.distributed job.

For testing multi-process code without a cluster (and for the tests):

  python launch/local.py --num_processes=2 --devices_per_process=1 \
      --log_dir=/tmp/mh_logs --timeout=900 -- \
      python -m medhash_jax.main --config=configs/dpsh.py:smoke --workdir=/tmp/mh

What it does:
  * picks a free TCP port on 127.0.0.1 (or takes --port) for process 0's
    coordinator and binds everything to loopback: the coordinator
    (JAX_COORDINATOR_BIND_ADDRESS) and the gloo CPU collectives
    (MEDHASH_CPU_COLLECTIVES_HOSTNAME); nothing listens on the network;
  * starts the processes with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID (read by medhash_jax.distributed / main.py), JAX_PLATFORMS
    (--platform, default cpu) and --devices_per_process devices: on CPU fake
    ones (XLA_FLAGS=--xla_force_host_platform_device_count), with
    --platform=cuda GPUs [i*d, (i+1)*d) for process i (JAX_LOCAL_DEVICE_IDS);
  * writes each process's stdout + stderr to LOG_DIR/process_<i>.log;
  * each process runs in its own session (process group), so a kill reaches
    its grain workers too. When one process fails (exit status != 0, a
    signal), the others are stopped: a survivor would otherwise block in a
    collective until the coordinator's heartbeat timeout. --timeout stops
    everyone too (exit status 124);
  * exits with the first failure's status (0 when all succeed) and prints
    the tail of the failing process's log. Exit status 75 (EX_TEMPFAIL: the
    run stopped on SIGTERM / SIGINT after saving a checkpoint, see
    medhash_jax/train/preemption.py) is no failure: the others are stopping
    at the same step and are waited for; the job then exits 75 (requeue it);
  * SIGTERM or SIGINT to the launcher is passed on (SIGTERM) to each
    process's main process only, which finishes its step, checkpoints and
    exits 75; a second signal stops everyone at once.

Only for one machine: a real cluster uses launch/slurm_*.sbatch or
launch/tpu_vm_pod.sh, where jax.distributed auto-detects the settings.
"""

import argparse
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

LOOPBACK = "127.0.0.1"
# medhash_jax.train.preemption.EXIT_RESUMABLE (this file imports nothing of
# the package): stopped on a signal with a checkpoint; resume by rerunning.
EXIT_RESUMABLE = 75


def free_port(host: str = LOOPBACK) -> int:
  """A TCP port that was free on `host` a moment ago (the OS's choice)."""
  with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, port: int, *,
                platform: Optional[str] = "cpu", devices_per_process: int = 1,
                host: str = LOOPBACK,
                base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
  """The environment of one process of the job."""
  env = dict(os.environ if base is None else base)
  env.update({
      "JAX_COORDINATOR_ADDRESS": f"{host}:{port}",
      "JAX_COORDINATOR_BIND_ADDRESS": f"{host}:{port}",
      "JAX_NUM_PROCESSES": str(num_processes),
      "JAX_PROCESS_ID": str(process_id),
      "MEDHASH_CPU_COLLECTIVES_HOSTNAME": host,
      "PYTHONUNBUFFERED": "1",
  })
  if platform:
    env["JAX_PLATFORMS"] = platform
  if platform == "cpu":
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    env["XLA_FLAGS"] = " ".join(flags)
  elif platform in ("cuda", "rocm", "gpu"):
    # Process i drives GPUs [i * d, (i + 1) * d).
    first = process_id * devices_per_process
    env["JAX_LOCAL_DEVICE_IDS"] = ",".join(
        str(first + j) for j in range(devices_per_process))
  return env


@dataclasses.dataclass
class Result:
  """returncodes: Popen style (-n = killed by signal n); stopped[i]: process i
  was still running when the launcher stopped the job."""
  returncodes: List[Optional[int]]
  stopped: List[bool]
  log_paths: List[str]
  timed_out: bool
  seconds: float

  @property
  def failed(self) -> Optional[int]:
    """Index of the process whose failure ended the job (None: no failure)."""
    return next((i for i, (rc, s) in enumerate(zip(self.returncodes,
                                                   self.stopped))
                 if rc and rc != EXIT_RESUMABLE and not s), None)

  @property
  def returncode(self) -> int:
    """124 on timeout, else the failing process's status (signal n: 128 + n);
    75 when the processes stopped to be resumed."""
    if self.timed_out:
      return 124
    if self.failed is None:
      return EXIT_RESUMABLE if EXIT_RESUMABLE in self.returncodes else 0
    rc = self.returncodes[self.failed]
    return 128 - rc if rc < 0 else rc

  def log(self, i: int) -> str:
    with open(self.log_paths[i], encoding="utf-8", errors="replace") as f:
      return f.read()


class ProcessGroup:
  """The N processes of one local job; see the module docstring.

  Use as a context manager (the processes are always stopped on exit):

    with ProcessGroup(cmd, 2, log_dir=d) as g:
      g.kill(1, signal.SIGKILL)      # e.g. a test injecting a failure
      result = g.wait(timeout=600)
  """

  def __init__(self, cmd: Sequence[str], num_processes: int, *, log_dir: str,
               port: Optional[int] = None, platform: Optional[str] = "cpu",
               devices_per_process: int = 1, cwd: Optional[str] = None,
               env: Optional[Dict[str, str]] = None, grace_s: float = 5.0):
    if num_processes < 1:
      raise ValueError(f"num_processes={num_processes} must be >= 1")
    self.cmd = list(cmd)
    self.num_processes = int(num_processes)
    self.log_dir = os.path.abspath(log_dir)
    self.port = port or free_port()
    self.platform = platform
    self.devices_per_process = int(devices_per_process)
    self.cwd = cwd
    self.env = env
    self.grace_s = grace_s
    self.procs: List[subprocess.Popen] = []
    self.log_paths: List[str] = []
    self._logs = []
    self._t0 = None

  def start(self) -> "ProcessGroup":
    os.makedirs(self.log_dir, exist_ok=True)
    self._t0 = time.monotonic()
    for i in range(self.num_processes):
      path = os.path.join(self.log_dir, f"process_{i}.log")
      log = open(path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
      self._logs.append(log)
      self.log_paths.append(path)
      env = process_env(i, self.num_processes, self.port,
                        platform=self.platform,
                        devices_per_process=self.devices_per_process,
                        base=self.env)
      self.procs.append(subprocess.Popen(  # pylint: disable=consider-using-with
          self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
          start_new_session=True, stdin=subprocess.DEVNULL))
    return self

  def kill(self, i: int, sig: int = signal.SIGKILL):
    """Sends `sig` to process i's whole process group."""
    p = self.procs[i]
    if p.poll() is None:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, sig)

  def signal_leaders(self, sig: int = signal.SIGTERM):
    """Sends `sig` to each live process itself, not its group: its grain
    workers must keep feeding it while it finishes the step and saves."""
    for p in self.procs:
      if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
          os.kill(p.pid, sig)

  def stop_all(self):
    """SIGTERM to every live group, SIGKILL after the grace period."""
    for i in range(len(self.procs)):
      self.kill(i, signal.SIGTERM)
    deadline = time.monotonic() + self.grace_s
    for p in self.procs:
      with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in self.procs:
      # Also after the leader exited: its group may hold grain workers.
      with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
      with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=5)

  def wait(self, timeout: Optional[float] = None, poll_s: float = 0.1) -> Result:
    """Waits for all; stops everyone at the first failure or at `timeout`."""
    deadline = None if timeout is None else self._t0 + timeout
    timed_out = False
    while True:
      codes = [p.poll() for p in self.procs]
      if all(c is not None for c in codes) or any(
          c and c != EXIT_RESUMABLE for c in codes):
        break
      if deadline is not None and time.monotonic() > deadline:
        timed_out = True
        break
      time.sleep(poll_s)
    stopped = [c is None for c in codes]
    self.stop_all()
    for log in self._logs:
      log.close()
    return Result(returncodes=[p.returncode for p in self.procs],
                  stopped=stopped, log_paths=self.log_paths,
                  timed_out=timed_out, seconds=time.monotonic() - self._t0)

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop_all()
    for log in self._logs:
      if not log.closed:
        log.close()


def run(cmd: Sequence[str], num_processes: int, *, log_dir: str,
        timeout: Optional[float] = None, **kwargs) -> Result:
  """Starts the job, waits for it (see ProcessGroup), always cleans up."""
  with ProcessGroup(cmd, num_processes, log_dir=log_dir, **kwargs) as g:
    return g.wait(timeout=timeout)


def _tail(path: str, lines: int = 30) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return "".join(f.readlines()[-lines:])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      usage="%(prog)s [options] -- command [args...]")
  parser.add_argument("--num_processes", "-n", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="devices per process: fake ones on cpu, GPUs on "
                           "cuda")
  parser.add_argument("--platform", default="cpu",
                      help="JAX_PLATFORMS for the processes ('' = leave as is)")
  parser.add_argument("--port", type=int, default=0,
                      help="coordinator port on 127.0.0.1 (0 = a free one)")
  parser.add_argument("--log_dir", default="",
                      help="per-process logs (default: ./local_launch_logs)")
  parser.add_argument("--timeout", type=float, default=3600,
                      help="seconds before every process is stopped (rc 124)")
  parser.add_argument("cmd", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
  if not cmd:
    parser.error("no command given (put it after --)")
  log_dir = args.log_dir or os.path.abspath("local_launch_logs")
  group = ProcessGroup(cmd, args.num_processes, log_dir=log_dir,
                       port=args.port or None, platform=args.platform or None,
                       devices_per_process=args.devices_per_process)

  signals_seen = []

  def on_signal(signum, frame):
    del frame
    signals_seen.append(signum)
    if len(signals_seen) == 1:
      print(f"launch/local.py: {signal.Signals(signum).name}: asking every "
            "process to checkpoint and stop (again to stop them at once)",
            file=sys.stderr)
      group.signal_leaders(signal.SIGTERM)
      return
    group.stop_all()
    sys.exit(128 + signum)

  signal.signal(signal.SIGTERM, on_signal)
  signal.signal(signal.SIGINT, on_signal)
  print(f"launch/local.py: {args.num_processes} processes, coordinator "
        f"{LOOPBACK}:{group.port}, logs in {log_dir}", file=sys.stderr)
  with group:
    result = group.wait(timeout=args.timeout)
  for i, rc in enumerate(result.returncodes):
    how = " (stopped by the launcher)" if result.stopped[i] else ""
    print(f"  process {i}: exit status {rc}{how}  ({result.log_paths[i]})",
          file=sys.stderr)
  if result.returncode == EXIT_RESUMABLE:
    print(f"launch/local.py: stopped with a checkpoint (exit status "
          f"{EXIT_RESUMABLE}); run the same command again to resume",
          file=sys.stderr)
  elif result.returncode:
    bad = result.failed or 0
    why = "timed out" if result.timed_out else f"process {bad} failed"
    print(f"launch/local.py: {why} after {result.seconds:.0f} s; the others "
          f"were stopped. Tail of {result.log_paths[bad]}:\n"
          f"{_tail(result.log_paths[bad])}", file=sys.stderr)
  return result.returncode


if __name__ == "__main__":
  sys.exit(main())
