"""medhash_jax.metrics against plain per-query loops, scikit-learn, handmade
cases and brute-force enumeration of orders (tie-aware values, chance)."""

import itertools
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from medhash_jax import metrics
from medhash_jax import retrieval

# ----------------------------------------------------------------------------
# Plain references, written from the definitions in the module docstring.


def distances(q_codes, db_codes):
  return ((q_codes[:, None, :] >= 0) != (db_codes[None, :, :] >= 0)).sum(-1)


def relevance(q_labels, db_labels):
  return (np.asarray(q_labels) @ np.asarray(db_labels).T).astype(np.int64)


def ranking(dist_row):
  """Database indices sorted by (distance, index)."""
  return sorted(range(len(dist_row)), key=lambda i: (dist_row[i], i))


def ap_at_k(rel_in_order, k):
  hits, total = 0, 0.0
  for j in range(k):
    if rel_in_order[j] > 0:
      hits += 1
      total += hits / (j + 1)
  return total / hits if hits else 0.0


def dcg_at_k(rel_in_order, k):
  return sum((2.0**rel_in_order[j] - 1) / math.log2(j + 2) for j in range(k))


def ndcg_at_k(rel_in_order, k):
  idcg = dcg_at_k(sorted(rel_in_order, reverse=True), k)
  return dcg_at_k(rel_in_order, k) / idcg if idcg > 0 else 0.0


def precision_at_k(rel_in_order, k):
  return sum(1 for j in range(k) if rel_in_order[j] > 0) / k


def recall_at_k(rel_in_order, k):
  total = sum(1 for r in rel_in_order if r > 0)
  hits = sum(1 for j in range(k) if rel_in_order[j] > 0)
  return hits / total if total else 0.0


METRICS = {"map": ap_at_k, "ndcg": ndcg_at_k, "precision": precision_at_k}


def within_group_orders(dist_row):
  """Every ranking that differs only by the order inside equal distances."""
  groups = [[i for i in range(len(dist_row)) if dist_row[i] == d]
            for d in sorted(set(dist_row))]
  for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
    yield [i for p in perms for i in p]


def random_case(rng, q, n, bits, num_labels, p_label=0.3):
  qc = rng.standard_normal((q, bits)).astype(np.float32)
  dc = rng.standard_normal((n, bits)).astype(np.float32)
  ql = (rng.random((q, num_labels)) < p_label).astype(np.int32)
  dl = (rng.random((n, num_labels)) < p_label).astype(np.int32)
  return qc, dc, ql, dl


def per_query(qc, dc, ql, dl, ks, **kw):
  stats = metrics.compute_stats(qc, dc, ql, dl, ks, **kw)
  return metrics.report_from_stats(stats, reduce=False), stats


# ----------------------------------------------------------------------------


