"""Image decoding and per-example transforms (numpy/PIL, run in grain workers).

Decoding: PNG/JPEG/BMP/TIFF through Pillow; DICOM (a ``.dcm`` file, or any file
with the DICM magic) through `data.dicom` (pydicom, an optional dependency
imported only when a DICOM file is met). Everything becomes uint8
(H, W, C) with C = 1 (grayscale) or 3 (RGB); 16-bit PNGs are rescaled by their
own min/max.

Transforms work on uint8 images and end in float32 normalisation, so the heavy
work (resampling) happens on 1 byte per pixel. Augmentation (training only):
random resized crop, horizontal/vertical flip, small rotation.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from PIL import Image

from medhash_jax.data.records import BadRecordError

_DICOM_EXT = (".dcm", ".dicom")
_PIL_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
# Large downscales first reduce by an integer factor (box filter), then
# resample; Pillow documents 3.0 as indistinguishable from a full resampling.
_REDUCING_GAP = 3.0

# ImageNet statistics for ImageNet-pretrained backbones; "half" maps [0,1] to
# [-1, 1]; "none" keeps [0, 1].
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def _read_dicom(path: str) -> np.ndarray:
  """DICOM through the one decoder (`data.dicom`): modality LUT, VOI window,
  MONOCHROME1 inverted. uint8 (H, W, C)."""
  from medhash_jax.data import dicom  # pylint: disable=g-import-not-at-top
  try:
    return dicom.read_dicom_file(path)
  except ImportError as e:
    raise ImportError(
        f"Reading DICOM file {path} needs pydicom, which is not installed; "
        "install it with `pip install pydicom`.") from e


def _is_dicom_file(path: str) -> bool:
  """By extension, or by the DICM magic for names without a known image
  extension (DICOM files often have none; PNG/JPEG names skip the read)."""
  low = path.lower()
  if low.endswith(_DICOM_EXT):
    return True
  if low.endswith(_PIL_EXT):
    return False
  from medhash_jax.data import dicom  # pylint: disable=g-import-not-at-top
  try:
    with open(path, "rb") as f:
      return dicom.sniff(f.read(132)) == "dicom"
  except OSError:
    return False


def _pil_to_array(img: Image.Image) -> np.ndarray:
  if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    arr = np.asarray(img, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / max(hi - lo, 1e-6) * 255.0
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)[..., None]
  if img.mode == "1":
    img = img.convert("L")
  elif img.mode not in ("L", "RGB"):
    # Palette, LA, RGBA, CMYK, YCbCr: grayscale stays grayscale.
    img = img.convert("L" if img.mode in ("LA", "P") and _is_gray_palette(img)
                      else "RGB")
  arr = np.asarray(img, dtype=np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def _is_gray_palette(img: Image.Image) -> bool:
  if img.mode == "LA":
    return True
  pal = img.getpalette()
  if not pal:
    return True
  pal = np.asarray(pal[: 3 * 256]).reshape(-1, 3)
  return bool(np.all(pal[:, 0] == pal[:, 1]) and np.all(pal[:, 1] == pal[:, 2]))


def decode_image(path: str | os.PathLike, *, row: Any = None,
                 draft_size: int | None = None) -> np.ndarray:
  """Reads an image file as uint8 (H, W, C).

  Args:
    path: PNG/JPEG/... or DICOM file.
    row: where the file was referenced (for the error message).
    draft_size: JPEG only; lets libjpeg decode at a reduced scale no smaller
      than this (a large speed-up for big JPEGs that are resized anyway).

  Raises:
    BadRecordError: naming the file and row when it cannot be read.
  """
  path = os.fspath(path)
  try:
    if _is_dicom_file(path):
      arr = _read_dicom(path)
      return arr[..., None] if arr.ndim == 2 else arr
    with Image.open(path) as img:
      if draft_size and img.format == "JPEG":
        img.draft(img.mode, (draft_size, draft_size))
      img.load()
      return _pil_to_array(img)
  except ImportError:
    raise
  except FileNotFoundError as e:
    raise BadRecordError("image file is missing", file=path, row=row) from e
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise BadRecordError(f"cannot decode image ({e})", file=path, row=row) from e


def check_image_file(path: str, mode: str, *, row: Any = None) -> None:
  """Cheap validity checks used when a source is built (``data.verify``)."""
  if not os.path.isfile(path):
    raise BadRecordError("image file is missing", file=path, row=row)
  if mode == "exists":
    return
  if mode == "decode":
    decode_image(path, row=row)
    return
  if path.lower().endswith(_DICOM_EXT):
    return
  try:
    with Image.open(path) as img:
      img.size  # pylint: disable=pointless-statement
  except (OSError, ValueError, SyntaxError) as e:
    raise BadRecordError(f"not a readable image ({e})", file=path, row=row) from e


# ----------------------------------------------------------------------------
# Geometry and colour.


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
  """Grayscale -> RGB by repetition, RGB -> grayscale by ITU-R 601 luma."""
  c = img.shape[-1]
  if c == channels:
    return img
  if c == 1 and channels == 3:
    return np.repeat(img, 3, axis=-1)
  if c == 3 and channels == 1:
    luma = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(luma + 0.5, 0, 255).astype(np.uint8)[..., None]
  raise ValueError(f"cannot convert {c} channels to {channels}")


def _to_pil(img: np.ndarray) -> Image.Image:
  return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def _from_pil(img: Image.Image) -> np.ndarray:
  arr = np.asarray(img, dtype=np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def resize(img: np.ndarray, size: int | tuple[int, int],
           box: tuple[float, float, float, float] | None = None) -> np.ndarray:
  """Bilinear (antialiased) resize of uint8 (H, W, C) to (size, size, C).

  ``box`` = (left, upper, right, lower) crops before resizing, in one pass.
  """
  h_out, w_out = (size, size) if isinstance(size, int) else size
  if box is None and img.shape[0] == h_out and img.shape[1] == w_out:
    return img
  pil = _to_pil(img).resize((w_out, h_out), Image.Resampling.BILINEAR, box=box,
                            reducing_gap=_REDUCING_GAP)
  return _from_pil(pil)


def random_resized_crop_box(h: int, w: int, rng: np.random.Generator,
                            scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3)):
  """A torchvision-style random crop box (left, upper, right, lower)."""
  area = h * w
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      return (left, top, left + cw, top + ch)
  # Fallback: the central crop at the closest allowed aspect ratio.
  in_ratio = w / h
  if in_ratio < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif in_ratio > ratio[1]:
    ch, cw = h, int(round(h * ratio[1]))
  else:
    cw, ch = w, h
  top, left = (h - ch) // 2, (w - cw) // 2
  return (left, top, left + cw, top + ch)


class Preprocessor:
  """uint8 native image -> float32 (size, size, channels), normalised.

  Picklable (grain sends it to worker processes). ``rng=None`` means eval:
  no augmentation.
  """

  def __init__(self, *, image_size: int, channels: int = 3,
               normalize: str = "imagenet", augment: dict | None = None,
               image_dtype: str = "float32"):
    if image_dtype not in ("float32", "uint8"):
      raise ValueError(f"data.image_dtype must be 'float32' or 'uint8', got "
                       f"{image_dtype!r}")
    self.image_dtype = image_dtype
    if normalize not in NORMALIZATIONS:
      raise ValueError(f"data.normalize must be one of {sorted(NORMALIZATIONS)},"
                       f" got {normalize!r}")
    if channels not in (1, 3):
      raise ValueError(f"data.channels must be 1 or 3, got {channels}")
    self.image_size = int(image_size)
    self.channels = int(channels)
    self._scale, self._shift = normalization_constants(normalize, channels)
    augment = dict(augment or {})
    self.augment = bool(augment.get("enabled", False))
    self.crop_scale = tuple(augment.get("crop_scale", (0.8, 1.0)))
    self.random_resized_crop = bool(augment.get("random_resized_crop", True))
    self.hflip = bool(augment.get("hflip", True))
    self.vflip = bool(augment.get("vflip", False))
    self.rotate_degrees = float(augment.get("rotate_degrees", 0.0))

  def geometry(self, img: np.ndarray,
               rng: np.random.Generator | None) -> np.ndarray:
    """Resize (+ augmentation when rng is given); uint8 in, uint8 out."""
    s = self.image_size
    if rng is None or not self.augment:
      return resize(img, s)
    h, w = img.shape[:2]
    box = (random_resized_crop_box(h, w, rng, self.crop_scale)
           if self.random_resized_crop else None)
    # Crop + resize first, rotate at the output size: the cost no longer grows
    # with the input (a 1024^2 X-ray rotated at full size costs ~10 ms).
    pil = _to_pil(img).resize((s, s), Image.Resampling.BILINEAR, box=box,
                              reducing_gap=_REDUCING_GAP)
    if self.rotate_degrees > 0:
      angle = float(rng.uniform(-self.rotate_degrees, self.rotate_degrees))
      pil = pil.rotate(angle, resample=Image.Resampling.BILINEAR)
    if self.hflip and rng.random() < 0.5:
      pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if self.vflip and rng.random() < 0.5:
      pil = pil.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return _from_pil(pil)

  def finish(self, img: np.ndarray) -> np.ndarray:
    """Channels + normalisation: uint8 (s, s, c) -> float32 (s, s, channels).

    With ``image_dtype="uint8"`` the image stays uint8 (4x fewer bytes through
    the pipeline and to the device); normalise it there with
    :func:`normalize_images`.
    """
    img = to_channels(img, self.channels)
    if self.image_dtype == "uint8":
      return np.ascontiguousarray(img)
    out = np.multiply(img, self._scale, dtype=np.float32)
    out += self._shift
    return out

  def __call__(self, img: np.ndarray,
               rng: np.random.Generator | None = None) -> np.ndarray:
    # Channel conversion after resizing: 3x less resampling for gray -> RGB.
    return self.finish(self.geometry(img, rng))

  def zeros(self) -> np.ndarray:
    return np.zeros((self.image_size, self.image_size, self.channels),
                    np.dtype(self.image_dtype))


def normalization_constants(normalize: str, channels: int):
  """(scale, shift) with normalised = uint8 * scale + shift, per channel."""
  if normalize not in NORMALIZATIONS:
    raise ValueError(f"data.normalize must be one of {sorted(NORMALIZATIONS)}, "
                     f"got {normalize!r}")
  mean, std = NORMALIZATIONS[normalize]
  mean, std = np.asarray(mean[:channels], np.float32), np.asarray(std[:channels], np.float32)
  # Fold /255 and the normalisation into one multiply-add.
  return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def normalize_images(images, normalize: str = "imagenet"):
  """uint8 (..., C) -> float32 normalised; numpy or jax arrays (on device).

  The device-side twin of the pipeline's normalisation for
  ``data.image_dtype="uint8"``; e.g. in the jitted step:
  ``x = normalize_images(batch["image"], config.data.normalize)``.
  """
  scale, shift = normalization_constants(normalize, images.shape[-1])
  return images.astype(np.float32) * scale + shift
