"""Bounding-box annotations: NIH ``BBox_List_2017.csv`` and COCO JSON readers.

The boxes are the ground truth of the attention's localisation metrics
(``medhash_jax.cam.localization``). Both readers return the same table::

    {image name: ImageBoxes(frame=(W, H), boxes=(Box(x, y, w, h, label), ...))}

with (x, y) the top-left corner and (w, h) the size, in pixels of a *frame*
of width W and height H: the image the annotator drew on.

* NIH ChestX-ray14 (Wang et al., CVPR 2017): ``BBox_List_2017.csv`` (or its
  ``.csv.gz``), header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (the
  four numbers fill the box column and the three unnamed ones after it). The
  boxes are in the pixels of the released 1024x1024 PNGs, so the frame is
  (1024, 1024) whatever size the images on disk have been resized to.
* COCO (``instances_*.json``): ``images[].{id, file_name, width, height}``,
  ``annotations[].{image_id, bbox: [x, y, w, h], category_id}``,
  ``categories[].{id, name}``; the frame is the image's ``width, height``.

:func:`box_mask` rasterises an image's boxes at the model's input size under
the data layer's eval geometry (the whole image squashed to size x size, see
``data.transforms.Preprocessor.geometry``): pixel (i, j) is inside when its
centre ``((j + 0.5) W / size, (i + 0.5) H / size)`` lies in a box,
``x <= u < x + w`` and ``y <= v < y + h``.

:func:`match_ids` pairs a split's record ids with the table: the id itself
(ChestX-ray14's ids are the image names), else its file name (folder sources'
ids are relative paths), which must then be unique in the split.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import os
from typing import Mapping, Sequence

import numpy as np

from medhash_jax.data.records import BadRecordError, DataNotFoundError

NIH_FRAME = (1024, 1024)
NIH_FILES = ("BBox_List_2017.csv", "BBox_List_2017.csv.gz")


@dataclasses.dataclass(frozen=True)
class Box:
  x: float
  y: float
  w: float
  h: float
  label: str = ""


@dataclasses.dataclass(frozen=True)
class ImageBoxes:
  frame: tuple[int, int]          # (W, H) of the annotated image
  boxes: tuple[Box, ...]


def _open_text(path: str):
  if path.endswith(".gz"):
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig",
                            newline="")
  return open(path, encoding="utf-8-sig", newline="")


def _check_box(box: Box, path: str, row: str):
  vals = (box.x, box.y, box.w, box.h)
  if not all(np.isfinite(v) for v in vals) or box.w <= 0 or box.h <= 0:
    raise BadRecordError(f"box [x, y, w, h] = {list(vals)} is not a box with "
                         "positive width and height", file=path, row=row)


def read_nih_bbox_csv(path: str) -> dict[str, ImageBoxes]:
  """Reads NIH's ``BBox_List_2017.csv`` (plain or gzip); see the module doc.

  Raises:
    DataNotFoundError: no such file.
    BadRecordError: a wrong header, a row without four numbers or with a
      non-positive size (naming the file and the line).
  """
  if not os.path.isfile(path):
    raise DataNotFoundError(f"no box file {path}")
  out: dict[str, list[Box]] = {}
  with _open_text(path) as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if (not header or len(header) < 6 or header[0].strip() != "Image Index"
        or header[1].strip() != "Finding Label"
        or not header[2].strip().startswith("Bbox")):
      raise BadRecordError(
          f"header {header} is not NIH's 'Image Index,Finding Label,Bbox "
          "[x,y,w,h],,,'", file=path, row="line 1")
    for line, row in enumerate(reader, start=2):
      if not any(c.strip() for c in row):
        continue
      if len(row) < 6:
        raise BadRecordError(f"{len(row)} fields, expected 6 (name, label, x, "
                             "y, w, h)", file=path, row=f"line {line}")
      try:
        x, y, w, h = (float(v) for v in row[2:6])
      except ValueError as e:
        raise BadRecordError(f"box {row[2:6]} is not four numbers",
                             file=path, row=f"line {line}") from e
      box = Box(x, y, w, h, row[1].strip())
      _check_box(box, path, f"line {line}")
      out.setdefault(row[0].strip(), []).append(box)
  return {k: ImageBoxes(NIH_FRAME, tuple(v)) for k, v in out.items()}


def read_coco_json(path: str) -> dict[str, ImageBoxes]:
  """Reads a COCO detection JSON; keys are ``images[].file_name``.

  Raises:
    DataNotFoundError: no such file.
    BadRecordError: missing keys, an annotation of an unknown image, a bad
      box (naming the file and the annotation's position).
  """
  if not os.path.isfile(path):
    raise DataNotFoundError(f"no box file {path}")
  with open(path, encoding="utf-8") as f:
    try:
      doc = json.load(f)
    except json.JSONDecodeError as e:
      raise BadRecordError(f"not JSON ({e})", file=path) from e
  for key in ("images", "annotations"):
    if not isinstance(doc.get(key), list):
      raise BadRecordError(f"no '{key}' list (COCO needs 'images' and "
                           "'annotations')", file=path)
  names = {int(c["id"]): str(c.get("name", c["id"]))
           for c in doc.get("categories", [])}
  images = {}
  for i, im in enumerate(doc["images"]):
    try:
      images[im["id"]] = (str(im["file_name"]),
                          (int(im["width"]), int(im["height"])))
    except (KeyError, TypeError, ValueError) as e:
      raise BadRecordError(f"image entry lacks id/file_name/width/height "
                           f"({e!r})", file=path, row=f"images[{i}]") from e
  out: dict[str, list[Box]] = {name: [] for name, _ in images.values()}
  for i, ann in enumerate(doc["annotations"]):
    where = f"annotations[{i}]"
    if ann.get("image_id") not in images:
      raise BadRecordError(f"image_id {ann.get('image_id')!r} is not in "
                           "'images'", file=path, row=where)
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
      raise BadRecordError(f"bbox {bbox!r} is not [x, y, w, h]", file=path,
                           row=where)
    cat = ann.get("category_id")
    box = Box(*(float(v) for v in bbox),
              label=names.get(cat, "" if cat is None else str(cat)))
    _check_box(box, path, where)
    out[images[ann["image_id"]][0]].append(box)
  frames = dict(images.values())
  return {k: ImageBoxes(frames[k], tuple(v)) for k, v in out.items() if v}


def read_boxes(path: str) -> dict[str, ImageBoxes]:
  """NIH CSV (``.csv``, ``.csv.gz``) or COCO (``.json``) by file name."""
  low = path.lower()
  if low.endswith((".csv", ".csv.gz")):
    return read_nih_bbox_csv(path)
  if low.endswith(".json"):
    return read_coco_json(path)
  raise ValueError(f"box file {path}: expected .csv / .csv.gz (NIH "
                   "BBox_List_2017 format) or .json (COCO)")


def find_nih_boxes(dataset_dir: str) -> str | None:
  """The ChestX-ray14 box list inside a dataset folder, if there."""
  for name in NIH_FILES:
    p = os.path.join(dataset_dir, name)
    if os.path.isfile(p):
      return p
  return None


def box_mask(image_boxes: ImageBoxes, size: int | Sequence[int]) -> np.ndarray:
  """bool (h, w): the union of the boxes at the model's input size (pixel
  centres inside a box; see the module docstring)."""
  h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
  fw, fh = image_boxes.frame
  u = (np.arange(w) + 0.5) * (fw / w)      # pixel centres in frame units
  v = (np.arange(h) + 0.5) * (fh / h)
  out = np.zeros((h, w), bool)
  for b in image_boxes.boxes:
    cols = (u >= b.x) & (u < b.x + b.w)
    rows = (v >= b.y) & (v < b.y + b.h)
    out |= rows[:, None] & cols[None, :]
  return out


def match_ids(table: Mapping[str, ImageBoxes], ids: Sequence[str]
              ) -> dict[int, ImageBoxes]:
  """Split position -> boxes, for the records the table annotates."""
  ids = [str(i) for i in ids]
  base = [os.path.basename(i) for i in ids]
  counts: dict[str, int] = {}
  for b in base:
    counts[b] = counts.get(b, 0) + 1
  out = {}
  for pos, (rid, b) in enumerate(zip(ids, base)):
    if rid in table:
      out[pos] = table[rid]
    elif b in table:
      if counts[b] > 1:
        raise ValueError(f"box file names {b!r}, which is the file name of "
                         f"{counts[b]} records of the split; use ids as the "
                         "box file's image names")
      out[pos] = table[b]
  return out


__all__ = ["Box", "ImageBoxes", "NIH_FRAME", "box_mask", "find_nih_boxes",
           "match_ids", "read_boxes", "read_coco_json", "read_nih_bbox_csv"]
