"""A published, fixed ChestX-ray14 retrieval protocol: patient-grouped
query : train : database = 1 : 3 : 3 (the seed papers' ratio), with a val
carve-out of 10 % of the train patients, as committed lists of image names.

The anchors publish fixed query / database / train lists for their
benchmarks; nobody does for ChestX-ray14. These lists are made from the
complete NIH label table (`Data_Entry_2017_v2020.csv`, 112,120 images,
30,805 patients) with `splits.make_splits`'s partition by whole patients and
the fixed seed `SEED`, so anyone with the images can use the same split:

    python -m medhash_jax.data.chestxray14_protocol \\
        --labels=Data_Entry_2017_v2020.csv.gz --out=configs/splits/chestxray14

writes `<split>.txt.gz` (sorted image names, one per line; gzip without
time stamp or file name, so the bytes depend on the names only) and
`protocol.json` (seed, ratios, the label table's sha256, per split the
image, patient and per-label counts and the list file's sha256).
tests/test_chestxray14_protocol.py regenerates them from the staged table
and compares bytes. `load_lists` verifies the sha256s and names a damaged
file. The ChestX-ray14 source reads them with `data.split_lists=<folder>`
(with `data.split="official"`).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import os
from typing import Sequence

import numpy as np

from medhash_jax.data import splits as splits_lib
from medhash_jax.data.records import DataError

SEED = 14              # the protocol's seed (ChestX-ray *14*), fixed forever
RATIOS = (1, 3, 3)     # query : train : database
VAL_FRACTION = 0.1     # of the train patients
SPLITS = ("query", "train", "val", "database")
PROTOCOL_FILE = "protocol.json"
FINDINGS_COLUMN, NAME_COLUMN, PATIENT_COLUMN = ("Finding Labels", "Image Index",
                                                "Patient ID")


def _open_text(path: str):
  if path.endswith(".gz"):
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig",
                            newline="")
  return open(path, encoding="utf-8-sig", newline="")


def read_table(path: str):
  """(names, patients, findings) of the NIH label table (.csv or .csv.gz);
  an empty field or a repeated image names the line."""
  names, patients, findings, seen = [], [], [], set()
  with _open_text(path) as f:
    reader = csv.DictReader(f)
    missing = [c for c in (NAME_COLUMN, PATIENT_COLUMN, FINDINGS_COLUMN)
               if c not in (reader.fieldnames or ())]
    if missing:
      raise DataError(f"{path}: missing column(s) {missing}")
    for row in reader:
      name = (row[NAME_COLUMN] or "").strip()
      patient = (row[PATIENT_COLUMN] or "").strip()
      fnd = (row[FINDINGS_COLUMN] or "").strip()
      if not name or not patient or not fnd:
        raise DataError(f"{path} line {reader.line_num}: empty {NAME_COLUMN},"
                        f" {PATIENT_COLUMN} or {FINDINGS_COLUMN}")
      if name in seen:
        raise DataError(f"{path} line {reader.line_num}: image {name} twice")
      seen.add(name)
      names.append(name)
      patients.append(patient)
      findings.append(tuple(s.strip() for s in fnd.split("|")))
  return names, patients, findings


def make_lists(names: Sequence[str], patients: Sequence[str],
               seed: int = SEED) -> dict[str, list[str]]:
  """split -> sorted image names (the seed protocol of `splits`, grouped)."""
  groups = np.asarray(patients)
  rng = np.random.default_rng(seed)
  query, train, database = splits_lib._partition(len(names), groups, RATIOS, rng)  # pylint: disable=protected-access
  val, train = splits_lib._subset_partition(  # pylint: disable=protected-access
      train, groups, (VAL_FRACTION, 1 - VAL_FRACTION), rng)
  parts = {"query": query, "train": train, "val": val, "database": database}
  return {k: sorted(str(names[i]) for i in v) for k, v in parts.items()}


def _gzip_bytes(lines: Sequence[str]) -> bytes:
  buf = io.BytesIO()
  with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0,
                     compresslevel=9) as g:
    g.write("".join(l + "\n" for l in lines).encode("ascii"))
  return buf.getvalue()


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def protocol_files(labels_path: str) -> dict[str, bytes]:
  """file name -> bytes of every file of the protocol folder."""
  names, patients, findings = read_table(labels_path)
  lists = make_lists(names, patients)
  patient_of = dict(zip(names, patients))
  findings_of = dict(zip(names, findings))
  with open(labels_path, "rb") as f:
    table_sha = _sha256(f.read())
  files, summary = {}, {}
  for split in SPLITS:
    data = _gzip_bytes(lists[split])
    files[f"{split}.txt.gz"] = data
    counts: dict[str, int] = {}
    for name in lists[split]:
      for fnd in findings_of[name]:
        counts[fnd] = counts.get(fnd, 0) + 1
    summary[split] = {"file": f"{split}.txt.gz", "sha256": _sha256(data),
                      "images": len(lists[split]),
                      "patients": len({patient_of[n] for n in lists[split]}),
                      "label_counts": dict(sorted(counts.items()))}
  doc = {"dataset": "NIH ChestX-ray14",
         "protocol": "patient-grouped query:train:database = 1:3:3, val = "
                     f"{VAL_FRACTION:g} of the train patients",
         "seed": SEED, "ratios": list(RATIOS), "val_fraction": VAL_FRACTION,
         "labels_table": os.path.basename(labels_path),
         "labels_table_sha256": table_sha,
         "generator": "python -m medhash_jax.data.chestxray14_protocol",
         "images": len(names), "patients": len(set(patients)),
         "splits": summary}
  files[PROTOCOL_FILE] = (json.dumps(doc, indent=1) + "\n").encode("utf-8")
  return files


def write_protocol(labels_path: str, out_dir: str) -> dict[str, bytes]:
  """Writes the protocol folder (each file atomically)."""
  files = protocol_files(labels_path)
  os.makedirs(out_dir, exist_ok=True)
  for name, data in files.items():
    path = os.path.join(out_dir, name)
    with open(path + ".tmp", "wb") as f:
      f.write(data)
    os.replace(path + ".tmp", path)
  return files


def load_lists(folder: str) -> dict[str, str]:
  """image name -> split from a protocol folder, each list verified against
  protocol.json's sha256 (a damaged file is named, never used)."""
  meta_path = os.path.join(folder, PROTOCOL_FILE)
  if not os.path.isfile(meta_path):
    raise DataError(f"data.split_lists={folder}: no {PROTOCOL_FILE} there")
  with open(meta_path, encoding="utf-8") as f:
    try:
      meta = json.load(f)
    except ValueError as e:
      raise DataError(f"{meta_path} is corrupt ({e})") from e
  out: dict[str, str] = {}
  for split in SPLITS:
    info = meta["splits"][split]
    path = os.path.join(folder, info["file"])
    with open(path, "rb") as f:
      data = f.read()
    if _sha256(data) != info["sha256"]:
      raise DataError(f"{path} is damaged: its sha256 is not the one in "
                      f"{meta_path}; restore it from the repository")
    for name in gzip.decompress(data).decode("ascii").split():
      if name in out:
        raise DataError(f"{path}: image {name} is also in {out[name]}")
      out[name] = split
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--labels", required=True,
                 help="Data_Entry_2017_v2020.csv(.gz), the NIH label table")
  p.add_argument("--out", required=True, help="protocol folder to write")
  args = p.parse_args(argv)
  files = write_protocol(args.labels, args.out)
  meta = json.loads(files[PROTOCOL_FILE])
  for split, info in meta["splits"].items():
    print(f"{split}: {info['images']} images, {info['patients']} patients")


if __name__ == "__main__":
  main()
