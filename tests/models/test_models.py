"""Models: registry over every entry, heads, attention blocks, bf16, Grad-CAM split."""

import inspect

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medhash_jax import models
from medhash_jax.models import attention as att
from medhash_jax.models import backbones
from tests.models.helpers import fake_variables

B, S, K, C = 2, 28, 16, 3


def _tiny_kwargs(name, **extra):
  """Small widths so every entry runs in well under a second, eagerly."""
  sig = inspect.signature(models.MODELS[name].build).parameters
  kw = dict(num_bits=K, num_classes=C, small_input=True)
  if "width" in sig:
    kw["width"] = 8
  if "growth_rate" in sig:  # fewer layers: eager mode compiles every new shape
    kw.update(growth_rate=4, num_init_features=8, block_config=(1, 2, 2, 1))
  kw.update(extra)
  return kw


def _apply(model, v, x, **kwargs):
  """One jit of the whole apply: on a loaded CPU this compiles faster than
  eager mode, which compiles every small op of a fresh shape on its own."""
  return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(v, x)


def _images(seed=0, size=S, batch=B):
  return jnp.asarray(np.random.RandomState(seed).randn(batch, size, size, 3),
                     jnp.float32)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_registered_model_runs(name):
  model = models.get_model(name, **_tiny_kwargs(name))
  x = _images()
  v = fake_variables(model, x)
  assert set(v) == {"params", "batch_stats"}
  out = _apply(model, v, x)  # eval mode
  assert out["logits"].shape == (B, C) and out["logits"].dtype == jnp.float32
  assert out["features"].ndim == 2 and out["features"].shape[0] == B
  spec = models.model_spec(name)
  assert models.is_hash_model(name) == (spec.kind == "hashing")
  if spec.kind == "hashing":
    codes = out["codes_real"]
    assert codes.shape == (B, K) and codes.dtype == jnp.float32
    assert bool(jnp.all(jnp.abs(codes) <= 1.0))
  else:
    assert spec.kind == "classifier" and "codes_real" not in out
  for leaf in jax.tree.leaves(out):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  # Where the converter puts ImageNet weights exists in the model.
  for prefix in spec.pretrained_prefixes:
    assert prefix in v["params"], (name, prefix, sorted(v["params"]))


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_spec_views_match_the_apply_signature(name):
  """views=2: a second image changes the output (the local branch reads it;
  features, since the fake weights saturate tanh codes); views=1: a second
  positional image is refused (it lands on `train`: TypeError or, for an
  array there, ValueError)."""
  model = models.get_model(name, **_tiny_kwargs(name))
  x, local = _images(0), _images(1)
  v = fake_variables(model, x)
  assert models.is_two_view(name) == (models.model_spec(name).views == 2)
  if models.model_spec(name).views == 2:
    one = _apply(model, v, x)["features"]
    two = jax.jit(lambda v, x, l: model.apply(v, x, l))(v, x, local)
    assert not np.allclose(np.asarray(one), np.asarray(two["features"]))
  else:
    with pytest.raises((TypeError, ValueError)):
      model.apply(v, x, local)


def test_model_spec_refuses_unknown_kind_and_views():
  with pytest.raises(ValueError, match="kind"):
    models.ModelSpec(models.MODELS["resnet18"].build, kind="hash")
  with pytest.raises(ValueError, match="views"):
    models.ModelSpec(models.MODELS["resnet18"].build, views=3)
  with pytest.raises(ValueError, match="resnet51"):
    models.model_spec("resnet51")


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError) as e:
    models.get_model("resnet51", num_bits=K)
  for name in models.MODELS:
    assert name in str(e.value)
  with pytest.raises(ValueError, match="unknown backbone"):
    backbones.get_backbone("vgg16")
  with pytest.raises(ValueError, match="unknown attention"):
    models.get_attention("transformer")


@pytest.mark.parametrize("name,size,expect_hw,expect_d", [
    ("resnet18", 64, 2, 512), ("resnet50", 64, 2, 2048),
    ("densenet121", 64, 2, 1024), ("resnet50", 224, 7, 2048)])
