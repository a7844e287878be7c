"""End-to-end training on the smoke config (BreastMNIST 28 px, tiny ResNet-18).

One uninterrupted run is shared by several tests (module fixture); the others
reuse its workdir. XLA compiles are cached on disk for the session so the
repeated (identical) train-step compiles cost little.
"""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dpsh as dpsh_config
from configs import hashnet as hashnet_config
from medhash_jax import train
from medhash_jax.train import checkpoint as ckpt_lib
from medhash_jax.train import mesh as mesh_lib
from medhash_jax.train import step as step_lib
from medhash_jax.train import validation

STEPS = 8


@pytest.fixture(scope="module", autouse=True)
def _compile_cache(tmp_path_factory):
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir",
                    str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def smoke(data_dir, module=dpsh_config, **overrides):
  c = module.get_config("smoke")
  with c.unlocked():
    c.data.root = data_dir
    c.train.num_steps = STEPS
    c.train.log_every_steps = 2
    c.train.eval_every_steps = 0       # val only at the end
    c.train.checkpoint_every_steps = 4
    # Step cadences only: a loaded machine must not add rows or checkpoints.
    c.train.log_every_seconds = 0
    c.train.checkpoint_every_minutes = 0
    for k, v in overrides.items():
      node = c
      *path, last = k.split(".")
      for p in path:
        node = node[p]
      node[last] = v
  return c


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("smoke_run"))
  config = smoke(data_dir)
  results = train.train_and_evaluate(config, workdir)
  return config, workdir, results


def _final_params(workdir):
  ck, step = ckpt_lib.open_for_reading(workdir)
  raw = ck.restore_raw(step)
  ck.close()
  return step, raw


def test_results_json_schema(trained):
  config, workdir, results = trained
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  for key in ("method", "dataset", "num_bits", "image_size", "split_sizes",
              "config", "train", "metrics", "efficiency"):
    assert key in saved, key
  assert saved["method"] == "dpsh" and saved["dataset"] == "breastmnist"
  assert saved["num_bits"] == 16 and saved["image_size"] == 28
  assert saved["split_sizes"] == {"train": 546, "val": 78, "query": 156,
                                  "database": 546}
  assert set(saved["train"]) >= {"steps", "final_loss", "seconds"}
  assert saved["train"]["steps"] == STEPS
  assert np.isfinite(saved["train"]["final_loss"])
  assert set(saved["metrics"]) == {"val", "test"}
  assert config.eval.select_metric in saved["metrics"]["val"]
  assert saved["metrics"]["test"].keys() == saved["metrics"]["val"].keys()
  assert set(saved["efficiency"]) >= {"encode_ms_per_image",
                                      "query_ms_per_query", "index_bytes"}
  from medhash_jax.retrieval import HammingIndex
  index = HammingIndex.load(os.path.join(workdir, "index.mhi"))
  assert len(index) == 546 and index.num_bits == 16
  assert saved["efficiency"]["index_bytes"] == index.nbytes
  # Model selection happened on val, and was recorded.
  assert saved["selection"]["split"] == "val"
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  steps = [r["step"] for r in rows if "train/loss" in r]
  assert steps == [1, 2, 4, 6, 8]  # the first step is logged at once
  assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                if s.isdigit()) == [4, 8]


def test_kill_and_restart_matches_uninterrupted(trained, data_dir, tmp_path):
  config, ref_dir, ref = trained
  workdir = str(tmp_path / "killed")

  class Killed(Exception):
    pass

  def kill_at_6(step, state):
    del state
    if step == 6:  # after the checkpoint of step 4; steps 5-6 are lost
      raise Killed()

  with pytest.raises(Killed):
    train.train_and_evaluate(smoke(data_dir), workdir, hooks=[kill_at_6])
  assert ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               read_only=True).latest_step() == 4
  results = train.train_and_evaluate(smoke(data_dir), workdir)
  assert results["train"]["resumed_from"] == "workdir checkpoint step 4"
  step_a, a = _final_params(ref_dir)
  step_b, b = _final_params(workdir)
  assert step_a == step_b == STEPS
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5,
                                                       atol=1e-6), a, b)
  np.testing.assert_allclose(results["train"]["final_loss"],
                             ref["train"]["final_loss"], rtol=1e-5)
  assert results["metrics"]["test"] == pytest.approx(ref["metrics"]["test"],
                                                     abs=1e-6)


