"""Train building blocks: optimizer groups and schedules, mesh, writers, checkpoints."""

import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medhash_jax.train import checkpoint as ckpt_lib
from medhash_jax.train import defaults
from medhash_jax.train import mesh as mesh_lib
from medhash_jax.train import optim
from medhash_jax.train import state as state_lib
from medhash_jax.train import step as step_lib
from medhash_jax.train import writers


def _optim_cfg(**kw):
  c = defaults.default_config().optim
  c.update(kw)
  return c


def _params():
  return {"backbone": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
          "hash_layer": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones((2,))}}


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_head_learns_10x_faster(name):
  """The multiplier is a per-group lr: head update = 10 x backbone update."""
  params = _params()
  cfg = _optim_cfg(name=name, learning_rate=0.1, weight_decay=0.0,
                   schedule="constant", head_lr_mult=10.0)
  tx, _ = optim.build_optimizer(cfg, params, 100)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["hash_layer"]["kernel"],
                             10 * updates["backbone"]["kernel"][:, :2].mean()
                             * np.ones((4, 2)), rtol=1e-6)
  assert float(updates["backbone"]["kernel"][0, 0]) < 0


def test_head_patterns_must_match():
  with pytest.raises(ValueError, match="match no parameter"):
    optim.build_optimizer(_optim_cfg(head_patterns=("nothing_here",)),
                          _params(), 10)


def test_weight_decay_skips_biases_and_sgd_matches_optax():
  params = _params()
  cfg = _optim_cfg(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
                   weight_decay=0.01, schedule="constant", head_lr_mult=1.0)
  tx, _ = optim.build_optimizer(cfg, params, 10)
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Zero grads: only weight decay moves kernels; biases stay put.
  assert float(jnp.abs(updates["backbone"]["bias"]).max()) == 0.0
  ref = optax.chain(optax.add_decayed_weights(0.01),
                    optax.sgd(0.1, momentum=0.9, nesterov=True))
  ref_up, _ = ref.update(grads, ref.init(params), params)
  np.testing.assert_allclose(updates["backbone"]["kernel"],
                             ref_up["backbone"]["kernel"], rtol=1e-6)