def test_standard_stem_shapes(name, size, expect_hw, expect_d):
  """Paper-size models (width 64) traced only: /32 feature maps."""
  model = models.get_model(name, num_bits=48, num_classes=14)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape)))
  out = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros(x.shape), return_feature_map=True), v)
  assert out["feature_map"].shape == (1, expect_hw, expect_hw, expect_d)
  assert out["codes_real"].shape == (1, 48) and out["logits"].shape == (1, 14)
  n_params = sum(np.prod(p.shape) for p in jax.tree.leaves(v["params"]))
  base = {"resnet18": 11.2e6, "resnet50": 23.5e6, "densenet121": 6.95e6}[name]
  assert abs(n_params - base) / base < 0.02, n_params  # torchvision - fc + heads


def test_small_stem_keeps_resolution():
  m = models.get_model("resnet18", num_bits=K, small_input=True, width=8)
  v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  out = jax.eval_shape(lambda v: m.apply(v, jnp.zeros((1, 32, 32, 3)),
                                         return_feature_map=True), v)
  assert out["feature_map"].shape == (1, 4, 4, 64)
  assert out["logits"] is None  # num_classes=0: no class head


def test_train_mode_updates_batch_stats():
  model = models.get_model("resnet18", **_tiny_kwargs("resnet18"))
  x = _images()
  v = fake_variables(model, x)
  out, upd = _apply(model, v, x, train=True, beta=2.0, mutable=["batch_stats"])
  assert out["codes_real"].shape == (B, K)
  before = v["batch_stats"]["backbone"]["bn1"]["mean"]
  after = upd["batch_stats"]["backbone"]["bn1"]["mean"]
  assert not np.allclose(before, after)


def test_hash_head_sign_of_zero_is_plus_one():
  np.testing.assert_array_equal(
      models.binarize(jnp.array([0.0, -0.0, 1e-9, -1e-9, 0.7, -0.7])),
      [1, 1, 1, -1, 1, -1])
  head = models.HashHead(num_bits=8)
  v = jax.tree.map(jnp.zeros_like, head.init(jax.random.key(0), jnp.ones((3, 5))))
  codes = head.apply(v, jnp.ones((3, 5)))
  np.testing.assert_array_equal(codes, 0.0)
  np.testing.assert_array_equal(models.binarize(codes), 1.0)


def test_hash_head_beta_is_a_call_argument_without_retrace():
  head = models.HashHead(num_bits=4)
  x = jnp.asarray(np.random.RandomState(0).randn(3, 5), jnp.float32)
  v = head.init(jax.random.key(0), x)
  z = x @ v["params"]["dense"]["kernel"] + v["params"]["dense"]["bias"]

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(v, x, beta):
    return head.apply(v, x, beta)

  for beta in (1.0, 3.0, 10.0):
    np.testing.assert_allclose(f(v, x, jnp.float32(beta)), np.tanh(beta * z),
                               rtol=1e-5, atol=1e-6)
  assert float(models.hashnet_beta(0)) == 1.0
  np.testing.assert_allclose(models.hashnet_beta(200, gamma=0.005, power=0.5),
                             np.sqrt(2.0), rtol=1e-6)
  np.testing.assert_allclose(models.hashnet_beta(250, every=100),
                             models.hashnet_beta(200), rtol=1e-6)
  assert float(models.beta_schedule("constant", init=2.0)(1000)) == 2.0
  with pytest.raises(ValueError):
    models.HashHead(num_bits=0).init(jax.random.key(0), x)


def _two_stage_net(dtype):
  """A 2-stage ResNet hash model: the bf16 code path with few eager ops."""
  dtype = models.canonical_dtype(dtype)
  return models.HashingNet(
      backbone=models.ResNet(stage_sizes=(1, 1), block="bottleneck", width=8,
                             small_input=True, dtype=dtype),
      num_bits=K, num_classes=C, attention=att.CBAM(reduction=4, dtype=dtype),
      fc_dims=(32,), dtype=dtype)


