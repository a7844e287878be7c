"""NIH ChestX-ray14 (ChestX-ray8) source.

Official layouts (NIH box download, or Kaggle "nih-chest-xrays/data"):

    <dir>/Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv, or the Kaggle
          sample's sample_labels.csv)
          columns: Image Index, Finding Labels, Follow-up #, Patient ID, ...
    <dir>/images/00000001_000.png ...              (NIH, tarballs unpacked)
    <dir>/images_001/images/00000001_000.png ...   (Kaggle)
    <dir>/train_val_list.txt, <dir>/test_list.txt  (official patient-wise split)

Labels: the 14 findings below, split on ``|``. "No Finding" is the all-zero
vector by default (``no_finding="zeros"``), or an explicit 15th class
(``no_finding="class"``). group = Patient ID.

``split_lists=<folder>`` (config ``data.split_lists``, with
``data.split="official"``) reads the published patient-grouped 1:3:3
protocol instead of the official lists (`chestxray14_protocol`; the
committed folder is configs/splits/chestxray14): every image of the label
table must be in exactly one list.
"""

from __future__ import annotations

import glob
import os

from absl import logging

from medhash_jax.data import paths
from medhash_jax.data.base import FileSource, index_images, read_csv_rows, require_columns
from medhash_jax.data.records import (BadRecordError, BadRecords, DataNotFoundError,
                                      multi_hot)

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass",
            "Nodule", "Pneumonia", "Pneumothorax", "Consolidation", "Edema",
            "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"
DIR_CANDIDATES = ("chestxray14", "ChestX-ray14", "chestxray8", "ChestX-ray8",
                  "nih_chestxray14", "NIH", "CXR8")
CSV_PATTERNS = ("Data_Entry_2017*.csv", "sample_labels.csv")


class ChestXray14Source(FileSource):
  """ChestX-ray14: multi-label, grouped by patient, official split if present."""

  def __init__(self, *, root: str | None = None, path: str | None = None,
               labels_csv: str = "", no_finding: str = "zeros",
               skip_bad: bool = False, verify: str = "exists",
               draft_size: int | None = None, split_lists: str = "",
               **unused):
    del unused
    if no_finding not in ("zeros", "class"):
      raise ValueError(f"no_finding must be 'zeros' or 'class', got {no_finding!r}")
    self.name = "chestxray14"
    self.class_names = FINDINGS + ((NO_FINDING,) if no_finding == "class" else ())
    self.multi_label = True
    self.draft_size = draft_size
    self.bad = BadRecords(skip_bad, self.name)
    d = paths.find_dataset_dir(self.name, root=root, path=path,
                               candidates=DIR_CANDIDATES,
                               markers=("Data_Entry_2017.csv", "sample_labels.csv"))
    self.dir = d   # where ATH looks for BBox_List_2017.csv (data.boxes)
    if labels_csv:
      csv_path = labels_csv if os.path.isabs(labels_csv) else os.path.join(d, labels_csv)
    else:
      found = [p for pat in CSV_PATTERNS for p in sorted(glob.glob(os.path.join(d, pat)))]
      if not found:
        raise DataNotFoundError(
            f"chestxray14: no label file {list(CSV_PATTERNS)} in {d}.")
      csv_path = found[0]
    require_columns(csv_path, ("Image Index", "Finding Labels", "Patient ID"))
    # Images: every images*/ folder (NIH: images/, Kaggle: images_0NN/images/).
    image_dirs = sorted(glob.glob(os.path.join(d, "images*")))
    if not image_dirs:
      raise DataNotFoundError(f"chestxray14: no images*/ folder in {d}.")
    images: dict[str, str] = {}
    for idir in image_dirs:
      if os.path.isdir(idir):
        images.update(index_images(idir))

    if split_lists:
      from medhash_jax.data import chestxray14_protocol  # pylint: disable=g-import-not-at-top
      official = chestxray14_protocol.load_lists(split_lists)
    else:
      official = self._official_lists(d)
    cls = {c: i for i, c in enumerate(self.class_names)}
    n_outside = 0
    recs = []
    for line, row in read_csv_rows(csv_path):
      name = (row.get("Image Index") or "").strip()
      findings = [f.strip() for f in (row.get("Finding Labels") or "").split("|")
                  if f.strip()]
      patient = (row.get("Patient ID") or "").strip()
      if not name or not patient or not findings:
        self.bad.handle(BadRecordError(
            "empty Image Index, Finding Labels or Patient ID",
            file=csv_path, row=f"line {line}"))
        continue
      unknown = [f for f in findings if f not in cls and f != NO_FINDING]
      if unknown or (NO_FINDING in findings and len(findings) > 1):
        self.bad.handle(BadRecordError(
            f"unknown finding(s) {unknown}" if unknown else
            f"'{NO_FINDING}' combined with findings {findings}",
            file=csv_path, row=f"line {line}"))
        continue
      idx = [cls[f] for f in findings if f in cls]
      p = images.get(name)
      if p is None:
        self.bad.handle(BadRecordError(
            f"image {name} has no file under {image_dirs}",
            file=csv_path, row=f"line {line}"))
        continue
      rec = dict(path=p, labels=multi_hot(idx, len(self.class_names)), id=name,
                 group=patient, row=line, row_file=csv_path)
      if official is not None:
        rec["split"] = official.get(name, "")
        if split_lists and not rec["split"]:
          self.bad.handle(BadRecordError(
              f"image {name} is in none of the lists of {split_lists}",
              file=csv_path, row=f"line {line}"))
          continue
        n_outside += rec["split"] == ""
      recs.append(rec)
    if n_outside:
      logging.warning("chestxray14: %d image(s) are in neither train_val_list.txt "
                      "nor test_list.txt; the official protocol leaves them out.",
                      n_outside)
    self.csv_path = csv_path
    self._set_records(recs, verify=verify)

  @staticmethod
  def _official_lists(d: str) -> dict[str, str] | None:
    tv, te = (os.path.join(d, f) for f in ("train_val_list.txt", "test_list.txt"))
    if not (os.path.isfile(tv) and os.path.isfile(te)):
      return None
    out = {}
    for f, split in ((tv, "train"), (te, "test")):
      with open(f) as fh:
        for line in fh:
          name = line.strip()
          if name:
            if name in out and out[name] != split:
              raise BadRecordError("image is in both train_val_list.txt and "
                                   "test_list.txt", file=f, row=name)
            out[name] = split
    return out
