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


def test_crc32c_and_event_file(tmp_path):
  assert writers.crc32c(b"123456789") == 0xE3069283  # the standard check value
  w = writers.create_default_writer(str(tmp_path))
  w.write_scalars(7, {"train/loss": 0.5, "train/lr": np.float32(0.1)})
  w.close()
  ev = os.listdir(tmp_path / "tensorboard")
  assert len(ev) == 1 and ev[0].startswith("events.out.tfevents.")
  records = writers.read_tfrecords(str(tmp_path / "tensorboard" / ev[0]))
  assert b"brain.Event:2" in records[0]
  assert b"train/loss" in records[1] and struct.pack("<f", 0.5) in records[1]
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert rows[0]["step"] == 7 and rows[0]["train/loss"] == 0.5


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
