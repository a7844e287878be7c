"""Shared machinery of the file-based sources (one image file per record).

``FileSource`` keeps, per record, the image path and where the record was
declared (CSV file and line), so that every error names both. It also applies
``data.verify`` when the source is built:

  * "exists": every referenced file exists (default; cheap);
  * "header": every file opens as an image (reads the header only);
  * "decode": every file decodes fully (finds truncated files up front).

Bad records found at build time raise, or with ``skip_bad`` are removed before
any split is made (and logged with a count).
"""

from __future__ import annotations

import csv
import os
from typing import Iterator, Sequence

import numpy as np

from medhash_jax.data import transforms
from medhash_jax.data.records import (BadRecordError, DataError, ImageSource,
                                      check_verify_mode)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm",
                    ".dicom")


def read_csv_rows(path: str) -> Iterator[tuple[int, dict[str, str]]]:
  """Yields (line number, row dict); line 1 is the header."""
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      if reader.fieldnames is None:
        raise DataError(f"file {path}: empty CSV (no header).")
      for row in reader:
        yield reader.line_num, row
  except UnicodeDecodeError as e:
    raise DataError(f"file {path}: not a UTF-8 CSV ({e}).") from e


def require_columns(path: str, columns: Sequence[str]) -> list[str]:
  with open(path, newline="", encoding="utf-8-sig") as f:
    header = next(csv.reader(f), None)
  if header is None:
    raise DataError(f"file {path}: empty CSV (no header).")
  header = [h.strip() for h in header]
  missing = [c for c in columns if c not in header]
  if missing:
    raise DataError(f"file {path}: missing column(s) {missing}; has {header}.")
  return header


def index_images(top: str, *, exclude_dirs: Sequence[str] = ()) -> dict[str, str]:
  """Maps file name (with and without extension) -> path, under ``top``.

  Raises on a name that occurs twice (two copies of one image would silently
  alias each other).
  """
  found: dict[str, str] = {}
  dupes = []
  exclude = {d.lower() for d in exclude_dirs}
  for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if d.lower() not in exclude)
    for fn in filenames:
      if not fn.lower().endswith(IMAGE_EXTENSIONS):
        continue
      p = os.path.join(dirpath, fn)
      for key in (fn, os.path.splitext(fn)[0]):
        if key in found and found[key] != p:
          dupes.append((key, found[key], p))
        found[key] = p
  if dupes:
    k, a, b = dupes[0]
    raise DataError(f"image name {k!r} occurs twice under {top}: {a} and {b} "
                    f"({len(dupes)} duplicate name(s) in all).")
  return found


class FileSource(ImageSource):
  """An ImageSource whose records are image files listed in an index."""

  paths: np.ndarray     # (N,) str
  rows: np.ndarray      # (N,) int, CSV line (0 when the record has no row)
  row_files: np.ndarray  # (N,) str, the file that declares the record
  draft_size: int | None = None

  def read_image(self, index: int) -> np.ndarray:
    return transforms.decode_image(self.paths[index], row=self._row_text(index),
                                   draft_size=self.draft_size)

  def _row_text(self, index: int) -> str | None:
    r = int(self.rows[index])
    if r <= 0:
      return None
    return f"line {r} of {self.row_files[index]}"

  def describe(self, index: int):
    return str(self.paths[index]), self._row_text(index)

  def _set_records(self, recs: list[dict], *, verify: str) -> None:
    """Validates and stores records.

    Each dict has: path, labels (C,) uint8, id, and optionally group,
    split, row, row_file, label_mask.
    """
    check_verify_mode(verify)
    kept = []
    for r in recs:
      row_text = (f"line {r['row']} of {r['row_file']}" if r.get("row") else None)
      try:
        transforms.check_image_file(r["path"], verify, row=row_text)
      except BadRecordError as e:
        self.bad.handle(e)
        continue
      kept.append(r)
    if not kept:
      raise DataError(f"{self.name}: no usable records"
                      + (f" ({len(self.bad)} skipped as bad)" if len(self.bad) else ""))
    n = len(kept)
    self.paths = np.array([r["path"] for r in kept], dtype=object).astype(str)
    self.labels = np.stack([r["labels"] for r in kept]).astype(np.uint8)
    self.ids = np.array([r["id"] for r in kept]).astype(str)
    self.rows = np.array([int(r.get("row") or 0) for r in kept], np.int64)
    self.row_files = np.array([r.get("row_file") or "" for r in kept]).astype(str)
    self.groups = (np.array([r["group"] for r in kept]).astype(str)
                   if "group" in kept[0] else None)
    self.official_split = (np.array([r["split"] for r in kept]).astype(str)
                           if "split" in kept[0] else None)
    self.label_mask = (np.stack([r["label_mask"] for r in kept]).astype(np.uint8)
                       if "label_mask" in kept[0] else None)
    assert self.labels.shape[0] == n
    self._finalize()