def test_bf16_compute_path():
  m32, m16 = _two_stage_net("float32"), _two_stage_net("bfloat16")
  x = _images(size=16)
  v = fake_variables(m32, x)
  v16 = jax.eval_shape(lambda: m16.init(jax.random.key(0), x))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v16))  # f32 params
  o32 = _apply(m32, v, x, return_feature_map=True)
  o16 = _apply(m16, v, x, return_feature_map=True)
  assert o16["feature_map"].dtype == jnp.bfloat16
  assert o16["codes_real"].dtype == jnp.float32
  assert o16["logits"].dtype == jnp.float32
  np.testing.assert_allclose(o16["codes_real"], o32["codes_real"], atol=0.1)
  np.testing.assert_allclose(o16["features"], o32["features"],
                             atol=0.05 * float(jnp.max(jnp.abs(o32["features"]))))
  with pytest.raises(ValueError, match="unknown dtype"):
    models.get_model("resnet18", num_bits=K, dtype="float8")
  assert models.get_model("resnet50", num_bits=K,
                          dtype="bfloat16").backbone.dtype == jnp.bfloat16


def test_gradcam_split_matches_call_and_differentiates():
  m = models.get_model("densenet121_classifier",
                       **_tiny_kwargs("densenet121_classifier"))
  x = _images()
  v = fake_variables(m, x)
  fmap = _apply(m, v, x, method="backbone_features")["feature_map"]
  full = _apply(m, v, x)
  split = _apply(m, v, fmap, method="from_feature_map")
  np.testing.assert_allclose(full["logits"], split["logits"], rtol=1e-5, atol=1e-5)
  g = jax.grad(lambda f: m.apply(v, f, method="from_feature_map")
               ["logits"][:, 1].sum())(fmap)
  assert g.shape == fmap.shape
  # Linear head on a global average pool: the gradient is W[:, 1] / (h w)
  # at every position.
  w = v["params"]["classifier"]["dense"]["kernel"][:, 1]
  hw = fmap.shape[1] * fmap.shape[2]
  np.testing.assert_allclose(g, np.broadcast_to(w / hw, g.shape), rtol=1e-5,
                             atol=1e-7)


@pytest.mark.parametrize("attn", ["se", "cbam", "spatial", "mhsa"])
def test_hash_model_with_attention(attn):
  kw = _tiny_kwargs("resnet18", attention=attn, fc_dims=(24,))
  if attn == "mhsa":
    kw["attention_kwargs"] = {"num_heads": 2}
  m = models.get_model("resnet18", **kw)
  x = _images()
  v = fake_variables(m, x)
  assert "attention" in v["params"]
  out = _apply(m, v, x)
  assert out["codes_real"].shape == (B, K) and out["features"].shape == (B, 24)


# -- attention blocks -------------------------------------------------------


def _zeros(module, x):
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def test_attention_blocks_keep_shape():
  x = _images(1, size=6)[..., :3].repeat(4, axis=-1)  # (B, 6, 6, 12)
  for block in (att.SE(reduction=4), att.CBAM(reduction=4), att.SpatialAttention(),
                att.ConvSelfAttention(num_heads=3)):
    v = fake_variables(block, x)
    y = block.apply(v, x)
    assert y.shape == x.shape and y.dtype == x.dtype


def test_gates_with_zero_weights_halve_the_input():
  x = _images(2, size=5)  # (B, 5, 5, 3)
  np.testing.assert_allclose(att.SE(reduction=1).apply(_zeros(att.SE(reduction=1), x), x),
                             0.5 * x, rtol=1e-6)
  cbam = att.CBAM(reduction=1)
  np.testing.assert_allclose(cbam.apply(_zeros(cbam, x), x), 0.25 * x, rtol=1e-6)
  sa = att.SpatialAttention()
  np.testing.assert_allclose(sa.apply(_zeros(sa, x), x), 0.5 * x, rtol=1e-6)


