"""Record schema, the common source base classes, and bad-input handling.

Every source is random access (grain's ``RandomAccessDataSource`` protocol:
``__len__`` and ``__getitem__``) and yields records

    {"image":  uint8 (H, W, C), C in {1, 3}, native resolution,
     "labels": uint8 multi-hot (num_classes,),
     "label_mask": uint8 (num_classes,)  1 = label known (CheXpert "ignore"),
     "id":     str,   e.g. the file name or "train/17" for MedMNIST,
     "group":  str}   patient or lesion id; the id itself when there is none.

Besides the records, a source exposes its metadata as arrays so splits can be
made without decoding a single image: ``labels`` (N, C), ``ids`` (N,),
``groups`` (N,) or None, ``official_split`` (N,) of "train"/"val"/"test"/""
or None, and ``class_names``.

Bad input (an unreadable file, a CSV row whose file is missing, an unknown
label) raises :class:`BadRecordError`, whose message names the file and the
row. With ``skip_bad=True`` the record is skipped instead, counted, and the
count is logged; nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from absl import logging
import numpy as np


class DataError(Exception):
  """Base class of the data layer's errors."""


class DataNotFoundError(DataError, FileNotFoundError):
  """A dataset, or one of its files, is not where we looked."""


class BadRecordError(DataError, ValueError):
  """One record (an image, a CSV row, a mask) is unusable.

  Attributes:
    file: the file at fault (image, CSV or mask).
    row: where in that file, e.g. "line 7 of train.csv" or "train_images[3]".
    reason: what is wrong.
  """

  def __init__(self, reason: str, *, file: str | os.PathLike | None = None,
               row: str | int | None = None):
    self.file = None if file is None else os.fspath(file)
    self.row = row
    self.reason = reason
    where = []
    if self.file is not None:
      where.append(f"file {self.file}")
    if row is not None:
      where.append(f"row {row}" if isinstance(row, int) else str(row))
    prefix = ", ".join(where)
    super().__init__(f"{prefix}: {reason}" if prefix else reason)


class BadRecords:
  """Applies the ``skip_bad`` policy and keeps the tally of what was skipped."""

  def __init__(self, skip_bad: bool, what: str):
    self.skip_bad = bool(skip_bad)
    self.what = what
    self.skipped: list[BadRecordError] = []

  def handle(self, err: BadRecordError) -> None:
    """Raises ``err`` unless skipping; when skipping, records and logs it."""
    if not self.skip_bad:
      raise err
    self.skipped.append(err)
    logging.warning("%s: skipping bad record (skip_bad=True): %s", self.what, err)

  def log_summary(self) -> None:
    if self.skipped:
      logging.warning("%s: skipped %d bad record(s) in total (skip_bad=True).",
                      self.what, len(self.skipped))

  def __len__(self) -> int:
    return len(self.skipped)


def multi_hot(indices: Sequence[int], num_classes: int) -> np.ndarray:
  out = np.zeros((num_classes,), np.uint8)
  out[list(indices)] = 1
  return out


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """Static description of a source, for logs and configs."""
  name: str
  class_names: tuple[str, ...]
  multi_label: bool
  num_images: int
  has_groups: bool
  has_official_split: bool


class ImageSource:
  """Base class: metadata arrays plus ``read_image`` implemented by subclasses.

  Subclasses set the attributes below in ``__init__`` and implement
  ``read_image(index)`` and ``describe(index)``.
  """

  name: str = "source"
  class_names: tuple[str, ...] = ()
  multi_label: bool = False
  labels: np.ndarray          # (N, C) uint8
  label_mask: np.ndarray | None = None   # (N, C) uint8, None = all known
  ids: np.ndarray              # (N,) str
  groups: np.ndarray | None = None       # (N,) str
  official_split: np.ndarray | None = None   # (N,) str
  bad: BadRecords

  # -- grain RandomAccessDataSource protocol --------------------------------
  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    return {
        "image": self.read_image(index),
        "labels": self.labels[index],
        "label_mask": self.label_mask_of(index),
        "id": str(self.ids[index]),
        "group": self.group_of(index),
    }

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(name={self.name!r}, n={len(self)}, "
            f"classes={len(self.class_names)})")

  # -- to implement ----------------------------------------------------------
  def read_image(self, index: int) -> np.ndarray:
    """The decoded image, uint8 (H, W, C); raises BadRecordError."""
    raise NotImplementedError

  def describe(self, index: int) -> tuple[str | None, str | None]:
    """(file, row) naming where record ``index`` comes from, for errors."""
    return None, f"record {index}"

  # -- helpers ---------------------------------------------------------------
  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def info(self) -> SourceInfo:
    return SourceInfo(self.name, tuple(self.class_names), self.multi_label,
                      len(self), self.groups is not None,
                      self.official_split is not None)

  def label_mask_of(self, index: int) -> np.ndarray:
    if self.label_mask is None:
      return np.ones((self.num_classes,), np.uint8)
    return self.label_mask[index]

  def group_of(self, index: int) -> str:
    if self.groups is None:
      return str(self.ids[index])
    return str(self.groups[index])

  def bad_record(self, index: int, reason: str) -> BadRecordError:
    file, row = self.describe(index)
    return BadRecordError(reason, file=file, row=row)

  def _finalize(self) -> None:
    """Checks the metadata arrays agree; call at the end of ``__init__``."""
    n = self.labels.shape[0]
    c = len(self.class_names)
    if self.labels.ndim != 2 or self.labels.shape[1] != c:
      raise DataError(f"{self.name}: labels have shape {self.labels.shape}, "
                      f"expected (N, {c}).")
    self.labels = np.ascontiguousarray(self.labels, np.uint8)
    self.ids = np.asarray(self.ids).astype(str)
    for attr in ("ids", "groups", "official_split", "label_mask"):
      arr = getattr(self, attr)
      if arr is not None and arr.shape[0] != n:
        raise DataError(f"{self.name}: {attr} has {arr.shape[0]} rows, labels {n}.")
    if len(set(self.ids.tolist())) != n:
      raise DataError(f"{self.name}: record ids are not unique.")
    if n == 0:
      raise DataError(f"{self.name}: no usable records.")
    self.bad.log_summary()
    logging.info("%s: %d images, %d classes%s%s.", self.name, n, c,
                 ", grouped" if self.groups is not None else "",
                 ", official split" if self.official_split is not None else "")


def check_verify_mode(verify: str) -> str:
  if verify not in ("exists", "header", "decode"):
    raise ValueError(
        f"data.verify must be 'exists', 'header' or 'decode', got {verify!r}.")
  return verify
