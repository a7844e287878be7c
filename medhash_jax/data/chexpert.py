"""CheXpert source (Stanford; the full or the "-small" release).

Official layout:

    <dir>/train.csv, <dir>/valid.csv
      columns: Path, Sex, Age, Frontal/Lateral, AP/PA, then 14 observations
      Path = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    <dir>/train/patient00001/study1/view1_frontal.jpg ...

``<dir>`` may be the folder named in ``Path`` (CheXpert-v1.0-small) or its
parent; both resolve. Each observation is 1 (positive), 0 (negative), -1
(uncertain) or blank (not mentioned, read as negative). The uncertainty policy
(Irvin et al. 2019) is a parameter:

  * "ones":   -1 -> 1 (U-Ones);
  * "zeros":  -1 -> 0 (U-Zeros);
  * "ignore": -1 -> 0 and ``label_mask`` = 0 for that entry, so a loss can
    leave it out.

group = patient id (``patientNNNNN`` in the path). train.csv is the official
train split; valid.csv (the official validation set, 200 studies) serves as
"test" because the real test set is hidden; model selection uses a validation
split carved from train.
"""

from __future__ import annotations

import os
import re

from medhash_jax.data import paths
from medhash_jax.data.base import FileSource, read_csv_rows, require_columns
from medhash_jax.data.records import BadRecordError, BadRecords, DataNotFoundError
import numpy as np

OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
                "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
                "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                "Pleural Other", "Fracture", "Support Devices")
# The five observations of the CheXpert competition.
COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
               "Pleural Effusion")
DIR_CANDIDATES = ("chexpert", "CheXpert", "CheXpert-v1.0-small", "CheXpert-v1.0")
POLICIES = ("ones", "zeros", "ignore")
_PATIENT = re.compile(r"(patient\d+)")


class CheXpertSource(FileSource):
  """CheXpert with a configurable uncertainty policy."""

  def __init__(self, *, root: str | None = None, path: str | None = None,
               uncertainty: str = "ones", class_names: tuple[str, ...] = (),
               frontal_only: bool = False, skip_bad: bool = False,
               verify: str = "exists", draft_size: int | None = None, **unused):
    del unused
    if uncertainty not in POLICIES:
      raise ValueError(f"CheXpert uncertainty policy must be one of {POLICIES}, "
                       f"got {uncertainty!r}")
    classes = tuple(class_names) or OBSERVATIONS
    unknown = [c for c in classes if c not in OBSERVATIONS]
    if unknown:
      raise ValueError(f"unknown CheXpert observation(s) {unknown}; "
                       f"known: {OBSERVATIONS}")
    self.name = "chexpert"
    self.class_names = classes
    self.multi_label = True
    self.uncertainty = uncertainty
    self.draft_size = draft_size
    self.bad = BadRecords(skip_bad, self.name)
    d = paths.find_dataset_dir(self.name, root=root, path=path,
                               candidates=DIR_CANDIDATES, markers=("train.csv",))
    csvs = [(os.path.join(d, "train.csv"), "train"),
            (os.path.join(d, "valid.csv"), "test")]
    if not os.path.isfile(csvs[0][0]):
      raise DataNotFoundError(f"chexpert: no train.csv in {d}.")
    recs = []
    for csv_path, split in csvs:
      if not os.path.isfile(csv_path):
        continue
      require_columns(csv_path, ("Path",) + classes)
      for line, row in read_csv_rows(csv_path):
        rec = self._record(d, csv_path, line, row, split, frontal_only)
        if rec is not None:
          recs.append(rec)
    self._set_records(recs, verify=verify)

  def _record(self, d, csv_path, line, row, split, frontal_only):
    rel = (row.get("Path") or "").strip()
    if not rel:
      self.bad.handle(BadRecordError("empty Path", file=csv_path, row=f"line {line}"))
      return None
    if frontal_only and (row.get("Frontal/Lateral") or "").strip() == "Lateral":
      return None  # a documented filter, not a bad record
    p = _resolve(d, rel)
    if p is None:
      self.bad.handle(BadRecordError(
          f"image {rel} not found under {d} or its parent",
          file=csv_path, row=f"line {line}"))
      return None
    c = len(self.class_names)
    labels = np.zeros((c,), np.uint8)
    mask = np.ones((c,), np.uint8)
    for j, name in enumerate(self.class_names):
      raw = (row.get(name) or "").strip()
      try:
        v = float(raw) if raw else 0.0
      except ValueError:
        v = None
      if v not in (1.0, 0.0, -1.0):
        self.bad.handle(BadRecordError(
            f"observation {name!r} has value {raw!r}; expected 1, 0, -1 or blank",
            file=csv_path, row=f"line {line}"))
        return None
      if v == 1.0:
        labels[j] = 1
      elif v == -1.0:
        if self.uncertainty == "ones":
          labels[j] = 1
        elif self.uncertainty == "ignore":
          mask[j] = 0
    m = _PATIENT.search(rel)
    group = m.group(1) if m else os.path.dirname(os.path.dirname(rel))
    return dict(path=p, labels=labels, label_mask=mask, id=rel, group=group,
                split=split, row=line, row_file=csv_path)


def _resolve(d: str, rel: str) -> str | None:
  """Resolves a CSV ``Path`` whether ``d`` is the named folder or its parent."""
  parts = rel.replace("\\", "/").split("/")
  for cand in (os.path.join(d, *parts), os.path.join(d, *parts[1:]),
               os.path.join(os.path.dirname(d), *parts)):
    if os.path.isfile(cand):
      return cand
  return None