def _per_device_batchnorm(task, num_devices=4):
  """Makes `task` compute training BatchNorm statistics per device shard (the
  classic data-parallel bug: each device normalises its own slice of the
  batch, the loss then sees the whole batch)."""
  original = task._call  # pylint: disable=protected-access

  def call(variables, inputs, *, train, beta, rngs=None, mutable=False):
    if not train:
      return original(variables, inputs, train=train, beta=beta, rngs=rngs,
                      mutable=mutable)
    n = inputs["image"].shape[0] // num_devices
    parts = [original(variables, {k: v[i * n:(i + 1) * n]
                                  for k, v in inputs.items()},
                      train=train, beta=beta, rngs=rngs, mutable=mutable)
             for i in range(num_devices)]
    out = {k: jnp.concatenate([o[k] for o, _ in parts])
           for k in parts[0][0] if parts[0][0][k] is not None}
    stats = jax.tree.map(lambda *a: sum(a) / num_devices,
                         *[u for _, u in parts])
    return out, stats

  task._call = call  # pylint: disable=protected-access


def _loss_curve(config, mesh, batches, bug=None):
  """Per-step losses and the first step's flat gradient on `mesh`."""
  run_cfg = config
  from medhash_jax.train import optim as optim_lib
  from medhash_jax.train import state as state_lib
  from medhash_jax.train import task as task_lib
  task = task_lib.build_task(run_cfg, num_classes=2, multi_label=False)
  if bug is not None:
    bug(task)
  rng = state_lib.root_key(run_cfg.seed)
  example = mesh_lib.shard_batch({"image": batches[0]["image"]}, mesh)
  variables = task.init(run_cfg.seed, example, mesh)
  tx, sched = optim_lib.build_optimizer(run_cfg.optim, variables["params"], 10)
  state = state_lib.create_train_state(apply_fn=task.model.apply,
                                       variables=variables, tx=tx, rng=rng,
                                       mesh=mesh)
  root = jnp.array(state.rng)
  first = mesh_lib.shard_batch(task.train_inputs(batches[0]), mesh)
  grads = jax.jit(jax.grad(lambda p: task.objective(
      p, state.batch_stats, first, root, 0)[0]))(state.params)
  grads = np.concatenate([np.ravel(g) for g in
                          jax.tree.leaves(jax.device_get(grads))])
  raw = step_lib.make_train_step(task.objective, sched, jit=False)
  chex.clear_trace_counter()
  step = jax.jit(chex.assert_max_traces(raw, n=1), donate_argnums=0)
  losses = []
  for b in batches:
    state, m = step(state, mesh_lib.shard_batch(task.train_inputs(b), mesh),
                    root)
    losses.append(float(m["loss"]))
  return np.array(losses), grads


