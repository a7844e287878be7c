"""Mask-and-crop geometry against hand computation and skimage's labelling."""

import numpy as np
import pytest
from skimage import measure

from medhash_jax.data import mask_crop
from medhash_jax.data.records import BadRecordError


def _reference_box(mask, margin):
  """Independent reference: skimage.measure.label (8-connectivity)."""
  lab = measure.label(mask, connectivity=2)
  if lab.max() == 0:
    return None
  sizes = [(lab == k).sum() for k in range(1, lab.max() + 1)]
  k = int(np.argmax(sizes)) + 1  # first largest in raster order, as ours
  props = measure.regionprops((lab == k).astype(int))[0]
  y0, x0, y1, x1 = props.bbox
  h, w = mask.shape
  my, mx = round(margin * h), round(margin * w)
  return max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)


def test_hand_computed_example():
  image = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)
  mask = np.zeros((40, 50), bool)
  mask[10:20, 5:15] = True          # 100 px, the largest
  mask[30:33, 40:43] = True         # 9 px
  mask[11, 6] = False               # a hole does not change the box
  local, fell_back = mask_crop.mask_and_crop(image, mask, margin=0.1)
  assert not fell_back
  # margin: round(0.1 * 40) = 4 rows, round(0.1 * 50) = 5 columns.
  y0, y1, x0, x1 = 10 - 4, 20 + 4, max(0, 5 - 5), 15 + 5
  assert local.shape == (y1 - y0, x1 - x0, 3) == (18, 20, 3)
  expected = image[y0:y1, x0:x1] * mask[y0:y1, x0:x1, None]
  np.testing.assert_array_equal(local, expected)
  assert local[11 - y0, 6 - x0].sum() == 0 and local[12 - y0, 7 - x0].sum() > 0


def test_diagonal_pixels_are_one_component():
  mask = np.zeros((10, 10), bool)
  mask[[2, 3, 4], [2, 3, 4]] = True   # 3 px diagonal: one 8-connected component
  mask[7:9, 7:9] = True               # 4 px square
  assert mask_crop.largest_component_bbox(mask) == (7, 9, 7, 9)
  mask[5, 5] = True
  mask[6, 6] = True                   # the diagonal now touches the square
  assert mask_crop.largest_component_bbox(mask) == (2, 9, 2, 9)


@pytest.mark.parametrize("seed", range(12))
def test_random_masks_match_skimage(seed):
  rng = np.random.default_rng(seed)
  h, w = rng.integers(8, 60, size=2)
  mask = rng.random((h, w)) < rng.uniform(0.05, 0.5)
  margin = float(rng.choice([0.0, 0.05, 0.2]))
  assert mask_crop.crop_box(mask, margin) == _reference_box(mask, margin)


def test_empty_mask_falls_back_to_full_image():
  image = np.full((6, 7, 1), 9, np.uint8)
  local, fell_back = mask_crop.mask_and_crop(image, np.zeros((6, 7), bool))
  assert fell_back and local is image


def test_mask_store_shape_mismatch_names_mask_and_row(tmp_path):
  mask_crop.save_mask(str(tmp_path), "COVID/COVID-1.png", np.ones((5, 5)))
  assert (tmp_path / "COVID__COVID-1.png").is_file()
  store = mask_crop.MaskStore(str(tmp_path))
  img = np.zeros((6, 6, 1), np.uint8)
  with pytest.raises(BadRecordError, match=r"COVID__COVID-1\.png.*line 3 of l\.csv.*"
                     r"\(5, 5\) does not match image shape \(6, 6\)"):
    store.local_view(img, "COVID/COVID-1.png", image_file="x.png",
                     row="line 3 of l.csv")
  resized = mask_crop.MaskStore(str(tmp_path), resize_masks=True)
  local, fell_back = resized.local_view(img, "COVID/COVID-1.png")
  assert not fell_back and local.shape == (6, 6, 1)
  with pytest.raises(BadRecordError, match="no mask"):
    store.local_view(img, "other")


