r"""Retrieval metrics for binary hash codes: exact, tie-aware, chance levels.

Definitions (every number this module returns follows them exactly)
-------------------------------------------------------------------
Labels are multi-hot 0/1 matrices (single-label data: one-hot). For a query q
and database item i, rel(q, i) = number of shared labels; i is *relevant* iff
rel(q, i) >= 1. N = database size, K = code length in bits, d_i = Hamming
distance. The *ranking* is the database sorted by (d_i, i): ties in distance
are broken by database index (deterministic, as `hamming_topk` returns).
Position j = 1..N. R = relevant items in the whole database. Every metric is
computed per query and then averaged over all queries (a mean of per-query
values; never a ratio of means).

* precision@k = hits@k / k, hits@k = relevant items at positions 1..k.
* recall@k = hits@k / R. A query with R = 0 scores recall 0 and still counts in
  the mean (same convention as map@k; `no_relevant_fraction` in the report
  says how many such queries there are).
* map@k: AP@k = (1 / R_k) sum_{j <= k, item j relevant} P@j with R_k = hits@k;
  a query with R_k = 0 scores 0 and counts in the mean (DeepHash-pytorch's
  CalcTopMap convention, without its bug that drops the last database item
  when k = all). map@all is k = N.
* ndcg@k = DCG@k / IDCG@k, gain 2^rel - 1, discount log2(j + 1):
  DCG@k = sum_{j <= k} (2^rel_j - 1) / log2(j + 1); IDCG@k is the DCG@k of the
  whole database sorted by rel descending; a query with IDCG@k = 0 scores 0.
* PR curve over Hamming radii r = 0..K: the returned set is {i : d_i <= r};
  per query precision = relevant returned / returned (0 when nothing is
  returned), recall = relevant returned / R (0 when R = 0); both averaged over
  all queries, plus the fraction of queries with an empty return.
* precision@radius2 / empty_at_radius2: the PR curve at r = min(2, K).

Cutoffs: `ks` entries are ints 1 <= k <= N or None (= N, named "all"). A k
larger than N raises ValueError (it is never clipped silently: "map@1000" on a
500-item database would be a different metric under the same name); pass the
ks that fit your database.

Tie-aware variants ("/tie_aware")
---------------------------------
The exact expectation of map@k, ndcg@k and precision@k when the order inside
every group of equal Hamming distance is uniformly random (all groups
independent), in closed form. Per query, let group g (distance g) hold n_g
items, r_g of them relevant, with gain sum G_g; c_g = sum_{h<g} n_h items and
rho_g = sum_{h<g} r_h relevant items rank before it. Let b be the group holding
position k (c_b < k <= c_b + n_b) and m = k - c_b the number of its items
inside the top k. Every position of a group holds each of its items with
probability 1 / n_g. Harmonic numbers H_t = sum_{s<=t} 1/s and discount sums
D_t = sum_{s<=t} 1 / log2(s + 1) make every sum over positions closed form.

* precision (McSherry & Najork 2008): E[hits@k] = sum_{g<b} r_g + m r_b / n_b.
* ndcg (McSherry & Najork 2008; sklearn's tie-averaged DCG is the same):
  E[DCG@k] = sum_g (G_g / n_g) (D_{min(c_g + n_g, k)} - D_{min(c_g, k)});
  IDCG does not depend on the order of equal distances.
* AP@k. Its denominator R_k = rho_b + X is random: X, the number of relevant
  items of group b among the m of its items inside the top k, is
  hypergeometric, P(X = x) = C(r_b, x) C(n_b - r_b, m - x) / C(n_b, m). Groups
  before b lie wholly inside the top k and their orders are independent of
  group b's, so
      E[AP@k] = sum_x P(X = x) (E[S_<b] + E[S_b | X = x]) / (rho_b + x),
  a term with rho_b + x = 0 being 0 (then both sums are 0). Here S_<b and S_b
  are the sums of P@j over the relevant positions of the groups before b and of
  group b's first m positions. Take m positions of one group that start after
  c items with rho relevant items before them, holding x relevant items in a
  uniformly random arrangement. Position t (1..m) is relevant with probability
  x / m; given that, the number of relevant items among positions 1..t of the
  group is 1 + Hyp(t - 1 draws from m - 1 holding x - 1), with mean
  1 + (t - 1)(x - 1) / (m - 1). P@j at that position is (rho + that) / (c + t),
  so
      S(c, rho, m, x) = (x / m) sum_{t=1..m} (rho + 1 + (t-1)(x-1)/(m-1))
                                                / (c + t)
                      = (x / m) [(rho + 1) A + (x - 1) / (m - 1) B],
      A = H_{c+m} - H_c,   B = sum_{t=1..m} (t - 1) / (c + t) = m - (c + 1) A,
  ((x-1)/(m-1) B read as 0 when m = 1). A whole group is the case m = n_g,
  x = r_g, so E[S_<b] = sum_{g<b} S(c_g, rho_g, n_g, r_g) and
  E[S_b | X = x] = S(c_b, rho_b, m, x). The sum over x has at most
  min(m, r_b) + 1 terms (one when the group ends exactly at k, e.g. k = N);
  terms with |x - E X| > sqrt(20 m) are skipped, since Hoeffding's bound
  (valid for sampling without replacement) puts their total probability
  below 2 exp(-40) < 1e-17 and each term is an AP value <= 1. This is exact
  up to float64 rounding (~1e-11 relative, from the log-space hypergeometric
  probabilities), with no sampling; the tests check it against enumeration of
  all within-group orders.

Chance level ("/chance")
------------------------
The expected map@k and precision@k under a uniformly random ranking of the
whole database: the tie-aware formulas with every item in one tie group
(precision@k/chance = R / N for every k).

Implementation
--------------
Queries are processed in fixed-size chunks (the last one zero-padded, so the
jitted chunk function compiles once). Per chunk, `hamming_topk(k=N)` gives the
full ranking (the CPU kernel does it with a counting sort, O(N) per query);
rel is the popcount of the AND of label bit masks gathered in rank order;
prefix sums (one exact int32 cumsum of the relevant flags) give the
index-ordered metrics at every k, and one bincount per query gives the exact
(distance, rel) histogram: items, relevant items and gain per distance, and the
rel counts that fix IDCG. Everything else (tie-aware, chance, IDCG, PR curve)
is float64 arithmetic on these (Q, K + 1) statistics on the host.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from medhash_jax import retrieval
from medhash_jax.retrieval import packing

DEFAULT_KS = (10, 100, 1000, None)

# Query chunk * N elements: a chunk holds a few (chunk, N) int32/float32 arrays.
_CHUNK_ELEMENTS = 1 << 23
# Float32 prefix sums over long rows are reduced in blocks (small error).
_SUM_BLOCK = 1024
# Host-side hypergeometric sums are evaluated in blocks of this many elements.
_HOST_BLOCK = 1 << 22
# Block length of the exact blocked cumsum (`_cumsum_rows`).
_SCAN_BLOCK = 32


# ----------------------------------------------------------------------------
# Input validation.


def _shape(x):
  return tuple(np.shape(x))


def _as_array(codes, name):
  arr = codes if hasattr(codes, "ndim") else np.asarray(codes)
  if arr.ndim != 2:
    raise ValueError(f"{name} must be a 2-D (n, num_bits) code matrix or "
                     "(n, words) packed uint32 matrix, got shape "
                     f"{_shape(arr)}")
  return arr


def _is_packed(arr):
  return np.dtype(arr.dtype) == np.uint32


def _num_bits(query, db, num_bits):
  """K: num_bits, else the real-valued side's width, else 32 W."""
  widths = {name: arr.shape[1] for name, arr in (("query_codes", query),
                                                ("db_codes", db))
            if not _is_packed(arr)}
  if len(set(widths.values())) > 1:
    raise ValueError(
        "query and database codes have different lengths: query_codes "
        f"{_shape(query)} vs db_codes {_shape(db)}")
  if num_bits is not None:
    if isinstance(num_bits, bool) or not isinstance(num_bits,
                                                    (int, np.integer)):
      raise ValueError(f"num_bits must be an int, got {num_bits!r}")
    for name, w in widths.items():
      if w != num_bits:
        raise ValueError(f"num_bits={num_bits} but {name} has {w} bits "
                         f"(shape {_shape(query if name[0] == 'q' else db)})")
    return int(num_bits)
  if widths:
    return next(iter(widths.values()))
  return 32 * query.shape[1]


