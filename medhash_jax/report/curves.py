"""Precision–recall curves as PNG, drawn with matplotlib (Agg, no display).

    img = plot_pr_curves({"ATH 48 bits": (precision, recall), ...},
                         path="results/pr_48.png", title="HAM10000, 48 bits")

Recall on x, precision on y, both on [0, 1]; ticks every 0.2 with a light
grid; one colour per curve (tab10 order) and a legend in the top-right corner
of the plot area (where PR curves rarely are). The axes sit in a fixed pixel
box, :class:`PlotArea`, so tests (and annotations) can find where a point
lands. matplotlib's object API is used (a Figure on an Agg canvas, no pyplot):
no global state, no backend switch, safe in threads.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from PIL import Image

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
           (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
           (188, 189, 34), (23, 190, 207))  # matplotlib's tab10
GRID = (225, 225, 225)
AXIS = (0, 0, 0)
TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
_DPI = 100


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


def _rgb(colour) -> tuple[float, float, float]:
  return tuple(c / 255 for c in colour)


def plot_pr_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                   path: str | None = None, *, title: str | None = None,
                   size: tuple[int, int] = (640, 480), line_width: int = 2,
                   xlabel: str = "Recall", ylabel: str = "Precision"
                   ) -> Image.Image:
  """Draws the curves; writes a PNG (atomically) when ``path`` is given.

  Args:
    curves: name -> (precision, recall) arrays of equal length, values in
      [0, 1] (clipped); points are joined in the given order, NaNs dropped.
    path: PNG path (folders created).
    title: text above the plot.
    size: (width, height) in pixels.
    line_width: curve width in pixels.

  Returns:
    The RGB image.
  """
  if len(curves) > len(PALETTE):
    raise ValueError(f"at most {len(PALETTE)} curves per plot, got {len(curves)}")
  w, h = size
  area = plot_area(size, title=bool(title))
  fig = Figure(figsize=(w / _DPI, h / _DPI), dpi=_DPI, facecolor="white")
  canvas = FigureCanvasAgg(fig)
  # [left, bottom, width, height] in figure fractions (y measured upwards).
  ax = fig.add_axes(((area.left / w), (h - area.bottom) / h,
                     (area.right - area.left) / w,
                     (area.bottom - area.top) / h))
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xticks(TICKS)
  ax.set_yticks(TICKS)
  ax.grid(True, color=_rgb(GRID), linewidth=0.8)
  ax.set_axisbelow(True)
  for side in ("top", "right"):
    ax.spines[side].set_visible(False)
  for side in ("left", "bottom"):
    ax.spines[side].set_color(_rgb(AXIS))
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=11)
  points = line_width * 72 / _DPI  # matplotlib widths are in points
  for i, (name, (precision, recall)) in enumerate(curves.items()):
    p = np.asarray(precision, np.float64).ravel()
    r = np.asarray(recall, np.float64).ravel()
    if p.shape != r.shape:
      raise ValueError(f"curve {name!r}: precision {p.shape} and recall "
                       f"{r.shape} differ in length")
    keep = np.isfinite(p) & np.isfinite(r)
    ax.plot(np.clip(r[keep], 0, 1), np.clip(p[keep], 0, 1), label=name,
            color=_rgb(PALETTE[i]), linewidth=points,
            marker="o" if keep.sum() == 1 else None, markersize=4,
            clip_on=False)
  if curves:
    ax.legend(loc="upper right", fontsize=9, framealpha=1.0)
  canvas.draw()
  img = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
  if path:
    _save_png(img, path)
  return img


def _save_png(img: Image.Image, path: str) -> None:
  """Writes to a temporary file beside `path`, then renames it over."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".pr-", suffix=".png", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      img.save(f, format="PNG")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
