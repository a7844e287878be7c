"""Sources: real staged data, official-layout fixture trees, bad input."""

import logging
import os

import numpy as np
from PIL import Image
import pytest

from medhash_jax import data
from medhash_jax.data import chexpert, medmnist, transforms
from medhash_jax.data.records import BadRecordError, DataError, DataNotFoundError
from tests.data import conftest as fx


# --------------------------------------------------------------------------
# Registry: every registered entry is exercised; unknown names fail loudly.

def test_unknown_source_fails_loudly():
  with pytest.raises(ValueError, match="unknown data source 'nope'.*breastmnist"):
    data.get_source("nope")


@pytest.mark.parametrize("name", data.source_names())
def test_every_registered_source(name, data_dir, tmp_path, request):
  """Builds every entry from staged data or a fixture tree; MedMNIST sets that
  are not staged must fail with an error that names the file and the folder."""
  if name in medmnist.MEDMNIST_2D:
    if os.path.isfile(os.path.join(data_dir, name, f"{name}.npz")):
      s = data.get_source(name, root=data_dir, download=False)
      assert len(s) > 0 and s.official_split is not None
    else:
      with pytest.raises(DataNotFoundError, match=rf"{name}\.npz.*{tmp_path}"):
        data.get_source(name, root=str(tmp_path), download=False)
    return
  if name in ("chestxray14", "chestxray8"):
    s = data.get_source(name, path=str(request.getfixturevalue("chestxray14_tree")))
  elif name == "chexpert":
    s = data.get_source(name, path=str(request.getfixturevalue("chexpert_tree")[1]))
  elif name == "ham10000":
    s = data.get_source(name, root=data_dir)
  elif name == "covid19_radiography":
    s = data.get_source(name, root=data_dir)
  elif name == "folder":
    s = data.get_source(name, path=str(request.getfixturevalue("folder_tree")))
  else:
    pytest.fail(f"registered source {name!r} has no test")
  rec = s[0]
  assert rec["image"].dtype == np.uint8 and rec["image"].ndim == 3
  assert rec["labels"].shape == (s.num_classes,)
  assert isinstance(rec["id"], str) and isinstance(rec["group"], str)


# --------------------------------------------------------------------------
# MedMNIST.

def test_breastmnist_staged_counts(data_dir):
  s = data.get_source("breastmnist", root=data_dir, download=False)
  assert len(s) == 546 + 78 + 156
  assert s.class_names == ("malignant", "normal, benign")
  for split, (n0, n1) in {"train": (147, 399), "val": (21, 57),
                          "test": (42, 114)}.items():
    lab = s.labels[s.official_split == split]
    assert lab.sum(0).tolist() == [n0, n1]
  assert (s.labels.sum(1) == 1).all()
  assert s[0]["image"].shape == (28, 28, 1)


def test_pneumoniamnist_staged_counts(data_dir):
  s = data.get_source("pneumoniamnist", root=data_dir, download=False)
  lab = s.labels[s.official_split == "train"]
  assert lab.sum(0).tolist() == [388, 3494]


@pytest.mark.parametrize("shape", ["n", "n1", "nc"])
def test_medmnist_label_shapes(tmp_path, data_dir, shape):
  with np.load(os.path.join(data_dir, "breastmnist", "breastmnist.npz")) as z:
    arrays = {k: z[k] for k in z.files}
  for s in ("train", "val", "test"):
    lab = arrays[f"{s}_labels"].reshape(-1)
    arrays[f"{s}_labels"] = {"n": lab, "n1": lab[:, None],
                             "nc": np.eye(2, dtype=np.uint8)[lab]}[shape]
  os.makedirs(tmp_path / "breastmnist")
  np.savez(tmp_path / "breastmnist" / "breastmnist.npz", **arrays)
  s = data.get_source("breastmnist", root=str(tmp_path), download=False)
  assert s.labels[:546].sum(0).tolist() == [147, 399]


