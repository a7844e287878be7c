"""Every loss against a plain numpy transcription of its formula (loops over
pairs and triplets, written independently of the jnp code), plus the
registry, the calling convention and the global-batch (sharded) behaviour."""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medhash_jax import losses
from medhash_jax.losses import centers as centers_lib

B, K, C, D = 7, 16, 4, 10
RTOL = 2e-5


def _batch(seed=0, multi_label=True):
  rng = np.random.RandomState(seed)
  u = np.tanh(1.5 * rng.randn(B, K)).astype(np.float32)
  y = np.eye(C, dtype=np.float32)[rng.randint(0, C, B)]
  if multi_label:
    y[0, (np.argmax(y[0]) + 1) % C] = 1  # some rows with two labels
    y[3] = 1.0
  f = rng.randn(B, D).astype(np.float32)
  z = rng.randn(B, C).astype(np.float32)
  return u, y, f, z


# MTH's projection rho (a fixed Dense K -> C), applied to the codes by the
# tests the way MTHNet's "code_logits" output does.
_RHO_W = np.random.RandomState(99).randn(K, C).astype(np.float32) / 4
_RHO_B = np.random.RandomState(98).randn(C).astype(np.float32)


def _rho(u):
  return u @ _RHO_W + _RHO_B


def _sim(y, i, j):
  return 1.0 if float(y[i] @ y[j]) > 0 else 0.0


def _pairs():
  return [(i, j) for i in range(B) for j in range(B) if i != j]


def _sgn(x):
  return np.where(x >= 0, 1.0, -1.0)


def _softplus(x):
  return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def _run(name, u, y, f=None, z=None, **hyper):
  loss, terms = losses.get_loss(name)(codes=jnp.asarray(u), labels=jnp.asarray(y),
                                      features=f, logits=z,
                                      code_logits=(_rho(jnp.asarray(u))
                                                   if np.shape(u)[1] == K
                                                   and np.shape(y)[1:] == (C,)
                                                   else None),
                                      **hyper)
  assert loss.shape == () and all(t.shape == () for t in terms.values())
  return float(loss), {k: float(v) for k, v in terms.items()}


# -- numpy references ---------------------------------------------------------


def np_dpsh(u, y, alpha=0.5, eta=0.1):
  lik = np.mean([_softplus(alpha * u[i] @ u[j]) - _sim(y, i, j) * alpha * u[i] @ u[j]
                 for i, j in _pairs()])
  return lik + eta * np.mean((u - _sgn(u)) ** 2)


def np_dhn(u, y, alpha=0.5, lam=0.1):
  lik = np.mean([_softplus(alpha * u[i] @ u[j]) - _sim(y, i, j) * alpha * u[i] @ u[j]
                 for i, j in _pairs()])
  return lik + lam * np.mean(np.log(np.cosh(np.abs(u) - 1)))


def np_hashnet(u, y, alpha=0.1):
  ps = _pairs()
  n1 = sum(_sim(y, i, j) for i, j in ps)
  n0 = len(ps) - n1
  tot = 0.0
  for i, j in ps:
    s = _sim(y, i, j)
    w = len(ps) / n1 if s else len(ps) / n0
    th = alpha * u[i] @ u[j]
    tot += w * (math.log(1 + math.exp(th)) - s * th)
  return tot / len(ps)


def np_dch(u, y, gamma=20.0, lam=0.1):
  ps = _pairs()
  n1 = sum(_sim(y, i, j) for i, j in ps)
  n0 = len(ps) - n1
  tot = 0.0
  for i, j in ps:
    s = _sim(y, i, j)
    w = len(ps) / n1 if s else len(ps) / n0
    cos = u[i] @ u[j] / (np.linalg.norm(u[i]) * np.linalg.norm(u[j]))
    d = K / 2 * (1 - cos)
    tot += w * (s * math.log(d / gamma) + math.log(1 + gamma / d))  # paper form
  q = np.mean([math.log(1 + K / 2 * (1 - np.abs(ui).sum() /
                                      (np.linalg.norm(ui) * math.sqrt(K))) / gamma)
               for ui in u])
  return tot / len(ps) + lam * q


