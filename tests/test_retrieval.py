"""Packing and every hamming_topk backend against a numpy brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medhash_jax import retrieval
from medhash_jax.retrieval import topk as topk_lib

BITS = (8, 16, 20, 32, 48, 64, 128, 256)


def _backends():
  names = ["reference", "gpu", "matmul"]
  if retrieval.cpu_kernel_available():
    names.append("cpu")
  return names


def np_pack(codes):
  """Independent packing: numpy packbits little-endian, padded to 4 bytes."""
  bits = (codes >= 0).astype(np.uint8)
  by = np.packbits(bits, axis=1, bitorder="little")
  pad = (-by.shape[1]) % 4
  by = np.pad(by, ((0, 0), (0, pad)))
  return by.view("<u4")


def np_topk(q, db, k):
  """Brute force: popcount by unpackbits, order by (distance, index)."""
  qb = np.unpackbits(q.view(np.uint8), axis=1)
  dbb = np.unpackbits(db.view(np.uint8), axis=1)
  dist = (qb[:, None, :] != dbb[None, :, :]).sum(-1)
  order = np.lexsort((np.broadcast_to(np.arange(db.shape[0]), dist.shape), dist),
                     axis=1)[:, :k]
  return np.take_along_axis(dist, order, 1), order


def random_codes(rng, n, bits, distinct=None):
  """Gaussian codes; with `distinct`, rows repeat a few patterns (many ties)."""
  if distinct is None:
    return rng.standard_normal((n, bits)).astype(np.float32)
  pool = rng.standard_normal((distinct, bits)).astype(np.float32)
  return pool[rng.integers(0, distinct, n)]


class TestPacking:

  @pytest.mark.parametrize("bits", BITS)
  def test_matches_numpy_packbits(self, bits):
    codes = np.random.default_rng(bits).standard_normal((37, bits))
    codes[0, :] = 0.0  # sign(0) = +1
    packed = np.asarray(retrieval.pack_codes(codes.astype(np.float32)))
    assert packed.dtype == np.uint32 and packed.shape == (37, -(-bits // 32))
    np.testing.assert_array_equal(packed, np_pack(codes))
    assert bin(int(packed[0, 0])).count("1") == min(bits, 32)
    host = retrieval.packing.pack_codes_host(codes.astype(np.float32))
    assert host.dtype == np.uint32
    np.testing.assert_array_equal(host, np_pack(codes))

  @pytest.mark.parametrize("bits", BITS)
  def test_round_trip(self, bits):
    codes = np.random.default_rng(1).standard_normal((9, bits))
    unpacked = np.asarray(retrieval.unpack_codes(retrieval.pack_codes(codes), bits))
    np.testing.assert_array_equal(unpacked, np.where(codes >= 0, 1, -1))

  def test_faiss_byte_order(self):
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    q, db = random_codes(rng, 5, 64), random_codes(rng, 300, 64)
    qp, dbp = (np.asarray(retrieval.pack_codes(x)) for x in (q, db))
    index = faiss.IndexBinaryFlat(64)
    index.add(dbp.view(np.uint8))
    fd, _ = index.search(qp.view(np.uint8), 300)
    ours = np.sort(np.asarray(retrieval.hamming_distances(qp, dbp)), axis=1)
    np.testing.assert_array_equal(fd, ours)

  @pytest.mark.parametrize("bad,match", [
      (np.zeros((3, 8), bool), "bool"),
      (np.zeros((3, 8), np.uint8), "uint8"),
      (np.zeros((8,), np.float32), "2-D"),
      (np.array([[0.0, np.nan]]), "NaN"),
  ])
  def test_bad_codes(self, bad, match):
    with pytest.raises(ValueError, match=match):
      retrieval.pack_codes(bad)
    with pytest.raises(ValueError, match=match):
      retrieval.packing.pack_codes_host(bad)


class TestTopK:

  @pytest.mark.parametrize("backend", _backends())
  @pytest.mark.parametrize("bits", BITS)
  def test_against_brute_force(self, backend, bits):
    rng = np.random.default_rng(bits)
    n = 1013  # not a multiple of any block size
    q = np.asarray(retrieval.pack_codes(random_codes(rng, 19, bits)))
    db = np.asarray(retrieval.pack_codes(random_codes(rng, n, bits)))
    for k in (1, 10, n):
      d, i = retrieval.hamming_topk(q, db, k, backend=backend)
      rd, ri = np_topk(q, db, k)
      assert d.dtype == jnp.int32 and i.dtype == jnp.int32
      np.testing.assert_array_equal(np.asarray(d), rd)
      np.testing.assert_array_equal(np.asarray(i), ri)

  @pytest.mark.parametrize("backend", _backends())
  def test_heavy_ties_break_by_index(self, backend):
    rng = np.random.default_rng(7)
    q = np.asarray(retrieval.pack_codes(random_codes(rng, 11, 16, distinct=3)))
    db = np.asarray(retrieval.pack_codes(random_codes(rng, 777, 16, distinct=4)))
    for k in (1, 50, 333, 777):
      d, i = retrieval.hamming_topk(q, db, k, backend=backend)
      rd, ri = np_topk(q, db, k)
      np.testing.assert_array_equal(np.asarray(d), rd)
      np.testing.assert_array_equal(np.asarray(i), ri)

  @pytest.mark.parametrize("backend", _backends())
  def test_chunked_equals_unchunked(self, backend, monkeypatch):
    """Tiny chunks over queries and database give the same exact answer."""
    rng = np.random.default_rng(3)
    q = np.asarray(retrieval.pack_codes(random_codes(rng, 23, 32, distinct=5)))
    db = np.asarray(retrieval.pack_codes(random_codes(rng, 501, 32, distinct=6)))
    rd, ri = np_topk(q, db, 40)
    monkeypatch.setattr(topk_lib, "_chunk_sizes", lambda *a: (7, 64))
    d, i = retrieval.hamming_topk(q, db, 40, backend=backend)
    np.testing.assert_array_equal(np.asarray(d), rd)
    np.testing.assert_array_equal(np.asarray(i), ri)

  @pytest.mark.parametrize("backend", _backends())
  def test_inside_jit(self, backend):
    rng = np.random.default_rng(4)
    q = retrieval.pack_codes(random_codes(rng, 6, 64))
    db = retrieval.pack_codes(random_codes(rng, 200, 64))
    f = jax.jit(lambda a, b: retrieval.hamming_topk(a, b, 5, backend=backend))
    d, i = f(q, db)
    rd, ri = np_topk(np.asarray(q), np.asarray(db), 5)
    np.testing.assert_array_equal(np.asarray(d), rd)
    np.testing.assert_array_equal(np.asarray(i), ri)

  def test_histogram(self):
    rng = np.random.default_rng(5)
    q = np.asarray(retrieval.pack_codes(random_codes(rng, 8, 48)))
    db = np.asarray(retrieval.pack_codes(random_codes(rng, 300, 48)))
    hist = np.asarray(retrieval.hamming_histogram(q, db))
    dist, _ = np_topk(q, db, 300)
    assert hist.shape == (8, 65)
    for r in range(8):
      np.testing.assert_array_equal(hist[r], np.bincount(dist[r], minlength=65))

  def test_auto_never_picks_reference_when_kernel_exists(self):
    if not retrieval.cpu_kernel_available():
      pytest.skip("C++ kernel not built in this environment")
    assert retrieval.resolve_backend("auto") == "cpu"

  @pytest.mark.parametrize("call,match", [
      (lambda q, db: retrieval.hamming_topk(q, db, 0), "k=0"),
      (lambda q, db: retrieval.hamming_topk(q, db, 11), "k=11"),
      (lambda q, db: retrieval.hamming_topk(q, db[:, :1].repeat(2, 1)[:, :0], 1),
       "zero words"),
      (lambda q, db: retrieval.hamming_topk(q, np.zeros((10, 2), np.uint32), 1),
       "different lengths"),
      (lambda q, db: retrieval.hamming_topk(q, db[:0], 1), "empty"),
      (lambda q, db: retrieval.hamming_topk(q.astype(np.int32), db, 1), "uint32"),
      (lambda q, db: retrieval.hamming_topk(q, db, 1, backend="nope"), "backend"),
  ])
  def test_bad_input(self, call, match):
    q = np.zeros((3, 1), np.uint32)
    db = np.zeros((10, 1), np.uint32)
    with pytest.raises(ValueError, match=match):
      call(q, db)
