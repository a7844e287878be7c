"""Experiment suites: every run config of every suite validates, `--set`
settings (typed by ml_collections' rules), and the paper-scale (224 px) suite's models and losses trace for
every method, so a GPU session never finds a config error at its first step.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medhash_jax import experiments
from medhash_jax import models
from medhash_jax.systems import ath as ath_lib
from medhash_jax.train import task as task_lib
from medhash_jax.train import validation
from medhash_jax.train import writers


def _run_config(suite, method, bits, tmp_path):
  c = experiments.method_config(suite, method, bits, suite.seeds[0],
                                str(tmp_path / "_ath_stages"))
  return ath_lib.hash_config(c, str(tmp_path)) if "ath" in c else c


@pytest.mark.parametrize("name", sorted(experiments.SUITES))
def test_every_run_config_of_every_suite_validates(name, tmp_path):
  suite = experiments.SUITES[name]
  for method in suite.methods:
    for bits in suite.bits:
      c = _run_config(suite, method, bits, tmp_path)
      validation.validate_config(c)
      assert c.num_bits == bits and c.seed == suite.seeds[0]
      for key, value in suite.overrides.items():
        section, *_ = key.split(".")
        if section in c and key not in suite.method_overrides.get(method, {}):
          node = c
          for part in key.split("."):
            node = node[part]
          if key == "train.eval_every_steps":   # derived: >= 5 val points
            value = experiments.suites.validation_cadence(
                c.train.num_steps, value)
          assert node == value, (method, key)


def test_settings_win_over_suite_and_method_overrides(tmp_path):
  """`--set` text, typed per run by the field (as --config.key=value)."""
  suite = experiments.SUITES["ham10000"]
  assert suite.method_overrides["mth"]["data.image_size"] == 32
  s = experiments.with_overrides(suite, {"data.image_size": "48",
                                         "model.dtype": "bfloat16",
                                         "optim.learning_rate": "1",
                                         "ath.classifier.num_steps": "7"})
  for method in ("dpsh", "mth", "ath"):
    c = experiments.method_config(s, method, 16, 0, str(tmp_path))
    assert c.data.image_size == 48 and c.model.dtype == "bfloat16", method
    assert type(c.data.image_size) is int, method
    assert c.optim.learning_rate == 1.0 and type(c.optim.learning_rate) is \
        float, method
    # Other per-method overrides stay.
    assert c.model.kwargs.small_input == (method == "mth")
  assert experiments.method_config(s, "ath", 16, 0, str(tmp_path)
                                   ).ath.classifier.num_steps == 7
  # The suite itself is not changed, and no settings = the same suite.
  assert suite.method_overrides["mth"]["data.image_size"] == 32
  assert not suite.settings
  assert experiments.with_overrides(suite, {}) is suite
  with pytest.raises(KeyError, match="--set data.image_sise"):
    experiments.method_config(
        experiments.with_overrides(suite, {"data.image_sise": "48"}), "dpsh",
        16, 0, str(tmp_path))
  with pytest.raises(ValueError, match="--set data.image_size=big"):
    experiments.method_config(
        experiments.with_overrides(suite, {"data.image_size": "big"}), "dpsh",
        16, 0, str(tmp_path))


def test_a_method_variant_is_its_method_plus_its_settings_only(tmp_path):
  """Catches: a variant's settings dropped, applied before the suite's
  --set, or the base method's own overrides (width 16) lost."""
  suite = experiments.with_overrides(experiments.SUITES["breastmnist"],
                                     {"optim.learning_rate": "0.5"})
  flat = lambda c: writers.flatten(c.to_dict(), sep=".")
  base = experiments.method_config(suite, "ath", 48, 1, str(tmp_path))
  var = experiments.method_config(
      suite, "ath@loss.kwargs.reduction=sum@optim.learning_rate=0.25", 48, 1,
      str(tmp_path))
  diff = {k for k in flat(base) if flat(base)[k] != flat(var)[k]}
  assert diff == {"loss.kwargs.reduction", "optim.learning_rate"}, diff
  assert var.loss.kwargs.reduction == "sum"
  assert var.optim.learning_rate == 0.25 and var.model.kwargs.width == 16
  assert experiments.suites.display_name(
      "sa_hash@optim.learning_rate=0.001") == \
      "SA-Hash [optim.learning_rate=0.001]"
  assert experiments.suites.display_name("ath:se") == "ATH -A+SE"
  assert experiments.suites.display_name("itq") == "ITQ"   # shallow rows too
  assert "/" not in experiments.suites.run_tag("ath@init_from=/w/x.pth")
  with pytest.raises(ValueError, match="unknown method 'mht'"):
    experiments.suites.split_method("mht@seed=1")
  with pytest.raises(ValueError, match="expected key=value"):
    experiments.suites.split_method("mth@pairwise")
  with pytest.raises(KeyError, match="optim.learning_rat"):
    experiments.method_config(suite, "mth@optim.learning_rat=0.1", 48, 0,
                              str(tmp_path))


def test_chest_xray_suites_never_flip_left_right(tmp_path):
  """Catches: a chest X-ray suite whose baselines keep the shared base's
  horizontal flip (the heart would change sides), or the rule leaking into
  the dermoscopy / ultrasound suites."""
  for name, flips in (("covid19", False), ("pneumoniamnist", False),
                      ("ham10000", True), ("breastmnist", True)):
    suite = experiments.SUITES[name]
    for method in suite.methods:
      c = experiments.method_config(suite, method, 16, 0, str(tmp_path))
      assert c.data.augment.hflip is flips, (name, method)