def np_dsh(u, y, m=None, alpha=0.01, balanced=False):
  m = 2 * K if m is None else m
  ps = _pairs()
  n1 = sum(_sim(y, i, j) for i, j in ps)
  tot = 0.0
  for i, j in ps:
    s = _sim(y, i, j)
    w = (len(ps) / n1 if s else len(ps) / (len(ps) - n1)) if balanced else 1.0
    d = float(np.sum((u[i] - u[j]) ** 2))
    tot += w * (0.5 * s * d + 0.5 * (1 - s) * max(m - d, 0.0))
  return tot / len(ps) + alpha * np.mean(np.abs(np.abs(u) - 1))


def np_dfh_centers(y, b, nu=1.0, passes=2):
  """DCC written out: class after class, C_i = sgn(sum of class i's codes
  - sum over other classes j of (co-occurrences(i, j) + nu) C_j)."""
  n_cls = y.shape[1]
  cen = np.zeros((n_cls, b.shape[1]))
  for _ in range(passes):
    for i in range(n_cls):
      acc = sum(b[n] for n in range(len(b)) if y[n, i] > 0) + np.zeros(b.shape[1])
      for j in range(n_cls):
        if j != i:
          acc = acc - (float(np.sum(y[:, i] * y[:, j])) + nu) * cen[j]
      cen[i] = _sgn(acc)
  return cen


def np_dfh(u, y, m=3.0, alpha=0.5, eta=0.5, mu=0.1, nu=1.0):
  tot = 0.0
  for i, j in _pairs():
    s = _sim(y, i, j)
    th = alpha * u[i] @ u[j]
    tot += s * math.log(1 + math.exp(m - th)) + (1 - s) * math.log(1 + math.exp(m + th))
  b = _sgn(u)
  if mu:
    cen = np_dfh_centers(y, b, nu)
    b = np.stack([_sgn(mu * sum(y[n, c] * cen[c] for c in range(y.shape[1]))
                       + u[n]) for n in range(len(u))])
  return tot / len(_pairs()) + eta * np.mean((b - u) ** 2)


def np_lcdsh(u, y, alpha=0.5, lam=3.0):
  b = _sgn(u)
  l1 = l2 = 0.0
  for i, j in _pairs():
    s = 2 * _sim(y, i, j) - 1
    th = alpha * u[i] @ u[j]
    l1 += math.log(1 + math.exp(-s * th))
    l2 += (_sigmoid(th) - _sigmoid(alpha * b[i] @ b[j])) ** 2
  return (l1 + lam * l2) / len(_pairs())


def np_isdh(u, y, alpha=0.5, gamma=10.0, lam=0.1):
  tot = 0.0
  for i, j in _pairs():
    s = y[i] @ y[j] / (np.linalg.norm(y[i]) * np.linalg.norm(y[j]))
    th = alpha * u[i] @ u[j]
    if s > 0.99 or s < 0.01:
      tot += gamma * (math.log(1 + math.exp(th)) - s * th)
    else:
      tot += (s - _sigmoid(th)) ** 2
  return tot / len(_pairs()) + lam * np.mean(np.abs(np.abs(u) - 1))


def _triplets(y):
  return [(a, p, n) for a in range(B) for p in range(B) for n in range(B)
          if a != p and _sim(y, a, p) and not _sim(y, a, n)]


def np_dtsh(u, y, m=5.0, lam=1.0, trips=None):
  trips = _triplets(y) if trips is None else trips
  t = np.mean([math.log(1 + math.exp(-(0.5 * u[a] @ u[p] - 0.5 * u[a] @ u[n] - m)))
               for a, p, n in trips])
  return t + lam * np.mean((_sgn(u) - u) ** 2)


def np_ce(z, y):
  out = 0.0
  for i in range(len(z)):
    t = y[i] / y[i].sum()
    logp = z[i] - math.log(np.sum(np.exp(z[i])))
    out -= float(t @ logp)
  return out / len(z)


