"""Several JAX processes on one machine (launch/local.py, gloo, 127.0.0.1 only).

  * 2 CPU processes x 1 device train the smoke config with the same global
    batches as 1 process x 2 devices: same loss curve, params and codes;
  * a process SIGKILLed mid-run: the launcher stops its peer, the restart
    resumes from the last checkpoint and ends where the uninterrupted run did;
  * SIGTERM to a real run (1 process; and to one of 2 processes): it stops at
    one agreed step with a checkpoint and exit status 75, and the restart
    continues on the uninterrupted run's loss curve;
  * ATH stage 1 (the classifier, trained by the same `fit` loop) on 2
    processes x 1 device equals 1 process x 2 devices: losses, params and
    val accuracy; SIGTERM mid-run stops it resumably and the restart ends
    where the uninterrupted run did;
  * sharded search over a database split unevenly across 2 processes x 2
    devices equals brute force, ties across shard and process borders included;
    every socket the processes listen on is on the loopback interface.

Every launch has a timeout and the launcher kills its process groups on exit.
"""

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from launch import local as local_launch
from medhash_jax import distributed
from medhash_jax import retrieval
from medhash_jax.retrieval import sharded
from medhash_jax.train import checkpoint as ckpt_lib
from tests import mp_classifier_worker
from tests import mp_search_worker
from tests.test_retrieval import np_topk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
TIMEOUT_S = 240

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="uses /proc and process groups")


def _env(cache_dir):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                              "JAX_PROCESS_ID", "SLURM_", "OMPI_"))}
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  # Later launches reuse the first one's compiled programs.
  env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def _train_cmd(data_dir, workdir):
  return [sys.executable, "-m", "medhash_jax.main",
          "--config=configs/dpsh.py:smoke", f"--workdir={workdir}",
          f"--config.data.root={data_dir}",
          f"--config.train.num_steps={STEPS}",
          "--config.train.log_every_steps=1",
          "--config.train.eval_every_steps=0",
          "--config.train.checkpoint_every_steps=4"]


def _launch(cmd, n, log_dir, env, devices=1, timeout=TIMEOUT_S):
  result = local_launch.run(cmd, n, log_dir=log_dir, env=env, cwd=ROOT,
                            devices_per_process=devices, timeout=timeout)
  if result.returncode:
    tails = "\n".join(f"--- process {i} (rc {rc}) ---\n{result.log(i)[-3000:]}"
                      for i, rc in enumerate(result.returncodes))
    pytest.fail(f"launch failed (rc {result.returncode}):\n{tails}")
  return result


def _run_one_process(cmd, log_path, env):
  """The reference: one process x 2 CPU devices."""
  ref_env = dict(env, JAX_PLATFORMS="cpu",
                 XLA_FLAGS="--xla_force_host_platform_device_count=2")
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.run(cmd, cwd=ROOT, env=ref_env, stdout=log,
                          stderr=subprocess.STDOUT, timeout=TIMEOUT_S,
                          check=False)
  assert proc.returncode == 0, log_path.read_text()[-3000:]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return np.array([r["train/loss"] for r in rows if "train/loss" in r])


def _params(workdir, step=STEPS):
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               read_only=True, async_save=False)
  try:
    return ckpt.restore_raw(step)["params"]
  finally:
    ckpt.close()


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
  """(reference 1 process x 2 devices, 2 processes x 1 device) workdirs."""
  base = tmp_path_factory.mktemp("mp")
  env = _env(str(base / "xla_cache"))
  one = str(base / "one_process")
  _run_one_process(_train_cmd(data_dir, one), base / "one_process.log", env)
  two = str(base / "two_processes")
  result = _launch(_train_cmd(data_dir, two), 2, str(base / "logs_two"), env)
  return {"one": one, "two": two, "env": env, "base": base, "result": result}


def _assert_same_training(one, two, steps):
  """The same loss curve (metrics.jsonl) and final params (checkpoint)."""
  la, lb = _losses(one), _losses(two)
  assert la.shape == lb.shape == (steps,)
  np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-6)
  _assert_params_close(_params(one, steps), _params(two, steps))


def _assert_params_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4,
                                                       atol=1e-5), a, b)


