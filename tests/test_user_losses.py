"""Losses from outside the package (issue #20): file and module specs,
@register, loss.terms compositions, errors before data is read, the source
record, and a run that searches without its loss file.

Each test names the one-line bug it catches.
"""

import hashlib
import os
import shutil
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from configs import dpsh as dpsh_config
from medhash_jax import losses
from medhash_jax.losses import resolve
from medhash_jax.train import validation
from medhash_jax.train.validation import ConfigError

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(_REPO, "examples", "my_loss.py")

USER_FILE = textwrap.dedent('''
    import jax.numpy as jnp

    NOT_A_FUNCTION = 3

    def l2_pull(*, codes, labels, scale: float = 1.0):
      s = (labels @ labels.T > 0).astype(jnp.float32)
      d = jnp.sum((codes[:, None] - codes[None]) ** 2, -1)
      v = scale * jnp.mean(s * d)
      return v, {"pull": v}

    def needs_logits(*, codes, logits, labels):
      return jnp.mean(codes) + jnp.mean(logits), {}

    def positional(codes, labels, *args):
      return jnp.mean(codes), {}
''')


def _batch(b=6, k=8, c=3, seed=0):
  r = np.random.default_rng(seed)
  codes = np.tanh(r.normal(size=(b, k))).astype(np.float32)
  labels = np.eye(c, dtype=np.float32)[r.integers(0, c, b)]
  return codes, labels


@pytest.fixture()
def user_file(tmp_path):
  p = tmp_path / "user_losses.py"
  p.write_text(USER_FILE)
  return str(p)


def _config(**loss):
  c = dpsh_config.get_config("smoke")
  with c.unlocked():
    for k, v in loss.items():
      c.loss[k] = v
    # A data folder that does not exist: reading data would fail with a
    # different error than the ConfigError the checks must raise first.
    c.data.root = "/nonexistent/medhash_data"
  return c


# -- resolving specs -----------------------------------------------------------


def test_file_loss_matches_numpy_and_records_its_sha256():
  """Catches: the wrong function loaded, kwargs not forwarded, or a source
  record hashing something other than the file's bytes."""
  fn, src = losses.resolve_loss(f"{EXAMPLE}:margin_dpsh")
  codes, labels = _batch()
  loss, terms = fn(codes=jnp.asarray(codes), labels=jnp.asarray(labels),
                   features=None, margin=0.3, eta=0.2)
  s = (labels @ labels.T > 0).astype(np.float64)
  t = 0.5 * codes.astype(np.float64) @ codes.T - 0.3
  off = 1 - np.eye(len(codes))
  lik = np.sum((np.logaddexp(0, t) - s * t) * off) / off.sum()
  quant = np.mean((np.abs(codes) - 1) ** 2)
  np.testing.assert_allclose(float(terms["likelihood"]), lik, rtol=1e-5)
  np.testing.assert_allclose(float(loss), lik + 0.2 * quant, rtol=1e-5)
  with open(EXAMPLE, "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  assert src == {"name": f"{EXAMPLE}:margin_dpsh", "kind": "file",
                 "function": "margin_dpsh", "path": EXAMPLE, "sha256": sha}
  assert fn.hyperparameters == {"margin": 0.0, "eta": 0.1}
  assert fn.required_inputs == ("codes", "labels")


def test_file_is_loaded_by_path_not_sys_path(user_file):
  """Catches: loading by module name through sys.path (an unrelated
  `user_losses` module elsewhere would win) or leaving the folder on it."""
  before = list(sys.path)
  fn, _ = losses.resolve_loss(f"{user_file}:l2_pull")
  assert sys.path == before and "user_losses" not in sys.modules
  codes, labels = _batch()
  v, terms = fn(codes=codes, labels=labels, scale=2.0)
  s = labels @ labels.T > 0
  d = ((codes[:, None] - codes[None]) ** 2).sum(-1)
  np.testing.assert_allclose(float(v), 2.0 * np.mean(s * d), rtol=1e-5)
  assert set(terms) == {"pull"}


