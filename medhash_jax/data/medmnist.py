"""MedMNIST v2 / MedMNIST+ ``.npz`` sources (all 2D sets; sizes 28/64/128/224).

File layout: ``<root>/<flag>/<flag>[_<size>].npz`` or ``<root>/<flag>[_<size>].npz``
with keys ``{train,val,test}_{images,labels}``. Images are (N, H, W) or
(N, H, W, 3) uint8; label arrays may be (N,), (N, 1) (one class index per
image) or (N, C) (ChestMNIST's multi-hot). The three official splits are
concatenated in the order train, val, test and ``official_split`` remembers
which is which. MedMNIST has no patient ids, so ``groups`` is None.

The class lists, md5 sums and URLs are those of the official ``medmnist/info.py``
(Zenodo record 10519652, MedMNIST v3 / MedMNIST+).
"""

from __future__ import annotations

import os

from absl import logging
import numpy as np

from medhash_jax.data import paths
from medhash_jax.data.records import BadRecordError, BadRecords, DataError, ImageSource

_URL = "https://zenodo.org/records/10519652/files/{file}?download=1"
SIZES = (28, 64, 128, 224)

# flag: (task, channels, class names, {split: n}, md5 for 28, 64, 128, 224)
_INFO = {
    "pathmnist": ("multi-class", 3, (
        "adipose", "background", "debris", "lymphocytes", "mucus",
        "smooth muscle", "normal colon mucosa", "cancer-associated stroma",
        "colorectal adenocarcinoma epithelium"),
        (89996, 10004, 7180),
        ("a8b06965200029087d5bd730944a56c1", "55aa9c1e0525abe5a6b9d8343a507616",
         "ac42d08fb904d92c244187169d1fd1d9", "2c51a510bcdc9cf8ddb2af93af1eadec")),
    "chestmnist": ("multi-label, binary-class", 1, (
        "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass",
        "nodule", "pneumonia", "pneumothorax", "consolidation", "edema",
        "emphysema", "fibrosis", "pleural", "hernia"),
        (78468, 11219, 22433),
        ("02c8a6516a18b556561a56cbdd36c4a8", "9de6cd0b934ebb5b7426cfba5efbae16",
         "db107e5590b27930b62dbaf558aebee3", "45bd33e6f06c3e8cdb481c74a89152aa")),
    "dermamnist": ("multi-class", 3, (
        "actinic keratoses and intraepithelial carcinoma",
        "basal cell carcinoma", "benign keratosis-like lesions",
        "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions"),
        (7007, 1003, 2005),
        ("0744692d530f8e62ec473284d019b0c7", "b70a2f5635c6199aeaa28c31d7202e1f",
         "2defd784463fa5243564e855ed717de1", "8974907d8e169bef5f5b96bc506ae45d")),
    "octmnist": ("multi-class", 1, (
        "choroidal neovascularization", "diabetic macular edema", "drusen",
        "normal"),
        (97477, 10832, 1000),
        ("c68d92d5b585d8d81f7112f81e2d0842", "e229e9440236b774d9f0dfef9d07bdaf",
         "0a97e76651ace45c5d943ee3f65b63ae", "abc493b6d529d5de7569faaef2773ba3")),
    "pneumoniamnist": ("binary-class", 1, ("normal", "pneumonia"),
                       (4708, 524, 624),
                       ("28209eda62fecd6e6a2d98b1501bb15f",
                        "8f4eceb4ccffa70c672198ea285246c6",
                        "05b46931834c231683c68f40c47b2971",
                        "d6a3c71de1b945ea11211b03746c1fe1")),
    "retinamnist": ("ordinal-regression", 3, ("0", "1", "2", "3", "4"),
                    (1080, 120, 400),
                    ("bd4c0672f1bba3e3a89f0e4e876791e4",
                     "afda852cc34dcda56f86ad2b2457dbcc",
                     "e48e916a24454daf90583d4e6efb1a18",
                     "eae7e3b6f3fcbda4ae613ebdcbe35348")),
    "breastmnist": ("binary-class", 1, ("malignant", "normal, benign"),
                    (546, 78, 156),
                    ("750601b1f35ba3300ea97c75c52ff8f6",
                     "742edef2a1fd1524b2efff4bd7ba9364",
                     "363e4b3f8d712e9b5de15470a2aaadf1",
                     "b56378a6eefa9fed602bb16d192d4c8b")),
    "bloodmnist": ("multi-class", 3, (
        "basophil", "eosinophil", "erythroblast",
        "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
        "lymphocyte", "monocyte", "neutrophil", "platelet"),
        (11959, 1712, 3421),
        ("7053d0359d879ad8a5505303e11de1dc", "2b94928a2ae4916078ca51e05b6b800b",
         "adace1e0ed228fccda1f39692059dd4c", "b718ff6835fcbdb22ba9eacccd7b2601")),
    "tissuemnist": ("multi-class", 1, (
        "Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
        "Glomerular endothelial cells", "Interstitial endothelial cells",
        "Leukocytes", "Podocytes", "Proximal Tubule Segments",
        "Thick Ascending Limb"),
        (165466, 23640, 47280),
        ("ebe78ee8b05294063de985d821c1c34b", "123ece2eba09d0aa5d698fda57103344",
         "61b955355d7425a89687b06cca3ce0c2", "b077128c4a949f0a4eb01517f9037b9c")),
}
_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left",
           "kidney-right", "liver", "lung-left", "lung-right", "pancreas",
           "spleen")