class TestAgainstLoops:

  @pytest.fixture(scope="class")
  @classmethod
  def case(cls):
    rng = np.random.default_rng(0)
    qc, dc, ql, dl = random_case(rng, q=13, n=57, bits=8, num_labels=5)
    ql[3] = 0  # a query with no relevant item at all
    dl[-1] = 1  # the last database item shares every label: rel up to 5
    return qc, dc, ql, dl

  def test_index_ordered_metrics(self, case):
    qc, dc, ql, dl = case
    ks = (1, 5, 20, None)
    got, _ = per_query(qc, dc, ql, dl, ks)
    dist, rel = distances(qc, dc), relevance(ql, dl)
    for qi in range(qc.shape[0]):
      rel_in_order = [rel[qi, i] for i in ranking(dist[qi])]
      for k in ks:
        name, kk = ("all", dc.shape[0]) if k is None else (str(k), k)
        for metric, fn in [("map", ap_at_k), ("ndcg", ndcg_at_k),
                           ("precision", precision_at_k),
                           ("recall", recall_at_k)]:
          np.testing.assert_allclose(got[f"{metric}@{name}"][qi],
                                     fn(rel_in_order, kk), rtol=1e-5,
                                     atol=1e-7, err_msg=f"{metric}@{k} q{qi}")

  def test_pr_curve_and_radius2(self, case):
    qc, dc, ql, dl = case
    got, stats = per_query(qc, dc, ql, dl, (None,))
    curve = metrics.pr_curve_from_stats(stats, reduce=False)
    dist, rel = distances(qc, dc), relevance(ql, dl) > 0
    for qi in range(qc.shape[0]):
      for r in range(9):
        ret = dist[qi] <= r
        hits = (ret & rel[qi]).sum()
        assert curve["precision"][qi, r] == (
            hits / ret.sum() if ret.any() else 0)
        assert curve["recall"][qi, r] == (
            hits / rel[qi].sum() if rel[qi].any() else 0)
        assert curve["empty"][qi, r] == (not ret.any())
      assert got["precision@radius2"][qi] == curve["precision"][qi, 2]
      assert got["empty_at_radius2"][qi] == curve["empty"][qi, 2]
    mean = metrics.pr_curve(qc, dc, ql, dl)
    np.testing.assert_allclose(mean["precision"], curve["precision"].mean(0))
    np.testing.assert_array_equal(mean["radius"], np.arange(9))

  def test_chunking_and_packed_input_do_not_change_results(self, case):
    qc, dc, ql, dl = case
    base = metrics.retrieval_report(qc, dc, ql, dl, ks=(3, None))
    chunked = metrics.retrieval_report(qc, dc, ql, dl, ks=(3, None),
                                       query_chunk=4)  # 4+4+4+1 (padded)
    packed = metrics.retrieval_report(
        retrieval.pack_codes(qc), np.asarray(retrieval.pack_codes(dc)), ql, dl,
        ks=(3, None), num_bits=8, query_chunk=4)
    oracle = metrics.retrieval_report(qc, dc, ql, dl, ks=(3, None),
                                      backend="reference")
    assert base.keys() == chunked.keys() == packed.keys() == oracle.keys()
    for key in base:
      assert base[key] == pytest.approx(chunked[key], abs=1e-12), key
      assert base[key] == pytest.approx(packed[key], abs=1e-12), key
      assert base[key] == pytest.approx(oracle[key], abs=1e-12), key

  def test_group_statistics(self, case):
    qc, dc, ql, dl = case
    _, stats = per_query(qc, dc, ql, dl, (None,))
    dist, rel = distances(qc, dc), relevance(ql, dl)
    for qi in range(qc.shape[0]):
      for r in range(9):
        within = dist[qi] <= r
        assert stats.le_count[qi, r] == within.sum()
        assert stats.le_relevant[qi, r] == (within & (rel[qi] > 0)).sum()
        assert stats.le_gain[qi, r] == (2.0**rel[qi][within] - 1).sum()
      for v in range(1, stats.rel_at_least.shape[1] + 1):
        assert stats.rel_at_least[qi, v - 1] == (rel[qi] >= v).sum()
    assert stats.rel_at_least.shape[1] >= rel.max() >= 3  # gains up to 7

  def test_one_compilation_for_many_chunks(self, case):
    qc, dc, ql, dl = case
    before = metrics._chunk_stats._cache_size()
    metrics.retrieval_report(qc, dc, ql, dl, ks=(2, None), query_chunk=5)
    assert metrics._chunk_stats._cache_size() == before + 1