def _pack(arr, name, k, other):
  """Packed uint32 (n, W) jax array for real or packed codes of K = k bits."""
  if _is_packed(arr):
    packing.check_packed(arr, name)
    if k <= 0 or packing.num_words(k) != arr.shape[1]:
      raise ValueError(
          f"query and database codes have different lengths: {name} is packed "
          f"with shape {_shape(arr)} ({arr.shape[1]} words) but the codes have "
          f"{k} bits ({other}); pass num_bits for packed codes")
    if k % 32 and np.any(np.asarray(arr)[:, -1] >> np.uint32(k % 32)):
      raise ValueError(f"{name} has bits set above num_bits={k} (packed shape "
                       f"{_shape(arr)}); pack with pack_codes")
    return jnp.asarray(arr)
  packing.check_real_codes(arr, name)  # dtype, NaN/Inf: names the argument
  return retrieval.pack_codes(arr)


def _labels(labels, name, codes_name, num_rows):
  """Validates a multi-hot 0/1 label matrix; returns it as numpy bool."""
  arr = np.asarray(labels)
  if arr.ndim != 2:
    raise ValueError(
        f"{name} must be a 2-D multi-hot (n, num_labels) matrix (one-hot for "
        f"single-label data), got shape {arr.shape}")
  if arr.shape[0] != num_rows:
    raise ValueError(f"{name} has {arr.shape[0]} rows (shape {arr.shape}) but "
                     f"{codes_name} has {num_rows} rows")
  if arr.shape[1] == 0:
    raise ValueError(f"{name} has no label columns (shape {arr.shape})")
  if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.number)):
    raise ValueError(f"{name} has dtype {arr.dtype} (shape {arr.shape}); "
                     "expected bool or numeric 0/1")
  if not np.all((arr == 0) | (arr == 1)):
    raise ValueError(f"{name} (shape {arr.shape}) must be multi-hot with "
                     "values in {0, 1}")
  return arr.astype(bool)