def test_medmnist_label_outside_class_list(tmp_path, data_dir):
  with np.load(os.path.join(data_dir, "breastmnist", "breastmnist.npz")) as z:
    arrays = {k: z[k] for k in z.files}
  arrays["val_labels"] = arrays["val_labels"].copy()
  arrays["val_labels"][5] = 7
  np.savez(tmp_path / "breastmnist.npz", **arrays)
  with pytest.raises(BadRecordError, match=r"breastmnist\.npz.*val_labels\[5\].*7"):
    data.get_source("breastmnist", root=str(tmp_path), download=False)
  s = data.get_source("breastmnist", root=str(tmp_path), download=False,
                      skip_bad=True)
  assert len(s) == 780 - 1 and len(s.bad) == 1


def test_medmnist_missing_names_file_and_folder(tmp_path):
  with pytest.raises(DataNotFoundError) as e:
    data.get_source("dermamnist", root=str(tmp_path), download=False,
                    medmnist_size=64)
  msg = str(e.value)
  assert "dermamnist_64.npz" in msg and os.path.join(str(tmp_path), "dermamnist") in msg
  assert "b70a2f5635c6199aeaa28c31d7202e1f" in msg  # the official md5


def test_root_resolution(monkeypatch, tmp_path):
  monkeypatch.setenv("MEDHASH_DATA_DIR", str(tmp_path / "env"))
  assert data.resolve_root("/x/y") == "/x/y"
  assert data.resolve_root("") == str(tmp_path / "env")
  monkeypatch.delenv("MEDHASH_DATA_DIR")
  assert data.resolve_root(None) == os.path.expanduser("~/.cache/medhash_jax")


# --------------------------------------------------------------------------
# ChestX-ray14, CheXpert, HAM10000, folders.

def test_chestxray14_fixture(chestxray14_tree):
  s = data.get_source("chestxray14", path=str(chestxray14_tree))
  assert len(s) == 10 and s.num_classes == 14 and s.multi_label
  names = list(s.class_names)
  i = list(s.ids).index("00000001_000.png")
  assert s.labels[i].nonzero()[0].tolist() == sorted(
      [names.index("Cardiomegaly"), names.index("Effusion")])
  assert s.labels[list(s.ids).index("00000001_001.png")].sum() == 0  # No Finding
  assert s.groups[i] == "1"
  assert (s.official_split == "test").sum() == 4
  s2 = data.get_source("chestxray14", path=str(chestxray14_tree),
                       no_finding="class")
  assert s2.class_names[-1] == "No Finding"
  assert s2.labels[list(s2.ids).index("00000001_001.png")].tolist() == [0] * 14 + [1]


def test_chestxray14_unknown_label_and_missing_file(chestxray14_tree, caplog):
  csv_path = chestxray14_tree / "Data_Entry_2017.csv"
  lines = csv_path.read_text().splitlines()
  lines[3] = lines[3].replace("Atelectasis", "Atelectasys")          # line 4
  lines[5] = lines[5].replace("00000003_000.png", "99999999_000.png")  # line 6
  csv_path.write_text("\n".join(lines) + "\n")
  with pytest.raises(BadRecordError, match=r"Data_Entry_2017\.csv.*line 4.*Atelectasys"):
    data.get_source("chestxray14", path=str(chestxray14_tree))
  with caplog.at_level(logging.WARNING):
    s = data.get_source("chestxray14", path=str(chestxray14_tree), skip_bad=True)
  assert len(s) == 8 and len(s.bad) == 2
  assert "line 6" in caplog.text and "99999999_000.png" in caplog.text
  assert "skipped 2 bad record(s)" in caplog.text


@pytest.mark.parametrize("policy,edema,mask", [("ones", 1, 1), ("zeros", 0, 1),
                                              ("ignore", 0, 0)])