def test_module_spec_and_register(tmp_path, monkeypatch):
  """Catches: module:function specs not imported, or @register not making the
  name resolvable / silently replacing a built-in or another user's loss."""
  from medhash_jax.losses import registry  # pylint: disable=g-import-not-at-top
  # Registered for this test only (the zoo's own tests cover LOSSES).
  monkeypatch.setattr(registry, "LOSSES", dict(registry.LOSSES))
  (tmp_path / "my_pkg_losses_x.py").write_text(USER_FILE + textwrap.dedent('''
      from medhash_jax import losses
      @losses.register("test_l2_pull_registered")
      def registered(*, codes, labels, scale: float = 1.0):
        return l2_pull(codes=codes, labels=labels, scale=scale)
  '''))
  monkeypatch.syspath_prepend(str(tmp_path))
  fn, src = losses.resolve_loss("my_pkg_losses_x:l2_pull")
  assert src["kind"] == "module" and src["path"].endswith("my_pkg_losses_x.py")
  codes, labels = _batch()
  ref = float(fn(codes=codes, labels=labels, scale=3.0)[0])
  reg, rsrc = losses.resolve_loss("test_l2_pull_registered")
  assert float(reg(codes=codes, labels=labels, scale=3.0)[0]) == \
      pytest.approx(ref)
  assert rsrc["kind"] == "registered" and rsrc["function"] == "registered"
  assert len(rsrc["sha256"]) == 64
  with pytest.raises(ValueError, match="built-in"):
    losses.register("dpsh")(lambda *, codes: (codes.sum(), {}))
  with pytest.raises(ValueError, match="already registered"):
    losses.register("test_l2_pull_registered")(
        lambda *, codes: (codes.sum(), {}))


@pytest.mark.parametrize("spec_fn, match", [
    (lambda f: f + ":NOT_A_FUNCTION", r"NOT_A_FUNCTION.*is a int, not a function"),
    (lambda f: f + ":nope", r"no 'nope' there; functions defined: \['l2_pull', "
                            r"'needs_logits', 'positional'\]"),
    (lambda f: f + ":positional", r"cannot be passed by keyword"),
    (lambda f: f[:-3] + "_missing.py:l2_pull", r"_missing.py does not exist"),
    (lambda f: "no_such_module_xyz:fn", r"cannot import module"),
    (lambda f: "dpshh", r"unknown loss 'dpshh'.*path/to/file.py:function"),
])
def test_bad_specs_fail_before_data_naming_file_and_function(
    user_file, spec_fn, match):
  """Catches: a bad spec passing validation (failing later, after the data
  is read) or an error that does not name the file / function."""
  spec = spec_fn(user_file)
  with pytest.raises(ConfigError, match=match) as e:
    validation.validate_config(_config(name=spec))
  if ".py" in spec:
    assert os.path.basename(spec.split(":")[0]) in str(e.value)


def test_misspelt_kwarg_and_missing_input_fail_before_data(user_file):
  """Catches: kwargs or required inputs of a user loss left unchecked until
  the first step (the data is read by then)."""
  from medhash_jax.train import loop  # pylint: disable=g-import-not-at-top
  spec = f"{user_file}:l2_pull"
  with pytest.raises(ConfigError, match=r"\['scael'\].*l2_pull.*valid: "
                                        r"\['scale'\]") as e:
    loop.Run(_config(name=spec, kwargs={"scael": 2.0}), None)
  assert user_file in str(e.value)
  with pytest.raises(ConfigError, match=r"requires inputs \['logits'\].*"
                                        r"classification_weight"):
    loop.Run(_config(name=f"{user_file}:needs_logits"), None)
  # With a class head the same loss passes the checks (and fails only on the
  # missing data folder, i.e. after them).
  with pytest.raises(Exception) as e:
    loop.Run(_config(name=f"{user_file}:needs_logits",
                     classification_weight=1.0), None)
  assert not isinstance(e.value, ConfigError)


# -- loss.terms ----------------------------------------------------------------


def test_terms_sum_weighted_losses_and_log_each():
  """Catches: a weight ignored, a term's kwargs not forwarded, a term dropped,
  or term values reported weighted / under the wrong name."""
  codes, labels = _batch(b=8, k=16, c=2)
  fn, src = losses.resolve_objective({"name": "terms", "kwargs": {}, "terms": [
      {"name": "dpsh", "weight": 1.0, "kwargs": {"alpha": 0.3}},
      {"name": "quantization", "weight": 0.1},
      {"name": f"{EXAMPLE}:margin_dpsh", "weight": 0.5,
       "kwargs": {"margin": 0.2}}]})
  total, terms = fn(codes=codes, labels=labels, logits=None, features=None)
  d = losses.get_loss("dpsh")(codes=codes, labels=labels, alpha=0.3)[0]
  q = losses.get_loss("quantization")(codes=codes, labels=labels)[0]
  m = losses.resolve_loss(f"{EXAMPLE}:margin_dpsh")[0](
      codes=codes, labels=labels, margin=0.2)[0]
  assert float(d) != pytest.approx(float(
      losses.get_loss("dpsh")(codes=codes, labels=labels)[0]))
  np.testing.assert_allclose(float(total), float(d + 0.1 * q + 0.5 * m),
                             rtol=1e-6)
  np.testing.assert_allclose(float(terms["quantization"]), float(q), rtol=1e-6)
  np.testing.assert_allclose(float(terms["margin_dpsh"]), float(m), rtol=1e-6)
  assert "margin_dpsh/likelihood" in terms
  assert [s["weight"] for s in src] == [1.0, 0.1, 0.5]
  # Overrides (what a sweep binds): label.weight and label.kwarg.
  t2, _ = fn(codes=codes, labels=labels, **{"quantization.weight": 2.0,
                                            "dpsh.alpha": 0.3})
  np.testing.assert_allclose(float(t2), float(d + 2.0 * q + 0.5 * m),
                             rtol=1e-6)
  with pytest.raises(TypeError, match="dpsh.alpah"):
    fn(codes=codes, labels=labels, **{"dpsh.alpah": 1.0})