def _resolve_ks(ks, n):
  """-> tuple of (name, k) with k in 1..N, unique names, in the given order."""
  if ks is None or isinstance(ks, (int, np.integer)):
    ks = (ks,)
  out = {}
  for k in ks:
    if k is None:
      out.setdefault("all", n)
      continue
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
      raise ValueError(f"ks entries must be ints or None, got {k!r} in {ks!r}")
    if not 1 <= k <= n:
      raise ValueError(f"ks entry k={k} is out of range: need 1 <= k <= N = "
                       f"{n} (database size); ks larger than N are not "
                       "clipped, pass ks that fit the database")
    out.setdefault(str(int(k)), int(k))
  if not out:
    raise ValueError("ks is empty")
  return tuple(out.items())


# ----------------------------------------------------------------------------
# Device part: per-chunk sufficient statistics.


@dataclasses.dataclass(frozen=True)
class RankingStats:
  """Per-query sufficient statistics of the (distance, index) rankings.

  Attributes:
    num_bits: K.
    num_db: N.
    ks: ((name, k), ...) cutoffs of the index-ordered arrays below.
    hits: int64 (Q, len(ks)), relevant items in the top k.
    ap_sum: float64 (Q, len(ks)), sum of P@j over relevant positions j <= k.
    dcg: float64 (Q, len(ks)), DCG@k of the index-ordered ranking.
    le_count: int64 (Q, K + 1), items with d <= r for r = 0..K.
    le_relevant: int64 (Q, K + 1), relevant items with d <= r.
    le_gain: float64 (Q, K + 1), sum of 2^rel - 1 over items with d <= r.
    rel_at_least: int64 (Q, V), items with rel >= v for v = 1..V (V >= 1);
      column 0 is R.
  """
  num_bits: int
  num_db: int
  ks: tuple
  hits: np.ndarray
  ap_sum: np.ndarray
  dcg: np.ndarray
  le_count: np.ndarray
  le_relevant: np.ndarray
  le_gain: np.ndarray
  rel_at_least: np.ndarray

  @property
  def num_relevant(self):
    return self.rel_at_least[:, 0]