def test_chexpert_uncertainty(chexpert_tree, policy, edema, mask):
  top, d = chexpert_tree
  s = data.get_source("chexpert", path=str(d), uncertainty=policy)
  assert len(s) == 8 and s.num_classes == 14
  e = chexpert.OBSERVATIONS.index("Edema")
  c = chexpert.OBSERVATIONS.index("Cardiomegaly")
  first = 0  # k = 0: Edema uncertain
  assert s.labels[first, e] == edema and s.label_mask[first, e] == mask
  assert s.labels[1, e] == 0 and s.label_mask[1, e] == 1  # explicit 0.0
  assert s.labels[:, c].all()
  assert s.groups[0] == "patient00001"
  assert set(s.official_split) == {"train", "test"}
  # The parent folder works as well (Path holds CheXpert-v1.0-small/...).
  s2 = data.get_source("chexpert", root=str(top), uncertainty=policy,
                       frontal_only=True, class_names=("Edema", "Cardiomegaly"))
  assert len(s2) == 4 and s2.class_names == ("Edema", "Cardiomegaly")
  assert s2[0]["image"].shape[-1] == 1


def test_chexpert_bad_value(chexpert_tree):
  _, d = chexpert_tree
  p = d / "train.csv"
  lines = p.read_text().splitlines()
  lines[2] = lines[2].replace(",1.0,", ",maybe,", 1)
  p.write_text("\n".join(lines) + "\n")
  with pytest.raises(BadRecordError, match=r"train\.csv.*line 3.*maybe"):
    data.get_source("chexpert", path=str(d))


def test_ham10000_fixture(ham_tree):
  s = data.get_source("ham10000", path=str(ham_tree))
  assert len(s) == 8 and s.class_names == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
  assert len(set(s.groups)) == 6
  assert s[0]["image"].shape[-1] == 3


def test_ham10000_staged(data_dir):
  s = data.get_source("ham10000", root=data_dir)
  assert len(s) == 6035 and len(set(s.groups)) == 6000
  counts = dict(zip(s.class_names, s.labels.sum(0).tolist()))
  assert counts == {"nv": 4347, "bkl": 593, "mel": 499, "bcc": 269, "akiec": 184,
                    "vasc": 81, "df": 62}


def test_ham10000_missing_image_names_csv_row(ham_tree):
  os.remove(ham_tree / "HAM10000_images_part_2" / "ISIC_9900003.jpg")
  with pytest.raises(BadRecordError,
                     match=r"HAM10000_metadata\.csv, line 5: image ISIC_9900003"):
    data.get_source("ham10000", path=str(ham_tree))


def test_covid_staged(data_dir):
  s = data.get_source("covid19_radiography", root=data_dir)
  assert s.class_names == ("COVID", "Normal")
  assert s.labels.sum(0).tolist() == [3616, 3616]
  assert s.groups is None


def test_folder_tree_skips_masks_and_wrappers(folder_tree):
  s = data.get_source("folder", path=str(folder_tree))
  assert s.class_names == ("COVID", "Normal", "Viral Pneumonia")
  assert len(s) == 11 and not any(f"{os.sep}masks{os.sep}" in p for p in s.paths)
  s2 = data.get_source("folder", path=str(folder_tree), class_names=("COVID", "Normal"),
                       skip_bad=True)
  assert len(s2) == 8 and len(s2.bad) == 3
  with pytest.raises(BadRecordError, match="Viral Pneumonia"):
    data.get_source("folder", path=str(folder_tree), class_names=("COVID", "Normal"))


def test_folder_split_dirs_and_labels_csv(tmp_path, covid_pngs):
  for split, k in (("train", 0), ("test", 8)):
    for cls in ("a", "b"):
      (tmp_path / "t" / split / cls).mkdir(parents=True)
      Image.open(covid_pngs[k]).save(tmp_path / "t" / split / cls / f"{cls}{k}.png")
      k += 1
  s = data.get_source("folder", path=str(tmp_path / "t"))
  assert sorted(s.official_split.tolist()) == ["test", "test", "train", "train"]
  # labels.csv: multi-label with '|' and a group column; a missing file.
  d = tmp_path / "csv"
  d.mkdir()
  for k in range(3):
    Image.open(covid_pngs[k]).save(d / f"x{k}.png")
  (d / "labels.csv").write_text("path,label,group\nx0.png,a|b,p1\nx1.png,b,p1\n"
                                "x2.png,a,p2\nx9.png,a,p3\n")
  with pytest.raises(BadRecordError, match=r"x9\.png.*line 5 of .*labels\.csv"):
    data.get_source("folder", path=str(d))
  s = data.get_source("folder", path=str(d), skip_bad=True)
  assert s.multi_label and s.labels.tolist() == [[1, 1], [0, 1], [1, 0]]
  assert s.groups.tolist() == ["p1", "p1", "p2"]