def np_bce(z, y, mask=None):
  p = 1 / (1 + np.exp(-z.astype(np.float64)))
  per = -(y * np.log(p) + (1 - y) * np.log(1 - p))
  mask = np.ones_like(per) if mask is None else mask
  return float((per * mask).sum() / mask.sum())


def np_mth(u, y, f, z, eta=None, delta=0.5, alpha=1.0, beta=1.0,
           semantic="projection"):
  eta = K / 8 if eta is None else eta
  fn = f / np.linalg.norm(f, axis=1, keepdims=True)
  trips = _triplets(y)
  hc = np.mean([max(0.0, np.sum((u[a] - u[p]) ** 2) / 4 -
                    np.sum((u[a] - u[n]) ** 2) / 4 + eta) for a, p, n in trips])
  hf = np.mean([max(0.0, np.sum((fn[a] - fn[p]) ** 2) -
                    np.sum((fn[a] - fn[n]) ** 2) + delta) for a, p, n in trips])
  if semantic == "projection":   # the paper's L_s: CE of rho(u)
    sem = np_ce(u @ _RHO_W.astype(np.float64) + _RHO_B, y)
  else:
    sem = np.mean([(u[i] @ u[j] / K - (2 * _sim(y, i, j) - 1)) ** 2
                   for i, j in _pairs()])
  return sem + alpha * (hc + hf) + beta * np_ce(z, y)


def _np_targets(y, kk):
  # Centres written out independently: Sylvester rows, then their negations.
  h = np.array([[1.0]])
  while h.shape[0] < kk:
    h = np.vstack([np.hstack([h, h]), np.hstack([h, -h])])
  cents = np.vstack([h, -h])[:y.shape[1]]
  return np.sign(y @ cents)


def np_csq(u, y, lam=1e-4):
  t = _np_targets(y, K)
  p = (u + 1) / 2
  tt = (t + 1) / 2
  bce = -(tt * np.log(p) + (1 - tt) * np.log(1 - p))
  return bce.mean() + lam * np.mean((np.abs(u) - 1) ** 2)


def np_dpn(u, y, m=1.0):
  t = _np_targets(y, K)
  vals = [max(m - u[i, k] * t[i, k], 0.0) for i in range(B) for k in range(K)
          if t[i, k] != 0]
  return np.mean(vals)


def np_sa_hash(u, y, z, m=None, lam1=0.01, lam2=1.0):
  con = np_dsh(u, y, m, alpha=0.0)
  return con + lam1 * np.mean(np.abs(np.abs(u) - 1)) + lam2 * np_ce(z, y)


def np_dh(u, y, lam1=0.5, lam2=1.0):
  b, k = u.shape
  quant = sum((_sgn(u[i, j]) - u[i, j]) ** 2 for i in range(b)
              for j in range(k)) / (2 * b * k)
  var = 0.0
  for j in range(k):
    mu = sum(u[i, j] for i in range(b)) / b
    var += sum((u[i, j] - mu) ** 2 for i in range(b)) / b
  var /= k
  ind = 0.0
  for p in range(k):
    for q in range(k):
      c = sum(u[i, p] * u[i, q] for i in range(b)) / b
      ind += (c - (1.0 if p == q else 0.0)) ** 2
  return quant - lam1 * var + lam2 * ind / k ** 2


def np_drh(u, y, m=None, lq=0.01, lb=0.01, lo=0.01):
  b, k = u.shape
  sim = np_dsh(u, y, m, alpha=0.0)
  quant = np.mean([math.log(math.cosh(abs(u[i, j]) - 1)) for i in range(b)
                   for j in range(k)])
  bal = np.mean([np.mean(u[:, j]) ** 2 for j in range(k)])
  ind = np_dh(u, y, lam1=0.0, lam2=1.0) - np_dh(u, y, lam1=0.0, lam2=0.0)
  return sim + lq * quant + lb * bal + lo * ind


def np_fang_ath(u, y, z, m=5.0, lam=1.0, mu=1.0, multi_label=False):
  ce = np_bce(z, y) if multi_label else np_ce(z, y)
  return np_dtsh(u, y, m, lam) + mu * ce


