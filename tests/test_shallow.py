"""Shallow hashing (LSH, PCAH, ITQ, SSH) against numpy / scikit-learn."""

import numpy as np
import pytest
from sklearn.decomposition import PCA

from medhash_jax import shallow
from medhash_jax.shallow import itq as itq_lib
from medhash_jax.shallow import ssh as ssh_lib


def _features(n=400, d=24, seed=0):
  """Anisotropic features with a clear spectrum (distinct eigenvalues)."""
  rng = np.random.default_rng(seed)
  scales = np.linspace(3.0, 0.3, d)
  basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
  return (rng.normal(size=(n, d)) * scales @ basis.T + rng.normal(size=d)).astype(np.float32)


def _assert_columns_equal_up_to_sign(a, b, tol):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  cos = np.sum(a * b, 0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))
  assert np.all(np.abs(cos) > 1 - tol), cos


@pytest.mark.parametrize("name", shallow.names())
def test_every_method_fits_and_encodes(name):
  x = _features(n=120, d=16)
  labels = np.eye(3, dtype=np.float32)[np.arange(120) % 3]
  m = shallow.get(name)
  p = m.fit(x, num_bits=8, labels=labels, seed=3)
  codes = shallow.encode(p, x[:10])
  assert codes.shape == (10, 8) and codes.dtype == np.float32
  p2 = m.fit(x, num_bits=8, labels=labels, seed=3)
  np.testing.assert_array_equal(shallow.encode(p2, x[:10]), codes)
  with pytest.raises(ValueError, match=r"\(N, 16\)"):
    shallow.encode(p, x[:, :5])


def test_registry_and_checks():
  with pytest.raises(ValueError, match="unknown shallow"):
    shallow.get("sh")
  x = _features(n=50, d=6)
  with pytest.raises(ValueError, match="feature dimension"):
    shallow.itq.fit(x, num_bits=8)
  with pytest.raises(ValueError, match="labels"):
    shallow.ssh.fit(x, num_bits=4)
  bad = x.copy()
  bad[3, 2] = np.nan
  with pytest.raises(ValueError, match="row 3"):
    shallow.lsh.fit(bad, num_bits=4)


def test_pcah_matches_sklearn():
  x = _features()
  p = shallow.pcah.fit(x, num_bits=10)
  sk = PCA(n_components=10, svd_solver="full").fit(x.astype(np.float64))
  np.testing.assert_allclose(p["mean"], sk.mean_, atol=1e-5)
  _assert_columns_equal_up_to_sign(p["projection"], sk.components_.T, 1e-5)
  want = sk.transform(x.astype(np.float64))
  got = np.asarray(shallow.encode(p, x))
  sign = np.sign(np.sum(got * want, 0))
  np.testing.assert_allclose(got * sign, want, atol=2e-3)


def _np_itq(v, r, n_iter):
  """Plain numpy float64 transcription of Gong & Lazebnik's ITQ.m."""
  losses = []
  for _ in range(n_iter):
    z = v @ r
    b = np.where(z >= 0, 1.0, -1.0)
    losses.append(np.sum((b - z) ** 2))
    ub, _, uat = np.linalg.svd(b.T @ v)
    r = uat.T @ ub.T
  z = v @ r
  losses.append(np.sum((np.where(z >= 0, 1.0, -1.0) - z) ** 2))
  return r, np.array(losses)


def test_itq_loss_decreases_and_matches_numpy():
  x = _features(n=500, d=32)
  p = shallow.itq.fit(x, num_bits=12, seed=1)
  losses = np.asarray(p["quantization_loss"])
  assert losses.shape == (51,)
  assert np.all(np.diff(losses) <= 1e-5 * losses[:-1]), np.diff(losses)
  assert losses[-1] < 0.98 * losses[0]
  r_final = np.asarray(p["rotation"])
  np.testing.assert_allclose(r_final @ r_final.T, np.eye(12), atol=1e-5)

  pc = shallow.pcah.fit(x, num_bits=12)
  v = (x - np.asarray(pc["mean"])) @ np.asarray(pc["projection"])
  import jax
  r0 = np.asarray(itq_lib.random_rotation(jax.random.key(1), 12), np.float64)
  r_np, losses_np = _np_itq(v.astype(np.float64), r0, 50)
  np.testing.assert_allclose(losses, losses_np, rtol=1e-4)
  np.testing.assert_allclose(r_final, r_np, atol=2e-3)
  np.testing.assert_allclose(p["projection"], np.asarray(pc["projection"]) @ r_np,
                             atol=2e-3)


def test_lsh_collision_probability_follows_angle():
  # For zero-centred x, y at angle theta a random hyperplane separates them
  # with probability theta / pi. 4096 bits: std of the agreement rate <= 0.008.
  rng = np.random.default_rng(0)
  d, k = 32, 4096
  base = rng.normal(size=(200, d)).astype(np.float32)
  p = shallow.lsh.fit(np.concatenate([base, -base]), num_bits=k, seed=7)
  np.testing.assert_allclose(p["mean"], 0, atol=1e-6)
  e1, e2 = np.linalg.qr(rng.normal(size=(d, 2)))[0].T
  for theta in (0.0, 0.1 * np.pi, 0.25 * np.pi, 0.5 * np.pi, 0.75 * np.pi, np.pi):
    pair = np.stack([e1, np.cos(theta) * e1 + np.sin(theta) * e2]).astype(np.float32) * 3
    c = np.asarray(shallow.encode(p, pair)) >= 0
    agree = np.mean(c[0] == c[1])
    assert abs(agree - (1 - theta / np.pi)) < 0.035, (theta, agree)


def test_ssh_matches_numpy_transcription():
  x = _features(n=300, d=20, seed=2)
  rng = np.random.default_rng(2)
  labels = (rng.random((300, 4)) < 0.3).astype(np.float32)     # multi-label
  labels[:5] = 0                                               # some unlabelled
  p = shallow.ssh.fit(x, num_bits=6, labels=labels, seed=0, eta=0.5,
                      num_labeled=120)
  idx = np.asarray(p["labeled"])
  assert idx.shape == (120,) and len(np.unique(idx)) == 120

  xd = x.astype(np.float64)
  xc = (xd - xd.mean(0)).T                                     # (D, N)
  yl = labels[idx]
  s = np.array([[1.0 if np.any((yl[i] > 0) & (yl[j] > 0)) else -1.0
                 for j in range(120)] for i in range(120)])
  xl = xc[:, idx]
  m = xl @ s @ xl.T + 0.5 * xc @ xc.T
  vals, vecs = np.linalg.eigh(m)
  want = vecs[:, np.argsort(vals)[::-1][:6]]
  _assert_columns_equal_up_to_sign(p["projection"], want, 1e-4)
  got_m = ssh_lib.adjusted_covariance(x - x.mean(0), idx, labels, 0.5)
  np.testing.assert_allclose(got_m, m, rtol=1e-3, atol=1e-3 * np.abs(m).max())
