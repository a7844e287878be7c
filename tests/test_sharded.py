"""Sharded search on 4 fake CPU devices equals single-device search."""

import jax
import numpy as np
import pytest

from medhash_jax import retrieval
from medhash_jax.retrieval import sharded
from tests.test_retrieval import _backends, np_topk, random_codes

pytestmark = pytest.mark.skipif(
    jax.device_count() < 4,
    reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=4")


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("n", [4, 401, 1000])
def test_equals_single_device(backend, n):
  rng = np.random.default_rng(n)
  # Few distinct codes: long ties that straddle the shard borders.
  q = np.asarray(retrieval.pack_codes(random_codes(rng, 13, 32, distinct=3)))
  db = np.asarray(retrieval.pack_codes(random_codes(rng, n, 32, distinct=5)))
  mesh = sharded.database_mesh()
  for k in sorted({1, min(7, n), n}):
    d, i = sharded.sharded_topk(q, db, k, mesh=mesh, backend=backend)
    sd, si = retrieval.hamming_topk(q, db, k, backend="reference")
    rd, ri = np_topk(q, db, k)
    np.testing.assert_array_equal(np.asarray(d), rd)
    np.testing.assert_array_equal(np.asarray(i), ri)
    np.testing.assert_array_equal(np.asarray(d), np.asarray(sd))
    np.testing.assert_array_equal(np.asarray(i), np.asarray(si))


def test_presharded_with_num_valid():
  rng = np.random.default_rng(0)
  q = np.asarray(retrieval.pack_codes(random_codes(rng, 5, 64)))
  db = np.asarray(retrieval.pack_codes(random_codes(rng, 101, 64)))
  mesh = sharded.database_mesh()
  db_sharded, valid = sharded.shard_database(db, mesh)
  assert valid == 101 and db_sharded.shape[0] == 104
  assert len(db_sharded.sharding.device_set) == 4
  d, i = sharded.sharded_topk(q, db_sharded, 101, num_valid=valid, mesh=mesh)
  rd, ri = np_topk(q, db, 101)
  np.testing.assert_array_equal(np.asarray(d), rd)
  np.testing.assert_array_equal(np.asarray(i), ri)
  with pytest.raises(ValueError, match="k=102"):
    sharded.sharded_topk(q, db_sharded, 102, num_valid=valid, mesh=mesh)


@pytest.mark.skipif(not retrieval.cpu_kernel_available(),
                    reason="C++ kernel not built")
@pytest.mark.parametrize("bits,n", [(20, 4), (48, 401), (64, 1000)])
def test_layout_shards_equal_single_device(bits, n):
  # Each device holds its rows in the kernel layout (ceil(K/8) bytes a
  # code, tail columns for 20 and 48 bits) and the cpu kernel reads them in
  # place; ties straddle the shard borders.
  rng = np.random.default_rng(bits + n)
  q = np.asarray(retrieval.pack_codes(random_codes(rng, 13, bits, distinct=3)))
  db = np.asarray(retrieval.pack_codes(random_codes(rng, n, bits, distinct=5)))
  sdb = sharded.assemble_database(db, layout_bits=bits)
  assert sdb.array is None and sdb.bytes_per_code == -(-bits // 8)
  assert sdb.bytes_per_device == -(-sdb.rows_per_shard // 16) * 16 * (
      -(-bits // 8))
  for k in sorted({1, min(7, n), n}):
    d, i = sharded.sharded_topk(q, sdb, k)
    rd, ri = np_topk(q, db, k)
    np.testing.assert_array_equal(np.asarray(d), rd)
    np.testing.assert_array_equal(np.asarray(i), ri)
  with pytest.raises(ValueError, match="cpu backend"):
    sharded.sharded_topk(q, sdb, 1, backend="reference")
  ids = rng.permutation(10 * n)[:n]
  plain = retrieval.HammingIndex(bits)
  plain.add(db, ids=ids)
  index = retrieval.ShardedHammingIndex.from_index(plain)
  assert index.db.layout is not None
  for k in sorted({1, n}):
    a, b = plain.search(q, k), index.search(q, k)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
