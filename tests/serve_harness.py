"""Test harness for the server: a tiny trained run and real uvicorn processes.

* `train_run(data_dir, workdir)`: DPSH smoke (tiny ResNet-18, 32 px, 16
  bits, 40 steps) on 168 staged COVID-19 Radiography X-rays (COVID / Normal),
  trained in a subprocess (~20-60 s here), so the case ids are real relative
  paths with slashes and the labels real findings.
* `Server`: `python -m medhash_jax.serve` on 127.0.0.1 with an ephemeral
  port (the server binds port 0 and writes the bound port to a file), waited
  for through GET /healthz; stopped (or killed) by its own pid.

Used by tests/test_serve.py, tests/test_page.py and benchmarks/serve.py.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COVID = os.path.join("covid19_radiography")
PER_CLASS = 84

_TRAIN = r"""
import sys
from configs import dpsh
from medhash_jax import systems
data_dir, csv_path, workdir, size = sys.argv[1:5]
c = dpsh.get_config("smoke")
with c.unlocked():
  c.data.name = "covid19_radiography"
  c.data.root = ""
  c.data.path = data_dir
  c.data.labels_csv = csv_path
  c.data.split = "seed"
  c.data.grouped = False
  c.data.image_size = int(size)
  c.data.eval_batch_size = 64
  c.train.num_steps = 40
systems.train_and_evaluate(c, workdir)
"""


def env() -> dict:
  e = dict(os.environ)
  e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
  e.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  e.setdefault("JAX_PLATFORMS", "cpu")
  return e


def train_run(data_dir: str, workdir: str, *, image_size: int = 32,
              per_class: int = PER_CLASS, timeout: float = 600) -> str:
  """Trains the fixture run into workdir (reused when already trained)."""
  if os.path.exists(os.path.join(workdir, "run", "inference.json")):
    return os.path.join(workdir, "run")
  covid = os.path.join(data_dir, COVID)
  os.makedirs(workdir, exist_ok=True)
  csv_path = os.path.join(workdir, "subset.csv")
  with open(os.path.join(covid, "labels.csv"), encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  picked = []
  for cls in ("COVID", "Normal"):
    picked += [r for r in rows if r["label"] == cls][:per_class]
  with open(csv_path, "w", encoding="utf-8", newline="") as f:
    w = csv.DictWriter(f, ["path", "label"])
    w.writeheader()
    w.writerows(picked)
  log = os.path.join(workdir, "train.log")
  with open(log, "w", encoding="utf-8") as out:
    p = subprocess.run([sys.executable, "-c", _TRAIN, covid, csv_path,
                        os.path.join(workdir, "run"), str(image_size)],
                       cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT,
                       timeout=timeout, check=False)
  if p.returncode:
    with open(log, encoding="utf-8") as f:
      raise RuntimeError("training the fixture run failed:\n" + f.read()[-4000:])
  return os.path.join(workdir, "run")


class Server:
  """`python -m medhash_jax.serve` as a subprocess on 127.0.0.1:<ephemeral>."""

  def __init__(self, workdir: str, *, token: str = "", extra=(),
               log_dir: str = "", timeout: float = 240):
    self.workdir = workdir
    self.token = token
    fd, self.port_file = tempfile.mkstemp(prefix="port-", dir=log_dir or None)
    os.close(fd)
    os.unlink(self.port_file)
    self.log_path = os.path.join(log_dir or tempfile.gettempdir(),
                                 f"serve-{os.getpid()}-{time.time_ns()}.log")
    e = env()
    if token:
      e["MEDHASH_SERVE_TOKEN"] = token
    self._log = open(self.log_path, "w", encoding="utf-8")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "medhash_jax.serve", f"--workdir={workdir}",
         "--host=127.0.0.1", "--port=0", f"--port_file={self.port_file}",
         *extra], cwd=ROOT, env=e, stdout=self._log, stderr=subprocess.STDOUT)
    self.port = None
    self._wait(timeout)

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.port}"

  def log(self) -> str:
    self._log.flush()
    with open(self.log_path, encoding="utf-8", errors="replace") as f:
      return f.read()

  def _wait(self, timeout: float):
    deadline = time.time() + timeout
    while time.time() < deadline:
      if self.proc.poll() is not None:
        raise RuntimeError(f"server exited ({self.proc.returncode}):\n"
                           + self.log()[-4000:])
      if self.port is None and os.path.exists(self.port_file):
        with open(self.port_file, encoding="utf-8") as f:
          txt = f.read().strip()
        self.port = int(txt) if txt else None
      if self.port is not None:
        try:
          with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
            if r.status == 200 and json.load(r).get("status") == "ok":
              return
        except OSError:
          pass
      time.sleep(0.2)
    self.stop()
    raise TimeoutError("server not ready in time:\n" + self.log()[-4000:])

  def kill(self):
    """SIGKILL: no clean-up runs (the crash test)."""
    if self.proc.poll() is None:
      os.kill(self.proc.pid, signal.SIGKILL)
      self.proc.wait(30)
    self._log.close()

  def stop(self):
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
      try:
        self.proc.wait(30)
      except subprocess.TimeoutExpired:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
    if not self._log.closed:
      self._log.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.stop()
