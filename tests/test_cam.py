"""Otsu vs scikit-image, Grad-CAM vs closed form and finite differences, the
mask cache and the overlays."""

import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage.filters import threshold_otsu as sk_otsu

from medhash_jax import cam
from medhash_jax.cam import gradcam as gc
from medhash_jax.cam import masks as masks_lib
from medhash_jax.cam import otsu


# ----------------------------------------------------------------- Otsu -----

def _blobs(rng, n, size):
  """Smooth heat maps: a few Gaussian blobs, min-max scaled like Grad-CAM's."""
  yy, xx = np.mgrid[:size, :size].astype(np.float32)
  out = np.zeros((n, size, size), np.float32)
  for i in range(n):
    for _ in range(rng.integers(1, 4)):
      cy, cx = rng.uniform(0, size, 2)
      s = rng.uniform(size / 10, size / 3)
      out[i] += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
  out -= out.min(axis=(1, 2), keepdims=True)
  return (out / out.max(axis=(1, 2), keepdims=True)).astype(np.float32)


def _heat_maps():
  """(name, (n, 28, 28)) kinds, stacked into one call (one compilation)."""
  rng = np.random.default_rng(0)
  s = (16, 28, 28)
  bimodal = ((rng.random(s) < 0.3) * rng.uniform(0.5, 1, (16, 1, 1))
             + 0.1 * rng.normal(size=s))
  zeros = _blobs(rng, 16, 28)
  zeros[:, :, :5] = 0.0           # a flat zero region, as after the ReLU
  return [
      ("uniform", rng.random(s)),
      ("normal_scaled", rng.normal(size=s) * rng.uniform(1e-3, 1e3, (16, 1, 1))),
      ("bimodal", bimodal),
      ("blobs", _blobs(rng, 32, 28)),
      ("blobs_with_zeros", zeros),
      ("quantised", rng.integers(0, 5, s) / 3.0),
      ("two_valued", np.where(rng.random(s) < 0.4, 0.25, 0.75)),
      ("small_range", 1.0 + 1e-4 * rng.random(s)),
  ]


@pytest.mark.parametrize("maps", ["mixed_28", "blobs_56", "blobs_224"])
def test_otsu_equals_skimage(maps):
  rng = np.random.default_rng(1)
  if maps == "mixed_28":
    kinds = _heat_maps()
    heat = np.concatenate([h for _, h in kinds]).astype(np.float32)
    names = [n for n, h in kinds for _ in range(len(h))]
  else:
    size = int(maps.split("_")[1])
    heat = _blobs(rng, 12 if size == 56 else 2, size)
    names = [maps] * len(heat)
  got = np.asarray(otsu.threshold_otsu(heat))
  want = np.array([sk_otsu(h) for h in heat], np.float32)
  bad = [(names[i], i) for i in np.flatnonzero(got != want)]
  assert not bad, f"differs from scikit-image on {bad}"
  mask = np.asarray(otsu.otsu_mask(heat))
  np.testing.assert_array_equal(mask, heat > want[:, None, None])


def test_otsu_histogram_matches_skimage():
  from skimage.exposure import histogram as sk_hist
  x = np.random.default_rng(1).normal(size=(40, 40)).astype(np.float32) * 17
  counts, centres = jax.jit(otsu.histogram)(x)
  want_c, want_b = sk_hist(x.ravel(), 256, source_range="image")
  np.testing.assert_array_equal(np.asarray(counts), want_c)
  np.testing.assert_array_equal(np.asarray(centres), want_b)


def test_otsu_constant_image_returns_value_and_empty_mask():
  heat = np.stack([np.full((6, 6), 0.3, np.float32), np.zeros((6, 6), np.float32)])
  t = np.asarray(otsu.threshold_otsu(heat))
  np.testing.assert_array_equal(t, [sk_otsu(heat[0]), sk_otsu(heat[1])])
  assert not np.asarray(otsu.otsu_mask(heat)).any()


def test_otsu_range_below_256_ulps():
  # numpy cannot make 256 distinct float32 edges and scikit-image raises; ours
  # still returns a threshold inside [min, max] (documented, unchecked).
  x = (1.0 + 1e-6 * np.random.default_rng(2).random((1, 16, 16))).astype(np.float32)
  with pytest.raises(ValueError, match="Too many bins"):
    sk_otsu(x[0])
  t = float(otsu.threshold_otsu(x)[0])
  assert x.min() <= t <= x.max()