def test_two_processes_equal_one(runs):
  one, two = runs["one"], runs["two"]
  _assert_same_training(one, two, STEPS)
  ia = retrieval.HammingIndex.load(os.path.join(one, "index.mhi"))
  ib = retrieval.HammingIndex.load(os.path.join(two, "index.mhi"))
  np.testing.assert_array_equal(ia.packed, ib.packed)
  with open(os.path.join(one, "results.json"), encoding="utf-8") as f:
    ra = json.load(f)
  with open(os.path.join(two, "results.json"), encoding="utf-8") as f:
    rb = json.load(f)
  assert rb["device"]["count"] == ra["device"]["count"] == 2
  assert rb["metrics"]["test"] == pytest.approx(ra["metrics"]["test"],
                                                abs=1e-6)
  # Only process 0 writes files; both processes ran and logged who they are.
  logs = [runs["result"].log(i) for i in range(2)]
  assert "topology: process 0/2, 1 local of 2 global cpu" in logs[0]
  assert "process 1/2" in logs[1]
  assert sorted(os.listdir(os.path.join(two, "checkpoints", str(STEPS),
                                        "data_iter"))) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]


def test_sigkill_then_restart_resumes(runs, data_dir):
  env, base = runs["env"], runs["base"]
  workdir = str(base / "killed")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  cmd = _train_cmd(data_dir, workdir)
  with local_launch.ProcessGroup(cmd, 2, log_dir=str(base / "logs_killed"),
                                 env=env, cwd=ROOT) as group:
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.isdir(os.path.join(ckpt_dir, "4")):
      assert time.monotonic() < deadline, "no checkpoint appeared"
      assert all(p.poll() is None for p in group.procs), (
          "a process ended before the first checkpoint:\n" +
          open(group.log_paths[0], encoding="utf-8").read()[-3000:])
      time.sleep(0.02)
    group.kill(1, signal.SIGKILL)  # a real crash of process 1
    result = group.wait(timeout=TIMEOUT_S)
  assert result.returncodes[1] == -signal.SIGKILL and result.failed == 1
  assert not result.timed_out  # the launcher stopped process 0 promptly
  assert all(rc is not None for rc in result.returncodes)
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  latest = ckpt_lib.Checkpointer(ckpt_dir, read_only=True).latest_step()
  assert latest is not None and 4 <= latest < STEPS

  _launch(cmd, 2, str(base / "logs_restart"), env)
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    res = json.load(f)
  assert res["train"]["resumed_from"] == f"workdir checkpoint step {latest}"
  assert res["train"]["steps"] == STEPS
  # The resumed run ends where the uninterrupted one did.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4,
                                                       atol=1e-5),
               _params(runs["two"]), _params(workdir))
  np.testing.assert_allclose(_losses(workdir)[-1], _losses(runs["two"])[-1],
                             rtol=1e-5)


# -- SIGTERM: stop at one agreed step, checkpoint, exit 75, resume ------------

