"""Splits: protocols, group disjointness, determinism, saved index files."""

import json
import logging
import os

import numpy as np
import pytest

from medhash_jax import data
from medhash_jax.data import splits as splits_lib
from medhash_jax.data.records import DataError


@pytest.fixture(scope="module")
def ham(data_dir):
  return data.get_source("ham10000", root=data_dir)


def _assert_disjoint_by_group(sp, source, pairs):
  for a, b in pairs:
    assert np.intersect1d(sp[a], sp[b]).size == 0, (a, b)
    if source.groups is not None:
      ga, gb = set(source.groups[sp[a]]), set(source.groups[sp[b]])
      assert not ga & gb, (a, b, sorted(ga & gb)[:3])


def test_seed_protocol_grouped_by_lesion(ham):
  sp = data.make_splits(ham, protocol="seed", seed=3)
  n = len(ham)
  sizes = sp.sizes()
  assert sum(sizes.values()) == n  # query, train, val, database partition all
  assert abs(sizes["query"] / n - 1 / 7) < 0.01
  assert abs(sizes["database"] / n - 3 / 7) < 0.01
  assert abs((sizes["train"] + sizes["val"]) / n - 3 / 7) < 0.01
  _assert_disjoint_by_group(sp, ham, [("query", "train"), ("query", "database"),
                                      ("query", "val"), ("train", "database"),
                                      ("val", "train"), ("val", "database")])
  # Multi-image lesions exist, so grouping is really exercised.
  assert len(set(ham.groups)) < len(ham)


def test_seed_protocol_is_deterministic(ham):
  a = data.make_splits(ham, protocol="seed", seed=1)
  b = data.make_splits(ham, protocol="seed", seed=1)
  c = data.make_splits(ham, protocol="seed", seed=2)
  for k in splits_lib.SPLIT_NAMES:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a.query, c.query)


def test_ungrouped_leak_is_detected(ham):
  # A hand-made split that puts two images of one lesion on both sides.
  lesion = next(g for g in set(ham.groups) if (ham.groups == g).sum() > 1)
  i, j = np.nonzero(ham.groups == lesion)[0][:2]
  rest = np.setdiff1d(np.arange(len(ham)), [i, j])
  sp = splits_lib.Splits(train=rest[:100], val=rest[100:120], query=np.array([i]),
                         database=np.sort(np.r_[rest[120:], j]), grouped=True)
  with pytest.raises(DataError, match="group"):
    splits_lib.check_no_leakage(sp, ham)


@pytest.mark.parametrize("train_in_db", [True, False])
def test_deephash_protocol(ham, train_in_db):
  sp = data.make_splits(ham, protocol="deephash", seed=0, num_query=500,
                        num_train=1500, train_in_database=train_in_db)
  assert abs(sp.query.size - 500) < 20
  assert abs(sp.train.size + sp.val.size - 1500) < 20
  _assert_disjoint_by_group(sp, ham, [("query", "database"), ("query", "train"),
                                      ("val", "train")])
  if train_in_db:
    assert np.isin(sp.train, sp.database).all()
    assert sp.query.size + sp.database.size == len(ham)
  else:
    _assert_disjoint_by_group(sp, ham, [("train", "database")])


def test_official_protocol(data_dir, ham):
  s = data.get_source("breastmnist", root=data_dir, download=False)
  sp = data.make_splits(s, protocol="official")
  assert sp.sizes() == {"train": 546, "val": 78, "query": 156, "database": 546}
  np.testing.assert_array_equal(sp.database, sp.train)
  with pytest.raises(DataError, match="no official split"):
    data.make_splits(ham, protocol="official")


def test_official_protocol_carves_val_by_patient(chestxray14_tree):
  s = data.get_source("chestxray14", path=str(chestxray14_tree))
  sp = data.make_splits(s, protocol="official", val_fraction=0.34, seed=0)
  assert set(s.ids[sp.query]) == {"00000004_000.png", "00000004_001.png",
                                  "00000005_000.png", "00000005_001.png"}
  assert sp.val.size > 0
  _assert_disjoint_by_group(sp, s, [("val", "train"), ("query", "train")])


def test_ungrouped_sources_split_exactly(data_dir):
  s = data.get_source("covid19_radiography", root=data_dir)
  sp = data.make_splits(s, protocol="seed", seed=0, val_fraction=0.1)
  assert sp.query.size == round(len(s) / 7)
  assert not sp.grouped


def test_saved_and_reloaded(ham, tmp_path, caplog):
  kw = dict(protocol="seed", seed=5)
  with caplog.at_level(logging.INFO):
    a = data.load_or_make_splits(ham, workdir=str(tmp_path), **kw)
  path = tmp_path / "splits" / "ham10000-seed-seed5.npz"
  assert path.is_file()
  summary = json.loads(path.with_suffix(".json").read_text())
  assert summary["sizes"] == a.sizes()
  assert sum(summary["label_counts"]["query"].values()) == a.query.size
  assert "split query" in caplog.text and "mel:" in caplog.text  # counts logged
  b = data.load_or_make_splits(ham, workdir=str(tmp_path), **kw)
  for k in splits_lib.SPLIT_NAMES:
    np.testing.assert_array_equal(a[k], b[k])
  # Other parameters under the same file name: refuse, don't silently re-split.
  with pytest.raises(DataError, match="fingerprint mismatch"):
    data.load_or_make_splits(ham, workdir=str(tmp_path), val_fraction=0.2, **kw)
  # A reloaded split is re-checked; tampering is caught.
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  arrays["query"] = np.r_[arrays["query"], arrays["train"][:1]]
  np.savez(path, **arrays)
  with pytest.raises(DataError, match="both query"):
    data.load_or_make_splits(ham, workdir=str(tmp_path), **kw)
  assert os.path.isdir(tmp_path / "splits")