# -- tests --------------------------------------------------------------------


REFERENCES = {
    "dpsh": lambda u, y, f, z: np_dpsh(u, y),
    "dhn": lambda u, y, f, z: np_dhn(u, y),
    "hashnet": lambda u, y, f, z: np_hashnet(u, y),
    "dch": lambda u, y, f, z: np_dch(u, y),
    "dsh": lambda u, y, f, z: np_dsh(u, y),
    "dfh": lambda u, y, f, z: np_dfh(u, y),
    "lcdsh": lambda u, y, f, z: np_lcdsh(u, y),
    "isdh": lambda u, y, f, z: np_isdh(u, y),
    "dtsh": lambda u, y, f, z: np_dtsh(u, y),
    "dh": lambda u, y, f, z: np_dh(u, y),
    "drh": lambda u, y, f, z: np_drh(u, y),
    "fang_ath": lambda u, y, f, z: np_fang_ath(u, y, z),
    "mth": lambda u, y, f, z: np_mth(u, y, f, z),
    "csq": lambda u, y, f, z: np_csq(u, y),
    "dpn": lambda u, y, f, z: np_dpn(u, y),
    "sa_hash": lambda u, y, f, z: np_sa_hash(u, y, z),
    "ath": lambda u, y, f, z: B * (B - 1) * np_hashnet(u, y) + np_bce(z, y),
    "quantization": lambda u, y, f, z: np.mean((np.abs(u) - 1) ** 2),
    "softmax_ce": lambda u, y, f, z: np_ce(z, y),
    "sigmoid_bce": lambda u, y, f, z: np_bce(z, y),
}


def test_every_loss_has_a_reference():
  assert set(REFERENCES) == set(losses.LOSSES)


@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_loss_matches_numpy(name, multi_label):
  u, y, f, z = _batch(1, multi_label)
  got, terms = _run(name, u, y, f, z)
  want = REFERENCES[name](u.astype(np.float64), y, f.astype(np.float64),
                          z.astype(np.float64))
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)
  assert all(math.isfinite(v) for v in terms.values())


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_loss_gradients_are_finite(name):
  """Finite gradients, even with a zero code row and a dead (all-zero)
  feature row (norms and cosines must not divide by zero)."""
  u, y, f, z = _batch(2)
  u[1], f[2] = 0.0, 0.0
  fn = losses.get_loss(name)
  g = jax.jit(jax.grad(
      lambda u, f, z: fn(codes=u, labels=y, features=f, logits=z,
                         code_logits=_rho(u))[0],
      argnums=(0, 1, 2)))(jnp.asarray(u), jnp.asarray(f), jnp.asarray(z))
  for x in g:
    assert bool(jnp.all(jnp.isfinite(x))), name
  if "codes" in fn.inputs and name not in ("softmax_ce", "sigmoid_bce"):
    assert float(jnp.abs(g[0]).sum()) > 0


def test_hyperparameters_and_variants():
  u, y, f, z = _batch(3)
  np.testing.assert_allclose(_run("dpsh", u, y, alpha=0.3, quantization_weight=1.0)[0],
                             np_dpsh(u.astype(np.float64), y, 0.3, 1.0), rtol=RTOL)
  np.testing.assert_allclose(_run("dsh", u, y, margin=5.0)[0],
                             np_dsh(u.astype(np.float64), y, 5.0), rtol=RTOL)
  np.testing.assert_allclose(_run("dsh", u, y, balanced=True)[0],
                             np_dsh(u.astype(np.float64), y, balanced=True),
                             rtol=RTOL)
  np.testing.assert_allclose(_run("dtsh", u, y, margin=2.0)[0],
                             np_dtsh(u.astype(np.float64), y, 2.0), rtol=RTOL)
  np.testing.assert_allclose(
      _run("mth", u, y, f, z, eta=1.0, delta=0.2, hierarchical_weight=0.5,
           category_weight=2.0)[0],
      np_mth(u.astype(np.float64), y, f.astype(np.float64), z.astype(np.float64),
             1.0, 0.2, 0.5, 2.0), rtol=RTOL)
  # HashNet unbalanced == the plain (DPSH) likelihood with the same alpha.
  np.testing.assert_allclose(_run("hashnet", u, y, balanced=False)[0],
                             np_dpsh(u.astype(np.float64), y, 0.1, 0.0), rtol=RTOL)
  mask = (np.arange(B * C).reshape(B, C) % 3 != 0).astype(np.float32)
  got = losses.get_loss("sigmoid_bce")(logits=z, labels=y, label_mask=mask)[0]
  np.testing.assert_allclose(float(got), np_bce(z.astype(np.float64), y, mask),
                             rtol=RTOL)
  for kind, q in (("l1", np.abs(np.abs(u) - 1)),
                  ("logcosh", np.log(np.cosh(np.abs(u) - 1.0)))):
    np.testing.assert_allclose(_run("quantization", u, y, kind=kind)[0],
                               q.mean(), rtol=1e-5)


