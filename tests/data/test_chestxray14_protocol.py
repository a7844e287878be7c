"""The published ChestX-ray14 protocol (configs/splits/chestxray14) and the
ChestX-ray14 source at full scale, on the real NIH label table (112,120
images, 30,805 patients; staged without images): stand-in image files are
symlinks to one blank PNG, one per row of the table."""

import gzip
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from medhash_jax import data
from medhash_jax.data import chestxray14_protocol as protocol
from medhash_jax.data import splits as splits_lib
from medhash_jax.data.records import BadRecordError, DataError

HERE = os.path.dirname(os.path.abspath(__file__))
LISTS = os.path.normpath(os.path.join(HERE, "..", "..", "configs", "splits",
                                      "chestxray14"))
TABLE = "Data_Entry_2017_v2020.csv.gz"

# From /work/shared/data/README.md (counted there from the file, not by
# the code under test).
README_COUNTS = {"No Finding": 60361, "Infiltration": 19894, "Effusion": 13317,
                 "Atelectasis": 11559, "Nodule": 6331, "Mass": 5782,
                 "Pneumothorax": 5302, "Consolidation": 4667,
                 "Pleural_Thickening": 3385, "Cardiomegaly": 2776,
                 "Emphysema": 2516, "Edema": 2303, "Fibrosis": 1686,
                 "Pneumonia": 1431, "Hernia": 227}


@pytest.fixture(scope="module")
def table(data_dir):
  path = os.path.join(data_dir, "chestxray14_labels", TABLE)
  if not os.path.isfile(path):
    pytest.skip("staged chestxray14_labels missing")
  return path


@pytest.fixture(scope="module")
def tree(table, tmp_path_factory):
  """<dir>/Data_Entry_2017_v2020.csv + images/<every name>.png (symlinks)."""
  d = tmp_path_factory.mktemp("chestxray14")
  with gzip.open(table, "rb") as src, open(d / TABLE[:-3], "wb") as dst:
    shutil.copyfileobj(src, dst)
  blank = d / "blank.png"
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(blank)
  (d / "images").mkdir()
  names, _, _ = protocol.read_table(table)
  for n in names:
    os.symlink(blank, d / "images" / n)
  return d


def test_regeneration_reproduces_the_committed_files(table):
  files = protocol.protocol_files(table)
  assert sorted(files) == sorted(os.listdir(LISTS))
  for name, data_bytes in files.items():
    with open(os.path.join(LISTS, name), "rb") as f:
      assert f.read() == data_bytes, name


def test_lists_are_a_patient_grouped_1_3_3_partition(table):
  names, patients, _ = protocol.read_table(table)
  assert len(names) == 112120 and len(set(patients)) == 30805
  split_of = protocol.load_lists(LISTS)
  assert sorted(split_of) == sorted(names)         # every image, once
  patient_splits = {}
  for n, p in zip(names, patients):
    patient_splits.setdefault(p, set()).add(split_of[n])
  assert all(len(s) == 1 for s in patient_splits.values())
  sizes = {s: sum(v == s for v in split_of.values()) for s in protocol.SPLITS}
  n = len(names)
  assert abs(sizes["query"] - n / 7) < 0.01 * n
  assert abs(sizes["train"] + sizes["val"] - 3 * n / 7) < 0.01 * n
  assert abs(sizes["database"] - 3 * n / 7) < 0.01 * n
  assert abs(sizes["val"] - 0.1 * (sizes["train"] + sizes["val"])) < 0.01 * n


def test_a_damaged_list_is_named(tmp_path):
  bad = tmp_path / "lists"
  shutil.copytree(LISTS, bad)
  with open(bad / "val.txt.gz", "r+b") as f:
    f.seek(40)
    f.write(b"\x00\x01")
  with pytest.raises(DataError, match=r"val\.txt\.gz is damaged"):
    protocol.load_lists(str(bad))


def test_source_at_full_scale_with_the_published_split(tree):
  s = data.get_source("chestxray14", path=str(tree), split_lists=LISTS)
  assert len(s) == 112120 and s.multi_label
  labels = np.asarray(s.labels)
  names = list(s.class_names)
  # Label parsing against the README's counts; "No Finding" = all zeros.
  for finding, count in README_COUNTS.items():
    if finding == "No Finding":
      assert int((labels.sum(1) == 0).sum()) == count
    else:
      assert int(labels[:, names.index(finding)].sum()) == count, finding
  assert int((labels.sum(1) > 1).sum()) == 20796
  cls = data.get_source("chestxray14", path=str(tree), split_lists=LISTS,
                        no_finding="class")
  assert cls.class_names[-1] == "No Finding"
  # ("class" marks the row: the source's multi_hot gets no index for it)
  # The official protocol reads the published lists.
  sp = splits_lib.make_splits(s, protocol="official")
  with open(os.path.join(LISTS, protocol.PROTOCOL_FILE)) as f:
    meta = json.load(f)["splits"]
  groups = np.asarray(s.groups)
  seen = {}
  for split in protocol.SPLITS:
    idx = sp[split]
    assert idx.size == meta[split]["images"], split
    assert len(set(groups[idx])) == meta[split]["patients"], split
    want = meta[split]["label_counts"]
    got = {c: int(labels[idx, i].sum()) for i, c in enumerate(names)}
    got["No Finding"] = int((labels[idx].sum(1) == 0).sum())
    assert {k: v for k, v in got.items() if v} == want, split
    for g in set(groups[idx]):
      assert seen.setdefault(g, split) == split, (g, split)   # one split each
  splits_lib.check_no_leakage(sp, s)


def test_an_image_outside_the_lists_names_its_row(tree, tmp_path):
  d = tmp_path / "cx"
  d.mkdir()
  csv_path = d / TABLE[:-3]
  with open(tree / TABLE[:-3]) as f:
    head = [next(f) for _ in range(3)]
  extra = head[1].replace(head[1].split(",")[0], "99999999_000.png", 1)
  csv_path.write_text("".join(head) + extra)
  (d / "images").mkdir()
  for line in head[1:] + [extra]:
    os.symlink(tree / "blank.png", d / "images" / line.split(",")[0])
  with pytest.raises(BadRecordError, match=r"line 4: image 99999999_000\.png is in none"):
    data.get_source("chestxray14", path=str(d), split_lists=LISTS)