def test_npy_masks_threshold(tmp_path):
  m = np.zeros((8, 8), np.float32)
  m[2:4, 2:6] = 0.9
  m[6, 6] = 0.3
  np.save(tmp_path / "a.npy", m)
  store = mask_crop.MaskStore(str(tmp_path), threshold=0.5, margin=0.0)
  local, _ = store.local_view(np.ones((8, 8, 3), np.uint8), "a.png")
  assert local.shape == (2, 4, 3)


def test_per_split_layout_reads_each_splits_mask(tmp_path):
  """<mask_dir>/<split>/: the same record has a different mask per split."""
  m_train = np.zeros((6, 6), bool)
  m_train[0:2, 0:3] = True
  m_db = np.zeros((6, 6), bool)
  m_db[1:5, 2:6] = True
  mask_crop.save_mask(str(tmp_path / "train"), "r1.png", m_train)
  mask_crop.save_mask(str(tmp_path / "database"), "r1.png", m_db)
  store = mask_crop.MaskStore(str(tmp_path), margin=0.0)
  assert store.per_split
  img = np.arange(36, dtype=np.uint8).reshape(6, 6, 1)
  local_train, _ = store.for_split("train").local_view(img, "r1.png")
  local_db, _ = store.for_split("database").local_view(img, "r1.png")
  np.testing.assert_array_equal(local_train, img[0:2, 0:3])
  np.testing.assert_array_equal(local_db, img[1:5, 2:6])
  # A split without its folder is an error naming the folder and the split.
  with pytest.raises(FileNotFoundError, match=r"none for split 'query'"):
    store.for_split("query")
  # A flat folder serves every split from the same files.
  flat = mask_crop.MaskStore(str(tmp_path / "train"))
  assert not flat.per_split and flat.for_split("query") is flat


# ---------------------------------------------- data.local_view (issue #21) --

def _real_image_and_mask(covid_pngs):
  """A staged chest X-ray (uint8 (H, W, 3)) and a two-blob mask."""
  from medhash_jax.data import transforms
  image = transforms.to_channels(transforms.decode_image(covid_pngs[0]), 3)
  h, w = image.shape[:2]
  mask = np.zeros((h, w), bool)
  mask[h // 4:h // 2, w // 5:w // 2] = True
  mask[3 * h // 4:3 * h // 4 + 4, 3 * w // 4:3 * w // 4 + 4] = True
  return image, mask


def test_multiply_view_is_mask_times_image_at_full_frame(covid_pngs, tmp_path):
  """Catches: the multiply view cropping, not masking, masking the wrong
  channels, or an empty mask giving zeros (or not counted as a fallback);
  and the mask_and_crop view changed by the new option."""
  image, mask = _real_image_and_mask(covid_pngs)
  want = mask[..., None] * image                    # seed 000 Eq. 4, numpy
  got, fell_back = mask_crop.local_view(image, mask, view="multiply")
  assert not fell_back and got.dtype == np.uint8
  np.testing.assert_array_equal(got, want)
  assert got.shape == image.shape and got.any()
  # mask_and_crop is the old view, unchanged: the masked largest box.
  crop, _ = mask_crop.local_view(image, mask, view="mask_and_crop", margin=0.0)
  y0, y1, x0, x1 = _reference_box(mask, 0.0)
  np.testing.assert_array_equal(crop, want[y0:y1, x0:x1])
  # Empty mask: the full image under both views, counted as a fallback.
  for view in mask_crop.LOCAL_VIEWS:
    local, fell = mask_crop.local_view(image, np.zeros_like(mask), view=view)
    assert fell and local is image, view
  with pytest.raises(ValueError, match=r"data.local_view='crop'"):
    mask_crop.local_view(image, mask, view="crop")
  # The data layer's store builds the same views from a mask file.
  mask_crop.save_mask(str(tmp_path), "x.png", mask)
  for view, ref in (("multiply", want), ("mask_and_crop", crop)):
    store = mask_crop.MaskStore(str(tmp_path), margin=0.0, view=view)
    local, _ = store.for_split("train").local_view(image, "x.png")
    np.testing.assert_array_equal(local, ref)
  # The default store (and runs recorded before the option) crop.
  assert mask_crop.MaskStore(str(tmp_path)).view == "mask_and_crop"
  with pytest.raises(ValueError, match="data.local_view"):
    mask_crop.MaskStore(str(tmp_path), view="nope")
