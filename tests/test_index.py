"""HammingIndex: search, ids, range search, file formats (1 and 2, mmap), integrity, faiss interop."""

import base64
import concurrent.futures
import hashlib
import os
import struct

import numpy as np
import pytest

from medhash_jax import retrieval
from medhash_jax.retrieval import layout as layout_lib
from medhash_jax.retrieval import topk as topk_lib
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


def _flip(path, pos, out):
  data = bytearray(path.read_bytes())
  data[pos] ^= 0x10
  out.write_bytes(bytes(data))


def _geometry(path):
  """(chunk_bytes, data_offset, ids_offset, file_size) of a format-2 file."""
  return struct.unpack("<QQQQ", path.read_bytes()[32:64])


def test_truncated_and_altered_files_refuse_to_load(tmp_path):
  ids = np.arange(400, dtype=np.int64) * 3
  index, _ = _index(ids=ids)
  path = tmp_path / "a.mhidx"
  index.save(path, chunk_bytes=256)  # several chunks per region
  data = path.read_bytes()
  chunk, data_offset, ids_offset, size = _geometry(path)
  assert (chunk, size) == (256, len(data)) and data_offset % 4096 == 0
  bad = tmp_path / "bad.mhidx"
  for cut in (10, 60, data_offset + 1, len(data) // 2, len(data) - 1):
    bad.write_bytes(data[:cut])
    with pytest.raises(IndexFileError, match="bad.mhidx"):
      retrieval.HammingIndex.load(bad)
  bad.write_bytes(data + b"\0")
  with pytest.raises(IndexFileError, match="truncated or appended"):
    retrieval.HammingIndex.load(bad)
  cases = [(20, "header checksum"),                   # count
           (40, "header checksum"),                   # geometry
           (80, "header checksum"),                   # checksum table
           (data_offset - 1, "padding"),
           (data_offset, "codes chunk 0"),
           (data_offset + 3 * 256 + 5, "codes chunk 3"),
           (ids_offset - 1, "codes chunk 9"),         # last, partial chunk
           (ids_offset, "ids chunk 0"),
           (len(data) - 1, "ids chunk 12")]
  for pos, message in cases:
    _flip(path, pos, bad)
    for mmap in (False, True):
      with pytest.raises(IndexFileError, match=message) as e:
        loaded = retrieval.HammingIndex.load(bad, mmap=mmap)
        loaded.search(np.zeros((1, 48), np.float32), 3)
      assert "bad.mhidx" in str(e.value)
  bad.write_bytes(b"NOTANIDX" + data[8:])
  with pytest.raises(IndexFileError, match="magic"):
    retrieval.HammingIndex.load(bad)
  bad.write_bytes(data[:8] + struct.pack("<I", 3) + data[12:])
  with pytest.raises(IndexFileError, match="version 3"):
    retrieval.HammingIndex.load(bad)


def test_mmap_index_is_lazy_and_verified_before_use(tmp_path):
  index, codes = _index(bits=64, n=1000, ids=np.arange(1000) * 2)
  path = tmp_path / "m.mhidx"
  index.save(path, chunk_bytes=1024)
  mapped = retrieval.HammingIndex.load(path, mmap=True)
  assert isinstance(mapped._store.layout, np.memmap)  # pylint: disable=protected-access
  assert mapped._pending  # pylint: disable=protected-access
  queries = random_codes(np.random.default_rng(5), 3, 64)
  d, got = mapped.search(queries, 10)
  rd, rg = index.search(queries, 10)
  np.testing.assert_array_equal(d, rd)
  np.testing.assert_array_equal(got, rg)
  assert not mapped._pending  # pylint: disable=protected-access
  # Damage the file under a fresh mapping: opening still succeeds (only the
  # header is read), every use is refused.
  chunk, data_offset, _, _ = _geometry(path)
  _flip(path, data_offset + 5 * chunk + 7, path)
  damaged = retrieval.HammingIndex.load(path, mmap=True)
  for use in (damaged.verify, lambda: damaged.search(queries, 1),
              lambda: damaged.range_search(queries, 3), lambda: damaged.ids,
              lambda: damaged.packed, lambda: damaged.add(queries)):
    with pytest.raises(IndexFileError, match=r"m\.mhidx.*codes chunk 5"):
      use()
  # Adding to a sound mapped index copies it into memory; the file is kept.
  _flip(path, data_offset + 5 * chunk + 7, path)
  mapped = retrieval.HammingIndex.load(path, mmap=True)
  mapped.add(queries, ids=[-1, -2, -3])
  assert len(mapped) == 1003 and not isinstance(mapped._store.layout, np.memmap)  # pylint: disable=protected-access
  np.testing.assert_array_equal(mapped.search(queries, 1)[1][:, 0], [-1, -2, -3])
  assert len(retrieval.HammingIndex.load(path)) == 1000


# Format-1 files written by the code of commit 3715f12 (before format 2):
# 13 codes of 20 bits with explicit ids, and 5 codes of 64 bits.
_V1_FILES = {
    20: ("TUVESEFTSAABAAAAFAAAAAEAAAANAAAAAAAAAAEAAAAHJgkAb+kPAPEzAgDHeQYA+GIDAA"
         "SRDABjNwwA6U0AAOzmCQCZlwoAwRwEAAa7CQB/IgcAVgEAAAAAAABTAAAAAAAAACwBAAAA"
         "AAAAxgEAAAAAAAC4AQAAAAAAACgCAAAAAAAAdgAAAAAAAADmAAAAAAAAANz/////////rg"
         "AAAAAAAAAzAQAAAAAAADcAAAAAAAAAPgAAAAAAAAC4BI/qFUB/85XH/1u5bLAr6EaUShNA"
         "dXk9OdJgc3MS4w==",
         [[599559], [1042799], [144369], [424391], [221944], [823556], [800611],
          [19945], [648940], [694169], [269505], [637702], [467583]],
         [342, 83, 300, 454, 440, 552, 118, 230, -36, 174, 307, 55, 62]),
    64: ("TUVESEFTSAABAAAAQAAAAAIAAAAFAAAAAAAAAAAAAAAlLnzYW8oubw/56u+Y0IhFdXsC/W"
         "asxJlDWPE7GAzrLWujPRjba26RH+FirC33F4S8iqYWs4d8lOwHyKTCkCVCyGLvlN5Vbr0=",
         [[3632016933, 1865337435], [4025153807, 1166594200],
          [4244798325, 2579803238], [1005672515, 770378776],
          [406692715, 2439932891]], None),
}


def _write_v1(path, num_bits, packed, ids):
  """An independent transcription of the format-1 writer."""
  body = b"MEDHASH\x00" + struct.pack(
      "<IIIQI", 1, num_bits, packed.shape[1], packed.shape[0],
      0 if ids is None else 1) + packed.astype("<u4").tobytes()
  if ids is not None:
    body += np.asarray(ids, "<i8").tobytes()
  path.write_bytes(body + hashlib.sha256(body).digest())


@pytest.mark.parametrize("num_bits", sorted(_V1_FILES))
def test_format_1_files_still_load(tmp_path, num_bits):
  blob, packed, ids = _V1_FILES[num_bits]
  packed = np.array(packed, np.uint32)
  old = tmp_path / "old.mhidx"
  old.write_bytes(base64.b64decode(blob))
  again = tmp_path / "again.mhidx"
  _write_v1(again, num_bits, packed, ids)
  assert again.read_bytes() == old.read_bytes()
  for mmap in (False, True):  # format 1 is always read, never mapped
    index = retrieval.HammingIndex.load(old, mmap=mmap)
    np.testing.assert_array_equal(index.packed, packed)
    np.testing.assert_array_equal(
        index.ids, np.arange(len(packed)) if ids is None else ids)
    d, got = index.search(packed[:2], len(packed))
    rd, ri = np_topk(packed[:2], packed, len(packed))
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(got, index.ids[ri])
  index.save(again)  # rewritten as format 2
  assert struct.unpack("<I", again.read_bytes()[8:12]) == (2,)
  np.testing.assert_array_equal(retrieval.HammingIndex.load(again).packed,
                                packed)
  flipped = bytearray(old.read_bytes())
  flipped[40] ^= 1
  old.write_bytes(bytes(flipped))
  with pytest.raises(IndexFileError, match="old.mhidx: checksum"):
    retrieval.HammingIndex.load(old)


@pytest.mark.parametrize("bits", [1, 7, 8, 9, 20, 24, 40, 48, 63, 64, 65, 100,
                                  256])
def test_bytes_per_code_and_search_for_any_k(bits):
  n = 77  # not a multiple of the 16-code block
  index, codes = _index(bits=bits, n=n, distinct=40)
  b = -(-bits // 8)
  assert index.bytes_per_code == b
  assert index.nbytes == -(-n // 16) * 16 * b  # ceil(K / 8) a code
  assert index.layout.nbytes == index.nbytes
  queries = random_codes(np.random.default_rng(bits), 5, bits)
  qp = np.asarray(retrieval.pack_codes(queries))
  rd, ri = np_topk(qp, np.asarray(retrieval.pack_codes(codes)), n)
  for k in (1, 9, n):
    d, got = index.search(queries, k)
    np.testing.assert_array_equal(d, rd[:, :k])
    np.testing.assert_array_equal(got, ri[:, :k])
  np.testing.assert_array_equal(index.packed, retrieval.pack_codes(codes))


@pytest.mark.parametrize("bits", [8, 16, 24, 40, 48, 56, 64, 100])
def test_frozen_views_are_consistent_prefixes_while_the_index_grows(bits):
  """`frozen()` is what the retrieval server's snapshots search while
  another thread appends. Catches: a view that shares the live count (it
  would see later codes), padding lanes of a partial block that a view's
  search counts once a later add filled them, a `packed_at` gather with the
  wrong byte order for any tail width (B % 4 = 0..3), and `histogram`
  disagreeing with brute force."""
  rng = np.random.default_rng(bits)
  codes = random_codes(rng, 37 + 5 + 1000, bits, 30)
  packed = np.asarray(retrieval.pack_codes(codes))
  index = retrieval.HammingIndex(bits)
  views, start = [], 0
  for stop in (37, 42, 1042):      # partial block, same block, regrown
    index.add(codes[start:stop])
    views.append((index.frozen(), stop))
    start = stop
  queries = np.asarray(retrieval.pack_codes(random_codes(rng, 6, bits)))
  for view, n in views:
    assert len(view) == n and len(index) == 1042
    np.testing.assert_array_equal(view.packed, packed[:n])
    rd, ri = np_topk(queries, packed[:n], n)
    d, i = view.search(queries, min(n, 40))
    np.testing.assert_array_equal(d, rd[:, :min(n, 40)])
    np.testing.assert_array_equal(i, ri[:, :min(n, 40)])
    hist = np.stack([np.bincount(row, minlength=view.histogram(
        queries[:1]).shape[1]) for row in np.sort(rd, axis=1)])
    np.testing.assert_array_equal(view.histogram(queries), hist)
    pos = rng.integers(0, n, 200)
    np.testing.assert_array_equal(view.packed_at(pos), packed[pos])
    assert not view.layout.flags.writeable
  with pytest.raises(IndexError, match="1042"):
    index.packed_at([0, 1042])


def test_incremental_add_writes_only_new_codes(monkeypatch):
  rng = np.random.default_rng(6)
  sizes = [1, 15, 16, 17, 3, 13, 32, 1, 1, 2] + [1] * 300
  codes = random_codes(rng, sum(sizes), 20)
  one = retrieval.HammingIndex(20)
  one.add(codes)
  index = retrieval.HammingIndex(20)
  encoded = []
  real = layout_lib.rows_to_layout
  monkeypatch.setattr(layout_lib, "rows_to_layout",
                      lambda rows: encoded.append(len(rows)) or real(rows))
  buffers = set()
  start = 0
  for size in sizes:
    index.add(codes[start:start + size])
    start += size
    buffers.add(index._store._buf._buf.ctypes.data)  # pylint: disable=protected-access
  assert len(index) == start
  np.testing.assert_array_equal(index.layout, one.layout)
  np.testing.assert_array_equal(index.packed, one.packed)
  # Each add encodes its codes plus at most the 15 of the partial block...
  assert all(e <= s + 15 for e, s in zip(encoded, sizes))
  # ...and the buffer moves O(log N) times, not on every add.
  assert len(buffers) <= 4


def test_search_reads_the_layout_in_place(monkeypatch):
  if not retrieval.cpu_kernel_available():
    pytest.skip("C++ kernel not built")
  index, codes = _index(bits=64, n=500)
  queries = random_codes(np.random.default_rng(7), 4, 64)
  want = index.search(queries, 7, backend="reference")

  def no_rows(*_):
    raise AssertionError("the cpu path converted the database to rows")
  monkeypatch.setattr(layout_lib, "layout_to_rows", no_rows)
  got = index.search(queries, 7)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  lims, d, ids = index.range_search(queries, 30)
  assert lims[-1] > 0 and np.all(d <= 30)


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


def test_without_the_kernel_the_reference_path_answers(monkeypatch):
  # An install without a compiler: "auto" resolves to the reference backend,
  # which reads rows rebuilt from the layout.
  index, codes = _index(bits=20, n=300, distinct=25)
  queries = random_codes(np.random.default_rng(12), 6, 20)
  qp = np.asarray(retrieval.pack_codes(queries))
  monkeypatch.setattr(topk_lib, "cpu_kernel_available", lambda: False)
  assert topk_lib.resolve_backend("auto") == "reference"
  rd, ri = np_topk(qp, np.asarray(retrieval.pack_codes(codes)), 300)
  d, got = index.search(queries, 17)
  np.testing.assert_array_equal(d, rd[:, :17])
  np.testing.assert_array_equal(got, ri[:, :17])
  lims, d, got = index.range_search(queries, 4)
  for r in range(6):
    keep = rd[r] <= 4
    np.testing.assert_array_equal(d[lims[r]:lims[r + 1]], rd[r][keep])
    np.testing.assert_array_equal(got[lims[r]:lims[r + 1]], ri[r][keep])


def test_concurrent_searches_from_threads():
  # A server answers from several threads; the kernel runs without the GIL.
  index, codes = _index(bits=64, n=3000, distinct=200)
  queries = random_codes(np.random.default_rng(13), 40, 64)
  want = [index.search(queries[i:i + 1], 9) for i in range(40)]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    got = list(pool.map(lambda i: index.search(queries[i:i + 1], 9), range(40)))
  for (wd, wi), (gd, gi) in zip(want, got):
    np.testing.assert_array_equal(gd, wd)
    np.testing.assert_array_equal(gi, wi)