def test_schedules_and_clipping():
  for name in optim.SCHEDULES:
    s = optim.make_schedule(_optim_cfg(schedule=name, learning_rate=1.0,
                                       warmup_steps=5, end_lr_factor=0.1), 105)
    assert float(s(0)) == 0.0 and abs(float(s(5)) - 1.0) < 1e-6
    assert float(s(104)) <= 1.0 + 1e-6
  s = optim.make_schedule(_optim_cfg(schedule="step", learning_rate=1.0,
                                     step_boundaries=(0.5,), step_factor=0.1), 100)
  assert float(s(49)) == 1.0 and abs(float(s(51)) - 0.1) < 1e-7
  cfg = _optim_cfg(name="sgd", momentum=0.0, weight_decay=0.0, learning_rate=1.0,
                   schedule="constant", head_lr_mult=1.0, grad_clip_norm=1.0)
  params = _params()
  tx, _ = optim.build_optimizer(cfg, params, 10)
  grads = jax.tree.map(lambda x: 100 * jnp.ones_like(x), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert abs(float(optax.tree.norm(updates)) - 1.0) < 1e-5
  with pytest.raises(ValueError, match="unknown optim.name"):
    optim.build_optimizer(_optim_cfg(name="lion"), params, 10)


def test_batch_not_divisible_by_devices():
  mesh = mesh_lib.make_mesh()
  assert mesh.size == 4 and mesh.axis_names == ("data",)
  mesh_lib.check_batch_size(8, mesh)
  with pytest.raises(ValueError, match="not divisible by the 4 devices"):
    mesh_lib.check_batch_size(10, mesh, "train.batch_size")
  x, mask = mesh_lib.pad_to_multiple(np.ones((5, 2)), 4)
  assert x.shape == (8, 2) and mask.sum() == 5 and not x[5:].any()


def test_pairwise_product_on_sharded_batch():
  """The DESIGN pitfall: labels @ labels.T on a batch-sharded array works."""
  mesh = mesh_lib.make_mesh()
  y = mesh_lib.shard_batch(np.eye(8, 3, dtype=np.float32), mesh)
  s = jax.jit(lambda a: a @ a.T)(y)
  np.testing.assert_allclose(np.asarray(s), np.eye(8, 3) @ np.eye(8, 3).T)


def _events(path):
  """The Event protobufs of a TensorBoard file: TFRecord framing (length,
  masked CRC32C of it, payload, masked CRC32C of that), parsed with
  tensorboardX's own protobuf classes."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=g-import-not-at-top
  data = open(path, "rb").read()
  events, pos = [], 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    payload = data[pos + 12:pos + 12 + length]
    assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
    assert (struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0]
            == masked_crc32c(payload))
    events.append(event_pb2.Event.FromString(payload))
    pos += 16 + length
  return events


def test_event_file_scalars_and_hparams(tmp_path):
  w = writers.create_default_writer(str(tmp_path))
  w.write_hparams({"optim": {"lr": 0.1, "name": "adam"}, "seed": 3,
                   "train": {"augment": True, "sizes": (1, 2)}})
  w.write_scalars(7, {"train/loss": 0.5, "train/lr": np.float32(0.1)})
  w.write_scalars(9, {"train/loss": jnp.float32(0.25),
                      "val/map@10/tie_aware": 0.75})
  w.close()
  ev = os.listdir(tmp_path / "tensorboard")
  assert len(ev) == 1 and ev[0].startswith("events.out.tfevents.")
  events = _events(str(tmp_path / "tensorboard" / ev[0]))
  assert events[0].file_version == "brain.Event:2"
  scalars = [(e.step, v.tag, v.simple_value) for e in events
             for v in e.summary.value if v.WhichOneof("value") == "simple_value"]
  # '@' is not a legal tag character: written as '_' (tensorboardX's rule).
  assert scalars == [(7, "train/loss", 0.5), (7, "train/lr", np.float32(0.1)),
                     (9, "train/loss", 0.25), (9, "val/map_10/tie_aware", 0.75)]
  # hparams: the hparams plugin's experiment, session start (flattened
  # config, dotted keys) and, at close, session end.
  from tensorboardX.proto import plugin_hparams_pb2  # pylint: disable=g-import-not-at-top
  plugin = {v.tag: plugin_hparams_pb2.HParamsPluginData.FromString(
                v.metadata.plugin_data.content)
            for e in events for v in e.summary.value
            if v.metadata.plugin_data.plugin_name == "hparams"}
  assert sorted(plugin) == ["_hparams_/experiment",
                            "_hparams_/session_end_info",
                            "_hparams_/session_start_info"]
  hp = plugin["_hparams_/session_start_info"].session_start_info.hparams
  assert {k: hp[k].WhichOneof("kind") for k in hp} == {
      "optim.lr": "number_value", "optim.name": "string_value",
      "seed": "number_value", "train.augment": "bool_value",
      "train.sizes": "string_value"}
  assert (hp["optim.lr"].number_value, hp["optim.name"].string_value,
          hp["seed"].number_value, hp["train.augment"].bool_value,
          hp["train.sizes"].string_value) == (0.1, "adam", 3, True, "(1, 2)")
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert rows[0]["hparams"]["optim"]["lr"] == 0.1
  assert rows[1]["step"] == 7 and rows[1]["train/loss"] == 0.5
  assert rows[2]["step"] == 9 and rows[2]["train/loss"] == 0.25


def test_flatten_is_the_one_flattener():
  nested = {"a": {"b": 1, "c": {"d": (2, 3)}}, "e": 4, "empty": {}}
  assert writers.flatten(nested) == {"a/b": 1, "a/c/d": (2, 3), "e": 4}
  assert writers.flatten(nested, sep=".") == {"a.b": 1, "a.c.d": (2, 3),
                                              "e": 4}
  assert writers.flatten(nested, sep=None) == {
      ("a", "b"): 1, ("a", "c", "d"): (2, 3), ("e",): 4}
  # The checkpoint's config comparison reads a config back from JSON.
  assert ckpt_lib.config_differences(
      {"optim": {"lr": 0.1}, "model": {"sizes": [1, 2]}},
      {"optim": {"lr": 0.2}, "model": {"sizes": (1, 2)}},
      changeable=()) == {"optim.lr": (0.1, 0.2)}


def test_quiet_library_logs_drops_orbax_info_only():
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  before = list(handler.filters)
  try:
    writers.quiet_library_logs()
    (added,) = [f for f in handler.filters if f not in before]

    def record(level, path):
      return logging.LogRecord("x", level, path, 1, "m", None, None)
    assert not added.filter(record(logging.INFO, "/x/orbax/checkpoint/a.py"))
    assert added.filter(record(logging.WARNING, "/x/orbax/checkpoint/a.py"))
    assert added.filter(record(logging.INFO, "/x/medhash_jax/train/loop.py"))
  finally:
    handler.filters[:] = before


def test_nan_names_step_and_checkpoint():
  with pytest.raises(step_lib.NonFiniteLossError,
                     match=r"step 12: loss=nan.*Last good checkpoint: /w/10"):
    step_lib.check_finite({"loss": float("nan"), "grad_norm": 1.0}, 12, "/w/10")
  step_lib.check_finite({"loss": 1.0, "grad_norm": 2.0, "lr": 0.1}, 3, None)


def test_checkpoint_roundtrip_and_config_guard(tmp_path):
  mesh = mesh_lib.make_mesh()
  params = mesh_lib.replicate(_params(), mesh)
  tx = optax.adam(1e-3)
  st = state_lib.create_train_state(
      apply_fn=None, variables={"params": params}, tx=tx,
      rng=state_lib.root_key(3), mesh=mesh)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), max_to_keep=2)
  cfg = {"num_bits": 16, "train": {"num_steps": 10}}
  ck.check_or_write_config(cfg)
  for s in (1, 2, 3):
    ck.save(s, st.replace(step=jnp.int32(s)).checkpoint_items(), force=True)
  ck.wait_until_finished()
  assert ck.all_steps() == [2, 3]  # keep-N
  restored, step = ck.restore(st.checkpoint_items())
  assert step == 3 and int(restored["step"]) == 3
  np.testing.assert_array_equal(restored["rng"], st.rng)
  assert restored["params"]["hash_layer"]["kernel"].sharding == \
      st.params["hash_layer"]["kernel"].sharding
  ck.close()
  # Run length may change on resume; the code length may not.
  again = ckpt_lib.Checkpointer(str(tmp_path / "ck"))
  again.check_or_write_config({"num_bits": 16, "train": {"num_steps": 99}})
  with pytest.raises(ckpt_lib.ConfigMismatchError, match="num_bits"):
    again.check_or_write_config({"num_bits": 32, "train": {"num_steps": 99}})
  again.close()


def test_config_key_classes_decide_what_may_change():
  from medhash_jax.train import defaults
  saved = defaults.default_config().to_dict()

  def changed(key, value):
    c = defaults.default_config()
    sub = c
    *path, last = key.split(".")
    for p in path:
      sub = sub[p]
    sub[last] = value
    return c.to_dict()

  # Every key of the schema has a class; unlisted keys are model keys.
  assert defaults.key_class("num_bits") == defaults.MODEL
  assert defaults.key_class("data.image_size") == defaults.MODEL
  assert defaults.key_class("model.kwargs.width") == defaults.MODEL
  # The longest declared prefix wins: train.* is training, num_steps not.
  assert defaults.key_class("train.batch_size") == defaults.TRAINING
  assert defaults.key_class("train.num_steps") == defaults.OPERATIONAL
  # A moved data root, more workers, another eval batch: fine everywhere.
  for key, value in [("data.root", "/elsewhere"), ("data.num_workers", 4),
                     ("data.eval_batch_size", 7), ("data.skip_bad", True)]:
    ckpt_lib.check_config_compatible(saved, changed(key, value), "w")
    ckpt_lib.check_config_compatible(saved, changed(key, value), "w",
                                     changeable=ckpt_lib.INFERENCE)
  # A learning rate: refused on resume, accepted at inference.
  lr = changed("optim.learning_rate", 0.5)
  with pytest.raises(ckpt_lib.ConfigMismatchError,
                     match=r"optim.learning_rate \(training key\)") as e:
    ckpt_lib.check_config_compatible(saved, lr, "w")
  assert "delete" not in str(e.value) and "fresh --workdir" in str(e.value)
  ckpt_lib.check_config_compatible(saved, lr, "w",
                                   changeable=ckpt_lib.INFERENCE)
  # Model keys: refused everywhere, each named.
  for key, value in [("num_bits", 16), ("data.image_size", 64),
                     ("data.normalize", "half")]:
    with pytest.raises(ckpt_lib.ConfigMismatchError, match=key):
      ckpt_lib.check_config_compatible(saved, changed(key, value), "w",
                                       changeable=ckpt_lib.INFERENCE)
  # changeable=() compares every key (the suites' reuse check).
  with pytest.raises(ckpt_lib.ConfigMismatchError, match="data.root"):
    ckpt_lib.check_config_compatible(saved, changed("data.root", "/x"), "w",
                                     changeable=())


def test_signal_catcher_first_signal_requests_second_exits():
  """Catches: a second signal that only sets the flag again (a stuck save
  could then never be interrupted) or a first one that exits."""
  import signal
  from medhash_jax.train import preemption
  exits = []
  # What was installed before (SIGINT is SIG_IGN under nohup or `cmd &` in a
  # script, default_int_handler otherwise) must come back afterwards.
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  c = preemption.SignalCatcher(exit_fn=exits.append)
  with c:
    assert signal.getsignal(signal.SIGTERM) == c.handle
    assert signal.getsignal(signal.SIGINT) == c.handle
    assert not c.requested
    c.handle(signal.SIGINT)
    assert c.requested and c.received == signal.SIGINT and exits == []
    c.handle(signal.SIGTERM)
    assert exits == [128 + signal.SIGTERM]
  assert {s: signal.getsignal(s) for s in before} == before
  e = preemption.TrainingInterrupted("stopped", 7)
  assert isinstance(e, SystemExit) and e.code == 75 and e.step == 7


def test_wall_clock_cadence():
  from medhash_jax.train import preemption
  now = [100.0]
  c = preemption.WallClock(30.0, now=lambda: now[0])
  assert not c.due()
  now[0] = 129.9
  assert not c.due()
  now[0] = 130.0
  assert c.due()
  c.reset()
  assert not c.due()
  assert not preemption.WallClock(0, now=lambda: now[0] + 1e9).due()  # off


def test_step_reduces_requests_over_the_global_batch():
  """Every process must read the same decision: the step returns the
  column-wise max of the requests of every device. Catches: an unreduced
  value (the first device's row, which did not ask) or a min."""
  from medhash_jax.train import preemption
  mesh = mesh_lib.make_mesh()
  params = mesh_lib.replicate({"w": jnp.ones((2,))}, mesh)
  st = state_lib.create_train_state(apply_fn=None, variables={"params": params},
                                    tx=optax.sgd(0.1),
                                    rng=state_lib.root_key(0), mesh=mesh)

  def objective(p, stats, batch, rng, step):
    del rng, step
    loss = jnp.sum(p["w"]) * jnp.mean(batch["x"])
    return loss, ({}, stats)

  train_step = step_lib.make_train_step(objective, optax.constant_schedule(0.1),
                                        mesh=mesh, state_example=st)
  req = preemption.Requests(4).local(stop=False, checkpoint=False)
  req[2, preemption.STOP] = 1  # one device (as one process would) asks
  batch = mesh_lib.shard_batch({"x": np.ones((8, 1), np.float32),
                                step_lib.CONTROL_KEY: req}, mesh)
  _, m = train_step(st, batch, jnp.array(st.rng))
  assert preemption.decode(m[step_lib.CONTROL_KEY]) == {"stop": True,
                                                        "checkpoint": False}


def test_restore_skips_a_damaged_step_and_names_it(tmp_path):
  """Catches: the fallback only for the train loop (classifier stages and
  --mode=evaluate restore through the same Checkpointer.restore)."""
  mesh = mesh_lib.make_mesh()
  params = mesh_lib.replicate(_params(), mesh)
  st = state_lib.create_train_state(
      apply_fn=None, variables={"params": params}, tx=optax.adam(1e-3),
      rng=state_lib.root_key(3), mesh=mesh)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), max_to_keep=5,
                             async_save=False)
  for s in (1, 2):
    ck.save(s, st.replace(step=jnp.int32(s)).checkpoint_items(), force=True)
  os.remove(tmp_path / "ck" / "2" / "state" / "_METADATA")
  ro = ckpt_lib.Checkpointer(str(tmp_path / "ck"), read_only=True)
  restored, step = ro.restore(st.checkpoint_items())
  assert step == 1 and int(restored["step"]) == 1
  assert [s for s, _, _ in ro.skipped] == [2]
  assert ro.skipped[0][1] == str(tmp_path / "ck" / "2")
  assert os.path.isdir(tmp_path / "ck" / "2")  # read-only: left in place
  ro.close()
  restored, step = ck.restore(st.checkpoint_items())  # writable: moved aside
  assert step == 1 and ck.all_steps() == [1]
  assert os.path.isdir(tmp_path / "ck" / "damaged" / "2" / "state")
  ck.save(2, st.replace(step=jnp.int32(2)).checkpoint_items(), force=True)
  assert ck.all_steps() == [1, 2]
  ck.close()
