"""Folder-per-class trees, optionally with a labels.csv (COVID-19 Radiography).

Layouts understood, in order:

1. ``<dir>/labels.csv`` with columns ``path,label`` (and optionally ``group``,
   ``split``): ``path`` is relative to ``<dir>``; ``label`` may hold several
   class names separated by ``|`` (multi-label).
2. A class-folder tree: ``<dir>/<Class>/.../*.png``. Folders named ``masks``
   are not images (the COVID-19 Radiography Database ships lung masks in
   ``<Class>/masks/``) and are skipped; a wrapper folder (``<dir>`` holding a
   single sub-folder and no images) is descended into. When the top level is
   ``train/``, ``val/``, ``test/`` (any case; ``valid``/``validation`` too)
   with class folders inside, those become the official split.

Class names are the sorted folder / label names unless ``class_names`` is
given, in which case anything else is a bad record.
"""

from __future__ import annotations

import os
from typing import Sequence

from medhash_jax.data import paths
from medhash_jax.data.base import IMAGE_EXTENSIONS, FileSource, read_csv_rows, require_columns
from medhash_jax.data.records import (BadRecordError, BadRecords, DataError,
                                      DataNotFoundError, multi_hot)

_SPLIT_DIRS = {"train": "train", "training": "train", "val": "val",
               "valid": "val", "validation": "val", "test": "test",
               "testing": "test"}
_SKIP_DIRS = {"masks", "mask", "__macosx"}
COVID_DIR_CANDIDATES = ("covid19_radiography", "COVID-19_Radiography_Dataset",
                        "COVID-19 Radiography Database", "covid19-radiography")


def _list_images(top: str) -> list[str]:
  out = []
  for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if d.lower() not in _SKIP_DIRS)
    out.extend(os.path.join(dirpath, f) for f in sorted(filenames)
               if f.lower().endswith(IMAGE_EXTENSIONS))
  return out


def _subdirs(d: str) -> list[str]:
  return sorted(e.name for e in os.scandir(d)
                if e.is_dir() and e.name.lower() not in _SKIP_DIRS
                and not e.name.startswith("."))


def _has_images(d: str) -> bool:
  return any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
             for e in os.scandir(d))


class FolderSource(FileSource):
  """Any folder-per-class tree, or a folder with labels.csv."""

  def __init__(self, *, root: str | None = None, path: str | None = None,
               name: str = "folder", class_names: Sequence[str] = (),
               labels_csv: str = "labels.csv", skip_bad: bool = False,
               verify: str = "exists", draft_size: int | None = None,
               dir_candidates: Sequence[str] = (), **unused):
    del unused
    self.name = name
    self.draft_size = draft_size
    self.bad = BadRecords(skip_bad, name)
    if not path and not dir_candidates:
      raise DataNotFoundError(
          "folder: set config.data.path to the folder that holds the class "
          "sub-folders (or a labels.csv).")
    d = paths.find_dataset_dir(name, root=root, path=path,
                               candidates=dir_candidates)
    self.dir = d
    csv_path = os.path.join(d, labels_csv) if labels_csv else ""
    if csv_path and os.path.isfile(csv_path):
      raw = self._from_csv(d, csv_path)
    else:
      raw = self._from_tree(d)
    names = tuple(class_names) or tuple(sorted({l for r in raw for l in r["names"]}))
    if not names:
      raise DataError(f"{name}: no classes found under {d}.")
    self.class_names = names
    self.multi_label = any(len(r["names"]) > 1 for r in raw)
    cls = {c: i for i, c in enumerate(names)}
    recs = []
    for r in raw:
      unknown = [l for l in r["names"] if l not in cls]
      if unknown:
        self.bad.handle(BadRecordError(
            f"label(s) {unknown} are not in the class list {names}",
            file=r.get("row_file") or r["path"],
            row=f"line {r['row']}" if r.get("row") else None))
        continue
      r["labels"] = multi_hot([cls[l] for l in r.pop("names")], len(names))
      recs.append(r)
    self._set_records(recs, verify=verify)

  def _from_csv(self, d: str, csv_path: str) -> list[dict]:
    header = require_columns(csv_path, ("path", "label"))
    has_group, has_split = "group" in header, "split" in header
    out = []
    for line, row in read_csv_rows(csv_path):
      rel = (row.get("path") or "").strip()
      names = [l.strip() for l in (row.get("label") or "").split("|") if l.strip()]
      if not rel or not names:
        self.bad.handle(BadRecordError("empty path or label", file=csv_path,
                                       row=f"line {line}"))
        continue
      rec = dict(path=os.path.join(d, rel), names=names, id=rel, row=line,
                 row_file=csv_path)
      if has_group:
        rec["group"] = (row.get("group") or "").strip() or rel
      if has_split:
        s = (row.get("split") or "").strip().lower()
        if s and s not in _SPLIT_DIRS:
          self.bad.handle(BadRecordError(f"unknown split {s!r}", file=csv_path,
                                         row=f"line {line}"))
          continue
        rec["split"] = _SPLIT_DIRS.get(s, "")
      out.append(rec)
    return out

  def _from_tree(self, d: str) -> list[dict]:
    # Descend through wrapper folders (one sub-folder, no images).
    while not _has_images(d) and len(_subdirs(d)) == 1:
      d = os.path.join(d, _subdirs(d)[0])
    top = _subdirs(d)
    if not top:
      raise DataNotFoundError(f"{self.name}: no class folders under {d}.")
    if all(t.lower() in _SPLIT_DIRS for t in top):
      parts = [(os.path.join(d, t), _SPLIT_DIRS[t.lower()]) for t in top]
    else:
      parts = [(d, None)]
    out = []
    for base, split in parts:
      for cls_name in _subdirs(base):
        cdir = os.path.join(base, cls_name)
        for p in _list_images(cdir):
          rec = dict(path=p, names=[cls_name], id=os.path.relpath(p, self.dir))
          if split is not None:
            rec["split"] = split
          out.append(rec)
    if not out:
      raise DataNotFoundError(f"{self.name}: no images under {d}.")
    return out


def covid19_radiography(**kwargs) -> FolderSource:
  """The COVID-19 Radiography Database (Kaggle; classes = folders).

  No patient ids are published, so the split cannot be patient-grouped.
  """
  kwargs.setdefault("name", "covid19_radiography")
  kwargs.setdefault("dir_candidates", COVID_DIR_CANDIDATES)
  return FolderSource(**kwargs)