def test_otsu_checks_and_single_trace():
  with pytest.raises(ValueError, match="batch"):
    otsu.threshold_otsu(np.zeros((5,), np.float32))
  with pytest.raises(ValueError, match="NaN"):
    otsu.threshold_otsu_np_checked(np.array([[[0.0, np.nan]]], np.float32))
  f = chex.assert_max_traces(n=1)(lambda x: otsu._threshold_one(x, 256))
  g = jax.jit(jax.vmap(f))
  for seed in range(3):
    g(np.random.default_rng(seed).random((2, 8, 8)).astype(np.float32))


# -------------------------------------------------------------- Grad-CAM ----

def _np_normalise(c):
  lo = c.min(axis=(1, 2), keepdims=True)
  span = c.max(axis=(1, 2), keepdims=True) - lo
  return np.where(span > 0, (c - lo) / np.where(span > 0, span, 1), 0)


def test_gradcam_linear_head_closed_form():
  # logits = mean_hw(A) @ W + b, so dy_k/dA_hwc = W_ck / (h w) and the CAM is
  # ReLU(sum_c (sum_k c_k W_ck) A_hwc) up to the positive factor 1 / (h w).
  rng = np.random.default_rng(0)
  a = rng.normal(size=(3, 5, 6, 4)).astype(np.float32)
  w = rng.normal(size=(4, 3)).astype(np.float32)
  b = rng.normal(size=(3,)).astype(np.float32)
  head = lambda f: jnp.mean(f, axis=(1, 2)) @ w + b
  labels = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], np.float32)
  heat, logits = jax.jit(lambda f, y: gc.gradcam(head, f, y, mode="true",
                                                 multi_label=True))(a, labels)
  np_logits = a.mean(axis=(1, 2)) @ w + b
  np.testing.assert_allclose(logits, np_logits, rtol=1e-5, atol=1e-5)
  sel = labels.copy()
  pos = np_logits[2] > 0    # row without labels: the predicted classes
  sel[2] = pos if pos.any() else np.eye(3)[np_logits[2].argmax()]
  want = _np_normalise(np.maximum(np.einsum("bhwc,bc->bhw", a, sel @ w.T), 0))
  np.testing.assert_allclose(heat, want, atol=1e-5)
  assert heat.shape == (3, 5, 6)

  up, _ = gc.gradcam(head, a, labels, mode="true", multi_label=True,
                     image_size=(20, 24))
  raw = np.maximum(np.einsum("bhwc,bc->bhw", a, sel @ w.T), 0) / 30.0
  want_up = _np_normalise(np.asarray(jax.image.resize(raw, (3, 20, 24), "bilinear")))
  np.testing.assert_allclose(up, want_up, atol=1e-5)
  assert up.shape == (3, 20, 24) and float(up.min()) >= 0 and float(up.max()) <= 1


def _np_conv_head(a, k, w):
  """float64 numpy: logits = mean_hw(tanh(conv3x3_same(A))) @ W."""
  bsz, h, wd, _ = a.shape
  p = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
  z = np.zeros((bsz, h, wd, k.shape[-1]))
  for dy in range(3):
    for dx in range(3):
      z += np.einsum("bhwc,cd->bhwd", p[:, dy:dy + h, dx:dx + wd], k[dy, dx])
  return np.tanh(z).mean(axis=(1, 2)) @ w