class TestAgainstSklearn:

  @pytest.fixture(scope="class")
  @classmethod
  def case(cls):
    rng = np.random.default_rng(1)
    qc, dc, ql, dl = random_case(rng, q=9, n=40, bits=6, num_labels=4,
                                 p_label=0.4)
    ql[:, 0] = 1  # every query has a relevant item (sklearn AP needs one)
    dl[5, 0] = 1
    return qc, dc, ql, dl

  def test_ndcg_score(self, case):
    qc, dc, ql, dl = case
    dist, rel = distances(qc, dc), relevance(ql, dl)
    n = dc.shape[0]
    unique_score = -(dist * n + np.arange(n))  # our (distance, index) order
    got, _ = per_query(qc, dc, ql, dl, (5, None))
    for k, name in [(5, "5"), (None, "all")]:
      # sklearn's gain is y_true itself: feed 2^rel - 1.
      expect = skm.ndcg_score(2.0**rel - 1, unique_score, k=k, ignore_ties=True)
      assert np.mean(got[f"ndcg@{name}"]) == pytest.approx(expect, rel=1e-6)
      # With the raw distances as scores sklearn averages over ties: that is
      # McSherry & Najork's tie-aware DCG.
      expect = skm.ndcg_score(2.0**rel - 1, -dist, k=k, ignore_ties=False)
      assert np.mean(got[f"ndcg@{name}/tie_aware"]) == pytest.approx(
          expect, rel=1e-6)

  def test_average_precision_score(self, case):
    qc, dc, ql, dl = case
    dist, rel = distances(qc, dc), relevance(ql, dl) > 0
    n = dc.shape[0]
    got, _ = per_query(qc, dc, ql, dl, (None,))
    for qi in range(qc.shape[0]):
      unique_score = -(dist[qi] * n + np.arange(n))
      expect = skm.average_precision_score(rel[qi], unique_score)
      assert got["map@all"][qi] == pytest.approx(expect, rel=1e-6)