def _assert_same_training(one, four):
  """What 1 and 4 devices must share, and how closely.

  Step 1 starts from the same parameters on the same global batch, so its
  loss may differ only by the order of float32 reductions (measured: 1e-7
  relative). Its gradient is compared in relative L2 norm, not element by
  element: the gradient of a ReLU network is not continuous, and float32
  noise flips the rare pre-activation within ~1e-7 of zero. On jax 0.10.2
  the sharded program reduced in the single-device order and the gradients
  were bit-equal; jax 0.12.1 reorders the cross-device reductions, and on
  this test's first batch one such flip moves the gradient by 1.1e-3 of its
  largest element (6.0e-4 in L2). The same happens on one device alone:
  nudging the parameters by 2e-7 relative moves this gradient by 3e-5 to
  3.6e-3 in L2 over the four batches (measured at stop 27, on jax 0.10.2
  and 0.12.1 alike). 1e-2 keeps a 3x margin over that noise and is 87x
  below a real difference: per-device BatchNorm statistics move the
  gradient by 0.87.
  Each later step starts from parameters that already carry that rounding,
  and SGD amplifies it about 10x a step (measured over 4 steps: <= 4e-5
  relative on jax 0.10, 4.5e-4 on jax 0.12.1 after the flip, and the same
  size between two 1-device runs that differ only in the row order of each
  batch). 2e-3 keeps a margin over that drift while a real difference is
  larger at every step: per-device BatchNorm statistics give 1.3e-2 at step
  1 and 7e-3 to 2.4e-2 at steps 2-4.
  """
  (loss1, grad1), (loss4, grad4) = one, four
  assert np.all(np.isfinite(loss1)) and loss1[0] != loss1[-1]
  np.testing.assert_allclose(loss4[0], loss1[0], rtol=1e-5)
  grad_error = np.linalg.norm(grad4 - grad1) / np.linalg.norm(grad1)
  assert grad_error < 1e-2, f"first-step gradient differs by {grad_error:.2e}"
  np.testing.assert_allclose(loss4[1:], loss1[1:], rtol=2e-3)


def _four_batches(config):
  from medhash_jax import data as data_lib
  ds = data_lib.build_datasets(config.data, workdir=None, global_batch_size=32,
                               seed=0, image_size=28)
  return [next(ds.train_iter) for _ in range(4)]


def test_same_loss_curve_on_1_and_4_devices(data_dir):
  # A gentle lr: the curves differ only by the order of float reductions,
  # which a large step amplifies.
  config = smoke(data_dir, **{"optim.learning_rate": 0.002})
  batches = _four_batches(config)
  _assert_same_training(_loss_curve(config, mesh_lib.make_mesh(1), batches),
                        _loss_curve(config, mesh_lib.make_mesh(4), batches))


def test_curve_check_catches_per_device_batchnorm(data_dir):
  """The tolerance of the 1-vs-4 check is not so loose that it would pass
  the bug it exists for."""
  config = smoke(data_dir, **{"optim.learning_rate": 0.002})
  batches = _four_batches(config)
  one = _loss_curve(config, mesh_lib.make_mesh(1), batches)
  buggy = _loss_curve(config, mesh_lib.make_mesh(4), batches,
                      bug=_per_device_batchnorm)
  with pytest.raises(AssertionError):
    _assert_same_training(one, buggy)
  # Every step, not only the first, is outside the bound, and so is the
  # first step's gradient on its own (the L2 bound is not vacuous).
  assert np.all(np.abs(buggy[0] - one[0]) > 2e-3 * np.abs(one[0]))
  assert np.linalg.norm(buggy[1] - one[1]) > 0.1 * np.linalg.norm(one[1])


def test_nan_loss_stops_with_step_and_checkpoint(data_dir, tmp_path,
                                                 monkeypatch):
  from medhash_jax.train import task as task_lib
  original = task_lib.Task.train_inputs
  calls = []

  def poisoned(self, batch):
    out = dict(original(self, batch))
    calls.append(1)
    if len(calls) == 6:  # the 6th step sees a NaN image (same compiled step)
      out["image"] = np.full_like(out["image"], np.nan)
    return out

  monkeypatch.setattr(task_lib.Task, "train_inputs", poisoned)
  workdir = str(tmp_path / "nan")
  with pytest.raises(step_lib.NonFiniteLossError) as e:
    train.train_and_evaluate(smoke(data_dir), workdir)
  msg = str(e.value)
  assert "step 6" in msg and os.path.join("checkpoints", "4") in msg, msg
  # Nothing after the bad step was checkpointed.
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                if s.isdigit()) == [4]


def test_evaluate_mode_reproduces_test_metrics(trained):
  config, workdir, results = trained
  again = train.evaluate_workdir(config, workdir)
  assert again["metrics"]["test"] == pytest.approx(results["metrics"]["test"],
                                                   abs=1e-6)


