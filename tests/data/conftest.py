"""Fixtures of the data-layer tests: the staged real data, and small trees in
each official layout written from real staged images."""

from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image
import pytest

from medhash_jax.data.records import ImageSource, BadRecords


def _need(data_dir, *parts):
  p = os.path.join(data_dir, *parts)
  if not os.path.exists(p):
    pytest.skip(f"staged file {p} is absent (see ../shared/data/README.md)")
  return p


@pytest.fixture(scope="session")
def covid_pngs(data_dir):
  """Real chest X-ray PNGs (128x128 gray): 8 COVID then 8 Normal paths."""
  base = _need(data_dir, "covid19_radiography", "COVID-19_Radiography_Dataset")
  out = []
  for cls in ("COVID", "Normal"):
    d = os.path.join(base, cls)
    out += [os.path.join(d, f) for f in sorted(os.listdir(d))[:8]]
  return out


@pytest.fixture(scope="session")
def ham_jpgs(data_dir):
  d = _need(data_dir, "ham10000", "HAM10000_images")
  return [os.path.join(d, f) for f in sorted(os.listdir(d))[:8]]


def _write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


# 10 images, 5 patients; findings chosen to cover multi-label and No Finding.
CXR14_ROWS = [
    ("00000001_000.png", "Cardiomegaly|Effusion", "1"),
    ("00000001_001.png", "No Finding", "1"),
    ("00000002_000.png", "Atelectasis", "2"),
    ("00000002_001.png", "Atelectasis|Mass|Nodule", "2"),
    ("00000003_000.png", "No Finding", "3"),
    ("00000003_001.png", "Hernia", "3"),
    ("00000004_000.png", "Pleural_Thickening|Effusion", "4"),
    ("00000004_001.png", "Effusion", "4"),
    ("00000005_000.png", "No Finding", "5"),
    ("00000005_001.png", "Pneumothorax", "5"),
]


@pytest.fixture
def chestxray14_tree(tmp_path, covid_pngs):
  """ChestX-ray14 in the Kaggle layout with the official split lists."""
  d = tmp_path / "chestxray14"
  img_dirs = [d / "images_001" / "images", d / "images_002" / "images"]
  for x in img_dirs:
    x.mkdir(parents=True)
  rows = []
  for k, (name, findings, pid) in enumerate(CXR14_ROWS):
    Image.open(covid_pngs[k]).save(img_dirs[k % 2] / name)
    rows.append((name, findings, "0", pid, "50", "M", "PA", "1024", "1024",
                 "0.14", "0.14"))
  _write_csv(d / "Data_Entry_2017.csv",
             ["Image Index", "Finding Labels", "Follow-up #", "Patient ID",
              "Patient Age", "Patient Gender", "View Position",
              "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x",
              "y]"], rows)
  # Official split is patient-wise: patients 4 and 5 are test.
  (d / "train_val_list.txt").write_text(
      "\n".join(r[0] for r in CXR14_ROWS if r[2] in "123") + "\n")
  (d / "test_list.txt").write_text(
      "\n".join(r[0] for r in CXR14_ROWS if r[2] in "45") + "\n")
  return d


CHEXPERT_OBS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
                "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
                "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                "Pleural Other", "Fracture", "Support Devices")


@pytest.fixture
def chexpert_tree(tmp_path, covid_pngs):
  """CheXpert-v1.0-small layout: train.csv/valid.csv + patient folders (JPEG)."""
  top = tmp_path / "chexpert"
  d = top / "CheXpert-v1.0-small"
  rows = {"train": [], "valid": []}
  k = 0
  for split, patients in (("train", (1, 2, 3)), ("valid", (64541,))):
    for p in patients:
      for view in ("view1_frontal", "view2_lateral"):
        rel = f"CheXpert-v1.0-small/{split}/patient{p:05d}/study1/{view}.jpg"
        out = top / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(covid_pngs[k]).convert("L").save(out, quality=90)
        labels = [""] * len(CHEXPERT_OBS)
        labels[CHEXPERT_OBS.index("Cardiomegaly")] = "1.0"
        labels[CHEXPERT_OBS.index("Edema")] = "-1.0" if k % 2 == 0 else "0.0"
        rows[split].append([rel, "Male", "60",
                            "Frontal" if "frontal" in view else "Lateral",
                            "AP" if "frontal" in view else ""] + labels)
        k += 1
  header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + list(CHEXPERT_OBS)
  for split in rows:
    _write_csv(d / f"{split}.csv", header, rows[split])
  return top, d


