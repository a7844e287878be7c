"""The C++ XLA FFI Hamming kernels against a numpy brute force.

Every SIMD level this CPU supports (MEDHASH_ISA) and both selection methods
(MEDHASH_TOPK_METHOD) are exercised in one process: the kernel reads those
variables on every call.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medhash_jax.retrieval import cpu_kernel

pytestmark = pytest.mark.skipif(
    not cpu_kernel.available(),
    reason="C++ Hamming kernel unavailable (not built and no C++ compiler for "
    "the on-the-fly build; see the warning from medhash_jax.retrieval."
    "cpu_kernel)")

_ORDER = ("scalar", "avx2", "avx512")


def _isas():
  if not cpu_kernel.available():
    return ["scalar"]
  saved = os.environ.pop("MEDHASH_ISA", None)
  try:
    best = cpu_kernel.isa()
  finally:
    if saved is not None:
      os.environ["MEDHASH_ISA"] = saved
  return list(_ORDER[:_ORDER.index(best) + 1])


ISAS = _isas()
METHODS = ("buffer", "twopass")


def pack(bits: np.ndarray) -> np.ndarray:
  """(n, K) {0,1} -> uint32 (n, ceil(K/32)); bit j in word j//32, bit j%32."""
  n, k = bits.shape
  w = -(-k // 32)
  padded = np.zeros((n, 32 * w), np.uint8)
  padded[:, :k] = bits
  packed = np.packbits(padded, axis=1, bitorder="little")
  return packed.view("<u4").astype(np.uint32)


def random_codes(rng, n, num_bits, distinct=None):
  if distinct is None:
    return pack(rng.integers(0, 2, (n, num_bits), dtype=np.uint8))
  pool = rng.integers(0, 2, (distinct, num_bits), dtype=np.uint8)
  return pack(pool[rng.integers(0, distinct, n)])


def brute_distances(q, db):
  x = np.bitwise_xor(q[:, None, :], db[None, :, :])
  return np.unpackbits(x.view(np.uint8), axis=-1).sum(-1).astype(np.int32)


def brute_topk(q, db, k):
  d = brute_distances(q, db)
  idx = np.broadcast_to(np.arange(db.shape[0]), d.shape)
  order = np.lexsort((idx, d), axis=-1)[:, :k]
  return np.take_along_axis(d, order, 1), order.astype(np.int32)


def brute_histogram(q, db):
  d = brute_distances(q, db)
  bins = 32 * q.shape[1] + 1
  return np.stack([np.bincount(row, minlength=bins) for row in d]).astype(
      np.int32)


@pytest.fixture
def env(monkeypatch):
  """Sets kernel environment knobs for one call; restored after the test."""

  def set_env(**kv):
    for key, value in kv.items():
      monkeypatch.setenv(key, str(value))

  return set_env


def _check_all_paths(env, q, db, k):
  want_d, want_i = brute_topk(q, db, k)
  for isa in ISAS:
    for method in METHODS:
      env(MEDHASH_ISA=isa, MEDHASH_TOPK_METHOD=method)
      d, i = cpu_kernel.hamming_topk_cpu(q, db, k)
      assert d.dtype == jnp.int32 and i.dtype == jnp.int32
      assert d.shape == i.shape == (q.shape[0], k)
      np.testing.assert_array_equal(np.asarray(d), want_d,
                                    err_msg=f"{isa} {method}")
      np.testing.assert_array_equal(np.asarray(i), want_i,
                                    err_msg=f"{isa} {method}")


@pytest.mark.parametrize("num_bits", [8, 16, 20, 32, 48, 64, 128, 256])
@pytest.mark.parametrize("n", [1, 7, 1000, 4099])
def test_topk_random(env, num_bits, n):
  rng = np.random.default_rng(num_bits * 10_000 + n)
  q = random_codes(rng, 13, num_bits)  # 13: not a multiple of any query block
  db = random_codes(rng, n, num_bits)
  for k in sorted({1, 10, n}):
    if k <= n:
      _check_all_paths(env, q, db, k)


@pytest.mark.parametrize("num_bits,n", [(16, 1000), (64, 4099), (256, 4099)])
@pytest.mark.parametrize("distinct", [1, 3])
def test_topk_heavy_ties(env, num_bits, n, distinct):
  rng = np.random.default_rng(distinct * 7 + num_bits)
  q = random_codes(rng, 9, num_bits, distinct=distinct)
  db = random_codes(rng, n, num_bits, distinct=distinct)
  for k in (1, 10, 100, n):
    _check_all_paths(env, q, db, k)


def test_topk_all_equal_is_index_order():
  db = np.full((500, 2), 0xDEADBEEF, np.uint32)
  q = np.zeros((3, 2), np.uint32)
  d, i = cpu_kernel.hamming_topk_cpu(q, db, 50)
  np.testing.assert_array_equal(np.asarray(i), np.tile(np.arange(50), (3, 1)))
  np.testing.assert_array_equal(np.asarray(d), 48)


def test_topk_crosses_tiles_and_threads(env):
  # 40k 32-bit codes span two database tiles; 3 threads over 37 queries.
  rng = np.random.default_rng(1)
  q = random_codes(rng, 37, 32)
  db = random_codes(rng, 40_000, 32, distinct=5000)
  env(MEDHASH_NUM_THREADS=3)
  _check_all_paths(env, q, db, 25)


def test_topk_inside_jit():
  rng = np.random.default_rng(2)
  q = jnp.asarray(random_codes(rng, 11, 64))
  db = jnp.asarray(random_codes(rng, 777, 64))

  @jax.jit
  def search(q, db):
    d, i = cpu_kernel.hamming_topk_cpu(q, db, 10)
    return d + 0, i  # something around the custom call

  d, i = search(q, db)
  want_d, want_i = brute_topk(np.asarray(q), np.asarray(db), 10)
  np.testing.assert_array_equal(np.asarray(d), want_d)
  np.testing.assert_array_equal(np.asarray(i), want_i)
  # Traced k must be static: a different k is a different compiled program.
  d5, _ = jax.jit(cpu_kernel.hamming_topk_cpu, static_argnums=2)(q, db, 5)
  np.testing.assert_array_equal(np.asarray(d5), want_d[:, :5])


def test_topk_no_queries():
  db = np.ones((10, 1), np.uint32)
  d, i = cpu_kernel.hamming_topk_cpu(np.zeros((0, 1), np.uint32), db, 3)
  assert d.shape == i.shape == (0, 3)


@pytest.mark.parametrize("k", [0, 11])
def test_topk_rejects_bad_k(k):
  db = np.ones((10, 1), np.uint32)
  with pytest.raises(ValueError, match="1 <= k <= N"):
    cpu_kernel.hamming_topk_cpu(np.zeros((2, 1), np.uint32), db, k)


def test_bad_inputs_are_value_errors():
  with pytest.raises(ValueError, match="uint32"):
    cpu_kernel.hamming_topk_cpu(np.zeros((2, 1), np.int32),
                                np.zeros((3, 1), np.uint32), 1)
  with pytest.raises(ValueError, match="different numbers of words"):
    cpu_kernel.hamming_histogram_cpu(np.zeros((2, 1), np.uint32),
                                     np.zeros((3, 2), np.uint32))


@pytest.mark.parametrize("num_bits", [8, 20, 64, 96, 256, 320])
@pytest.mark.parametrize("n", [1, 1000, 4099])
def test_histogram(env, num_bits, n):
  rng = np.random.default_rng(num_bits + n)
  q = random_codes(rng, 5, num_bits)
  db = random_codes(rng, n, num_bits, distinct=None if n < 2000 else 50)
  want = brute_histogram(q, db)
  for isa in ISAS:
    env(MEDHASH_ISA=isa)
    h = cpu_kernel.hamming_histogram_cpu(q, db)
    assert h.dtype == jnp.int32 and h.shape == want.shape
    np.testing.assert_array_equal(np.asarray(h), want, err_msg=isa)


def test_histogram_inside_jit():
  rng = np.random.default_rng(3)
  q = random_codes(rng, 4, 48)
  db = random_codes(rng, 300, 48)
  h = jax.jit(cpu_kernel.hamming_histogram_cpu)(q, db)
  np.testing.assert_array_equal(np.asarray(h), brute_histogram(q, db))


def test_reports_isa_and_threads(env):
  assert cpu_kernel.isa() in _ORDER
  env(MEDHASH_NUM_THREADS=3)
  assert cpu_kernel.num_threads() == 3


def test_on_the_fly_build(monkeypatch, tmp_path):
  """The fallback used when the package was installed without the extension."""
  if cpu_kernel._compiler() is None:  # pylint: disable=protected-access
    pytest.skip("no C++ compiler")
  monkeypatch.setenv("MEDHASH_CACHE_DIR", str(tmp_path))
  path = cpu_kernel._compile_on_the_fly()  # pylint: disable=protected-access
  assert os.path.dirname(path) == str(tmp_path)
  lib = __import__("ctypes").CDLL(path)
  assert lib.MedhashHammingTopk and lib.MedhashHammingHistogram
  # Cached by source/jaxlib/flags hash; no temporary files left behind.
  assert cpu_kernel._compile_on_the_fly() == path  # pylint: disable=protected-access
  assert os.listdir(tmp_path) == [os.path.basename(path)]


def test_failed_build_is_reported_not_raised(monkeypatch, tmp_path, caplog):
  monkeypatch.setenv("MEDHASH_CACHE_DIR", str(tmp_path))
  monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
  with pytest.raises(RuntimeError, match="failed"):
    cpu_kernel._compile_on_the_fly()  # pylint: disable=protected-access
  assert not os.listdir(tmp_path)
  monkeypatch.setattr(cpu_kernel, "_built_extension", lambda: None)
  with caplog.at_level("WARNING"):
    lib = cpu_kernel._load()  # pylint: disable=protected-access
  assert lib is None
  assert "unavailable" in caplog.text


# -- over a prebuilt layout (HammingIndex's path) -----------------------------


def spec_layout(rows: np.ndarray) -> np.ndarray:
  """The kernel layout written byte by byte from its specification
  (csrc/hamming.h, DbLayout): independent of layout.py's reshapes."""
  n, b = rows.shape
  f, t = divmod(b, 4)
  blocks = -(-n // 16)
  out = np.zeros(blocks * 16 * b, np.uint8)
  for i in range(n):
    base, lane = (i // 16) * 16 * b, i % 16
    for j in range(f):
      out[base + 64 * j + 4 * lane: base + 64 * j + 4 * lane + 4] = \
          rows[i, 4 * j:4 * j + 4]
    o = base + 64 * f
    if t >= 2:
      out[o + 2 * lane: o + 2 * lane + 2] = rows[i, 4 * f:4 * f + 2]
      o += 32
    if t % 2:
      out[o + lane] = rows[i, b - 1]
  return out


def _layout_case(rng, n, num_bits, distinct=None, nq=5):
  from medhash_jax.retrieval import layout  # pylint: disable=g-import-not-at-top
  db = random_codes(rng, n, num_bits, distinct)
  q = random_codes(rng, nq, num_bits, distinct)
  b = layout.bytes_per_code(num_bits)
  rows = layout.packed_to_rows(db, b)
  lay = layout.rows_to_layout(rows)
  return q, db, lay, b


@pytest.mark.parametrize("num_bits", [1, 7, 9, 16, 20, 24, 40, 48, 56, 72, 100,
                                      256, 260])
def test_layout_matches_its_specification(num_bits):
  from medhash_jax.retrieval import layout  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(num_bits)
  _, db, lay, b = _layout_case(rng, 37, num_bits)
  rows = layout.packed_to_rows(db, b)
  np.testing.assert_array_equal(lay, spec_layout(rows))
  np.testing.assert_array_equal(layout.layout_to_rows(lay, 37, b), rows)
  np.testing.assert_array_equal(layout.rows_to_packed(rows), db)


@pytest.mark.parametrize("num_bits", [1, 7, 9, 20, 24, 40, 48, 56, 64, 72, 100,
                                      256, 260])
@pytest.mark.parametrize("n", [1, 17, 1000])
def test_layout_topk_any_bits(env, num_bits, n):
  # K not a multiple of 32 (tail columns of 1-3 bytes) on every SIMD level,
  # one sweep and database parts merged (3 and 7 parts: borders inside and
  # between blocks of 16).
  rng = np.random.default_rng(num_bits * 31 + n)
  q, db, lay, b = _layout_case(rng, n, num_bits, distinct=None if n < 999
                               else 60)
  want_h = brute_histogram(q, db)
  for isa in ISAS:
    for parts in (0, 3, 7):
      env(MEDHASH_ISA=isa, MEDHASH_DB_PARTS=parts)
      for k in sorted({1, min(10, n), n}):
        want_d, want_i = brute_topk(q, db, k)
        d, i = cpu_kernel.layout_topk(lay, n, b, q, k)
        np.testing.assert_array_equal(d, want_d, err_msg=f"{isa} {parts} {k}")
        np.testing.assert_array_equal(i, want_i, err_msg=f"{isa} {parts} {k}")
      np.testing.assert_array_equal(cpu_kernel.layout_histogram(lay, n, b, q),
                                    want_h, err_msg=f"{isa} {parts}")


def test_few_queries_split_the_database_by_default(env):
  # 70k codes, 1-20 queries (20: more than one register block of 8), 4
  # threads: the automatic database split (no MEDHASH_DB_PARTS). Few
  # distinct codes: long ties across part borders, which only a merge by
  # (distance, index) orders right.
  rng = np.random.default_rng(8)
  q, db, lay, b = _layout_case(rng, 70_000, 32, distinct=40, nq=20)
  env(MEDHASH_NUM_THREADS=4)
  for nq in (1, 3, 20):
    for k in (1, 100, 4000):
      want_d, want_i = brute_topk(q[:nq], db, k)
      d, i = cpu_kernel.layout_topk(lay, 70_000, b, q[:nq], k)
      np.testing.assert_array_equal(d, want_d)
      np.testing.assert_array_equal(i, want_i)
    np.testing.assert_array_equal(
        cpu_kernel.layout_histogram(lay, 70_000, b, q[:nq]),
        brute_histogram(q[:nq], db))
  # The rows-based FFI target takes the same path for few queries.
  d, i = cpu_kernel.hamming_topk_cpu(q[:1], db, 50)
  want_d, want_i = brute_topk(q[:1], db, 50)
  np.testing.assert_array_equal(np.asarray(d), want_d)
  np.testing.assert_array_equal(np.asarray(i), want_i)


def test_layout_ffi_target_inside_jit():
  rng = np.random.default_rng(9)
  q, db, lay, b = _layout_case(rng, 333, 48)
  search = jax.jit(cpu_kernel.layout_topk_ffi, static_argnums=(2, 3, 4))
  d, i = search(jnp.asarray(q), jnp.asarray(lay), 333, b, 12)
  want_d, want_i = brute_topk(q, db, 12)
  np.testing.assert_array_equal(np.asarray(d), want_d)
  np.testing.assert_array_equal(np.asarray(i), want_i)


def test_layout_rejects_bad_arguments():
  rng = np.random.default_rng(10)
  q, _, lay, b = _layout_case(rng, 40, 48)
  with pytest.raises(ValueError, match="need 1 <= k <= N"):
    cpu_kernel.layout_topk(lay, 40, b, q, 41)
  with pytest.raises(ValueError, match="layout has"):
    cpu_kernel.layout_topk(lay[:-1], 40, b, q, 1)
  with pytest.raises(ValueError, match=r"queries must be uint32 \(Q, 2\)"):
    cpu_kernel.layout_topk(lay, 40, b, q[:, :1], 1)


def test_stream_read_reads_every_byte():
  # The bandwidth probe must touch every byte (a skipped range would make
  # the benchmark's bound optimistic): flipping any one byte changes it.
  data = np.random.default_rng(11).integers(0, 256, 1_000_003, np.uint8)
  got = cpu_kernel.stream_read(data, 3)
  for pos in (0, 130, 333_334, 999_999, 1_000_002):
    changed = data.copy()
    changed[pos] ^= 0x01
    assert cpu_kernel.stream_read(changed, 3) != got, pos