def test_search_and_encode_modes(trained, data_dir, tmp_path, capsys):
  from PIL import Image
  config, workdir, _ = trained
  arrays = np.load(os.path.join(data_dir, "breastmnist", "breastmnist.npz"))
  folder = tmp_path / "queries"
  folder.mkdir()
  for i in range(3):
    Image.fromarray(arrays["test_images"][i]).save(folder / f"q{i}.png")
  hits = train.search(config, workdir, input_spec=str(folder), k=5,
                      output=str(tmp_path / "search.json"))
  assert len(hits) == 3 and all(len(h["hits"]) == 5 for h in hits)
  d = [h["distance"] for h in hits[0]["hits"]]
  assert d == sorted(d) and "labels" in hits[0]["hits"][0]
  assert "rank" in capsys.readouterr().out
  out = train.encode(config, workdir, input_spec=str(folder),
                     output=str(tmp_path / "q.mhi"))
  assert out["count"] == 3 and os.path.exists(tmp_path / "q_meta.npz")


# -- bad input: each fails before the first step ------------------------------

def test_unknown_config_key(data_dir, tmp_path):
  c = smoke(data_dir)
  with pytest.raises(AttributeError):
    dpsh_config.get_config("smoke").train.bach_size = 3  # locked
  with c.unlocked():
    c.train.bach_size = 3
  with pytest.raises(validation.ConfigError, match="train.bach_size"):
    train.train_and_evaluate(c, str(tmp_path / "w"))
  with pytest.raises(ValueError, match="unknown config variant"):
    dpsh_config.get_config("smok")