def test_dfh_class_centres():
  """DFH's C- and b-steps: the DCC centres and the loss against the numpy
  transcription with a centre weight large enough to move many bits, the
  mu = 0 limit (b = sign(u)), and what the centres mean on a clear case."""
  from medhash_jax.losses import pairwise  # pylint: disable=g-import-not-at-top
  for multi_label in (True, False):
    u, y, _, _ = _batch(5, multi_label)
    b = _sgn(u)
    np.testing.assert_array_equal(
        np.asarray(pairwise.dfh_class_centers(jnp.asarray(y), jnp.asarray(b))),
        np_dfh_centers(y, b))
    np.testing.assert_allclose(_run("dfh", u, y, center_weight=0.8)[0],
                               np_dfh(u.astype(np.float64), y, mu=0.8),
                               rtol=RTOL)
    flipped = _sgn(0.8 * y @ np_dfh_centers(y, b) + u) != b
    assert flipped.any()  # the centre term really changes b here
    np.testing.assert_allclose(_run("dfh", u, y, center_weight=0.0)[0],
                               np_dfh(u.astype(np.float64), y, mu=0.0),
                               rtol=RTOL)
  # Two classes whose codes agree within the class: each centre is its
  # class's code, and a code near the boundary is pulled to its centre.
  code_a = np.array([1, 1, -1, -1, 1, -1, 1, -1], np.float32)
  code_b = -code_a
  y2 = np.eye(2, dtype=np.float32)[[0, 0, 0, 1, 1, 1]]
  u2 = np.stack([code_a, code_a, code_a, code_b, code_b, code_b]) * 0.9
  u2[0, 0] = -0.05  # class 0 sample whose first bit sits on the wrong side
  cen = np.asarray(pairwise.dfh_class_centers(jnp.asarray(y2),
                                              jnp.asarray(_sgn(u2))))
  np.testing.assert_array_equal(cen, np.stack([code_a, code_b]))
  _, terms = _run("dfh", u2, y2, center_weight=0.1, quantization_weight=1.0)
  want_b = np.stack([code_a] * 3 + [code_b] * 3)
  np.testing.assert_allclose(terms["quantization"],
                             np.mean((want_b - u2) ** 2), rtol=1e-6)


def test_hashnet_weights_balance_similar_and_dissimilar_pairs():
  u, y, _, _ = _batch(4)
  s = np.array([[_sim(y, i, j) for j in range(B)] for i in range(B)])
  off = 1 - np.eye(B)
  th = 0.1 * u.astype(np.float64) @ u.T
  per = np.log1p(np.exp(th)) - s * th
  want = per[(s * off) > 0].mean() + per[((1 - s) * off) > 0].mean()
  np.testing.assert_allclose(_run("hashnet", u, y)[0], want, rtol=RTOL)


