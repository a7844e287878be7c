"""Rankings for people: Hamming ties re-ranked by the query's real-valued code.

`hamming_topk` sorts by (Hamming distance, database index): exact and
reproducible, which is what the metrics need (and keep). But a user who looks
at the top 10 should not see the database *file order*: with short codes most
queries have dozens or thousands of items at the k-th distance, and databases
are often stored class by class, so index order shows whichever class comes
first in the file.

`rerank_topk` gives the order users see (DESIGN.md, "Evaluation hygiene"):

  1. Hamming distance (the exact ranking, unchanged between tie groups);
  2. inside a tie group, the asymmetric distance between the query's
     real-valued code q (in [-1, 1]) and the item's binary code b (+-1):
     ``-<q, b> = 2 * sum_{i: bit differs} |q_i| - sum_i |q_i|``,
     i.e. items whose differing bits are the ones the query is least sure of
     come first (asymmetric distance, Gordo et al. 2014; Dong et al. 2008);
  3. items still tied (identical binary codes) in a seeded order that does not
     depend on the file: a hash of (seed, case id), `tie_keys`.

The tie group at the k-th distance is collected whole (every database item at
that distance, not only the ones index order put inside the top k), so the
re-ranking picks the best of the group. Each hit also reports the size of its
tie group: how many database items share its Hamming distance to the query.
"""

import hashlib
from typing import Sequence, Tuple

import numpy as np

from medhash_jax.retrieval import packing
from medhash_jax.retrieval import topk

# Budget (elements) of one chunk's unpacked candidate bits, (queries x
# candidates x bits) int8.
_BUDGET = 1 << 24


def tie_keys(ids: Sequence[str], seed: int = 0) -> np.ndarray:
  """uint64 per case id: the seeded, file-order-free last tie-break.

  A hash of (seed, id) rather than a permutation of positions, so a case keeps
  its key when cases are appended or the database file is reordered.
  """
  out = np.empty((len(ids),), np.uint64)
  prefix = f"{int(seed)}\x00".encode()
  for j, i in enumerate(ids):
    h = hashlib.blake2b(prefix + str(i).encode(), digest_size=8).digest()
    out[j] = np.frombuffer(h, "<u8")[0]
  return out


def _signs(db_packed: np.ndarray, num_bits: int) -> np.ndarray:
  """Packed uint32 (n, W) -> float64 (n, K) in {-1, +1} (host numpy; bit j
  in word j // 32 at bit j % 32, as `packing.pack_codes` writes it)."""
  words = np.ascontiguousarray(db_packed, "<u4")
  bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")
  return bits[:, :num_bits].astype(np.float64) * 2.0 - 1.0


def asymmetric_distance(query_code: np.ndarray, db_packed: np.ndarray,
                        num_bits: int) -> np.ndarray:
  """-<q, b> (float64) of one real query code against packed codes (n, W)."""
  return -(_signs(db_packed, num_bits) @ np.asarray(query_code, np.float64))


def _check(query_codes, n: int, k, keys):
  q_codes = np.asarray(query_codes, np.float32)
  if q_codes.ndim != 2:
    raise ValueError(f"query codes must be (Q, K), got {q_codes.shape}")
  if isinstance(k, bool) or not 1 <= int(k) <= n:
    raise ValueError(f"k={k} must be between 1 and the database size {n}")
  keys = np.asarray(keys, np.uint64)
  if keys.shape != (n,):
    raise ValueError(f"keys must have shape ({n},), got {keys.shape}")
  return q_codes, int(k), keys