HAM_ROWS = [  # lesion_id, image index into ham_jpgs, dx
    ("HAM_0000001", 0, "nv"), ("HAM_0000001", 1, "nv"), ("HAM_0000002", 2, "mel"),
    ("HAM_0000003", 3, "bkl"), ("HAM_0000004", 4, "bcc"), ("HAM_0000004", 5, "bcc"),
    ("HAM_0000005", 6, "akiec"), ("HAM_0000006", 7, "vasc"),
]


@pytest.fixture
def ham_tree(tmp_path, ham_jpgs):
  """HAM10000 official layout: metadata CSV + images_part_1/2."""
  d = tmp_path / "ham10000"
  parts = [d / "HAM10000_images_part_1", d / "HAM10000_images_part_2"]
  for p in parts:
    p.mkdir(parents=True)
  rows = []
  for lesion, k, dx in HAM_ROWS:
    image_id = f"ISIC_99{k:05d}"
    Image.open(ham_jpgs[k]).save(parts[k % 2] / f"{image_id}.jpg", quality=90)
    rows.append((lesion, image_id, dx, "histo", "50.0", "male", "back"))
  _write_csv(d / "HAM10000_metadata.csv",
             ["lesion_id", "image_id", "dx", "dx_type", "age", "sex",
              "localization"], rows)
  return d


@pytest.fixture
def folder_tree(tmp_path, covid_pngs):
  """COVID-19 Radiography v4 layout: wrapper/<Class>/images + masks folders."""
  d = tmp_path / "covid" / "COVID-19_Radiography_Dataset"
  for cls, paths in (("COVID", covid_pngs[:4]), ("Normal", covid_pngs[8:12]),
                     ("Viral Pneumonia", covid_pngs[4:7])):
    (d / cls / "images").mkdir(parents=True)
    (d / cls / "masks").mkdir(parents=True)
    for j, p in enumerate(paths):
      Image.open(p).save(d / cls / "images" / f"{cls}-{j + 1}.png")
      Image.new("L", (64, 64), 255).save(d / cls / "masks" / f"{cls}-{j + 1}.png")
  return tmp_path / "covid"


class ArraySource(ImageSource):
  """In-memory synthetic source for pipeline tests (image pixel = record id)."""

  def __init__(self, n=50, num_classes=4, groups_of=1, size=12, multi_label=True,
               seed=0, channels=1):
    rng = np.random.default_rng(seed)
    self.name = "synthetic"
    self.class_names = tuple(f"c{k}" for k in range(num_classes))
    self.multi_label = multi_label
    if multi_label:
      self.labels = (rng.random((n, num_classes)) < 0.35).astype(np.uint8)
    else:
      self.labels = np.eye(num_classes, dtype=np.uint8)[rng.integers(num_classes, size=n)]
    self.ids = np.array([f"img{i:04d}" for i in range(n)])
    self.groups = (np.array([f"p{i // groups_of}" for i in range(n)])
                   if groups_of > 1 else None)
    self.size = size
    self.channels = channels
    self.bad = BadRecords(False, self.name)
    self._finalize()

  def read_image(self, index):
    return np.full((self.size, self.size, self.channels), index % 256, np.uint8)


@pytest.fixture
def array_source():
  return ArraySource