def test_gradcam_conv_head_finite_differences():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(2, 4, 4, 3))
  k = rng.normal(size=(3, 3, 3, 5)) * 0.5
  w = rng.normal(size=(5, 4))

  def head(f):
    z = jax.lax.conv_general_dilated(f, jnp.asarray(k, jnp.float32), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(z).mean(axis=(1, 2)) @ jnp.asarray(w, jnp.float32)

  heat, logits = gc.gradcam(head, jnp.asarray(a, jnp.float32), mode="predicted")
  np.testing.assert_allclose(logits, _np_conv_head(a, k, w), atol=1e-4)
  cls = _np_conv_head(a, k, w).argmax(-1)
  eps = 1e-5
  grads = np.zeros_like(a)
  for idx in np.ndindex(a.shape):
    d = np.zeros_like(a)
    d[idx] = eps
    s = lambda x: _np_conv_head(x, k, w)[idx[0], cls[idx[0]]]
    grads[idx] = (s(a + d) - s(a - d)) / (2 * eps)
  alpha = grads.mean(axis=(1, 2))
  want = _np_normalise(np.maximum(np.einsum("bhwc,bc->bhw", a, alpha), 0))
  np.testing.assert_allclose(heat, want, atol=1e-4)


def test_class_weights_modes():
  logits = jnp.array([[2.0, -1.0, 0.5], [-1.0, -2.0, -0.5]])
  np.testing.assert_array_equal(
      gc.class_weights(logits, mode="predicted"), [[1, 0, 0], [0, 0, 1]])
  np.testing.assert_array_equal(
      gc.class_weights(logits, mode="predicted", multi_label=True),
      [[1, 0, 1], [0, 0, 1]])
  labels = jnp.array([[0, 1, 1], [0, 0, 0]], jnp.float32)
  np.testing.assert_array_equal(
      gc.class_weights(logits, labels, mode="true", multi_label=True),
      [[0, 1, 1], [0, 0, 1]])
  with pytest.raises(ValueError, match="unknown"):
    gc.class_weights(logits, labels, mode="label")
  with pytest.raises(ValueError, match="labels"):
    gc.class_weights(logits, mode="true")


class _Trunk(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
    return nn.Conv(6, (3, 3))(x)


class _Classifier(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    f = _Trunk(name="features")(x)
    return nn.Dense(3, name="head")(jnp.mean(nn.relu(f), axis=(1, 2)))


def test_gradcam_flax_matches_generic():
  model = _Classifier()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 16, 16, 1)), jnp.float32)
  # Random variables of init's shapes (init itself compiles slowly on CPU).
  shapes = jax.eval_shape(model.init, jax.random.key(1), x)
  variables = jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.5, jnp.float32), shapes)
  labels = jnp.array([[0, 1, 0], [1, 0, 1]], jnp.float32)
  cam_fn = gc.make_cam_fn(model, variables, layer="features", mode="true",
                          multi_label=True, apply_kwargs={"train": False})
  heat = cam_fn(x, labels)

  @jax.jit
  def generic(x, labels):
    fmap = _Trunk().apply({"params": variables["params"]["features"]}, x)
    head = lambda f: nn.Dense(3).apply({"params": variables["params"]["head"]},
                                       jnp.mean(nn.relu(f), axis=(1, 2)))
    return gc.gradcam(head, fmap, labels, mode="true", multi_label=True,
                      image_size=(16, 16))

  want, _ = generic(x, labels)
  np.testing.assert_allclose(heat, want, atol=1e-5)
  assert heat.shape == (2, 16, 16)
  # The full path also names the layer; a missing layer fails at trace time.
  heat2, logits = jax.jit(lambda v, x: gc.gradcam_flax(
      model, v, x, layer="features", mode="predicted"))(variables, x)
  np.testing.assert_allclose(logits, model.apply(variables, x), atol=1e-5)
  assert heat2.shape == (2, 16, 16)
  with pytest.raises(ValueError, match="ran 0 times"):
    jax.eval_shape(lambda: gc.gradcam_flax(model, variables, x, layer="nope"))
  with pytest.raises(ValueError, match="unknown"):
    gc.make_cam_fn(model, variables, layer="features", mode="x")


def test_gradcam_on_project_densenet_classifier():
  """The models package's split (backbone_features / from_feature_map) and the
  interceptor on its backbone agree with a hand-written jax.grad."""
  from medhash_jax import models
  m = models.get_model("densenet121_classifier", num_classes=3, small_input=True,
                       block_config=(1, 1), growth_rate=4, num_init_features=8)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 16, 16, 1)), jnp.float32)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "batch_stats" in name:
      return jnp.ones(s.shape) if "var" in name else jnp.zeros(s.shape)
    return jnp.asarray(rng.normal(size=s.shape) * 0.3, s.dtype)

  v = jax.tree_util.tree_map_with_path(fill, jax.eval_shape(m.init, jax.random.key(0), x))
  labels = jnp.array([[1, 0, 1], [0, 0, 0]], jnp.float32)

  @jax.jit
  def all_three(v, x, labels):
    h1, logits = gc.gradcam_split(m, v, x, labels, mode="true", multi_label=True)
    h2, _ = gc.gradcam_flax(m, v, x, labels, layer="backbone", mode="true",
                            multi_label=True)
    fmap = m.apply(v, x, method="backbone_features")["feature_map"]
    sel = gc.class_weights(logits, labels, mode="true", multi_label=True)
    g = jax.grad(lambda f: jnp.sum(
        m.apply(v, f, method="from_feature_map")["logits"] * sel))(fmap)
    return h1, h2, gc.cam_from_gradients(fmap, g, (16, 16))

  h1, h2, want = all_three(v, x, labels)
  np.testing.assert_allclose(h1, want, atol=1e-6)
  np.testing.assert_allclose(h2, want, atol=1e-6)
  cam_fn = gc.make_cam_fn(m, v, mode="true", multi_label=True,
                          apply_kwargs={"train": False})
  np.testing.assert_allclose(cam_fn(x, labels), want, atol=1e-6)
  with pytest.raises(ValueError, match="pass labels"):
    cam_fn(x)


# ----------------------------------------------------------------- masks ----

