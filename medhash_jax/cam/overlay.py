"""Grad-CAM overlays: the heat map colour-mapped over the image, plus the Otsu
mask's outline, as PNG (PIL only; no matplotlib).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

OUTLINE_RGB = (255, 255, 255)


def jet(x: np.ndarray) -> np.ndarray:
  """The 'jet' colour map: [0, 1] (...) -> uint8 (..., 3), blue -> red."""
  x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)[..., None]
  centres = np.array([3.0, 2.0, 1.0], np.float32)     # r, g, b
  rgb = np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)
  return np.round(rgb * 255).astype(np.uint8)


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
  """A model input (H, W, C), any range (e.g. normalised), -> uint8 (H, W, 3).

  uint8 passes through; floats are min-max scaled per image for display.
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.dtype != np.uint8:
    x = image.astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    image = np.round(x * 255).astype(np.uint8)
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image[..., :3]


def overlay_image(image: np.ndarray, heat: np.ndarray, mask: np.ndarray | None = None,
            *, alpha: float = 0.45,
            outline_rgb: Sequence[int] = OUTLINE_RGB) -> np.ndarray:
  """Blends jet(heat) over the image and draws the mask outline.

  Args:
    image: (H, W, C) or (H, W), uint8 or float (scaled for display).
    heat: (H, W) heat map in [0, 1].
    mask: optional (H, W) binary mask; its boundary pixels
      (``find_boundaries(mode="inner")``) are painted ``outline_rgb``.
    alpha: weight of the heat map.

  Returns:
    uint8 (H, W, 3).
  """
  rgb = to_uint8_rgb(image)
  heat = np.asarray(heat, np.float32)
  if heat.shape != rgb.shape[:2]:
    raise ValueError(f"heat map shape {heat.shape} != image shape "
                     f"{rgb.shape[:2]}")
  out = (1 - alpha) * rgb.astype(np.float32) + alpha * jet(heat).astype(np.float32)
  out = np.round(out).astype(np.uint8)
  if mask is not None:
    mask = np.asarray(mask) > 0
    if mask.shape != heat.shape:
      raise ValueError(f"mask shape {mask.shape} != heat map shape {heat.shape}")
    out[find_boundaries(mask, mode="inner")] = np.asarray(outline_rgb, np.uint8)
  return out


def overlay_strip(image, heat, mask=None, *, alpha: float = 0.45) -> np.ndarray:
  """[image | overlay] side by side, uint8 (H, 2W, 3)."""
  return np.concatenate(
      [to_uint8_rgb(image), overlay_image(image, heat, mask, alpha=alpha)], axis=1)


def write_overlays(out_dir: str, images, heats, masks=None,
                   names: Sequence[str] | None = None, *,
                   alpha: float = 0.45, side_by_side: bool = True) -> list[str]:
  """Writes one PNG per image; returns the paths.

  Args:
    out_dir: folder (created).
    images: (N, H, W, C); heats: (N, H, W) in [0, 1]; masks: (N, H, W) or None.
    names: file stems (default "cam_00000", ...); "/" becomes "__".
    side_by_side: write [image | overlay] instead of the overlay alone.
  """
  os.makedirs(out_dir, exist_ok=True)
  n = len(images)
  names = list(names) if names is not None else [f"cam_{i:05d}" for i in range(n)]
  if len(names) != n or len(heats) != n or (masks is not None and len(masks) != n):
    raise ValueError("images, heats, masks and names must have the same length")
  paths = []
  for i in range(n):
    m = None if masks is None else masks[i]
    arr = (overlay_strip if side_by_side else overlay_image)(images[i], heats[i], m,
                                                       alpha=alpha)
    stem = os.path.splitext(str(names[i]))[0].replace("/", "__").replace("\\", "__")
    p = os.path.join(out_dir, stem + ".png")
    Image.fromarray(arr).save(p)
    paths.append(p)
  return paths
