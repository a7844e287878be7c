"""The local view of the attention (ATH) two-branch models.

Given an image and its binary attention mask (made by the Grad-CAM + Otsu
stage, ``medhash_jax.cam``), ``data.local_view`` picks one of two views
(``LOCAL_VIEWS``):

* ``"multiply"`` -- seed 000's Eq. 4, x' = Mask ⊙ x at the full frame:

      local = resize(image ⊙ mask, size)

* ``"mask_and_crop"`` -- the design card's form (the default before issue
  #21): the masked image cropped to the largest component,

      local = resize((image ⊙ mask)[y0 - my : y1 + my, x0 - mx : x1 + mx], size)

  where [y0, y1) x [x0, x1) is the bounding box of the largest 8-connected
  component of the mask and (my, mx) = round(margin * (H, W)), the box
  clipped to the image.

An empty mask gives the full, unmasked image under both views (Mask ⊙ x would
be all zeros: one constant view, hence one code, for every such image); the
caller counts those as fallbacks (the pipeline reports a per-example
``local_fallback`` flag, ATH's stage record the count per split).

The data layer (``MaskStore.local_view``, training and evaluation) and ATH's
query-time views of loose files (``systems.ath.FileLocalViews``, the
retriever) all call ``local_view`` with the run's ``data.local_view``, so
training and query time build the same view.

Mask files: ``<mask_dir>/<mask_key(id)>.png`` (nonzero = foreground) or
``.npy`` (values > ``threshold``), at the native resolution of the image. A
mask whose shape differs from its image is a bad record (the error names the
mask file and the image's row), unless ``resize_masks`` allows nearest-neighbour
resizing (e.g. the COVID-19 Radiography lung masks are 256x256 for 299x299
images).

Two layouts of ``mask_dir``:

* flat: ``<mask_dir>/<key>.png``, one mask per record whatever its split
  (e.g. lung masks, which do not depend on the split);
* per split: ``<mask_dir>/<split>/<key>.png`` for split in ``MASK_SPLITS``.
  A record in two splits can then have two masks (ATH: Grad-CAM of the true
  labels where it is a training image, of the predicted ones where it is a
  database image). The layout is per split as soon as one split folder
  exists, and then every split the pipeline reads must have its folder.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from scipy import ndimage

from medhash_jax.data.records import BadRecordError

_EIGHT = np.ones((3, 3), bool)
LOCAL_VIEWS = ("multiply", "mask_and_crop")
# The view of runs recorded before data.local_view existed.
LEGACY_LOCAL_VIEW = "mask_and_crop"
MASK_SPLITS = ("train", "val", "query", "database")


def mask_key(record_id: str) -> str:
  """File stem for a record id (ids may contain '/', e.g. 'COVID/COVID-1.png')."""
  stem = os.path.splitext(record_id)[0]
  return stem.replace("/", "__").replace("\\", "__")


def mask_path(mask_dir: str, record_id: str) -> str | None:
  """The existing mask file of a record, or None."""
  stem = os.path.join(mask_dir, mask_key(record_id))
  for ext in (".png", ".npy"):
    if os.path.isfile(stem + ext):
      return stem + ext
  return None


def save_mask(mask_dir: str, record_id: str, mask: np.ndarray) -> str:
  """Writes a binary mask as PNG (used by the CAM stage and the tests)."""
  os.makedirs(mask_dir, exist_ok=True)
  p = os.path.join(mask_dir, mask_key(record_id) + ".png")
  Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).save(p)
  return p


def load_mask(path: str, *, threshold: float = 0.0, row=None) -> np.ndarray:
  """Reads a mask file as bool (H, W)."""
  try:
    if path.endswith(".npy"):
      m = np.load(path)
    else:
      with Image.open(path) as img:
        m = np.asarray(img.convert("L"))
  except (OSError, ValueError) as e:
    raise BadRecordError(f"cannot read mask ({e})", file=path, row=row) from e
  if m.ndim == 3 and m.shape[-1] == 1:
    m = m[..., 0]
  if m.ndim != 2:
    raise BadRecordError(f"mask has shape {m.shape}, expected (H, W)",
                         file=path, row=row)
  return m > threshold


def largest_component_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
  """(y0, y1, x0, x1), half-open, of the largest 8-connected component.

  Ties between equally large components go to the lowest label (first in
  raster order). None for an empty mask.
  """
  lab, n = ndimage.label(mask, structure=_EIGHT)
  if n == 0:
    return None
  sizes = np.bincount(lab.ravel())[1:]
  k = int(np.argmax(sizes)) + 1
  ys, xs = np.nonzero(lab == k)
  return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def crop_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int] | None:
  """Largest-component bbox grown by ``margin`` * (H, W), clipped."""
  bb = largest_component_bbox(mask)
  if bb is None:
    return None
  h, w = mask.shape
  my, mx = int(round(margin * h)), int(round(margin * w))
  y0, y1, x0, x1 = bb
  return max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)


def mask_and_crop(image: np.ndarray, mask: np.ndarray, *, margin: float = 0.05
                  ) -> tuple[np.ndarray, bool]:
  """Returns (local view uint8 (h', w', C) before resizing, fell_back).

  Args:
    image: uint8 (H, W, C).
    mask: bool (H, W), same H, W as the image.
    margin: relative margin added on every side of the bounding box.
  """
  if mask.shape != image.shape[:2]:
    raise ValueError(f"mask shape {mask.shape} != image shape {image.shape[:2]}")
  box = crop_box(mask, margin)
  if box is None:
    return image, True
  y0, y1, x0, x1 = box
  local = image[y0:y1, x0:x1] * mask[y0:y1, x0:x1, None].astype(image.dtype)
  return local, False


def multiply(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, bool]:
  """Returns (image ⊙ mask at the full frame, fell_back): seed 000's Eq. 4;
  an empty mask gives the full, unmasked image (module docstring)."""
  if mask.shape != image.shape[:2]:
    raise ValueError(f"mask shape {mask.shape} != image shape {image.shape[:2]}")
  if not mask.any():
    return image, True
  return image * mask[..., None].astype(image.dtype), False


def check_local_view(view: str, where: str = "data.local_view") -> str:
  if view not in LOCAL_VIEWS:
    raise ValueError(f"{where}={view!r}; expected one of {LOCAL_VIEWS}")
  return view


def local_view(image: np.ndarray, mask: np.ndarray, *, view: str,
               margin: float = 0.05) -> tuple[np.ndarray, bool]:
  """(local uint8 view before resizing, fell_back) of ``view`` (LOCAL_VIEWS);
  ``margin`` only matters for "mask_and_crop"."""
  if check_local_view(view) == "multiply":
    return multiply(image, mask)
  return mask_and_crop(image, mask, margin=margin)


def resize_mask(mask: np.ndarray, shape) -> np.ndarray:
  """bool mask resized (nearest neighbour) to (H, W) = shape."""
  h, w = int(shape[0]), int(shape[1])
  return np.asarray(Image.fromarray(np.asarray(mask, np.uint8) * 255).resize(
      (w, h), Image.Resampling.NEAREST)) > 0


class MaskStore:
  """Finds, loads and checks the mask of a record (picklable for workers)."""

  def __init__(self, mask_dir: str, *, threshold: float = 0.0,
               resize_masks: bool = False, margin: float = 0.05,
               view: str = LEGACY_LOCAL_VIEW):
    if not os.path.isdir(mask_dir):
      raise FileNotFoundError(f"data.mask_dir={mask_dir} is not a folder.")
    self.view = check_local_view(view)
    self.mask_dir = mask_dir
    self.threshold = threshold
    self.resize_masks = resize_masks
    self.margin = margin
    self.split = None   # set by for_split in the per-split layout

  @property
  def per_split(self) -> bool:
    """Whether ``mask_dir`` holds one folder per split (module docstring)."""
    return self.split is None and any(
        os.path.isdir(os.path.join(self.mask_dir, s)) for s in MASK_SPLITS)

  def for_split(self, split: str) -> "MaskStore":
    """The store a split's pipeline reads: itself in the flat layout, the
    split's folder in the per-split layout (which must then exist)."""
    if not self.per_split:
      return self
    d = os.path.join(self.mask_dir, split)
    if not os.path.isdir(d):
      present = [s for s in MASK_SPLITS
                 if os.path.isdir(os.path.join(self.mask_dir, s))]
      raise FileNotFoundError(
          f"data.mask_dir={self.mask_dir} has per-split mask folders "
          f"{present} but none for split {split!r} (expected {d})")
    store = MaskStore(d, threshold=self.threshold,
                      resize_masks=self.resize_masks, margin=self.margin,
                      view=self.view)
    store.split = split
    return store

  def local_view(self, image: np.ndarray, record_id: str, *, image_file=None,
                 row=None) -> tuple[np.ndarray, bool]:
    """(local uint8 view, fell_back) for one record; raises BadRecordError."""
    p = mask_path(self.mask_dir, record_id)
    where = f"mask of {image_file or record_id}" + (f" ({row})" if row else "")
    if p is None:
      raise BadRecordError(
          f"no mask {mask_key(record_id)}.png/.npy for this record",
          file=self.mask_dir, row=where)
    m = load_mask(p, threshold=self.threshold, row=where)
    if m.shape != image.shape[:2]:
      if not self.resize_masks:
        raise BadRecordError(
            f"mask shape {m.shape} does not match image shape {image.shape[:2]}"
            " (set data.resize_masks=True to resize masks)", file=p, row=where)
      m = resize_mask(m, image.shape[:2])
    return local_view(image, m, view=self.view, margin=self.margin)