def _rows_by_step(workdir):
  """step -> train/loss; a step logged twice would be a resume that redid
  it (the stop step must be the resume step)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      if "train/loss" in r:
        assert r["step"] not in out, f"step {r['step']} trained twice"
        out[r["step"]] = r["train/loss"]
  return out


def _wait_for_step(workdir, procs, step, log_path, deadline):
  """Polls metrics.jsonl (line-buffered) until a row of >= `step`."""
  path = os.path.join(workdir, "metrics.jsonl")
  while True:
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        if any(json.loads(l).get("step", 0) >= step and "train/loss" in l
               for l in f if l.strip()):
          return
    assert time.monotonic() < deadline, "no training step was logged in time"
    assert all(p.poll() is None for p in procs), (
        "a process ended before the signal:\n" +
        open(log_path, encoding="utf-8").read()[-3000:])
    time.sleep(0.02)


def _signal_paused(procs, send):
  """SIGSTOP every process, `send()`, SIGCONT: the signal lands mid-run on a
  loaded machine too, never after the last step."""
  for p in procs:
    os.killpg(p.pid, signal.SIGSTOP)
  try:
    send()
  finally:
    for p in procs:
      os.killpg(p.pid, signal.SIGCONT)


def _stop_step(log_text):
  import re
  m = re.search(r"at step (\d+) of (\d+); checkpoint", log_text)
  assert m, log_text[-3000:]
  return int(m.group(1))


def test_sigterm_one_process_resumes_on_the_same_curve(runs, data_dir):
  """A real `python -m medhash_jax.main` gets SIGTERM mid-training.
  Catches: no handler (rc -15 and a restart from step 4 or 0), a stop
  without a checkpoint of the stop step, a resume that replays or skips
  batches (the curve would differ from the uninterrupted run's)."""
  env, base = runs["env"], runs["base"]
  workdir = str(base / "sigterm_one")
  env1 = dict(env, JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=2")
  cmd = _train_cmd(data_dir, workdir)
  log_path = str(base / "sigterm_one.log")
  deadline = time.monotonic() + TIMEOUT_S
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env1, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
      _wait_for_step(workdir, [proc], 3, log_path, deadline)
      _signal_paused([proc], lambda: os.kill(proc.pid, signal.SIGTERM))
      rc = proc.wait(timeout=TIMEOUT_S)
    finally:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
  text = open(log_path, encoding="utf-8").read()
  assert rc == 75, text[-3000:]
  stop = _stop_step(text)
  assert 3 <= stop < STEPS and "stopped by SIGTERM" in text
  assert "run the same command again" in text
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(stop),
                                    "data_iter"))
  with open(base / "sigterm_one_restart.log", "w", encoding="utf-8") as log:
    r = subprocess.run(cmd, cwd=ROOT, env=env1, stdout=log,
                       stderr=subprocess.STDOUT, timeout=TIMEOUT_S,
                       check=False)
  assert r.returncode == 0, (base / "sigterm_one_restart.log").read_text()[-3000:]
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    assert json.load(f)["train"]["resumed_from"] == (
        f"workdir checkpoint step {stop}")
  ref, got = _rows_by_step(runs["one"]), _rows_by_step(workdir)
  assert sorted(got) == list(range(1, STEPS + 1)) == sorted(ref)
  np.testing.assert_allclose([got[s] for s in sorted(got)],
                             [ref[s] for s in sorted(ref)], rtol=1e-5,
                             atol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4,
                                                       atol=1e-5),
               _params(runs["one"]), _params(workdir))


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(runs,
                                                                data_dir):
  """The notice reaches process 1 only. Catches: each process deciding on
  its own (process 0 would train on and hang in a collective, or save a
  different step), the launcher taking exit 75 for a failure and killing
  process 0 mid-save."""
  env, base = runs["env"], runs["base"]
  workdir = str(base / "sigterm_two")
  cmd = _train_cmd(data_dir, workdir)
  deadline = time.monotonic() + TIMEOUT_S
  with local_launch.ProcessGroup(cmd, 2, log_dir=str(base / "logs_sigterm"),
                                 env=env, cwd=ROOT) as group:
    _wait_for_step(workdir, group.procs, 3, group.log_paths[0], deadline)
    _signal_paused(group.procs,
                   lambda: os.kill(group.procs[1].pid, signal.SIGTERM))
    result = group.wait(timeout=TIMEOUT_S)
  logs = [result.log(i) for i in range(2)]
  assert result.returncodes == [75, 75] and result.returncode == 75, (
      [l[-2000:] for l in logs])
  assert not result.timed_out and result.failed is None
  stops = [_stop_step(l) for l in logs]
  assert stops[0] == stops[1] and 3 <= stops[0] < STEPS
  assert "stopped by SIGTERM" in logs[1]
  assert "stopped by a stop request of another process" in logs[0]
  stop = stops[0]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", str(stop),
                                        "data_iter"))) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]

  _launch(cmd, 2, str(base / "logs_sigterm_restart"), env)
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    assert json.load(f)["train"]["resumed_from"] == (
        f"workdir checkpoint step {stop}")
  ref, got = _rows_by_step(runs["two"]), _rows_by_step(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([got[s] for s in sorted(got)],
                             [ref[s] for s in sorted(ref)], rtol=1e-5,
                             atol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4,
                                                       atol=1e-5),
               _params(runs["two"]), _params(workdir))


CLS_STEPS = 4
_WORKER = os.path.join(ROOT, "tests", "mp_classifier_worker.py")