class TestHandmade:

  @staticmethod
  def ladder(flags_per_query, bits=8):
    """Database item i at Hamming distance i from every query (all -1)."""
    n = len(flags_per_query[0])
    db = -np.ones((n, bits), np.float32)
    for i in range(n):
      db[i, :i] = 1.0
    q = -np.ones((len(flags_per_query), bits), np.float32)
    # Query label 0; item i carries label 0 iff query-relative flag is set:
    # give each query its own label column.
    nq = len(flags_per_query)
    ql = np.eye(nq, dtype=np.int32)
    dl = np.array(flags_per_query, np.int32).T
    return q, db, ql, dl

  def test_ap_at_3(self):
    q, db, ql, dl = self.ladder([[1, 0, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1],
                                 [0, 0, 0, 1]])
    got, _ = per_query(q, db, ql, dl, (3, None))
    np.testing.assert_allclose(got["map@3"], [1.0, 5 / 6, 1 / 3, 0.0])
    # The zero-hit query counts as 0 in the mean.
    assert np.mean(got["map@3"]) == pytest.approx((1 + 5 / 6 + 1 / 3) / 4)
    # No ties here, so tie-aware equals index-ordered.
    np.testing.assert_allclose(got["map@3/tie_aware"], got["map@3"])
    # The last database item counts in map@all (CalcTopMap drops it).
    assert got["map@all"][3] == pytest.approx(1 / 4)
    np.testing.assert_allclose(got["precision@3"], [1 / 3, 2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(got["recall@3"], [1, 1, 1 / 2, 0])

  def test_all_tied(self):
    # One tie group: index order is [+ - -], a random order averages.
    q = np.ones((1, 4), np.float32)
    db = np.ones((3, 4), np.float32)
    got, _ = per_query(q, db, [[1]], [[1], [0], [0]], (1, None))
    assert got["map@1"][0] == 1.0
    assert got["map@1/tie_aware"][0] == pytest.approx(1 / 3)
    # E[1 / position of the only relevant item] = (1 + 1/2 + 1/3) / 3.
    assert got["map@all/tie_aware"][0] == pytest.approx(11 / 18)
    assert got["map@all/chance"][0] == pytest.approx(11 / 18)
    assert got["precision@1/chance"][0] == pytest.approx(1 / 3)

  def test_ndcg_handmade(self):
    q, db, ql, dl = self.ladder([[0, 1, 0]])
    got, _ = per_query(q, db, ql, dl, (2,))
    assert got["ndcg@2"][0] == pytest.approx(1 / math.log2(3))


class TestEnumeration:

  @pytest.mark.parametrize("seed", range(4))
  def test_tie_aware_against_all_within_group_orders(self, seed):
    rng = np.random.default_rng(10 + seed)
    # 3 bits over 6 items: groups of equal distance, k cuts through them.
    qc, dc, ql, dl = random_case(rng, q=3, n=6, bits=3, num_labels=3,
                                 p_label=0.45)
    n = dc.shape[0]
    got, _ = per_query(qc, dc, ql, dl, tuple(range(1, n + 1)))
    dist, rel = distances(qc, dc), relevance(ql, dl)
    for qi in range(qc.shape[0]):
      orders = list(within_group_orders(list(dist[qi])))
      for k in range(1, n + 1):
        for metric, fn in METRICS.items():
          expect = np.mean([fn([rel[qi, i] for i in o], k) for o in orders])
          np.testing.assert_allclose(
              got[f"{metric}@{k}/tie_aware"][qi], expect, rtol=1e-9, atol=1e-12,
              err_msg=f"{metric}@{k} query {qi} dist {dist[qi]} rel {rel[qi]}")

  def test_big_tie_group_cut_by_k(self):
    # Group sizes 2, 5, 1 (distances 0, 1, 2); k = 4 cuts the 5-group.
    q = -np.ones((1, 4), np.float32)
    db = -np.ones((8, 4), np.float32)
    db[2:7, 0] = 1
    db[7, :2] = 1
    rel = np.array([[1, 0, 1, 1, 0, 0, 1, 1]]).T
    got, _ = per_query(q, db, [[1]], rel, (1, 3, 4, 6, 7))
    dist = distances(q, db)[0]
    orders = list(within_group_orders(list(dist)))
    for k in (1, 3, 4, 6, 7):
      for metric, fn in METRICS.items():
        expect = np.mean([fn([rel[i, 0] for i in o], k) for o in orders])
        assert got[f"{metric}@{k}/tie_aware"][0] == pytest.approx(expect,
                                                                  rel=1e-12)

  def test_chance_against_all_permutations(self):
    rng = np.random.default_rng(3)
    qc, dc, ql, dl = random_case(rng, q=4, n=6, bits=16, num_labels=3,
                                 p_label=0.4)
    ql[0] = 0  # R = 0
    n = dc.shape[0]
    got, _ = per_query(qc, dc, ql, dl, tuple(range(1, n + 1)))
    rel = relevance(ql, dl)
    perms = list(itertools.permutations(range(n)))
    for qi in range(qc.shape[0]):
      for k in range(1, n + 1):
        for metric in ("map", "precision"):
          fn = METRICS[metric]
          expect = np.mean([fn([rel[qi, i] for i in p], k) for p in perms])
          assert got[f"{metric}@{k}/chance"][qi] == pytest.approx(
              expect, rel=1e-12, abs=1e-15), (metric, k, qi)


def test_hypergeometric_sum_truncation_is_exact():
  """The skipped far tail changes nothing at float64 precision."""
  from scipy import stats as sps  # pylint: disable=g-import-not-at-top
  n, r, m, c, rho, before = 5000, 2000, 3000, 120, 40, 13.7
  tables = metrics._tables(n + c)
  harmonic = tables[0]
  expect = 0.0
  for x in range(max(0, m - (n - r)), min(m, r) + 1):
    a = harmonic[c + m] - harmonic[c]
    s_b = x / m * ((rho + 1) * a + (x - 1) / (m - 1) * (m - (c + 1) * a))
    expect += sps.hypergeom.pmf(x, n, r, m) * (before + s_b) / (rho + x)
  got = metrics._hypergeom_ap(np.array([n]), np.array([r]), np.array([m]),
                              np.array([c]), np.array([rho]),
                              np.array([before]), tables)
  # Log-space probabilities of C(5000, 3000)-sized terms: ~1e-11 rounding.
  assert got[0] == pytest.approx(expect, rel=1e-10)


class TestBadInput:

  @pytest.fixture(scope="class")
  @classmethod
  def case(cls):
    return random_case(np.random.default_rng(5), q=3, n=10, bits=16,
                       num_labels=4)

  @pytest.mark.parametrize("change,match", [
      (lambda c: (c[0], c[1], c[2][:, 0], c[3]), r"query_labels.*2-D.*\(3,\)"),
      (lambda c: (c[0], c[1], c[2], c[3][:7]), r"db_labels.*7 rows.*db_codes"),
      (lambda c: (c[0], c[1], c[2], c[3][:, :3]), r"label columns"),
      (lambda c: (c[0], c[1], c[2] * 2, c[3]), r"query_labels.*\{0, 1\}"),
      (lambda c: (c[0], c[1][:, :12], c[2], c[3]), r"different lengths"),
      (lambda c: (c[0], c[1][:0], c[2], c[3][:0]), r"database is empty"),
      (lambda c: (c[0][:0], c[1], c[2][:0], c[3]), r"no queries"),
      (lambda c: (c[0][0], c[1], c[2], c[3]), r"query_codes.*2-D.*\(16,\)"),
  ])
  def test_shapes(self, case, change, match):
    with pytest.raises(ValueError, match=match):
      metrics.retrieval_report(*change(case), ks=(1,))

  def test_nan_codes(self, case):
    qc, dc, ql, dl = case
    dc = dc.copy()
    dc[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"db_codes.*NaN.*row 4"):
      metrics.retrieval_report(qc, dc, ql, dl, ks=(1,))

  def test_packed_and_real_mismatch(self, case):
    qc, dc, ql, dl = case
    with pytest.raises(ValueError, match="different lengths"):
      metrics.retrieval_report(retrieval.pack_codes(np.tile(qc, 3)), dc, ql,
                               dl, ks=(1,))
    with pytest.raises(ValueError, match="num_bits=12 but db_codes"):
      metrics.retrieval_report(retrieval.pack_codes(qc[:, :12]), dc, ql, dl,
                               ks=(1,), num_bits=12)

  @pytest.mark.parametrize("ks", [(11,), (0,), (2.5,), ()])
  def test_bad_ks(self, case, ks):
    with pytest.raises(ValueError, match="ks"):
      metrics.retrieval_report(*case, ks=ks)


def test_index_ordered_metrics_beyond_one_summation_block():
  """mAP@k and nDCG@k at k >= 3,000 on a 3,500-item database against the
  plain loops. `metrics` sums prefix terms in blocks of 1,024: a dropped,
  doubled or shifted block changes these values (every other test here has
  N <= 57, a single block). 4-bit codes: 17 distances, so about 200 items
  share each distance (heavy ties, ordered by index)."""
  rng = np.random.default_rng(7)
  qc, dc, ql, dl = random_case(rng, q=5, n=3500, bits=4, num_labels=4,
                               p_label=0.25)
  ql[0] = 0                      # a query with nothing relevant
  ql[1] = 1                      # one that shares a label with most items
  ks = (3000, 3333, None)
  got, _ = per_query(qc, dc, ql, dl, ks)
  dist, rel = distances(qc, dc), relevance(ql, dl)
  assert max(np.bincount(dist[2])) > 150   # the ties are really heavy
  for qi in range(qc.shape[0]):
    rel_in_order = [int(rel[qi, i]) for i in ranking(dist[qi])]
    for k in ks:
      name, kk = ("all", dc.shape[0]) if k is None else (str(k), k)
      for metric, fn in [("map", ap_at_k), ("ndcg", ndcg_at_k)]:
        np.testing.assert_allclose(got[f"{metric}@{name}"][qi],
                                   fn(rel_in_order, kk), rtol=2e-5,
                                   atol=1e-7, err_msg=f"{metric}@{k} q{qi}")