def test_explicit_triplets_and_padding_rows():
  u, y, f, z = _batch(5, multi_label=False)
  trips = _triplets(y)[:5]
  arr = np.array(trips + [(-1, 0, 0), (2, -1, 3)], np.int32)
  got = _run("dtsh", u, y, triplets=None)[0]
  np.testing.assert_allclose(got, np_dtsh(u.astype(np.float64), y), rtol=RTOL)
  got = losses.get_loss("dtsh")(codes=u, labels=y, triplets=arr)[0]
  np.testing.assert_allclose(float(got), np_dtsh(u.astype(np.float64), y,
                                                 trips=trips), rtol=RTOL)
  # A batch of one class has no triplets: the triplet term is 0, not NaN.
  one = np.zeros_like(y)
  one[:, 0] = 1
  loss, terms = _run("dtsh", u, one)
  assert terms["triplet"] == 0.0 and math.isfinite(loss)


def test_similarity_is_share_at_least_one_label():
  y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], np.float32)
  np.testing.assert_array_equal(losses.similarity(y), [[1, 1, 0, 0], [1, 1, 1, 0],
                                                       [0, 1, 1, 0], [0, 0, 0, 1]])
  ids = np.array([0, 1, 0])
  np.testing.assert_array_equal(losses.similarity(ids),
                                [[1, 0, 1], [0, 1, 0], [1, 0, 1]])


def test_hash_centers():
  c = losses.hash_centers(10, 16)
  assert c.shape == (10, 16) and set(np.unique(c)) == {-1.0, 1.0}
  d = (16 - c @ c.T) / 2
  off = d[~np.eye(10, dtype=bool)]
  assert off.min() >= 8  # Hadamard rows: K/2 apart (negated pairs K)
  r = losses.hash_centers(10, 48)  # not a power of two: seeded Bernoulli
  np.testing.assert_array_equal(r, losses.hash_centers(10, 48))
  assert set(np.unique(r)) == {-1.0, 1.0}
  big = losses.hash_centers(40, 16)  # C > 2K: Bernoulli as well
  assert big.shape == (40, 16)
  # Multi-label target: sign of the summed centres, ties -> 0.
  y = np.array([[1, 1, 0, 0]], np.float32)
  t = centers_lib.sample_targets(y, c[:4])
  np.testing.assert_array_equal(t, np.sign(c[0] + c[1])[None])
  assert (np.asarray(t) == 0).sum() == 8
  with pytest.raises(ValueError, match="centers must be"):
    losses.get_loss("csq")(codes=np.zeros((2, 16)), labels=np.eye(2),
                           centers=np.ones((3, 16)))


def test_registry_and_convention_errors():
  with pytest.raises(ValueError) as e:
    losses.get_loss("triplet_loss")
  for name in losses.LOSSES:
    assert name in str(e.value)
  u, y, f, z = _batch(6)
  with pytest.raises(ValueError, match="features"):
    losses.get_loss("mth")(codes=u, labels=y, logits=z, code_logits=_rho(u))
  with pytest.raises(ValueError, match="logits"):
    losses.get_loss("mth")(codes=u, labels=y, features=f, code_logits=_rho(u))
  with pytest.raises(ValueError, match="code_logits"):
    losses.get_loss("mth")(codes=u, labels=y, features=f, logits=z)
  with pytest.raises(ValueError, match="semantic"):
    losses.get_loss("mth")(codes=u, labels=y, features=f, logits=z,
                           code_logits=_rho(u), semantic="inner")
  with pytest.raises(ValueError, match="reduction"):
    losses.get_loss("ath")(codes=u, labels=y, logits=z, reduction="avg")
  with pytest.raises(ValueError, match="logits"):
    losses.get_loss("sa_hash")(codes=u, labels=y)
  with pytest.raises(ValueError, match="logits"):
    losses.get_loss("softmax_ce")(codes=u, labels=y)
  with pytest.raises(ValueError, match="codes"):
    losses.get_loss("dpsh")(labels=y)
  with pytest.raises(TypeError, match="valid: .*quantization_weight"):
    losses.get_loss("dpsh")(codes=u, labels=y, margin=1.0)
  # Without the class-layer term, MTH and SA-Hash need no logits.
  losses.get_loss("mth")(codes=u, labels=y, features=f, category_weight=0.0,
                         code_logits=_rho(u))
  losses.get_loss("mth")(codes=u, labels=y, features=f, category_weight=0.0,
                         semantic="pairwise")
  losses.get_loss("sa_hash")(codes=u, labels=y, classification_weight=0.0)
  for name, fn in losses.LOSSES.items():
    params = inspect.signature(fn).parameters
    assert all(p.kind == p.KEYWORD_ONLY for p in params.values()), name
    assert set(fn.inputs) <= set(losses.INPUTS)