@pytest.fixture(scope="module")
def classifier_runs(data_dir, tmp_path_factory):
  """ATH stage 1: (1 process x 2 devices, 2 processes x 1 device) stage dirs."""
  base = tmp_path_factory.mktemp("mp_classifier")
  env = _env(str(base / "xla_cache"))
  one, two = str(base / "one_process"), str(base / "two_processes")
  cmd = lambda d: [sys.executable, _WORKER, d, data_dir, str(CLS_STEPS)]
  _run_one_process(cmd(one), base / "one_process.log", env)
  _launch(cmd(two), 2, str(base / "logs_two"), env)
  return {"one": os.path.join(one, "classifier"),
          "two": os.path.join(two, "classifier")}


def _classifier_record(stage):
  with open(os.path.join(stage, "classifier.json"), encoding="utf-8") as f:
    return json.load(f)


def test_ath_classifier_two_processes_equal_one(classifier_runs):
  """Catches: stage-1 evaluation that puts a process's rows at global
  positions (its accuracy differs or it fails), a loop that feeds each
  process the wrong half of the batch (params differ), and a classifier
  trained outside the writer (no metrics.jsonl)."""
  one, two = classifier_runs["one"], classifier_runs["two"]
  _assert_same_training(one, two, CLS_STEPS)
  ra, rb = _classifier_record(one), _classifier_record(two)
  assert ra["step"] == rb["step"] == CLS_STEPS
  assert rb["val"]["count"] == ra["val"]["count"] > 0
  assert rb["val"]["accuracy"] == pytest.approx(ra["val"]["accuracy"],
                                                abs=1e-9)


def test_ath_classifier_sigterm_resumes_on_the_same_run(classifier_runs,
                                                        data_dir, tmp_path):
  """Catches: stage 1 without the signal handler (the run finishes or dies
  without a checkpoint of the stop step) or a resume that restarts the data
  or the schedule (params differ from the uninterrupted run)."""
  from medhash_jax.systems import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import preemption  # pylint: disable=g-import-not-at-top
  config, cls_cfg = mp_classifier_worker.classifier_config(data_dir,
                                                           CLS_STEPS)
  stage = str(tmp_path / "classifier")

  def sigterm_at_3(step, state):
    del state
    if step == 3:  # after the step checkpoint of 2
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(preemption.TrainingInterrupted) as e:
    classifier_lib.train_classifier(config, cls_cfg, str(tmp_path), stage,
                                    hooks=[sigterm_at_3])
  assert e.value.code == preemption.EXIT_RESUMABLE
  assert "classifier step 3 of 4" in str(e.value)
  assert not os.path.exists(os.path.join(stage, "classifier.json"))
  clf = classifier_lib.train_classifier(config, cls_cfg, str(tmp_path), stage)
  assert clf.metrics["resumed_from"] == 3 and clf.step == CLS_STEPS
  ref = classifier_runs["one"]   # uninterrupted, 2 devices (here: 4)
  _assert_params_close(_params(ref, CLS_STEPS), _params(stage, CLS_STEPS))
  assert clf.metrics["val"] == pytest.approx(_classifier_record(ref)["val"])


def _is_loopback(addr: str) -> bool:
  ip = ipaddress.ip_address(addr.rsplit(":", 1)[0])
  if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
    ip = ip.ipv4_mapped
  return ip.is_loopback


def test_sharded_search_across_processes(tmp_path):
  out = str(tmp_path)
  _launch([sys.executable, os.path.join(ROOT, "tests", "mp_search_worker.py"),
           out], 2, str(tmp_path / "logs"), _env(str(tmp_path / "cache")),
          devices=2, timeout=120)
  got = [np.load(os.path.join(out, f"process_{i}.npz")) for i in range(2)]
  for c, (sizes, bits, distinct) in enumerate(mp_search_worker.CASES):
    q, db = mp_search_worker.case_data(sizes, bits, distinct, seed=c)
    qp = np.asarray(retrieval.pack_codes(q))
    dbp = np.asarray(retrieval.pack_codes(db))
    total = sum(sizes)
    for k in sorted({1, 7, total}):
      rd, ri = np_topk(qp, dbp, k)
      for g in got:  # the same answer on every process
        np.testing.assert_array_equal(g[f"c{c}_k{k}_dist"], rd)
        np.testing.assert_array_equal(g[f"c{c}_k{k}_idx"], ri)
    k = min(7, total)
    rd, ri = np_topk(qp, dbp, k)
    ids = np.where(ri < sizes[0], ri * 10 + 3, ri)  # process 0 had explicit ids
    for g in got:
      np.testing.assert_array_equal(g[f"c{c}_ids_dist"], rd)
      np.testing.assert_array_equal(g[f"c{c}_ids"], ids)
  # 4 devices, 2 per process: e.g. 203 + 198 rows -> 102 rows x 1 word each.
  assert int(got[0]["c0_bytes_per_device"]) == 102 * 4
  assert int(got[0]["device_count"]) == 4
  for g in got:
    assert len(g["listening"]) and all(_is_loopback(a) for a in g["listening"]), (
        g["listening"])