def test_a_suite_override_of_the_wrong_type_names_it(tmp_path):
  bad = dataclasses.replace(experiments.SUITES["smoke"],
                            overrides={"train.num_steps": "ten"})
  with pytest.raises(TypeError, match="suite smoke override train.num_steps"):
    experiments.method_config(bad, "dpsh", 16, 0, str(tmp_path))


def _batch(c, num_classes, size, b, rng):
  labels = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, b)]
  views = {"image": jnp.zeros((b, size, size, 3), jnp.float32),
           "labels": jnp.asarray(labels),
           "label_mask": jnp.ones_like(jnp.asarray(labels))}
  if c.data.mask_dir:
    views["local_image"] = views["image"]
  if c.data.sampling != "triplet":
    return views
  batch = dict(views)
  for prefix in task_lib.TRIPLET_PREFIXES:
    batch.update({prefix + k: v for k, v in views.items()})
  batch["triplet_valid"] = jnp.ones((b,), bool)
  return batch


def test_paper_gpu_suite_traces_at_224px(tmp_path):
  """Every method of the GPU suite at its real scale (224 px, ResNet-50,
  DenseNet-121, MTH's full-resolution dense blocks): init, the training
  objective and the encoder trace with the right shapes (jax.eval_shape:
  no compute). HAM10000 has 7 single-label classes."""
  suite = experiments.SUITES["paper_gpu"]
  num_classes, rng = 7, np.random.default_rng(0)
  for method in suite.methods:
    c = _run_config(suite, method, 48, tmp_path)
    assert c.data.image_size == 224 and c.data.name == "ham10000", method
    task = task_lib.build_task(c, num_classes=num_classes, multi_label=False,
                               two_view=bool(c.data.mask_dir))
    batch = _batch(c, num_classes, 224, 2, rng)
    inputs = {k: batch[k] for k in task.input_keys}
    variables = jax.eval_shape(
        lambda x, t=task: t.model.init(
            {"params": jax.random.key(0), "dropout": jax.random.key(1)},
            *[x[k] for k in t.input_keys], train=False), inputs)
    loss, _ = jax.eval_shape(
        task.objective, variables["params"], variables.get("batch_stats", {}),
        batch, jax.random.key(0), jnp.int32(0))
    assert loss.shape == () and loss.dtype == jnp.float32, method
    codes = jax.eval_shape(task.encode, variables, inputs)
    assert codes.shape == (2, 48), (method, codes.shape)
  # ATH's stage 1: the DenseNet-121 classifier at 224 px.
  c = experiments.method_config(suite, "ath", 48, 0, str(tmp_path))
  cls = c.ath.classifier
  assert cls.model == "densenet121_classifier"
  model = models.get_model(cls.model, num_classes=num_classes,
                           dtype=c.model.dtype, **dict(cls.kwargs.to_dict()))
  x = jnp.zeros((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init({"params": jax.random.key(0)}, x, train=False), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       variables, x)
  assert out["logits"].shape == (2, num_classes)


def test_suite_with_settings_is_a_new_suite_value():
  suite = experiments.SUITES["smoke"]
  s = experiments.with_overrides(suite, {"train.num_steps": "3"})
  assert dataclasses.asdict(s)["settings"] == {"train.num_steps": "3"}
  assert experiments.with_overrides(s, {"seed": "1"}).settings == {
      "train.num_steps": "3", "seed": "1"}
  assert suite.overrides["train.num_steps"] == 10 and not suite.settings


def test_paper_gpu_pretrained_paths_reach_each_runs_backbone(tmp_path):
  """Catches: a pretrained path not plumbed (run from random weights), the
  DenseNet file given to a ResNet-50 (or the reverse), ATH's classifier left
  random, or MTH (no backbone) handed a file it cannot load."""
  suite = experiments.with_overrides(
      experiments.SUITES["paper_gpu"],
      {"init_from_resnet50": "/w/r50.pth",
       "init_from_densenet121": "/w/d121.pth"})
  want = {"ath": ("/w/r50.pth", "/w/d121.pth"), "sa_hash": ("/w/r50.pth", None),
          "ath:se": ("/w/r50.pth", None), "mth": ("", None)}
  for method, (hash_init, cls_init) in want.items():
    c = experiments.method_config(suite, method, 48, 0, str(tmp_path))
    assert c.init_from == hash_init, method
    if cls_init is not None:
      assert c.ath.classifier.init_from == cls_init
      assert ath_lib.hash_config(c, str(tmp_path)).init_from == hash_init
  for method in experiments.suites.BASELINES:   # the ResNet-50 baselines too
    c = experiments.method_config(suite, method, 48, 0, str(tmp_path))
    assert experiments.suites.backbone_arch(c) == "resnet50", method
    assert c.init_from == "/w/r50.pth", method
  # Only one file given: only its architecture's runs get it.
  one = experiments.with_overrides(experiments.SUITES["paper_gpu"],
                                   {"init_from_densenet121": "/w/d121.pth"})
  c = experiments.method_config(one, "ath", 48, 0, str(tmp_path))
  assert (c.init_from, c.ath.classifier.init_from) == ("", "/w/d121.pth")
  plain = experiments.method_config(experiments.SUITES["paper_gpu"], "ath",
                                    48, 0, str(tmp_path))
  assert (plain.init_from, plain.ath.classifier.init_from) == ("", "")
