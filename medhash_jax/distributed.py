"""Multi-process start-up: `jax.distributed` from flags, environment or cluster.

One process per host (or per accelerator) runs the same program; JAX's own
runtime connects them (DESIGN.md: no home-made launcher protocol). Where the
settings come from, first match wins:

  1. explicit arguments (main.py flags --coordinator_address, --num_processes,
     --process_id, --local_device_ids);
  2. environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID,
     JAX_LOCAL_DEVICE_IDS (what `launch/local.py` and the launch scripts set);
  3. cluster auto-detection by `jax.distributed.initialize()` itself: SLURM
     (srun), Open MPI (mpirun), Cloud TPU VMs, Kubernetes.

`mode` decides whether to initialise at all:
  auto  (default) only when the process is clearly one of several: an explicit
        process count > 1, or an srun / mpirun step with more than one task.
        A plain `python -m medhash_jax.main` stays single-process, no init.
  on    always (TPU VM pods: detection asks the TPU metadata server, which
        `auto` never does on its own).
  off   never.

CPU multi-process collectives (tests, `launch/local.py`) use gloo over TCP
(`jax_cpu_collectives_implementation`, introspected: "gloo" | "mpi" |
"megascale" in jax 0.10). Everything here must run before the first JAX
computation: the backend is created once, with the distributed client.
"""

import dataclasses
import functools
import os
from typing import Optional, Sequence, Union

from absl import logging
import jax

MODES = ("auto", "on", "off")
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_BIND = "JAX_COORDINATOR_BIND_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "JAX_LOCAL_DEVICE_IDS"
# Address gloo's TCP transport binds to (default: what the hostname resolves
# to). launch/local.py sets 127.0.0.1 so tests never listen on the network.
ENV_COLLECTIVES_HOST = "MEDHASH_CPU_COLLECTIVES_HOSTNAME"


class DistributedError(RuntimeError):
  """Bad multi-process settings, named with the fix."""


@dataclasses.dataclass
class Settings:
  """What `initialize` resolved (None: left to jax's cluster detection)."""
  mode: str = "auto"
  coordinator_address: Optional[str] = None
  coordinator_bind_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  local_device_ids: Optional[Sequence[int]] = None
  cluster: Optional[str] = None
  cpu_collectives: Optional[str] = None
  collectives_hostname: Optional[str] = None


def _int_or_none(value, name: str) -> Optional[int]:
  if value is None or value == "":
    return None
  try:
    return int(value)
  except (TypeError, ValueError) as e:
    raise DistributedError(f"{name}={value!r} is not an integer") from e


def _ids(value) -> Optional[list]:
  if value is None or value == "" or value == []:
    return None
  if isinstance(value, int):
    return [value]
  if isinstance(value, str):
    value = [v for v in value.split(",") if v.strip()]
  try:
    return [int(v) for v in value]
  except (TypeError, ValueError) as e:
    raise DistributedError(f"local_device_ids={value!r}: expected a comma-"
                           "separated list of integers") from e


def detect_cluster(environ=None) -> Optional[str]:
  """'slurm' / 'ompi' when this process is one task of several, else None.

  Reads the launcher's environment only (no network): an `srun` step has
  SLURM_STEP_NODELIST and SLURM_PROCID, an `sbatch` script alone does not,
  so `python ...` inside a batch script is not mistaken for a task.
  """
  env = os.environ if environ is None else environ
  if all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST",
                            "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS")):
    if int(env["SLURM_NTASKS"]) > 1:
      return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "ompi"
  return None