@pytest.mark.parametrize("override, error, match", [
    ({"train.batch_size": 30}, ValueError, "not divisible by the 4 devices"),
    ({"num_bits": 0}, validation.ConfigError, "num_bits must be a positive"),
    ({"num_bits": -8}, validation.ConfigError, "num_bits must be a positive"),
    ({"model.name": "resnet7"}, validation.ConfigError, "resnet7"),
    ({"loss.name": "nosuchloss"}, validation.ConfigError, "nosuchloss"),
    ({"optim.name": "lion"}, validation.ConfigError, "lion"),
])
def test_bad_config_values(data_dir, tmp_path, override, error, match):
  c = smoke(data_dir, **override)
  with pytest.raises(error, match=match):
    train.train_and_evaluate(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints" / "4")


def test_workdir_with_other_config(trained, data_dir):
  _, workdir, _ = trained
  c = smoke(data_dir, num_bits=32)
  with pytest.raises(ckpt_lib.ConfigMismatchError, match="num_bits"):
    train.train_and_evaluate(c, workdir)


@pytest.mark.parametrize("module", [dpsh_config, hashnet_config])
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_configs_validate(module, arg):
  c = module.get_config(arg)
  validation.validate_config(c)
  assert c.is_locked and c.loss.name == c.method
  if module is hashnet_config:
    assert c.model.beta.schedule == "hashnet"
  if arg is None:
    assert c.model.name == "resnet50" and c.data.image_size == 224


def test_resume_and_init_from(trained, data_dir, tmp_path):
  """config.resume restores the full state; config.init_from only weights,
  keeping fresh heads whose shape differs."""
  config, workdir, results = trained
  # resume: the other run is already at the last step -> evaluation only.
  c = smoke(data_dir, resume=workdir)
  again = train.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert again["train"]["resumed_from"].startswith("config.resume=")
  assert again["train"]["steps"] == STEPS
  assert again["metrics"]["test"] == pytest.approx(results["metrics"]["test"],
                                                   abs=1e-6)
  from medhash_jax.train import loop
  c = smoke(data_dir, init_from=workdir, num_bits=32)
  run = loop.Run(c, str(tmp_path / "init"))
  fresh_head = np.asarray(run.state.params["hash"]["dense"]["kernel"])
  assert run.restore_or_initialize().startswith("config.init_from=")
  _, saved = _final_params(workdir)
  np.testing.assert_array_equal(run.state.params["backbone"]["conv1"]["kernel"],
                                saved["params"]["backbone"]["conv1"]["kernel"])
  np.testing.assert_array_equal(run.state.params["hash"]["dense"]["kernel"],
                                fresh_head)
  assert int(run.state.step) == 0


def test_triplet_sampling_same_loss_on_1_and_4_devices(data_dir):
  """data.sampling="triplet" with a triplet loss: the step stacks anchors,
  positives and negatives into one batch and feeds the loss the sampled
  (anchor, positive, negative) rows; 4 devices = 1 device."""
  from configs import dtsh as dtsh_config
  from medhash_jax import data as data_lib
  config = smoke(data_dir, dtsh_config, **{"optim.learning_rate": 0.002,
                                           "data.sampling": "triplet"})
  ds = data_lib.build_datasets(config.data, workdir=None, global_batch_size=32,
                               seed=0, image_size=28)
  batches = [next(ds.train_iter) for _ in range(3)]
  assert batches[0]["pos_image"].shape == batches[0]["image"].shape
  _assert_same_training(_loss_curve(config, mesh_lib.make_mesh(1), batches),
                        _loss_curve(config, mesh_lib.make_mesh(4), batches))


def test_triplet_batch_feeds_the_sampled_triplets_to_the_loss(data_dir):
  """The objective's loss on a triplet batch equals a numpy DTSH over the
  sampled rows only (not every triplet mined from the 3b images), with an
  invalid anchor's row left out."""
  from configs import dtsh as dtsh_config
  from medhash_jax import data as data_lib
  from medhash_jax.train import task as task_lib
  config = smoke(data_dir, dtsh_config, **{"data.sampling": "triplet"})
  ds = data_lib.build_datasets(config.data, workdir=None, global_batch_size=8,
                               seed=0, image_size=28)
  task = task_lib.build_task(config, num_classes=2, multi_label=False)
  batch = task.train_inputs(next(ds.train_iter))
  assert "pos_image" in batch and "neg_label_mask" in batch
  batch["triplet_valid"] = np.array([True] * 7 + [False])
  mesh = mesh_lib.make_mesh(1)
  variables = task.init(0, mesh_lib.shard_batch({"image": batch["image"]},
                                                mesh), mesh)
  loss, (terms, _) = task.objective(variables["params"],
                                    variables.get("batch_stats"), batch,
                                    jax.random.key(0), 0)
  # Independent: codes of the three views, DTSH (Wang et al. 2016) in numpy.
  out = task.model.apply(
      variables, np.concatenate([batch["image"], batch["pos_image"],
                                 batch["neg_image"]]), train=True, beta=1.0,
      mutable=["batch_stats"])[0]
  u = np.asarray(out["codes_real"], np.float64)
  a, p, n = u[:8], u[8:16], u[16:]
  margin = dict(config.loss.kwargs).get("margin", 5.0)  # dtsh's default
  t_ap = 0.5 * np.sum(a * p, 1)
  t_an = 0.5 * np.sum(a * n, 1)
  trip = np.log1p(np.exp(-(t_ap - t_an - margin)))[:7].mean()
  np.testing.assert_allclose(float(terms["loss/triplet"]), trip, rtol=1e-4)
  assert np.isfinite(float(loss))


# -- long runs survive: signals, time cadence, damaged checkpoints, faults ----

def _copy_run(src, dst):
  import shutil
  shutil.copytree(src, dst, symlinks=True)
  return str(dst)


def _ckpt_steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                if s.isdigit())