def _rerank(q_codes, qp, n: int, k: int, keys, topk_fn, packed_at, hist_fn):
  """The re-rank over any database: `topk_fn(query_rows, m)` its exact
  (distance, position) top m, `packed_at(positions)` the packed codes of
  some positions, `hist_fn(query_rows)` its distance histograms.

  First one top-m scan, m = the power of two >= max(2k, 16): where the m-th
  distance exceeds the k-th, the boundary tie group is inside it and so are
  the counts of every distance <= the k-th (the tie group sizes). Queries
  whose boundary group overflows m take a histogram scan and an exact top
  `need` scan."""
  nq, num_bits = q_codes.shape
  out_d = np.zeros((nq, k), np.int32)
  out_i = np.zeros((nq, k), np.int64)
  out_g = np.zeros((nq, k), np.int64)
  if nq == 0:
    return out_d, out_i, out_g

  def pick(qi, d, i, counts):
    asym = asymmetric_distance(q_codes[qi], packed_at(i), num_bits)
    best = np.lexsort((keys[i], asym, d))[:k]
    out_d[qi], out_i[qi] = d[best], i[best]
    out_g[qi] = counts[d[best]]

  m0 = min(n, 1 << (max(2 * k, 16) - 1).bit_length())
  d0, i0 = topk_fn(np.arange(nq), m0)
  d0, i0 = np.asarray(d0), np.asarray(i0).astype(np.int64)
  kth0 = d0[:, k - 1]
  whole = (d0[:, -1] > kth0) | (m0 == n)
  for qi in np.flatnonzero(whole):
    c = int(np.count_nonzero(d0[qi] <= kth0[qi]))
    d, i = d0[qi, :c], i0[qi, :c]
    pick(qi, d, i, np.bincount(d, minlength=num_bits + 1))
  rest = np.flatnonzero(~whole)
  if not rest.size:
    return out_d, out_i, out_g
  hist = np.asarray(hist_fn(rest))
  cum = np.cumsum(hist, axis=1)
  kth = np.argmax(cum >= k, axis=1)      # the k-th smallest distance
  # Items at distance <= the k-th: the top k plus the rest of the boundary
  # tie group. The first `need` of the exact ranking are exactly those.
  need = cum[np.arange(len(rest)), kth]
  order = np.argsort(need, kind="stable")
  start = 0
  while start < len(rest):
    # Queries of similar `need` together, within the memory budget.
    m = int(need[order[start]])
    rows = max(1, _BUDGET // max(m * num_bits, 1))
    chunk = order[start:start + rows]
    # Power-of-two k (capped at n): a few kernel shapes, not one per query.
    m = min(n, 1 << (int(need[chunk].max()) - 1).bit_length())
    cd, ci = topk_fn(rest[chunk], m)
    cd, ci = np.asarray(cd), np.asarray(ci).astype(np.int64)
    for r, j in enumerate(chunk):
      c = int(need[j])
      pick(rest[j], cd[r, :c], ci[r, :c], hist[j])
    start += len(chunk)
  return out_d, out_i, out_g


def rerank_topk(query_codes, db_packed, k: int, *, keys: np.ndarray,
                backend: str = "auto"
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Top k per query, ties re-ranked (see the module docstring).

  Args:
    query_codes: float (Q, K) real-valued query codes (bit = code >= 0).
    db_packed: uint32 (N, W) packed database codes.
    k: hits per query, 1 <= k <= N (a larger k raises ValueError).
    keys: uint64 (N,) last tie-break per database item (`tie_keys`).
    backend: the `hamming_topk` backend.

  Returns:
    (distances int32 (Q, k), positions int64 (Q, k), tie group sizes int64
    (Q, k)); each row sorted by (distance, asymmetric distance, key).
  """
  db_packed = np.asarray(db_packed, np.uint32)
  n = db_packed.shape[0]
  q_codes, k, keys = _check(query_codes, n, k, keys)
  qp = packing.pack_codes_host(q_codes)
  return _rerank(
      q_codes, qp, n, k, keys,
      lambda rows, m: topk.hamming_topk(qp[rows], db_packed, m,
                                        backend=backend),
      lambda positions: db_packed[positions],
      lambda rows: topk.hamming_histogram(qp[rows], db_packed,
                                          backend=backend))


def rerank_index(query_codes, index, k: int, *, keys: np.ndarray,
                 backend: str = "auto"
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`rerank_topk` over a `HammingIndex` (positions = insertion order).

  The index is scanned in place (the C++ kernel on the CPU): one top-m
  scan for most queries, a histogram and a top-`need` scan more where the
  boundary tie group is larger than m (see `_rerank`); only the candidates'
  codes are read for the asymmetric distance. Same answer as `rerank_topk`
  over `index.packed`.
  """
  if index.explicit_ids:
    raise ValueError("rerank_index needs an index without explicit ids (its "
                     "search must answer insertion positions)")
  n = len(index)
  q_codes, k, keys = _check(query_codes, n, k, keys)
  if q_codes.shape[1] != index.num_bits:
    raise ValueError(f"query codes have {q_codes.shape[1]} bits, the index "
                     f"{index.num_bits}")
  qp = packing.pack_codes_host(q_codes)
  return _rerank(q_codes, qp, n, k, keys,
                 lambda rows, m: index.search(qp[rows], m, backend=backend),
                 index.packed_at,
                 lambda rows: index.histogram(qp[rows], backend=backend))


def rerank_reference(query_codes, db_packed, k: int, *, keys: np.ndarray):
  """Brute force over the whole database (the test oracle): every item's
  (Hamming distance, asymmetric distance, key), sorted, first k."""
  q_codes = np.asarray(query_codes, np.float32)
  num_bits = q_codes.shape[1]
  db_bits = np.asarray(packing.unpack_codes(db_packed, num_bits), np.float64)
  q_bits = np.where(q_codes >= 0, 1.0, -1.0)
  out = []
  for q, qb in zip(q_codes, q_bits):
    ham = np.sum(db_bits != qb, axis=1).astype(np.int64)
    asym = -(db_bits @ np.asarray(q, np.float64))
    rows = sorted(range(len(ham)), key=lambda i: (ham[i], asym[i], keys[i]))
    rows = rows[:k]
    out.append([(int(ham[i]), int(i), int(np.sum(ham == ham[i])))
                for i in rows])
  return out