def test_losses_on_a_sharded_global_batch():
  """Under jit over 4 devices with the batch sharded, pairwise and triplet
  losses still see every pair: equal to the unsharded value."""
  n = len(jax.devices())
  if n < 2:
    pytest.skip("needs several (fake) devices")
  mesh = jax.make_mesh((n,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  rng = np.random.RandomState(7)
  bb = 2 * n
  u = np.tanh(rng.randn(bb, K)).astype(np.float32)
  y = np.eye(C, dtype=np.float32)[rng.randint(0, C, bb)]
  f = rng.randn(bb, D).astype(np.float32)
  z = rng.randn(bb, C).astype(np.float32)
  for name in ("hashnet", "mth", "csq"):
    fn = losses.get_loss(name)
    run = jax.jit(lambda u, y, f, z: fn(codes=u, labels=y, features=f,
                                        logits=z, code_logits=_rho(u))[0])
    sharded = run(*(jax.device_put(a, sh) for a in (u, y, f, z)))
    np.testing.assert_allclose(float(sharded), float(run(u, y, f, z)), rtol=1e-5)


def test_mth_semantic_variants():
  """The paper's L_s is the CE of rho(u) (catches: L_s computed from the
  class layer's `logits` instead of `code_logits`); semantic="pairwise" is
  the old inner-product regression (catches: the option silently ignored)."""
  u, y, f, z = _batch(8, multi_label=False)
  u64, f64, z64 = (a.astype(np.float64) for a in (u, f, z))
  got, terms = _run("mth", u, y, f, z)
  np.testing.assert_allclose(terms["semantic"],
                             np_ce(u64 @ _RHO_W + _RHO_B, y), rtol=RTOL)
  np.testing.assert_allclose(got, np_mth(u64, y, f64, z64), rtol=RTOL)
  got, _ = _run("mth", u, y, f, z, semantic="pairwise")
  np.testing.assert_allclose(got, np_mth(u64, y, f64, z64,
                                         semantic="pairwise"), rtol=RTOL)
  # multi-label: sigmoid BCE of rho(u).
  u, y, f, z = _batch(9, multi_label=True)
  _, terms = _run("mth", u, y, f, z, multi_label=True)
  np.testing.assert_allclose(terms["semantic"],
                             np_bce(u.astype(np.float64) @ _RHO_W + _RHO_B, y),
                             rtol=RTOL)


def test_ath_sum_reduction_scales_gradients_by_pair_count():
  """Eq. 10 is a sum over the B(B - 1) pairs: the likelihood's gradient
  under reduction="sum" is exactly |P| times the "mean" one (catches: sum
  scaled by B**2 or B instead of B(B - 1), or "sum" ignored)."""
  u, y, _, z = _batch(10)
  def grad(red):
    fn = losses.get_loss("ath")
    return np.asarray(jax.grad(lambda u: fn(
        codes=u, labels=y, logits=z, classification_weight=0.0,
        reduction=red)[0])(jnp.asarray(u)), np.float64)
  g_sum, g_mean = grad("sum"), grad("mean")
  np.testing.assert_allclose(g_sum, B * (B - 1) * g_mean, rtol=1e-5,
                             atol=1e-7)
  _, t = _run("ath", u, y, z=z, reduction="mean")
  np.testing.assert_allclose(t["likelihood"], np_hashnet(u.astype(np.float64), y),
                             rtol=RTOL)


# -- the DSH / SA-Hash margin, at pairs that do and do not clamp ---------------


def _margin_batch():
  """Four 4-bit codes, classes [0, 0, 1, 1]: the dissimilar pairs (0, 2) and
  (1, 2) lie close (D < m, the hinge is active); (0, 3) and (1, 3) lie far
  apart (D > m: max(m - D, 0) clamps to 0)."""
  u = np.array([[0.9, 0.8, 0.7, 0.9],
                [0.6, 0.9, 0.8, 0.5],
                [0.7, 0.6, 0.9, -0.2],
                [-0.9, -0.7, -0.8, -0.6]], np.float32)
  y = np.eye(2, dtype=np.float32)[[0, 0, 1, 1]]
  return u, y


@pytest.mark.parametrize("name", ["dsh", "sa_hash"])
def test_margin_clamps_only_far_dissimilar_pairs(name):
  u, y = _margin_batch()
  m = 8.0                                     # 2K, the default
  d = ((u[:, None] - u[None]) ** 2).sum(-1)
  assert d[0, 2] < m and d[1, 2] < m          # hinge active
  assert d[0, 3] > m and d[1, 3] > m          # clamped
  # By hand: pairs counted both ways, divided by |P| = 12.
  want_con = (2 * 0.5 * (d[0, 1] + d[2, 3])
              + 2 * 0.5 * ((m - d[0, 2]) + (m - d[1, 2]))) / 12
  z = np.zeros((4, 2), np.float32)
  loss, terms = losses.get_loss(name)(codes=jnp.asarray(u), labels=jnp.asarray(y),
                                      logits=jnp.asarray(z))
  np.testing.assert_allclose(terms["contrastive"], want_con, rtol=1e-5)
  # Gradient: none from a clamped pair alone, the hinge's push from an
  # active one: 1/2 (m - D) over the 2 ordered pairs -> -(u_0 - u_2).
  sub = jnp.asarray(u[[0, 3]]), jnp.asarray(y[[0, 3]])   # clamped pair only
  g = jax.grad(lambda c: losses.get_loss(name)(
      codes=c, labels=sub[1], logits=jnp.zeros((2, 2)),
      regularization_weight=0.0)[1]["contrastive"])(sub[0])
  np.testing.assert_array_equal(np.asarray(g), 0.0)
  act = jnp.asarray(u[[0, 2]]), jnp.asarray(y[[0, 2]])   # active pair only
  g = jax.grad(lambda c: losses.get_loss(name)(
      codes=c, labels=act[1], logits=jnp.zeros((2, 2)),
      regularization_weight=0.0)[1]["contrastive"])(act[0])
  np.testing.assert_allclose(np.asarray(g[0]), -(u[0] - u[2]), rtol=1e-5)


# -- jax.test_util.check_grads on every registered loss -----------------------


def _smooth_inputs():
  """Small float64 inputs away from every loss's kinks: |u| in [0.25, 0.75]
  (no |u| = 0 or 1 in the quantisation terms), so DPN's hinge max(1 - u t, 0)
  never clamps, and the DSH / SA-Hash distances stay away from m = 2K."""
  b, k, c, d = 6, 8, 3, 5
  rng = np.random.RandomState(5)
  u = np.where(rng.rand(b, k) < 0.5, -1, 1) * rng.uniform(0.25, 0.75, (b, k))
  y = np.eye(c)[rng.randint(0, c, b)]
  y[0, (np.argmax(y[0]) + 1) % c] = 1
  f, z, w = rng.randn(b, d), rng.randn(b, c), rng.randn(k, c) / 4
  dist = ((u[:, None] - u[None]) ** 2).sum(-1)
  assert np.abs(dist - 2 * k).min() > 0.1
  return u, y, f, z, w


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_check_grads_every_registered_loss(name):
  from jax import test_util as jtu  # pylint: disable=g-import-not-at-top
  u, y, f, z, w = _smooth_inputs()
  fn = losses.get_loss(name)
  with jax.enable_x64(True):
    y64, w64 = jnp.asarray(y), jnp.asarray(w)

    def loss(u, f, z):
      return fn(codes=u, labels=y64, features=f, logits=z,
                code_logits=u @ w64)[0]

    jtu.check_grads(loss, (jnp.asarray(u), jnp.asarray(f), jnp.asarray(z)),
                    order=1, modes=["rev"])