def test_sigterm_stops_after_the_step_and_resumes(trained, data_dir, tmp_path):
  """Catches: the handler not installed, or the stop step not checkpointed
  (the restart would begin at step 4, or at 0)."""
  import signal
  from medhash_jax.train import preemption
  _, ref_dir, ref = trained
  workdir = str(tmp_path / "signalled")

  def sigterm_at_5(step, state):
    del state
    if step == 5:  # between the step checkpoints of 4 and 8
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(preemption.TrainingInterrupted) as e:
    train.train_and_evaluate(smoke(data_dir), workdir, hooks=[sigterm_at_5])
  assert e.value.code == preemption.EXIT_RESUMABLE == 75
  assert e.value.step == 5 and "SIGTERM at step 5 of 8" in str(e.value)
  assert "run the same command again" in str(e.value)
  assert "delete" not in str(e.value)
  assert _ckpt_steps(workdir) == [4, 5]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "train/loss" in r][-1] == 5  # flushed
  results = train.train_and_evaluate(smoke(data_dir), workdir)
  assert results["train"]["resumed_from"] == "workdir checkpoint step 5"
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5,
                                                       atol=1e-6),
               _final_params(ref_dir)[1], _final_params(workdir)[1])
  np.testing.assert_allclose(results["train"]["final_loss"],
                             ref["train"]["final_loss"], rtol=1e-5)


def _damage(workdir, step, how="truncate"):
  """Truncates the largest data file of a step (or removes its metadata)."""
  state = os.path.join(workdir, "checkpoints", str(step), "state")
  if how == "remove":
    os.remove(os.path.join(state, "_METADATA"))
    return os.path.join(state, "_METADATA")
  files = [os.path.join(r, f) for r, _, fs in os.walk(state) for f in fs]
  big = max(files, key=os.path.getsize)
  with open(big, "r+b") as f:
    f.truncate(os.path.getsize(big) // 2)
  return big


def test_damaged_newest_checkpoint_falls_back_to_the_previous(
    trained, data_dir, tmp_path):
  """Catches: restore trying only the latest step (the TensorStore error of
  the issue), or the damaged step left in place (the re-save of step 8 would
  fail with StepAlreadyExistsError) or deleted."""
  _, ref_dir, ref = trained
  workdir = _copy_run(ref_dir, tmp_path / "damaged")
  _damage(workdir, 8)
  results = train.train_and_evaluate(smoke(data_dir), workdir)
  origin = results["train"]["resumed_from"]
  assert origin.startswith("workdir checkpoint step 4 (skipped damaged step 8 "
                           f"at {os.path.join(workdir, 'checkpoints', '8')}")
  # Kept, out of orbax's way, and step 8 trained again from step 4.
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "damaged", "8",
                                    "state"))
  assert _ckpt_steps(workdir) == [4, 8]
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5,
                                                       atol=1e-6),
               _final_params(ref_dir)[1], _final_params(workdir)[1])


def test_every_checkpoint_damaged_fails_naming_them(trained, data_dir,
                                                    tmp_path):
  """Catches: a fallback to scratch (silently retraining) or deleting."""
  _, ref_dir, _ = trained
  workdir = _copy_run(ref_dir, tmp_path / "all_damaged")
  _damage(workdir, 4, "remove")
  _damage(workdir, 8)
  before = sorted(os.path.relpath(os.path.join(r, f), workdir)
                  for r, _, fs in os.walk(workdir) for f in fs)
  with pytest.raises(ckpt_lib.DamagedCheckpointError) as e:
    train.train_and_evaluate(smoke(data_dir), workdir)
  msg = str(e.value)
  for step in (4, 8):
    assert f"step {step} ({os.path.join(workdir, 'checkpoints', str(step))})" \
        in msg, msg
  assert "Nothing was deleted" in msg and "fresh --workdir" in msg
  after = sorted(os.path.relpath(os.path.join(r, f), workdir)
                 for r, _, fs in os.walk(workdir) for f in fs)
  assert [f for f in before if f not in after] == []


