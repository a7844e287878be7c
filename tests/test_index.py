"""HammingIndex: search, ids, range search, file format safety, faiss interop."""

import os

import numpy as np
import pytest

from medhash_jax import retrieval
from medhash_jax.retrieval.index import IndexFileError
from tests.test_retrieval import np_topk, random_codes


def _index(bits=48, n=400, seed=0, distinct=None, ids=None):
  rng = np.random.default_rng(seed)
  codes = random_codes(rng, n, bits, distinct)
  index = retrieval.HammingIndex(bits)
  index.add(codes[: n // 2], ids=None if ids is None else ids[: n // 2])
  index.add(retrieval.pack_codes(codes[n // 2:]),
            ids=None if ids is None else ids[n // 2:])
  return index, codes


def test_search_and_ids():
  ids = np.arange(400, dtype=np.int64) * 10 + 7
  index, codes = _index(ids=ids, distinct=20)
  rng = np.random.default_rng(1)
  queries = random_codes(rng, 9, 48)
  d, got = index.search(queries, 25)
  rd, ri = np_topk(np.asarray(retrieval.pack_codes(queries)),
                   np.asarray(retrieval.pack_codes(codes)), 25)
  np.testing.assert_array_equal(d, rd)
  np.testing.assert_array_equal(got, ids[ri])
  assert len(index) == 400 and got.dtype == np.int64


def test_range_search_matches_brute_force():
  index, codes = _index(bits=20, distinct=30)
  queries = random_codes(np.random.default_rng(2), 300, 20)
  qp = np.asarray(retrieval.pack_codes(queries))
  rd, ri = np_topk(qp, np.asarray(retrieval.pack_codes(codes)), 400)
  for radius in (0, 2, 7):
    lims, d, got = index.range_search(queries, radius)
    assert lims.shape == (301,)
    for r in range(300):
      keep = rd[r] <= radius
      np.testing.assert_array_equal(d[lims[r]:lims[r + 1]], rd[r][keep])
      np.testing.assert_array_equal(got[lims[r]:lims[r + 1]], ri[r][keep])


def test_save_load_round_trip(tmp_path):
  ids = np.random.default_rng(3).permutation(1000)[:400]
  for index in (_index(ids=ids)[0], _index(bits=20)[0]):
    path = tmp_path / f"i{index.num_bits}.mhidx"
    index.save(path)
    loaded = retrieval.HammingIndex.load(path)
    assert loaded.num_bits == index.num_bits and len(loaded) == len(index)
    np.testing.assert_array_equal(loaded.packed, index.packed)
    np.testing.assert_array_equal(loaded.ids, index.ids)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_truncated_and_altered_files_refuse_to_load(tmp_path):
  index, _ = _index()
  path = tmp_path / "a.mhidx"
  index.save(path)
  data = path.read_bytes()
  bad = tmp_path / "bad.mhidx"
  for cut in (10, len(data) // 2, len(data) - 1):
    bad.write_bytes(data[:cut])
    with pytest.raises(IndexFileError, match="bad.mhidx"):
      retrieval.HammingIndex.load(bad)
  bad.write_bytes(data + b"\0")
  with pytest.raises(IndexFileError, match="truncated or appended"):
    retrieval.HammingIndex.load(bad)
  for pos in (40, len(data) // 2, len(data) - 5):  # codes, middle, digest
    flipped = bytearray(data)
    flipped[pos] ^= 0x10
    bad.write_bytes(bytes(flipped))
    with pytest.raises(IndexFileError, match="checksum"):
      retrieval.HammingIndex.load(bad)
  bad.write_bytes(b"NOTANIDX" + data[8:])
  with pytest.raises(IndexFileError, match="magic"):
    retrieval.HammingIndex.load(bad)


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
  index, _ = _index()
  path = tmp_path / "keep.mhidx"
  index.save(path)
  before = path.read_bytes()

  def boom(*_):
    raise OSError("disk full")
  monkeypatch.setattr(os, "fsync", boom)
  bigger, _ = _index(n=800, seed=9)
  with pytest.raises(OSError, match="disk full"):
    bigger.save(path)
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["keep.mhidx"]


@pytest.mark.parametrize("bits,with_ids", [(64, False), (20, True), (48, False)])
def test_faiss_round_trip(bits, with_ids):
  faiss = pytest.importorskip("faiss")
  ids = np.arange(400, dtype=np.int64)[::-1] * 3 if with_ids else None
  index, codes = _index(bits=bits, ids=ids)
  queries = random_codes(np.random.default_rng(4), 7, bits)
  qp = np.asarray(retrieval.pack_codes(queries))
  fi = index.to_faiss()
  fd, fids = fi.search(np.ascontiguousarray(qp.view(np.uint8)[:, : fi.d // 8]), 30)
  d, got = index.search(queries, 30)
  np.testing.assert_array_equal(fd, d)  # faiss tie order may differ
  for r in range(7):  # same items at each distance but the cut-off one
    for dist in np.unique(d[r])[:-1]:
      assert set(got[r][d[r] == dist]) == set(fids[r][fd[r] == dist])
  back = retrieval.HammingIndex.from_faiss(fi)
  np.testing.assert_array_equal(back.ids, index.ids)
  # A 20-bit index comes back as 24 bits; the zero padding bits agree.
  d2, got2 = back.search(qp, 30)
  np.testing.assert_array_equal(d2, d)
  np.testing.assert_array_equal(got2, got)
  assert isinstance(fi, faiss.IndexBinaryIDMap) == with_ids


def test_bad_input():
  index = retrieval.HammingIndex(20)
  with pytest.raises(ValueError, match="empty"):
    index.search(np.zeros((1, 20), np.float32), 1)
  with pytest.raises(ValueError, match="21 bits"):
    index.add(np.zeros((3, 21), np.float32))
  with pytest.raises(ValueError, match="above bit 20"):
    index.add(np.full((3, 1), 0xFFFFFFFF, np.uint32))
  index.add(np.zeros((3, 20), np.float32), ids=[1, 2, 3])
  with pytest.raises(ValueError, match="duplicate ids"):
    index.add(np.zeros((1, 20), np.float32), ids=[2])
  with pytest.raises(ValueError, match="k=4"):
    index.search(np.zeros((1, 20), np.float32), 4)
  with pytest.raises(ValueError, match="radius"):
    index.range_search(np.zeros((1, 20), np.float32), -1)
  with pytest.raises(ValueError, match="num_bits"):
    retrieval.HammingIndex(0)
