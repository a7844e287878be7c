"""Retrieval gallery PNG: one row per query — the query, optionally its
Grad-CAM overlay, then its top-k database images framed green (relevant) or
red (irrelevant), each captioned with its Hamming distance and labels.

Row layout (``GalleryLayout`` gives every tile's pixel box)::

    [query] [overlay]  |gap|  [r1] [r2] ... [rk]
     caption caption           d=3  d=5 ...
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RELEVANT = (0, 170, 0)
IRRELEVANT = (220, 0, 0)
QUERY = (30, 90, 220)
PLAIN = (200, 200, 200)
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def spread_queries(labels, n: int) -> np.ndarray:
  """Positions of n queries taken round-robin over the classes (each query's
  first label; unlabelled rows form one group), earliest first within a
  class, so a split stored class by class (HAM10000's CSV) still shows every
  class instead of its first n rows.

  Args:
    labels: (N, C) multi-hot query labels.
  """
  labels = np.asarray(labels) > 0.5
  n = min(int(n), labels.shape[0])
  group = np.where(labels.any(1), labels.argmax(1), labels.shape[1])
  queues = [list(np.flatnonzero(group == g)) for g in np.unique(group)]
  out = []
  while len(out) < n:
    for q in queues:
      if q and len(out) < n:
        out.append(q.pop(0))
  return np.asarray(out, np.int64)


def _to_rgb(image) -> np.ndarray:
  """(H, W[, C]) uint8 or float (min-max scaled for display) -> uint8 RGB."""
  a = np.asarray(image)
  if a.ndim == 2:
    a = a[..., None]
  if a.dtype != np.uint8:
    x = a.astype(np.float32)
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    a = np.round(np.nan_to_num(x) * 255).astype(np.uint8)
  if a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  return a[..., :3]


def _font(size: int = 11):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:
    return ImageFont.load_default()


@dataclasses.dataclass(frozen=True)
class GalleryLayout:
  """Geometry of a gallery; boxes are (left, top, right, bottom), exclusive."""
  num_queries: int
  k: int
  with_overlay: bool
  tile: int = 96
  border: int = 4
  pad: int = 6
  gap: int = 18
  caption: int = 30

  @property
  def cell(self) -> int:
    return self.tile + 2 * self.border

  @property
  def lead(self) -> int:
    """Tiles before the results: the query and maybe its overlay."""
    return 2 if self.with_overlay else 1

  @property
  def size(self) -> tuple[int, int]:
    w = (self.pad + (self.lead + self.k) * (self.cell + self.pad) + self.gap)
    h = self.pad + self.num_queries * (self.cell + self.caption + self.pad)
    return w, h

  def box(self, row: int, col: int) -> tuple[int, int, int, int]:
    """Framed tile box: col 0 = query, (1 = overlay,) then results."""
    x = self.pad + col * (self.cell + self.pad)
    if col >= self.lead:
      x += self.gap
    y = self.pad + row * (self.cell + self.caption + self.pad)
    return x, y, x + self.cell, y + self.cell

  def result_box(self, row: int, j: int) -> tuple[int, int, int, int]:
    return self.box(row, self.lead + j)


def _label_text(labels) -> str:
  if labels is None:
    return ""
  if isinstance(labels, str):
    return labels
  return ",".join(str(x) for x in labels)


def _fit(draw, text: str, font, width: int) -> str:
  if draw.textlength(text, font=font) <= width:
    return text
  while text and draw.textlength(text + "…", font=font) > width:
    text = text[:-1]
  return text + "…"


def render_gallery(query_images: Sequence, result_images: Sequence,
                   relevant, *, distances=None, query_labels=None,
                   result_labels=None, overlays: Sequence | None = None,
                   tile: int = 96, border: int = 4) -> Image.Image:
  """Draws the gallery.

  Args:
    query_images: Q images (H, W[, C]), uint8 or float (scaled for display).
    result_images: Q sequences of k images each (the top-k, in rank order).
    relevant: (Q, k) bool, True = shares a label with the query (green).
    distances: optional (Q, k) Hamming distances, captioned "d=…".
    query_labels: optional Q label captions (str or list of names).
    result_labels: optional (Q, k) label captions.
    overlays: optional Q Grad-CAM overlays (uint8 RGB), shown after the query.
    tile: pixel size of each (square) image; border: frame width.

  Returns:
    The RGB image (size ``GalleryLayout(...).size``).
  """
  q = len(query_images)
  relevant = np.asarray(relevant, bool)
  if relevant.ndim != 2 or relevant.shape[0] != q:
    raise ValueError(f"relevant must be (Q={q}, k), got {relevant.shape}")
  k = relevant.shape[1]
  if len(result_images) != q or any(len(r) != k for r in result_images):
    raise ValueError(f"result_images must be {q} rows of k={k} images")
  if overlays is not None and len(overlays) != q:
    raise ValueError(f"overlays must have {q} entries, got {len(overlays)}")
  lay = GalleryLayout(q, k, overlays is not None, tile=tile, border=border)
  img = Image.new("RGB", lay.size, BACKGROUND)
  draw = ImageDraw.Draw(img)
  font = _font(11)

  def put(image, box, colour, lines):
    x0, y0, x1, y1 = box
    draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
    pic = Image.fromarray(_to_rgb(image)).resize((tile, tile), Image.Resampling.BILINEAR)
    img.paste(pic, (x0 + border, y0 + border))
    for i, line in enumerate(lines):
      if line:
        draw.text((x0, y1 + 2 + 13 * i), _fit(draw, line, font, x1 - x0),
                  fill=TEXT, font=font)

  for r in range(q):
    put(query_images[r], lay.box(r, 0), QUERY,
        ["query", _label_text(None if query_labels is None else query_labels[r])])
    if overlays is not None:
      put(overlays[r], lay.box(r, 1), PLAIN, ["Grad-CAM"])
    for j in range(k):
      d = "" if distances is None else f"#{j + 1} d={int(np.asarray(distances)[r, j])}"
      lab = None if result_labels is None else result_labels[r][j]
      put(result_images[r][j], lay.result_box(r, j),
          RELEVANT if relevant[r, j] else IRRELEVANT, [d, _label_text(lab)])
  return img


def save_gallery(path: str, *args, **kwargs) -> Image.Image:
  """:func:`render_gallery` written as PNG to ``path``."""
  img = render_gallery(*args, **kwargs)
  d = os.path.dirname(path)
  if d:
    os.makedirs(d, exist_ok=True)
  img.save(path, format="PNG")
  return img
