"""Precision–recall curves as PNG, drawn with PIL (no matplotlib).

    img = plot_pr_curves({"ATH 48 bits": (precision, recall), ...},
                         path="results/pr_48.png", title="HAM10000, 48 bits")

Recall on x, precision on y, both on [0, 1]; ticks every 0.2 with a light
grid; one colour per curve (tab10 order) and a legend in the top-right corner
of the plot area (where PR curves rarely are). :class:`PlotArea` maps data to
pixels, so tests (and annotations) can find where a point lands.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
           (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
           (188, 189, 34), (23, 190, 207))
GRID = (225, 225, 225)
AXIS = (0, 0, 0)
TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclasses.dataclass(frozen=True)
class PlotArea:
  """Pixel box of the [0, 1] x [0, 1] data square: left, top, right, bottom."""
  left: int
  top: int
  right: int
  bottom: int

  def to_pixel(self, x: float, y: float) -> tuple[int, int]:
    """(recall, precision) -> (column, row) in the image."""
    return (int(round(self.left + x * (self.right - self.left))),
            int(round(self.bottom - y * (self.bottom - self.top))))


def plot_area(size: tuple[int, int] = (640, 480), *, title: bool = True) -> PlotArea:
  w, h = size
  return PlotArea(left=64, top=36 if title else 16, right=w - 20, bottom=h - 52)


def _font(size: int = 12):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:       # Pillow < 10.1: the fixed bitmap font
    return ImageFont.load_default()


def _text_size(draw, text, font):
  l, t, r, b = draw.textbbox((0, 0), text, font=font)
  return r - l, b - t


def plot_pr_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                   path: str | None = None, *, title: str | None = None,
                   size: tuple[int, int] = (640, 480), line_width: int = 2,
                   xlabel: str = "Recall", ylabel: str = "Precision"
                   ) -> Image.Image:
  """Draws the curves; writes a PNG when ``path`` is given.

  Args:
    curves: name -> (precision, recall) arrays of equal length, values in
      [0, 1] (clipped); points are joined in the given order, NaNs dropped.
    path: PNG path (folders created).
    title: text above the plot.
    size: (width, height) in pixels.

  Returns:
    The RGB image.
  """
  if len(curves) > len(PALETTE):
    raise ValueError(f"at most {len(PALETTE)} curves per plot, got {len(curves)}")
  img = Image.new("RGB", size, (255, 255, 255))
  draw = ImageDraw.Draw(img)
  font = _font(12)
  area = plot_area(size, title=bool(title))

  for t in TICKS:                                    # grid
    x, _ = area.to_pixel(t, 0)
    _, y = area.to_pixel(0, t)
    draw.line([(x, area.top), (x, area.bottom)], fill=GRID)
    draw.line([(area.left, y), (area.right, y)], fill=GRID)

  for i, (name, (precision, recall)) in enumerate(curves.items()):
    p = np.asarray(precision, np.float64).ravel()
    r = np.asarray(recall, np.float64).ravel()
    if p.shape != r.shape:
      raise ValueError(f"curve {name!r}: precision {p.shape} and recall "
                       f"{r.shape} differ in length")
    keep = np.isfinite(p) & np.isfinite(r)
    pts = [area.to_pixel(float(a), float(b))
           for a, b in zip(np.clip(r[keep], 0, 1), np.clip(p[keep], 0, 1))]
    if len(pts) == 1:
      x, y = pts[0]
      draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=PALETTE[i])
    elif pts:
      draw.line(pts, fill=PALETTE[i], width=line_width, joint="curve")

  # Axes, ticks and labels.
  draw.line([(area.left, area.top), (area.left, area.bottom),
             (area.right, area.bottom)], fill=AXIS, width=1)
  for t in TICKS:
    x, _ = area.to_pixel(t, 0)
    _, y = area.to_pixel(0, t)
    draw.line([(x, area.bottom), (x, area.bottom + 5)], fill=AXIS)
    draw.line([(area.left - 5, y), (area.left, y)], fill=AXIS)
    label = f"{t:.1f}"
    tw, th = _text_size(draw, label, font)
    draw.text((x - tw / 2, area.bottom + 8), label, fill=AXIS, font=font)
    draw.text((area.left - 9 - tw, y - th / 2 - 1), label, fill=AXIS, font=font)
  tw, th = _text_size(draw, xlabel, font)
  draw.text(((area.left + area.right - tw) / 2, area.bottom + 28), xlabel,
            fill=AXIS, font=font)
  tw, th = _text_size(draw, ylabel, font)
  ylab = Image.new("RGB", (tw + 4, th + 6), (255, 255, 255))
  ImageDraw.Draw(ylab).text((2, 1), ylabel, fill=AXIS, font=font)
  ylab = ylab.rotate(90, expand=True)
  img.paste(ylab, (6, int((area.top + area.bottom - ylab.height) / 2)))
  if title:
    tfont = _font(14)
    tw, _ = _text_size(draw, title, tfont)
    draw.text(((size[0] - tw) / 2, 10), title, fill=AXIS, font=tfont)

  # Legend, top-right inside the plot area.
  if curves:
    names = list(curves)
    row_h = 16
    text_w = max(_text_size(draw, n, font)[0] for n in names)
    box_w, box_h = text_w + 40, row_h * len(names) + 8
    x1, y0 = area.right - 6, area.top + 6
    x0 = x1 - box_w
    draw.rectangle([x0, y0, x1, y0 + box_h], fill=(255, 255, 255), outline=(160, 160, 160))
    for i, n in enumerate(names):
      yc = y0 + 4 + i * row_h + row_h // 2
      draw.line([(x0 + 6, yc), (x0 + 28, yc)], fill=PALETTE[i], width=3)
      _, th = _text_size(draw, n, font)
      draw.text((x0 + 34, yc - th / 2 - 2), n, fill=AXIS, font=font)

  if path:
    d = os.path.dirname(path)
    if d:
      os.makedirs(d, exist_ok=True)
    img.save(path, format="PNG")
  return img
