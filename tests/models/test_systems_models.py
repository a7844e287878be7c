"""The three seed systems' networks: shapes per code length, two-view call,
parameter counts at paper size (traced with jax.eval_shape, no compile), and
the pieces (bit split, block max pool, Grad-CAM split)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medhash_jax import models
from medhash_jax.models import ath_net
from medhash_jax.models import mth_net
from tests.models.helpers import fake_variables

B, S, C = 2, 28, 3
TINY = {
    "ath_two_branch": dict(backbone="resnet18", width=8, small_input=True),
    "mth": dict(small_input=True, filters=4, growth=2, num_layers=2,
                fc_dim=32),
    "sa_hash": dict(backbone="resnet18", width=8, small_input=True, fc_dim=32),
}


def _images(seed=0, size=S, batch=B):
  return jnp.asarray(np.random.RandomState(seed).randn(batch, size, size, 3),
                     jnp.float32)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_registered_and_two_view_flags():
  for name in ("ath_two_branch", "mth", "sa_hash"):
    assert name in models.MODELS and models.is_hash_model(name)
  assert models.is_two_view("ath_two_branch")
  assert not models.is_two_view("mth") and not models.is_two_view("resnet50")


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_shapes_for_every_code_length(name):
  x = _images()
  model = models.get_model(name, num_bits=16, num_classes=C, **TINY[name])
  v = fake_variables(model, x)
  for k in (16, 32, 48, 64):
    m = models.get_model(name, num_bits=k, num_classes=C, **TINY[name])
    # Only the hash layer's shape depends on K: reuse every other variable.
    shapes = jax.eval_shape(lambda m=m: m.init(jax.random.key(0), x))
    out = jax.eval_shape(lambda v, x, m=m: m.apply(v, x), shapes, x)
    assert out["codes_real"].shape == (B, k)
    assert out["logits"].shape == (B, C)
    assert out["features"].ndim == 2 and out["features"].shape[0] == B
  out = jax.jit(lambda v, x: model.apply(v, x, train=False, beta=2.0))(v, x)
  assert bool(jnp.all(jnp.abs(out["codes_real"]) <= 1.0))
  for leaf in jax.tree.leaves(out):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  # Train mode updates batch statistics and keeps the output structure.
  out_t, upd = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats"]))(v, x)
  assert set(upd) == {"batch_stats"} and out_t["codes_real"].shape == (B, 16)


def test_ath_two_view_codes_are_global_then_local():
  model = models.get_model("ath_two_branch", num_bits=24, num_classes=C,
                           **TINY["ath_two_branch"])
  x, xl = _images(0), _images(1)
  v = fake_variables(model, x, xl)
  f = jax.jit(lambda v, x, xl: model.apply(v, x, xl))
  out = f(v, x, xl)
  assert out["codes_global"].shape == (B, 12)
  assert out["codes_local"].shape == (B, 12)
  np.testing.assert_array_equal(
      out["codes_real"], jnp.concatenate([out["codes_global"],
                                          out["codes_local"]], -1))
  # Keyword form == positional form; the local image drives only b''.
  kw = jax.jit(lambda v, x, xl: model.apply(v, x, local_image=xl))(v, x, xl)
  chex.assert_trees_all_close(kw, out)
  other = f(v, x, _images(2))
  np.testing.assert_allclose(other["codes_global"], out["codes_global"],
                             rtol=1e-6)
  assert not np.allclose(other["codes_local"], out["codes_local"])
  # No local image: the global image feeds both branches.
  same = jax.jit(lambda v, x: model.apply(v, x))(v, x)
  chex.assert_trees_all_close(same, f(v, x, x))
  with pytest.raises(ValueError, match="local_image shape"):
    model.apply(v, x, _images(size=S + 4))


def test_ath_branches_do_not_share_weights_and_heads_match_head_patterns():
  model = models.get_model("ath_two_branch", num_bits=48, num_classes=14)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  p = shapes["params"]
  assert {"global_backbone", "local_backbone", "global_hash", "local_hash",
          "classifier"} <= set(p)
  assert p["global_hash"]["dense"]["kernel"].shape == (2048, 24)
  assert p["local_hash"]["dense"]["kernel"].shape == (2048, 24)
  assert p["classifier"]["dense"]["kernel"].shape == (4096, 14)


@pytest.mark.parametrize("k,frac,want", [(48, 0.5, (24, 24)), (16, 0.5, (8, 8)),
                                          (33, 0.5, (17, 16)), (8, 0.25, (6, 2)),
                                          (2, 0.9, (1, 1))])
def test_split_bits(k, frac, want):
  assert ath_net.split_bits(k, frac) == want


def test_split_bits_rejects_bad_values():
  with pytest.raises(ValueError):
    ath_net.split_bits(1)
  with pytest.raises(ValueError):
    ath_net.split_bits(16, 1.0)


# Parameter counts at paper size, 224 px, 48 bits, 14 classes, in closed form.
RESNET50 = 23_508_032          # torchvision resnet50 without its fc layer


def _bottleneck(c_in, width):
  return (c_in * width + 2 * width + 9 * width * width + 2 * width +
          width * 4 * width + 2 * 4 * width)


def _dense_block(c, layers=4, growth=8, bn_size=4):
  n = 0
  for _ in range(layers):
    n += 2 * c + c * bn_size * growth + 2 * bn_size * growth + \
        9 * bn_size * growth * growth
    c += growth
  return n, c


def _mth_params(k=48, classes=14, filters=16, heads_fc=1024):
  n, c_total = 0, 0
  for size in (1, 3, 5):
    n += size * size * 3 * filters
    dn, c = _dense_block(filters)
    n += dn
    c_total += c
  c = c_total                               # 144
  qk = c // 2
  n += 2 * (c * qk + qk) + (c * c + c) + (c * c + c)   # q, k, v, proj
  dn, c = _dense_block(c)                   # 176
  n += dn + 2 * c                           # + final BN
  n += c * heads_fc + heads_fc + heads_fc * k + k + heads_fc * classes + classes
  n += k * classes + classes                # rho: the semantic projection
  return n


@pytest.mark.parametrize("name,expected", [
    ("ath_two_branch", 2 * RESNET50 + 2 * (2048 * 24 + 24) + 4096 * 14 + 14),
    ("sa_hash", RESNET50 + 2 * _bottleneck(2048, 512) + (7 * 7 * 3 + 1) +
     (4096 * 1024 + 1024) + (1024 * 48 + 48) + (1024 * 14 + 14)),
    ("mth", _mth_params()),
])
def test_parameter_counts_at_paper_size(name, expected):
  model = models.get_model(name, num_bits=48, num_classes=14)
  x = jnp.zeros((1, 224, 224, 3))
  args = (x, x) if name == "ath_two_branch" else (x,)
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))
  assert _count(v["params"]) == expected
  out = jax.eval_shape(lambda v: model.apply(v, *args), v)
  assert out["codes_real"].shape == (1, 48)


def test_mth_code_logits_are_a_projection_of_the_codes():
  """MTH's semantic term reads rho(u) = u W + b (catches: rho applied to the
  FC features, or to the pre-tanh z, instead of the codes)."""
  model = models.get_model("mth", num_bits=16, num_classes=3, small_input=True,
                           fc_dim=32)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  v = model.init(jax.random.key(0), x)
  out = model.apply(v, x)
  p = v["params"]["projection"]
  np.testing.assert_allclose(
      np.asarray(out["code_logits"]),
      np.asarray(out["codes_real"]) @ np.asarray(p["kernel"]) +
      np.asarray(p["bias"]), rtol=1e-5, atol=1e-6)
  assert "code_logits" not in models.get_model(
      "mth", num_bits=16, small_input=True, fc_dim=32).apply(
          models.get_model("mth", num_bits=16, small_input=True,
                           fc_dim=32).init(jax.random.key(0), x), x)


def test_mth_attention_map_is_pooled_at_224():
  model = models.get_model("mth", num_bits=16)
  v = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                        jnp.zeros((1, 224, 224, 3))))
  fmap = jax.eval_shape(lambda v: model.apply(
      v, jnp.zeros((1, 224, 224, 3)), method="backbone_features"), v)
  assert fmap["feature_map"].shape == (1, 14, 14, 176)   # 224 / 4 -> 56 -> 14


def test_max_pool_blocks_matches_flax():
  x = jnp.asarray(np.random.RandomState(0).randn(2, 9, 7, 3), jnp.float32)
  for wh, ww in ((2, 2), (3, 2), (4, 3)):
    np.testing.assert_array_equal(
        mth_net.max_pool_blocks(x, wh, ww),
        nn.max_pool(x, (wh, ww), strides=(wh, ww)))


@pytest.mark.parametrize("name", ["mth", "sa_hash"])
def test_gradcam_split_composes_to_call(name):
  model = models.get_model(name, num_bits=16, num_classes=C, **TINY[name])
  x = _images()
  v = fake_variables(model, x)

  def both(v, x):
    fmap = model.apply(v, x, method="backbone_features")["feature_map"]
    return model.apply(v, fmap, method="from_feature_map"), model.apply(v, x)

  split, whole = jax.jit(both)(v, x)
  chex.assert_trees_all_close(split, whole, rtol=1e-5, atol=1e-6)


def test_pretrained_converter_fills_both_ath_branches(tmp_path):
  torch = pytest.importorskip("torch", reason="torch (CPU) is not installed")
  from tests.models.test_convert import TorchResNet50  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  sd = TorchResNet50().state_dict()
  path = str(tmp_path / "r50.pth")
  torch.save(sd, path)
  loaded = models.pretrained_converter("ath_two_branch")(path)
  want = sd["layer3.1.conv2.weight"].numpy().transpose(2, 3, 1, 0)
  for branch in ("global_backbone", "local_backbone"):
    np.testing.assert_array_equal(
        loaded["params"][branch]["layer3_1"]["conv2"]["kernel"], want)
  # ...and merges into the model's variables by path (the init_from route).
  model = models.get_model("ath_two_branch", num_bits=16, num_classes=3)
  v = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                        jnp.zeros((1, 64, 64, 3))))
  live = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), v)
  params, stats = ckpt_lib.load_weights(
      path, live["params"], live["batch_stats"],
      converter=models.pretrained_converter("ath_two_branch"))
  np.testing.assert_array_equal(
      params["local_backbone"]["layer3_1"]["conv2"]["kernel"], want)
  assert stats["global_backbone"]["bn1"]["var"].shape == (64,)
  assert models.pretrained_converter("sa_hash")(path)["params"].keys() == {
      "backbone"}
