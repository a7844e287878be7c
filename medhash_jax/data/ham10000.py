"""HAM10000 ("Skin Cancer MNIST") source.

Official layout (Harvard Dataverse / Kaggle):

    <dir>/HAM10000_metadata.csv      lesion_id,image_id,dx,dx_type,age,sex,localization
    <dir>/HAM10000_images_part_1/ISIC_0024306.jpg ...
    <dir>/HAM10000_images_part_2/...   (or a single HAM10000_images/ folder)

Seven classes (the ``dx`` column): akiec, bcc, bkl, df, mel, nv, vasc.
group = ``lesion_id``: several images of one lesion must stay on one side of
every split. HAM10000 has no official split (the ISIC 2018 test images are a
separate download), so the "official" protocol is refused.
"""

from __future__ import annotations

import glob
import os

from medhash_jax.data import paths
from medhash_jax.data.base import FileSource, index_images, read_csv_rows, require_columns
from medhash_jax.data.records import BadRecordError, BadRecords, DataNotFoundError, multi_hot

CLASS_NAMES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
CLASS_DESCRIPTIONS = {
    "akiec": "actinic keratoses and intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesions",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevi",
    "vasc": "vascular lesions",
}
DIR_CANDIDATES = ("ham10000", "HAM10000", "skin-cancer-mnist-ham10000", "dermamnist_full")


class HAM10000Source(FileSource):
  """HAM10000 images with dx labels, grouped by lesion."""

  def __init__(self, *, root: str | None = None, path: str | None = None,
               metadata_csv: str = "", skip_bad: bool = False,
               verify: str = "exists", draft_size: int | None = None, **unused):
    del unused
    self.name = "ham10000"
    self.class_names = CLASS_NAMES
    self.multi_label = False
    self.draft_size = draft_size
    self.bad = BadRecords(skip_bad, self.name)
    d = paths.find_dataset_dir(self.name, root=root, path=path,
                               candidates=DIR_CANDIDATES,
                               markers=("HAM10000_metadata.csv",))
    csv_path = metadata_csv or os.path.join(d, "HAM10000_metadata.csv")
    if not os.path.isfile(csv_path):
      found = sorted(glob.glob(os.path.join(d, "*metadata*.csv")))
      if not found:
        raise DataNotFoundError(f"ham10000: no HAM10000_metadata.csv in {d}.")
      csv_path = found[0]
    require_columns(csv_path, ("lesion_id", "image_id", "dx"))
    images = index_images(d)
    cls = {c: i for i, c in enumerate(CLASS_NAMES)}
    recs = []
    for line, row in read_csv_rows(csv_path):
      image_id = (row.get("image_id") or "").strip()
      dx = (row.get("dx") or "").strip()
      lesion = (row.get("lesion_id") or "").strip()
      if dx not in cls:
        self.bad.handle(BadRecordError(
            f"unknown dx label {dx!r}; expected one of {CLASS_NAMES}",
            file=csv_path, row=f"line {line}"))
        continue
      if not image_id or not lesion:
        self.bad.handle(BadRecordError("empty image_id or lesion_id",
                                       file=csv_path, row=f"line {line}"))
        continue
      p = images.get(image_id)
      if p is None:
        self.bad.handle(BadRecordError(
            f"image {image_id} listed in the CSV has no file under {d}",
            file=csv_path, row=f"line {line}"))
        continue
      recs.append(dict(path=p, labels=multi_hot([cls[dx]], len(CLASS_NAMES)),
                       id=image_id, group=lesion, row=line, row_file=csv_path))
    self.csv_path = csv_path
    self._set_records(recs, verify=verify)