def _prefix_sum(x, k):
  """sum(x[:, :k], axis=1) in float32, blocked for a small rounding error."""
  x = x[:, :k]
  if k <= _SUM_BLOCK:
    return jnp.sum(x, axis=1)
  nb = -(-k // _SUM_BLOCK)
  x = jnp.pad(x, ((0, 0), (0, nb * _SUM_BLOCK - k)))
  return jnp.sum(jnp.sum(x.reshape(x.shape[0], nb, _SUM_BLOCK), axis=2), axis=1)


def _cumsum_rows(x):
  """Exact int32 cumsum along axis 1 of a 0/1 (C, N) array.

  XLA's CPU cumsum is slow at this size; blocks of 32 are prefix-summed by a
  float32 matmul with a triangular matrix (exact: partial sums <= 32) and the
  int32 block offsets by a cumsum 32 times shorter (about 1.6x faster).
  """
  c, n = x.shape
  nb = -(-n // _SCAN_BLOCK)
  xb = jnp.pad(x, ((0, 0), (0, nb * _SCAN_BLOCK - n)))
  xb = xb.reshape(c, nb, _SCAN_BLOCK).astype(jnp.float32)
  tri = jnp.triu(jnp.ones((_SCAN_BLOCK, _SCAN_BLOCK), jnp.float32))
  inner = jnp.dot(xb, tri).astype(jnp.int32)
  totals = inner[:, :, -1]
  offsets = jnp.cumsum(totals, axis=1) - totals
  return (inner + offsets[:, :, None]).reshape(c, nb * _SCAN_BLOCK)[:, :n]


@functools.partial(jax.jit, static_argnames=("ks", "num_bits", "max_rel"))
def _chunk_stats(dist, idx, q_masks, db_masks, inv_pos, discount, *, ks,
                 num_bits, max_rel):
  """Sufficient statistics of one query chunk from its full rankings.

  Args:
    dist, idx: int32 (C, N), the full rankings sorted by (distance, index).
    q_masks: uint32 (C, M), db_masks: uint32 (N, M): labels as bit masks.
    inv_pos, discount: float32 (N,): 1 / j and 1 / log2(j + 1), j = 1..N.
    ks: static tuple of cutoffs; num_bits: K; max_rel: V >= 1 (rel <= V).

  Returns:
    hits, ap_sum, dcg (C, len(ks)) at each k, index-ordered; and the int32
    (C, (K + 1) (V + 1)) histogram of (distance, rel) pairs.
  """
  c = idx.shape[0]
  rel = sum(jax.lax.population_count(db_masks[:, w][idx] & q_masks[:, w, None])
            for w in range(q_masks.shape[1])).astype(jnp.int32)
  relevant = (rel > 0).astype(jnp.int32)
  cum_rel = _cumsum_rows(relevant)
  prec_terms = jnp.where(relevant > 0, cum_rel.astype(jnp.float32) * inv_pos,
                         0.0)
  if max_rel <= 24:  # exact in float32
    gain = (jnp.left_shift(1, rel) - 1).astype(jnp.float32)
  else:
    gain = jnp.exp2(rel.astype(jnp.float32)) - 1
  dcg_terms = gain * discount
  hits = jnp.stack([cum_rel[:, k - 1] for k in ks], axis=1)
  ap_sum = jnp.stack([_prefix_sum(prec_terms, k) for k in ks], axis=1)
  dcg = jnp.stack([_prefix_sum(dcg_terms, k) for k in ks], axis=1)
  # One flat bincount: bin (row, distance, rel) -> exact integer counts.
  bins = (num_bits + 1) * (max_rel + 1)
  flat = (dist * (max_rel + 1) + rel
          + bins * jnp.arange(c, dtype=jnp.int32)[:, None])
  hist = jnp.bincount(flat.reshape(-1), length=c * bins).reshape(c, bins)
  return hits, ap_sum, dcg, hist.astype(jnp.int32)


def _label_masks(labels):
  """(n, L) bool -> uint32 (n, ceil(L / 32)) masks, label j at bit j % 32."""
  bits = labels
  words = -(-bits.shape[1] // 32)
  bits = np.pad(bits, ((0, 0), (0, 32 * words - bits.shape[1])))
  bytes_ = np.packbits(bits, axis=1, bitorder="little")
  return np.ascontiguousarray(bytes_).view("<u4").astype(np.uint32)


def _from_histogram(hist, num_bits, max_rel):
  """Per-query "d <= r" statistics from (Q, (K + 1)(V + 1)) counts."""
  hist = hist.reshape(-1, num_bits + 1, max_rel + 1).astype(np.int64)
  le = np.cumsum(hist, axis=1)  # (Q, K + 1, V + 1): d <= r, rel = v
  gains = 2.0 ** np.arange(max_rel + 1) - 1
  by_rel = le[:, -1, :]  # (Q, V + 1): whole database, rel = v
  rel_at_least = np.cumsum(by_rel[:, ::-1], axis=1)[:, ::-1][:, 1:]
  return (le.sum(2), le[:, :, 1:].sum(2), le @ gains, rel_at_least)


def compute_stats(query_codes, db_codes, query_labels, db_labels,
                  ks=DEFAULT_KS, *, num_bits=None, backend="auto",
                  query_chunk=None) -> RankingStats:
  """Per-query sufficient statistics for every metric of this module.

  Args:
    query_codes, db_codes: (Q, K) / (N, K) real-valued codes (bit = code >= 0)
      or (Q, W) / (N, W) packed uint32 codes (`pack_codes`).
    query_labels, db_labels: multi-hot 0/1 (Q, L) / (N, L).
    ks: cutoffs for the index-ordered metrics (ints or None = N).
    num_bits: K for packed codes (default: the real-valued side's K, else
      32 W); must match real-valued codes.
    backend: `hamming_topk` backend.
    query_chunk: queries per chunk (default: about 2^23 / N).
  """
  query = _as_array(query_codes, "query_codes")
  db = _as_array(db_codes, "db_codes")
  num_bits = _num_bits(query, db, num_bits)
  q_packed = _pack(query, "query_codes", num_bits,
                   f"db_codes shape {_shape(db)}")
  db_packed = _pack(db, "db_codes", num_bits,
                    f"query_codes shape {_shape(query)}")
  q, n = q_packed.shape[0], db_packed.shape[0]
  if n == 0:
    raise ValueError(f"the database is empty (db_codes shape {_shape(db)})")
  if q == 0:
    raise ValueError(f"no queries (query_codes shape {_shape(query)})")
  if n >= 2**31 // (num_bits + 1):
    raise ValueError(f"database too large for int32 ranks (N = {n})")
  q_lab = _labels(query_labels, "query_labels", "query_codes", q)
  db_lab = _labels(db_labels, "db_labels", "db_codes", n)
  if q_lab.shape[1] != db_lab.shape[1]:
    raise ValueError(f"query_labels {q_lab.shape} and db_labels {db_lab.shape} "
                     "have different numbers of label columns")
  named_ks = _resolve_ks(ks, n)
  max_rel = max(1, int(min(q_lab.sum(1).max(), db_lab.sum(1).max())))
  if max_rel > 120:
    raise ValueError(f"up to {max_rel} shared labels: gains 2^rel - 1 overflow "
                     "float32; at most 120 are supported")

  chunk = query_chunk or max(1, _CHUNK_ELEMENTS // n)
  chunk = max(1, min(int(chunk), q))
  q_masks = _label_masks(q_lab)
  db_masks = jnp.asarray(_label_masks(db_lab))
  pos = np.arange(1, n + 1, dtype=np.float64)
  inv_pos = jnp.asarray(1.0 / pos, jnp.float32)
  discount = jnp.asarray(1.0 / np.log2(pos + 1), jnp.float32)
  static = dict(ks=tuple(k for _, k in named_ks), num_bits=num_bits,
                max_rel=max_rel)

  def fetch(rows, res):
    hits, ap_sum, dcg, hist = (np.asarray(a)[:rows] for a in res)
    return (hits, ap_sum, dcg) + _from_histogram(hist, num_bits, max_rel)

  outs, pending = [], None
  for start in range(0, q, chunk):
    rows = min(chunk, q - start)
    qp = q_packed[start:start + chunk]
    qm = q_masks[start:start + chunk]
    if rows < chunk:  # pad: one shape, one compilation
      qp = jnp.pad(qp, ((0, chunk - rows), (0, 0)))
      qm = np.pad(qm, ((0, chunk - rows), (0, 0)))
    dist, idx = retrieval.hamming_topk(qp, db_packed, n, backend=backend)
    res = _chunk_stats(dist, idx, jnp.asarray(qm), db_masks, inv_pos, discount,
                       **static)
    # Fetch the previous chunk only now: one chunk stays in flight while the
    # host converts, and memory stays bounded to about two chunks.
    if pending is not None:
      outs.append(fetch(*pending))
    pending = (rows, res)
  outs.append(fetch(*pending))
  hits, ap_sum, dcg, le_count, le_rel, le_gain, rel_at_least = (
      np.concatenate(c) for c in zip(*outs))
  return RankingStats(
      num_bits=num_bits, num_db=n, ks=named_ks,
      hits=hits.astype(np.int64), ap_sum=ap_sum.astype(np.float64),
      dcg=dcg.astype(np.float64), le_count=le_count, le_relevant=le_rel,
      le_gain=le_gain, rel_at_least=rel_at_least)


# ----------------------------------------------------------------------------
# Host part: closed forms in float64.


@functools.lru_cache(maxsize=8)
def _tables(n):
  """Harmonic numbers H, discount sums D and log-factorials, each (n + 1,)."""
  t = np.arange(1, n + 1, dtype=np.float64)
  pad = lambda x: np.concatenate([[0.0], np.cumsum(x)])
  return pad(1.0 / t), pad(1.0 / np.log2(t + 1)), _log_factorials(n)


def _log_factorials(n):
  """log(t!) for t = 0..n, to float64 rounding.

  Not a cumsum of logs (it drifts by ~1e-10 at n = 5000): math.lgamma below
  64 and the Stirling series above (truncation error < 1 / (1680 x^7)).
  """
  x = np.arange(1, n + 2, dtype=np.float64)  # log(t!) = lgamma(t + 1)
  out = np.array([math.lgamma(v) for v in x[:64]])
  big = x[64:]
  inv, inv2 = 1.0 / big, 1.0 / big**2
  series = inv * (1 / 12 - inv2 * (1 / 360 - inv2 / 1260))
  big = (big - 0.5) * np.log(big) - big + 0.5 * math.log(2 * math.pi) + series
  return np.concatenate([out, big])


def _safe_div(num, den):
  num, den = np.broadcast_arrays(np.asarray(num, np.float64),
                                 np.asarray(den, np.float64))
  return np.divide(num, den, out=np.zeros(num.shape), where=den != 0)


def _groups(le):
  """Per-group values and values before each group from a "d <= r" array."""
  per = np.diff(le, axis=1, prepend=0)
  return per, le - per


def _ap_part(c, rho, m, x, harmonic):
  """S(c, rho, m, x): expected sum of P@j over m positions (see docstring)."""
  c, rho, m, x = (np.asarray(v, np.float64) for v in (c, rho, m, x))
  ci, mi = c.astype(np.int64), m.astype(np.int64)
  a = harmonic[ci + mi] - harmonic[ci]
  b = m - (c + 1) * a
  coef = _safe_div(x - 1, np.where(m > 1, m - 1, 0))
  return _safe_div(x, m) * ((rho + 1) * a + coef * b)


def _boundary(le_count, k):
  """Index b of the group holding position k, per query."""
  return np.argmax(le_count >= k, axis=1)


def _expected_hits(le_count, le_relevant, k):
  """E[hits@k] under random order within equal-distance groups."""
  n_g, c_g = _groups(le_count)
  r_g, _ = _groups(le_relevant)
  frac = np.clip(_safe_div(k - c_g, n_g), 0.0, 1.0)
  return np.sum(r_g * frac, axis=1)


def _expected_dcg(le_count, le_gain, k, discount):
  """E[DCG@k] under random order within equal-distance groups."""
  n_g, c_g = _groups(le_count)
  g_g, _ = _groups(le_gain)
  span = discount[np.minimum(le_count, k)] - discount[np.minimum(c_g, k)]
  return np.sum(_safe_div(g_g, n_g) * span, axis=1)


def _hypergeom_ap(n, r, m, c, rho, before, tables):
  """sum_x P(X = x) (before + S(c, rho, m, x)) / (rho + x), X ~ Hyp(n, r, m)."""
  harmonic, _, logfact = tables
  n, r, m, c, rho = (np.asarray(v, np.int64) for v in (n, r, m, c, rho))
  before = np.asarray(before, np.float64)
  # Terms farther than sqrt(20 m) from the mean are dropped: by Hoeffding's
  # bound (valid without replacement) their mass is < 2 exp(-40) < 1e-17, and
  # every term is <= 1, so this changes nothing at float64 precision.
  half = np.ceil(np.sqrt(20.0 * m)).astype(np.int64)
  mean = m * r // np.maximum(n, 1)
  lo = np.maximum(np.maximum(0, m - (n - r)), mean - half)
  hi = np.minimum(np.minimum(m, r), mean + half + 1)
  width = int(np.max(hi - lo)) + 1
  out = np.empty(n.shape[0])
  step = max(1, _HOST_BLOCK // width)
  for s in range(0, n.shape[0], step):
    sl = slice(s, s + step)
    col = lambda v: v[sl, None]
    x = col(lo) + np.arange(width)
    valid = x <= col(hi)
    x = np.where(valid, x, col(lo))
    logp = (logfact[col(r)] - logfact[x] - logfact[col(r) - x]
            + logfact[col(n - r)] - logfact[col(m) - x]
            - logfact[col(n - r) - col(m) + x]
            - logfact[col(n)] + logfact[col(m)] + logfact[col(n - m)])
    p = np.where(valid, np.exp(logp), 0.0)
    s_b = _ap_part(col(c), col(rho), col(m), x, harmonic)
    term = _safe_div(col(before) + s_b, col(rho) + x)
    out[sl] = np.sum(p * term, axis=1)
  return out


def _expected_ap(le_count, le_relevant, k, tables):
  """E[AP@k] under random order within equal-distance groups (docstring)."""
  harmonic = tables[0]
  n_g, c_g = _groups(le_count)
  r_g, rho_g = _groups(le_relevant)
  b = _boundary(le_count, k)
  whole = _ap_part(c_g, rho_g, n_g, r_g, harmonic)
  before = np.sum(np.where(np.arange(n_g.shape[1]) < b[:, None], whole, 0.0),
                  axis=1)
  pick = lambda v: np.take_along_axis(v, b[:, None], axis=1)[:, 0]
  return _hypergeom_ap(pick(n_g), pick(r_g), k - pick(c_g), pick(c_g),
                       pick(rho_g), before, tables)


def _idcg(rel_at_least, k, discount):
  """IDCG@k from the counts of items with rel >= v, v = 1..V."""
  s = np.minimum(rel_at_least, k)  # positions 1..s_v hold rel >= v
  s_next = np.concatenate([s[:, 1:], np.zeros_like(s[:, :1])], axis=1)
  gains = 2.0 ** np.arange(1, s.shape[1] + 1) - 1
  return np.sum(gains * (discount[s] - discount[s_next]), axis=1)


def report_from_stats(stats: RankingStats, *, reduce=True) -> dict:
  """The `retrieval_report` dict from precomputed `RankingStats`.

  Args:
    stats: from `compute_stats`.
    reduce: True: means over queries (floats); False: per-query float64 arrays.
  """
  n = stats.num_db
  tables = _tables(n)
  _, discount, _ = tables
  r_all = stats.num_relevant
  agg = (lambda v: float(np.mean(v))) if reduce else (lambda v: v)
  out = {}
  for col, (name, k) in enumerate(stats.ks):
    hits = stats.hits[:, col]
    idcg = _idcg(stats.rel_at_least, k, discount)
    out[f"map@{name}"] = agg(_safe_div(stats.ap_sum[:, col], hits))
    out[f"ndcg@{name}"] = agg(_safe_div(stats.dcg[:, col], idcg))
    out[f"precision@{name}"] = agg(hits / k)
    out[f"recall@{name}"] = agg(_safe_div(hits, r_all))
    out[f"map@{name}/tie_aware"] = agg(
        _expected_ap(stats.le_count, stats.le_relevant, k, tables))
    out[f"ndcg@{name}/tie_aware"] = agg(_safe_div(
        _expected_dcg(stats.le_count, stats.le_gain, k, discount), idcg))
    out[f"precision@{name}/tie_aware"] = agg(
        _expected_hits(stats.le_count, stats.le_relevant, k) / k)
    # Chance: the same formulas with the whole database in one tie group.
    one_count = np.full((r_all.shape[0], 1), n)
    out[f"map@{name}/chance"] = agg(
        _expected_ap(one_count, r_all[:, None], k, tables))
    out[f"precision@{name}/chance"] = agg(
        _expected_hits(one_count, r_all[:, None], k) / k)
  curve = pr_curve_from_stats(stats, reduce=False)
  r2 = min(2, stats.num_bits)
  out["precision@radius2"] = agg(curve["precision"][:, r2])
  out["empty_at_radius2"] = agg(curve["empty"][:, r2])
  out["no_relevant_fraction"] = agg((r_all == 0).astype(np.float64))
  return out


def pr_curve_from_stats(stats: RankingStats, *, reduce=True) -> dict:
  """Precision-recall over Hamming radii 0..K from `RankingStats`.

  Returns:
    dict with "radius" int (K + 1,), and "precision", "recall", "empty"
    (fraction of queries with nothing within the radius), each (K + 1,) means
    over queries, or (Q, K + 1) per query when reduce=False.
  """
  returned = stats.le_count
  precision = _safe_div(stats.le_relevant, returned)
  recall = _safe_div(stats.le_relevant, stats.num_relevant[:, None])
  empty = (returned == 0).astype(np.float64)
  out = {"precision": precision, "recall": recall, "empty": empty}
  if reduce:
    out = {k: v.mean(axis=0) for k, v in out.items()}
  out["radius"] = np.arange(stats.num_bits + 1)
  return out


def retrieval_report(query_codes, db_codes, query_labels, db_labels,
                     ks=DEFAULT_KS, *, num_bits=None, backend="auto",
                     query_chunk=None) -> dict:
  """All retrieval metrics of the module docstring as one flat dict of floats.

  Keys, for every k in ks (named by k, or "all" for None): `map@k`, `ndcg@k`,
  `precision@k`, `recall@k` (index-ordered), `map@k/tie_aware`,
  `ndcg@k/tie_aware`, `precision@k/tie_aware`, `map@k/chance`,
  `precision@k/chance`; and `precision@radius2`, `empty_at_radius2`,
  `no_relevant_fraction`. Arguments as in `compute_stats`; a k > N raises.
  For the PR curve as well, call `compute_stats` once and then
  `report_from_stats` and `pr_curve_from_stats`.
  """
  stats = compute_stats(query_codes, db_codes, query_labels, db_labels, ks,
                        num_bits=num_bits, backend=backend,
                        query_chunk=query_chunk)
  return report_from_stats(stats)


def pr_curve(query_codes, db_codes, query_labels, db_labels, *, num_bits=None,
             backend="auto", query_chunk=None) -> dict:
  """Mean precision and recall over radii 0..K; see `pr_curve_from_stats`."""
  stats = compute_stats(query_codes, db_codes, query_labels, db_labels, (None,),
                        num_bits=num_bits, backend=backend,
                        query_chunk=query_chunk)
  return pr_curve_from_stats(stats)