# --------------------------------------------------------------------------
# Decoding and bad files.

def test_truncated_image_errors_name_file_and_row(ham_tree):
  victim = ham_tree / "HAM10000_images_part_1" / "ISIC_9900000.jpg"
  raw = victim.read_bytes()
  victim.write_bytes(raw[: len(raw) // 3])
  s = data.get_source("ham10000", path=str(ham_tree))  # verify="exists" passes
  i = list(s.ids).index("ISIC_9900000")
  with pytest.raises(BadRecordError, match=r"ISIC_9900000\.jpg.*line 2 of"):
    s[i]
  with pytest.raises(BadRecordError, match=r"ISIC_9900000\.jpg.*line 2 of"):
    data.get_source("ham10000", path=str(ham_tree), verify="decode")
  s = data.get_source("ham10000", path=str(ham_tree), verify="decode", skip_bad=True)
  assert len(s) == 7 and len(s.bad) == 1


def test_not_an_image_caught_by_header_check(ham_tree):
  (ham_tree / "HAM10000_images_part_2" / "ISIC_9900001.jpg").write_bytes(b"hello")
  with pytest.raises(BadRecordError, match=r"ISIC_9900001\.jpg.*line 3"):
    data.get_source("ham10000", path=str(ham_tree), verify="header")


def test_decode_modes(tmp_path):
  arr16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
  Image.fromarray(arr16).save(tmp_path / "a16.png")
  out = transforms.decode_image(tmp_path / "a16.png")
  assert out.dtype == np.uint8 and out.shape == (64, 64, 1)
  assert out.min() == 0 and out.max() == 255
  Image.new("RGBA", (5, 4), (10, 20, 30, 255)).save(tmp_path / "rgba.png")
  assert transforms.decode_image(tmp_path / "rgba.png").shape == (4, 5, 3)
  with pytest.raises(BadRecordError, match="missing"):
    transforms.decode_image(tmp_path / "nope.png", row="line 9 of x.csv")


def test_dicom_needs_pydicom(tmp_path):
  try:
    import pydicom  # noqa: F401
    pytest.skip("pydicom is installed; the missing-dependency path is not testable")
  except ImportError:
    pass
  (tmp_path / "x.dcm").write_bytes(b"\0" * 200)
  with pytest.raises(ImportError, match=r"x\.dcm needs pydicom.*pip install pydicom"):
    transforms.decode_image(tmp_path / "x.dcm")


def test_source_errors_are_data_errors():
  assert issubclass(BadRecordError, DataError) and issubclass(BadRecordError, ValueError)
  assert issubclass(DataNotFoundError, FileNotFoundError)
  assert fx.CXR14_ROWS  # fixtures module importable


def test_download_checks_md5(tmp_path, data_dir):
  from medhash_jax.data import paths
  src = os.path.join(data_dir, "breastmnist", "breastmnist.npz")
  url = "file://" + src
  good = paths.md5_of(src)
  got = paths.ensure_file("breastmnist", filename="breastmnist.npz",
                          search_dirs=[str(tmp_path / "a")],
                          download_dir=str(tmp_path / "a"), url=url, md5=good,
                          allow_download=True)
  assert paths.md5_of(got) == good
  with pytest.raises(DataNotFoundError, match=r"md5 mismatch.*Put breastmnist\.npz into"):
    paths.ensure_file("breastmnist", filename="breastmnist.npz",
                      search_dirs=[str(tmp_path / "b")],
                      download_dir=str(tmp_path / "b"), url=url, md5="0" * 32,
                      allow_download=True)
  assert not os.listdir(tmp_path / "b")  # no partial file left behind