def test_se_matches_numpy():
  x = _images(3, size=4).repeat(2, axis=-1)  # 6 channels
  se = att.SE(reduction=2)
  v = fake_variables(se, x, seed=3)
  p = jax.tree.map(np.asarray, v["params"])
  s = np.asarray(x).mean(axis=(1, 2))
  h = np.maximum(s @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
  w = 1 / (1 + np.exp(-(h @ p["fc2"]["kernel"] + p["fc2"]["bias"])))
  np.testing.assert_allclose(se.apply(v, x), np.asarray(x) * w[:, None, None, :],
                             rtol=1e-5, atol=1e-6)


def test_spatial_attention_descriptors_match_numpy():
  """With a 1x1 conv the map is sigmoid(w . [max_c, mean_c, mean_c maxpool3] + b)."""
  x = np.random.RandomState(4).randn(2, 5, 5, 6).astype(np.float32)
  sa = att.SpatialAttention(kernel_size=1, pool_size=3)
  v = fake_variables(sa, jnp.asarray(x), seed=4)
  w = np.asarray(v["params"]["conv"]["kernel"]).reshape(3)
  bias = float(v["params"]["conv"]["bias"][0])
  pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  pooled = np.max(np.stack([pad[:, i:i + 5, j:j + 5] for i in range(3)
                            for j in range(3)]), axis=0)
  desc = np.stack([x.max(-1), x.mean(-1), pooled.mean(-1)], axis=-1)
  a = 1 / (1 + np.exp(-(desc @ w + bias)))
  y, inter = sa.apply(v, jnp.asarray(x), mutable=["intermediates"])
  np.testing.assert_allclose(inter["intermediates"]["spatial_map"][0][..., 0], a,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y, x * a[..., None], rtol=1e-5, atol=1e-6)


def test_conv_self_attention_residual_and_equivariance():
  rng = np.random.RandomState(5)
  x = jnp.asarray(rng.randn(2, 4, 3, 8), jnp.float32)
  mhsa = att.ConvSelfAttention(num_heads=2)
  v = fake_variables(mhsa, x, seed=5)
  y, inter = mhsa.apply(v, x, mutable=["intermediates"])
  a = inter["intermediates"]["attention"][0]
  assert a.shape == (2, 2, 12, 12)
  np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-5)
  # Zero output projection -> the residual path alone.
  v0 = jax.tree.map(lambda t: t, v)
  v0["params"]["proj"] = jax.tree.map(jnp.zeros_like, v["params"]["proj"])
  np.testing.assert_allclose(mhsa.apply(v0, x), x)
  # No positional encoding: permuting pixels permutes the output.
  perm = rng.permutation(12)
  xp = x.reshape(2, 12, 8)[:, perm].reshape(2, 4, 3, 8)
  yp = mhsa.apply(v, xp)
  np.testing.assert_allclose(yp.reshape(2, 12, 8), y.reshape(2, 12, 8)[:, perm],
                             rtol=1e-4, atol=1e-5)
  # Learnable gamma starts at 0: identity at init.
  g = att.ConvSelfAttention(num_heads=2, learnable_gamma=True)
  vg = g.init(jax.random.key(0), x)
  np.testing.assert_allclose(g.apply(vg, x), x)
  with pytest.raises(ValueError, match="num_heads"):
    att.ConvSelfAttention(num_heads=3).init(jax.random.key(0), x)


def test_fc_stack_dropout_needs_rng_only_in_train():
  m = models.get_model("resnet18", **_tiny_kwargs("resnet18", fc_dims=(16,),
                                                  dropout_rate=0.5))
  x = _images()
  v = fake_variables(m, x)
  f = jax.jit(lambda v, x, r, train: m.apply(
      v, x, train=train, mutable=["batch_stats"], rngs={"dropout": r})[0],
               static_argnums=3)
  a = f(v, x, jax.random.key(1), False)["codes_real"]
  b = f(v, x, jax.random.key(2), False)["codes_real"]
  np.testing.assert_array_equal(a, b)  # eval: dropout off
  c = f(v, x, jax.random.key(1), True)["codes_real"]
  d = f(v, x, jax.random.key(2), True)["codes_real"]
  assert c.shape == (B, K) and not np.allclose(c, d)
  assert isinstance(m, nn.Module)
