"""Per-example transforms: channels, normalisation, resizing, augmentation."""

import numpy as np
from PIL import Image
import pytest

from medhash_jax.data import transforms
from medhash_jax.data.config import default_data_config


def test_channel_conversion():
  g = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
  rgb = transforms.to_channels(g, 3)
  assert rgb.shape == (3, 4, 3) and (rgb == g).all()
  back = transforms.to_channels(rgb, 1)
  np.testing.assert_array_equal(back, g)
  with pytest.raises(ValueError):
    transforms.to_channels(np.zeros((2, 2, 2), np.uint8), 3)


def test_normalisation_values():
  img = np.array([[[0], [255]]], np.uint8)
  pre = transforms.Preprocessor(image_size=2, channels=3, normalize="imagenet")
  out = pre.finish(np.repeat(img, 1, axis=0))
  mean, std = transforms.NORMALIZATIONS["imagenet"]
  np.testing.assert_allclose(out[0, 0], -np.array(mean) / std, rtol=1e-6)
  np.testing.assert_allclose(out[0, 1], (1 - np.array(mean)) / std, rtol=1e-6)
  half = transforms.Preprocessor(image_size=2, channels=1, normalize="half")
  np.testing.assert_allclose(half.finish(img)[..., 0], [[-1, 1]], atol=1e-6)


def test_resize_and_eval_is_deterministic():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)
  pre = transforms.Preprocessor(image_size=24, channels=3,
                                augment=default_data_config().augment.to_dict())
  a = pre(img)
  assert a.shape == (24, 24, 3) and a.dtype == np.float32
  np.testing.assert_array_equal(a, pre(img))  # rng=None: no augmentation
  r1 = pre(img, np.random.default_rng(1))
  r2 = pre(img, np.random.default_rng(1))
  r3 = pre(img, np.random.default_rng(2))
  np.testing.assert_array_equal(r1, r2)
  assert not np.array_equal(r1, r3)


def test_random_resized_crop_box_bounds():
  rng = np.random.default_rng(0)
  for _ in range(200):
    h, w = rng.integers(5, 300, size=2)
    l, t, r, b = transforms.random_resized_crop_box(int(h), int(w), rng, (0.3, 1.0))
    assert 0 <= l < r <= w and 0 <= t < b <= h


def test_jpeg_draft_decodes_smaller(tmp_path):
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(
      tmp_path / "a.jpg", quality=90)
  full = transforms.decode_image(tmp_path / "a.jpg")
  small = transforms.decode_image(tmp_path / "a.jpg", draft_size=100)
  assert full.shape == (512, 512, 3)
  assert 100 <= small.shape[0] < 512 and small.shape[-1] == 3


def test_uint8_output_then_device_normalisation_matches():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 255, (30, 20, 1), dtype=np.uint8)
  f32 = transforms.Preprocessor(image_size=16, channels=3)
  u8 = transforms.Preprocessor(image_size=16, channels=3, image_dtype="uint8")
  raw = u8(img)
  assert raw.dtype == np.uint8 and raw.shape == (16, 16, 3)
  np.testing.assert_allclose(transforms.normalize_images(raw[None])[0], f32(img),
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="image_dtype"):
    transforms.Preprocessor(image_size=16, image_dtype="float16")