@pytest.mark.parametrize("loss, match", [
    (dict(name="terms", terms=({"name": "dpsh", "kwargs": {"alpah": 1}},)),
     r"loss.terms\[0\].kwargs \['alpah'\] are not hyper-parameters of loss "
     r"'dpsh'"),
    (dict(name="dpsh", terms=({"name": "dpsh"},)),
     r"loss.name must be 'terms'"),
    (dict(name="terms", kwargs={"alpha": 1.0}, terms=({"name": "dpsh"},)),
     r"give each term its own kwargs"),
    (dict(name="terms", terms=({"name": "dpsh"}, {"name": "dpsh"})),
     r"loss.terms\[1\]: a second term logged as 'dpsh'"),
    (dict(name="terms", terms=({"name": "dpsh", "wieght": 2},)),
     r"loss.terms\[0\]: keys are"),
    (dict(name="terms", terms=({"name": "dpsh", "weight": "big"},)),
     r"loss.terms\[0\].weight must be a number"),
    (dict(name="terms", terms=({"name": "nope.py:f"},)),
     r"loss.terms\[0\]: .*nope.py does not exist"),
    (dict(name="terms", terms=({"name": "sigmoid_bce"},)),
     r"requires inputs \['logits'\]"),
])
def test_bad_terms_fail_before_data(loss, match):
  """Catches: a term validated less strictly than a single loss."""
  with pytest.raises(ConfigError, match=match):
    validation.validate_config(_config(**loss))


# -- a trained run without its loss file -----------------------------------------


def test_file_loss_trains_records_source_and_serves_without_the_file(
    data_dir, tmp_path):
  """Catches: the source missing from config.json / results.json, or
  search / open_run / evaluation re-resolving the loss (the file is gone)."""
  import json  # pylint: disable=g-import-not-at-top
  from medhash_jax import systems  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import inference  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import loop  # pylint: disable=g-import-not-at-top
  loss_file = tmp_path / "outside" / "my_loss.py"
  loss_file.parent.mkdir()
  shutil.copy(EXAMPLE, loss_file)
  c = dpsh_config.get_config("smoke")
  with c.unlocked():
    c.data.root = data_dir
    c.loss.name = f"{loss_file}:margin_dpsh"
    c.loss.kwargs = {"margin": 0.25}
    c.train.num_steps = 2
    c.train.eval_every_steps = 2
    c.train.log_every_steps = 1
  wd = str(tmp_path / "run")
  results = loop.train_and_evaluate(c, wd)
  sha = hashlib.sha256(loss_file.read_bytes()).hexdigest()
  for rec in (results["config"], ckpt_lib.read_saved_config(wd)):
    (src,) = rec["loss"]["source"]
    assert src["path"] == str(loss_file) and src["sha256"] == sha
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert any("train/loss/likelihood" in r for r in rows)
  images = np.zeros((2, 28, 28, 1), np.uint8)
  images[1] += 200
  before = systems.open_run(wd).encode_images(images)
  os.remove(loss_file)
  r = systems.open_run(wd)
  np.testing.assert_array_equal(r.encode_images(images), before)
  hits = r.search(before, 3)
  assert len(hits) == 2 and len(hits[0]) == 3
  img_dir = tmp_path / "q"
  img_dir.mkdir()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(images[1][..., 0]).save(img_dir / "q.png")
  out = inference.search(None, wd, input_spec=str(img_dir), k=2,
                         output=str(tmp_path / "s.json"),
                         print_fn=lambda *a: None)
  assert len(out) == 1
  # Training again (a resume) needs the file, and says so.
  with pytest.raises(ConfigError, match="does not exist"):
    loop.train_and_evaluate(c, wd)