def resolve(mode: str = "auto", *, coordinator_address: Optional[str] = None,
            coordinator_bind_address: Optional[str] = None,
            num_processes: Union[int, str, None] = None,
            process_id: Union[int, str, None] = None,
            local_device_ids=None, cpu_collectives: Optional[str] = None,
            collectives_hostname: Optional[str] = None,
            environ=None) -> Optional[Settings]:
  """The settings to initialise with, or None for a single-process run."""
  env = os.environ if environ is None else environ
  if mode not in MODES:
    raise DistributedError(f"distributed mode {mode!r}: choose one of {MODES}")
  if mode == "off":
    return None
  s = Settings(
      mode=mode,
      coordinator_address=coordinator_address or env.get(ENV_COORDINATOR) or None,
      coordinator_bind_address=(coordinator_bind_address or env.get(ENV_BIND)
                                or None),
      num_processes=_int_or_none(
          num_processes if num_processes not in (None, "", 0) else
          env.get(ENV_NUM_PROCESSES), "num_processes"),
      process_id=_int_or_none(
          process_id if process_id not in (None, "", -1) else
          env.get(ENV_PROCESS_ID), "process_id"),
      local_device_ids=_ids(local_device_ids or env.get(ENV_LOCAL_DEVICE_IDS)),
      cluster=detect_cluster(env),
      cpu_collectives=cpu_collectives or None,
      collectives_hostname=(collectives_hostname or env.get(ENV_COLLECTIVES_HOST)
                            or None))
  explicit = s.num_processes is not None
  if mode == "auto" and not ((explicit and s.num_processes > 1) or
                             (not explicit and s.cluster)):
    return None
  if explicit:
    if s.num_processes < 1:
      raise DistributedError(f"num_processes={s.num_processes} must be >= 1")
    missing = [n for n, v in (("coordinator_address", s.coordinator_address),
                              ("process_id", s.process_id)) if v is None]
    if missing and not s.cluster:
      raise DistributedError(
          f"num_processes={s.num_processes} was given without "
          f"{' and '.join(missing)} (flags --{' / --'.join(missing)} or env "
          f"{ENV_COORDINATOR} / {ENV_PROCESS_ID}); outside SLURM / MPI / TPU "
          "every process needs all three. launch/local.py sets them.")
    if s.process_id is not None and not 0 <= s.process_id < s.num_processes:
      raise DistributedError(f"process_id={s.process_id} is not in [0, "
                             f"{s.num_processes})")
  return s


def _use_collectives_hostname(hostname: str):
  """Makes the CPU backend's gloo transport bind to `hostname`.

  jax 0.10 creates gloo collectives with the default TCP attributes (the
  address the machine's hostname resolves to) and offers no public option for
  another one, so the CPU backend factory is re-registered with collectives
  made for `hostname`. Private API (jax._src.xla_bridge): if it moves, this
  falls back to jax's default with a warning rather than failing.
  """
  try:
    from jax._src import distributed as jdist  # pylint: disable=g-import-not-at-top
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
    collectives = _jax.make_gloo_tcp_collectives(
        distributed_client=jdist.global_state.client, hostname=hostname)
    xla_bridge.register_backend_factory(
        "cpu", functools.partial(xla_bridge.make_cpu_client,
                                 collectives=collectives),
        priority=0, fail_quietly=False)
  except (ImportError, AttributeError, TypeError, RuntimeError) as e:
    logging.warning("could not pin gloo to %s (%s); using jax's default "
                    "address", hostname, e)


def initialize(mode: str = "auto", *, initialization_timeout: int = 300,
               heartbeat_timeout: int = 100, **kwargs) -> bool:
  """Starts jax.distributed when this is a multi-process run.

  Args:
    mode: "auto" | "on" | "off" (module docstring).
    initialization_timeout: seconds to wait for every process to connect.
    heartbeat_timeout: seconds without a heartbeat before the coordinator
      declares a process dead (and the others fail instead of hanging).
    **kwargs: coordinator_address, coordinator_bind_address, num_processes,
      process_id, local_device_ids, cpu_collectives, collectives_hostname
      (see `resolve`).

  Returns:
    True when jax.distributed is (now) initialised, False for a
    single-process run.
  """
  if jax.distributed.is_initialized():
    return True
  s = resolve(mode, **kwargs)
  if s is None:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    raise DistributedError(
        "jax.distributed must be initialised before the first JAX computation"
        " (something already created the backend); call "
        "medhash_jax.distributed.initialize() at the very start of main")
  if s.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", s.cpu_collectives)
  logging.info("jax.distributed.initialize(coordinator=%s, num_processes=%s, "
               "process_id=%s, local_device_ids=%s; cluster=%s)",
               s.coordinator_address, s.num_processes, s.process_id,
               s.local_device_ids, s.cluster or "none detected")
  jax.distributed.initialize(
      coordinator_address=s.coordinator_address,
      num_processes=s.num_processes, process_id=s.process_id,
      local_device_ids=s.local_device_ids,
      coordinator_bind_address=s.coordinator_bind_address,
      initialization_timeout=int(initialization_timeout),
      heartbeat_timeout_seconds=int(heartbeat_timeout))
  if s.collectives_hostname:
    _use_collectives_hostname(s.collectives_hostname)
  return True


def describe() -> str:
  """'process 0/2, 1 local of 2 global cpu devices [...]' (creates the backend)."""
  local = jax.local_devices()
  return (f"process {jax.process_index()}/{jax.process_count()}, "
          f"{len(local)} local of {jax.device_count()} global "
          f"{jax.default_backend()} devices "
          f"{[f'{d.platform}:{d.id}' for d in local]}")


def log_topology():
  logging.info("topology: %s", describe())


def is_main_process() -> bool:
  """True on the process that writes logs, results and reports."""
  return jax.process_index() == 0