def _fake_cam(images, labels=None):
  return gc.normalize(jnp.asarray(images)[..., 0])


def _batches(images, bs, order):
  """Eval-style batches: shuffled positions, padded last batch."""
  n = len(images)
  for s in range(0, n, bs):
    pos = order[s:s + bs]
    pad = bs - len(pos)
    idx = np.concatenate([pos, -np.ones(pad, int)])
    img = np.concatenate([images[pos], np.zeros((pad,) + images.shape[1:], np.float32)])
    yield dict(image=img, index=idx, valid=idx >= 0,
               labels=np.zeros((bs, 2), np.float32))


def test_compute_masks_and_cache(tmp_path):
  rng = np.random.default_rng(0)
  images = _blobs(rng, 7, 24)[..., None]
  order = rng.permutation(7)
  got, heat = masks_lib.compute_masks(_fake_cam, _batches(images, 3, order),
                                      num_examples=7, return_heat=True)
  want = np.stack([im[..., 0] > sk_otsu(im[..., 0]) for im in images])
  np.testing.assert_array_equal(got, want.astype(np.uint8))
  assert got.dtype == np.uint8 and heat.shape == (7, 24, 24)
  # Batch-sharded over the (fake) devices: same masks.
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  ndev = min(4, jax.device_count())
  mesh = Mesh(np.array(jax.devices()[:ndev]), ("data",))
  put = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
  sharded = masks_lib.compute_masks(_fake_cam, _batches(images, ndev, order),
                                    num_examples=7, put_fn=put)
  np.testing.assert_array_equal(sharded, got)
  with pytest.raises(ValueError, match="no mask"):
    masks_lib.compute_masks(_fake_cam, _batches(images[:5], 3, np.arange(5)),
                            num_examples=7)

  root = str(tmp_path / "masks")
  ids = [f"cls/img_{i}.png" for i in range(7)]
  calls = []

  def compute():
    calls.append(1)
    return got

  png_dir = str(tmp_path / "png")
  m, reused = cam.ensure_masks(root, "train", ids, compute, png_dir=png_dir)
  assert not reused and len(calls) == 1
  np.testing.assert_array_equal(m, got)
  m2, reused = cam.ensure_masks(root, "train", ids, compute, png_dir=png_dir)
  assert reused and len(calls) == 1
  np.testing.assert_array_equal(m2, got)
  assert not [f for f in os.listdir(root) if f.startswith(".tmp")]
  assert sorted(os.listdir(root)) == ["train.ids.json", "train.npy"]

  with pytest.raises(cam.MaskCacheError, match="position 2"):
    cam.ensure_masks(root, "train", ids[:2] + ["x"] + ids[3:], compute)
  with pytest.raises(cam.MaskCacheError, match="7 examples"):
    cam.load_masks(root, "train", ids[:6])
  _, reused = cam.ensure_masks(root, "train", ids[::-1], compute, overwrite=True)
  assert not reused and len(calls) == 2
  np.save(os.path.join(root, "train.npy"), got[:5])
  with pytest.raises(cam.MaskCacheError, match="5 masks"):
    cam.load_masks(root, "train")

  # The data layer's mask-and-crop reads the exported PNGs.
  from medhash_jax.data import mask_crop
  for i, rid in enumerate(ids):
    p = mask_crop.mask_path(png_dir, rid)
    assert p is not None and p.endswith(".png")
    np.testing.assert_array_equal(mask_crop.load_mask(p), got[i] > 0)


# --------------------------------------------------------------- overlays ---

def test_overlay_png(tmp_path):
  np.testing.assert_array_equal(cam.jet(np.array([0.0, 0.5, 1.0])),
                                [[0, 0, 128], [128, 255, 128], [128, 0, 0]])
  img = np.random.default_rng(0).normal(size=(2, 20, 24, 1)).astype(np.float32)
  heat = np.zeros((2, 20, 24), np.float32)
  heat[:, 5:15, 6:18] = 1.0
  mask = heat > 0.5
  paths = cam.write_overlays(str(tmp_path), img, heat, mask, names=["a/b.png", "c"])
  assert [os.path.basename(p) for p in paths] == ["a__b.png", "c.png"]
  with Image.open(paths[0]) as im:
    assert im.size == (48, 20) and im.mode == "RGB"
    arr = np.asarray(im)
  ov = arr[:, 24:]
  assert tuple(ov[5, 10]) == (255, 255, 255)      # outline (inner boundary)
  assert tuple(ov[0, 0]) != (255, 255, 255)
  assert ov[10, 12, 0] > ov[10, 12, 2]            # hot inside: red over blue
  assert ov[0, 0, 2] > ov[0, 0, 0]                # cold outside: blue