def test_moved_data_root_resumes_changed_lr_is_refused(trained, data_dir,
                                                       tmp_path):
  """Catches: data.root classed as a model key (a moved data folder blocks
  the resume), or optim.learning_rate as operational (silently resumed)."""
  _, ref_dir, _ = trained
  workdir = _copy_run(ref_dir, tmp_path / "moved")
  moved = tmp_path / "data_moved_here"
  os.symlink(data_dir, moved)
  results = train.train_and_evaluate(
      smoke(data_dir, **{"data.root": str(moved), "train.num_steps": 10}),
      workdir)
  assert results["train"]["resumed_from"] == "workdir checkpoint step 8"
  assert results["train"]["steps"] == 10 and _ckpt_steps(workdir) == [8, 10]
  before = _ckpt_steps(workdir)
  with pytest.raises(ckpt_lib.ConfigMismatchError) as e:
    train.train_and_evaluate(
        smoke(data_dir, **{"optim.learning_rate": 0.05,
                           "train.num_steps": 12}), workdir)
  msg = str(e.value)
  assert "optim.learning_rate (training key)" in msg and "0.05" in msg
  assert "data.root" not in msg and "num_steps" not in msg
  assert "delete" not in msg and "fresh --workdir" in msg
  assert _ckpt_steps(workdir) == before


def test_wall_time_cadence_checkpoints_and_logs(data_dir, tmp_path):
  """Catches: the minute / second cadences ignored (only the final step
  would be checkpointed, only log_every_steps rows written)."""
  workdir = str(tmp_path / "timed")
  c = smoke(data_dir, **{"train.num_steps": 4,
                         "train.checkpoint_every_steps": 0,
                         "train.log_every_steps": 100,
                         "train.keep_checkpoints": 10,
                         "train.checkpoint_every_minutes": 1e-9,
                         "train.log_every_seconds": 1e-9})
  train.train_and_evaluate(c, workdir)
  assert _ckpt_steps(workdir) == [1, 2, 3, 4]
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
  assert all("train/eta_sec" in r for r in rows
             if "train/loss" in r and r["step"] > 1)


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 64 MiB tmpfs (root only: skips where the machine cannot mount one)."""
  import subprocess
  mnt = tmp_path / "tmpfs"
  mnt.mkdir()
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs",
                      str(mnt)], capture_output=True, text=True, check=False)
  if r.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the save "
                "fault needs one")
  try:
    yield mnt
  finally:
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("fault", ["disk_full", "read_only"])
def test_save_fault_names_the_folder_and_keeps_the_previous_checkpoint(
    data_dir, tmp_path, small_tmpfs, fault):
  """Catches: an orbax traceback without the folder or a hint, or a save
  that damages the previous step (the resume would not reach step 8)."""
  import subprocess
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  os.symlink(small_tmpfs, ckpt_dir)  # only the checkpoints live on the tmpfs
  filler = os.path.join(small_tmpfs, "filler")

  def fault_at_5(step, state):
    del state
    if step != 5:
      return
    # The async save of step 4 must be complete (renamed) before the fault.
    import time
    deadline = time.monotonic() + 120
    while not os.path.isdir(os.path.join(ckpt_dir, "4")):
      assert time.monotonic() < deadline, "step 4 was never committed"
      time.sleep(0.05)
    if fault == "read_only":
      subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)],
                     check=True)
    else:
      with open(filler, "wb") as f:
        try:
          while True:
            f.write(b"\0" * (1 << 20))
            f.flush()
        except OSError:
          pass

  with pytest.raises(ckpt_lib.CheckpointSaveError) as e:
    train.train_and_evaluate(smoke(data_dir), workdir, hooks=[fault_at_5])
  msg = str(e.value)
  assert ckpt_dir in msg or str(small_tmpfs) in msg, msg
  assert "step 4" in msg and "intact" in msg, msg
  assert "delete" not in msg
  # Fix the disk; the same command resumes from the intact step 4.
  if fault == "read_only":
    subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)
  else:
    os.remove(filler)
  results = train.train_and_evaluate(smoke(data_dir), workdir)
  assert results["train"]["resumed_from"].startswith("workdir checkpoint step 4")
  assert results["train"]["steps"] == STEPS