def test_assemble_database_single_process_equals_shard_database():
  rng = np.random.default_rng(3)
  db = np.asarray(retrieval.pack_codes(
      rng.standard_normal((101, 48)).astype(np.float32) *
      (rng.random((101, 1)) > 0.5)))
  q = np.asarray(retrieval.pack_codes(rng.standard_normal((6, 48))))
  sdb = retrieval.assemble_database(db)
  assert sdb.num_valid == 101
  assert sdb.array.shape[0] == sdb.rows_per_shard * jax.device_count()
  rd, ri = np_topk(q, db, 101)
  d, i = retrieval.sharded_topk(q, sdb, 101)
  np.testing.assert_array_equal(np.asarray(d), rd)
  np.testing.assert_array_equal(np.asarray(i), ri)
  # ShardedHammingIndex == HammingIndex, explicit ids included.
  ids = rng.permutation(1000)[:101] - 500
  plain = retrieval.HammingIndex(48)
  plain.add(db, ids=ids)
  s = retrieval.ShardedHammingIndex.from_index(plain)
  for k in (1, 10, 101):
    a, b = plain.search(q, k), s.search(q, k)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_distributed_resolve_rules():
  env = {}
  assert distributed.resolve("auto", environ=env) is None      # plain run
  assert distributed.resolve("auto", num_processes=1, environ=env) is None
  assert distributed.resolve("off", num_processes=2, environ=env) is None
  s = distributed.resolve("auto", environ={
      "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "1"})
  assert (s.coordinator_address, s.num_processes, s.process_id) == (
      "127.0.0.1:1234", 2, 1)
  with pytest.raises(distributed.DistributedError, match="coordinator_address"):
    distributed.resolve("auto", num_processes=2, process_id=0, environ=env)
  with pytest.raises(distributed.DistributedError, match="not in"):
    distributed.resolve("auto", coordinator_address="h:1", num_processes=2,
                        process_id=2, environ=env)
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"}
  assert distributed.detect_cluster(slurm) == "slurm"
  s = distributed.resolve("auto", environ=slurm)
  assert s.cluster == "slurm" and s.num_processes is None  # jax detects
  # An sbatch script outside srun is not a multi-process launch.
  assert distributed.resolve("auto", environ={"SLURM_JOB_ID": "7",
                                              "SLURM_NTASKS": "2"}) is None
  assert distributed.detect_cluster({"OMPI_COMM_WORLD_SIZE": "4"}) == "ompi"
  assert distributed.resolve("on", environ=env).mode == "on"


def test_local_launcher_stops_everyone_on_failure_and_timeout(tmp_path):
  env = _env(str(tmp_path / "cache"))
  fail = [sys.executable, "-c",
          "import os, sys, time\n"
          "if os.environ['JAX_PROCESS_ID'] == '1': sys.exit(3)\n"
          "time.sleep(60)"]
  t0 = time.monotonic()
  r = local_launch.run(fail, 3, log_dir=str(tmp_path / "a"), env=env,
                       timeout=30)
  assert r.returncode == 3 and not r.timed_out and r.failed == 1
  assert r.stopped == [True, False, True]
  assert all(rc is not None for rc in r.returncodes)
  assert time.monotonic() - t0 < 20
  sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
  r = local_launch.run(sleep, 2, log_dir=str(tmp_path / "b"), env=env,
                       timeout=1)
  assert r.timed_out and r.returncode == 124
  assert all(rc is not None for rc in r.returncodes)
  with open(r.log_paths[0], encoding="utf-8") as f:
    assert f.read() == ""
  e = local_launch.process_env(1, 2, 5555, devices_per_process=3, base={})
  assert e["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:5555"
  assert e["JAX_COORDINATOR_BIND_ADDRESS"] == "127.0.0.1:5555"
  assert e["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