_INFO.update({
    "organamnist": ("multi-class", 1, _ORGANS, (34561, 6491, 17778),
                    ("68e3f8846a6bd62f0c9bf841c0d9eacc",
                     "2dcccc29b88e6da5a01161ef20cda288",
                     "eeae80d0a227a8d099027e1b3cfd3b60",
                     "50747347e05c87dd3aaf92c49f9f3170")),
    "organcmnist": ("multi-class", 1, _ORGANS, (12975, 2392, 8216),
                    ("b9ceb9546e10131b32923c5bbeaea2b1",
                     "3ce34a8724ea6f548e6db4744d03b6a9",
                     "773c1f009daa3fe5d9a2a201b2a7ed94",
                     "050f5e875dc056f6768abf94ec9995d1")),
    "organsmnist": ("multi-class", 1, _ORGANS, (13932, 2452, 8827),
                    ("9ab87b696fb54e2a387ebe992d6ed5f1",
                     "53a6d115339d874c25e309a994ff46d3",
                     "ded0c5fa01a95dc4978b956f613e9b8e",
                     "b354719e553fbbb2513d5533f52a4cb1")),
})

MEDMNIST_2D = tuple(sorted(_INFO))
_SPLITS = ("train", "val", "test")


def medmnist_filename(flag: str, size: int) -> str:
  return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def class_names(flag: str) -> tuple[str, ...]:
  return _INFO[flag][2]


def _labels_to_multi_hot(arr: np.ndarray, num_classes: int, multi_label: bool,
                         key: str, file: str, bad: BadRecords) -> np.ndarray:
  """(N,) / (N,1) class indices or (N,C) multi-hot -> (N, C) uint8."""
  arr = np.asarray(arr)
  n = arr.shape[0]
  arr = arr.reshape(n, -1)
  if arr.shape[1] == 1 and not (multi_label and num_classes == 1):
    idx = arr[:, 0].astype(np.int64)
    out = np.zeros((n, num_classes), np.uint8)
    ok = (idx >= 0) & (idx < num_classes)
    out[np.nonzero(ok)[0], idx[ok]] = 1
    for i in np.nonzero(~ok)[0]:
      bad.handle(BadRecordError(
          f"label {int(idx[i])} is outside the class list (0..{num_classes - 1})",
          file=file, row=f"{key}[{i}]"))
    return out
  if arr.shape[1] != num_classes:
    raise DataError(f"file {file}: {key} has shape {arr.shape}; expected (N,), "
                    f"(N, 1) or (N, {num_classes}).")
  vals = np.unique(arr)
  if not np.all(np.isin(vals, (0, 1))):
    raise DataError(f"file {file}: {key} holds values {vals[:10]} but multi-hot "
                    "labels must be 0/1.")
  return arr.astype(np.uint8)


class MedMNISTSource(ImageSource):
  """One MedMNIST 2D dataset, all three official splits concatenated."""

  def __init__(self, flag: str, *, root: str | None = None,
               path: str | None = None, size: int = 28, download: bool = True,
               skip_bad: bool = False, **unused):
    del unused  # Options meant for other sources (shared data config).
    flag = flag.lower()
    if flag not in _INFO:
      raise ValueError(f"unknown MedMNIST 2D dataset {flag!r}; known: {MEDMNIST_2D}")
    if size not in SIZES:
      raise ValueError(f"MedMNIST size must be one of {SIZES}, got {size}")
    task, channels, names, n_official, md5s = _INFO[flag]
    self.name = flag
    self.task = task
    self.class_names = names
    self.multi_label = task.startswith("multi-label")
    self.bad = BadRecords(skip_bad, flag)
    root = paths.resolve_root(root)
    filename = medmnist_filename(flag, size)
    search = [path] if path else [os.path.join(root, flag), root]
    self.file = paths.ensure_file(
        flag, filename=filename, search_dirs=search,
        download_dir=path or os.path.join(root, flag),
        url=_URL.format(file=filename), md5=md5s[SIZES.index(size)],
        allow_download=download)

    images, labels, split, ids, rows = [], [], [], [], []
    with np.load(self.file) as z:
      missing = [f"{s}_{k}" for s in _SPLITS for k in ("images", "labels")
                 if f"{s}_{k}" not in z]
      if missing:
        raise DataError(f"file {self.file}: missing arrays {missing}")
      for s, n_expected in zip(_SPLITS, n_official):
        im = z[f"{s}_images"]
        lab = _labels_to_multi_hot(z[f"{s}_labels"], len(names),
                                   self.multi_label, f"{s}_labels", self.file,
                                   self.bad)
        if im.shape[0] != lab.shape[0]:
          raise DataError(f"file {self.file}: {s}_images has {im.shape[0]} rows "
                          f"but {s}_labels {lab.shape[0]}")
        if im.dtype != np.uint8:
          raise DataError(f"file {self.file}: {s}_images is {im.dtype}, not uint8")
        if im.shape[0] != n_expected:
          logging.warning("%s: %s has %d images, the official release %d.",
                          self.file, s, im.shape[0], n_expected)
        keep = lab.any(axis=1) | self.multi_label  # drops skipped bad labels
        images.append(im[keep])
        labels.append(lab[keep])
        kept = np.nonzero(keep)[0]
        split.append(np.full(kept.shape, s))
        ids.append(np.char.add(f"{s}/", kept.astype(str)))
        rows.append(kept)
    self.images = np.concatenate(images)
    if self.images.ndim == 3:
      self.images = self.images[..., None]
    self.labels = np.concatenate(labels)
    self.official_split = np.concatenate(split)
    self.ids = np.concatenate(ids)
    self._rows = np.concatenate(rows)
    self.groups = None
    self.size = size
    self._finalize()

  def read_image(self, index: int) -> np.ndarray:
    return self.images[index]

  def describe(self, index: int):
    s = self.official_split[index]
    return self.file, f"{s}_images[{self._rows[index]}]"
