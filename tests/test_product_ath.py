"""ATH runs as a product: open_run makes the Grad-CAM local view itself,
gives the codes of the training-side path, explains, and exports with its
classifier (issue #12)."""

import os

import numpy as np
import pytest

from configs import ath as ath_config
from medhash_jax import data as data_lib
from medhash_jax import systems
from medhash_jax.systems import ath
from medhash_jax.train import loop
from medhash_jax.train import mesh as mesh_lib


@pytest.fixture(scope="module")
def ath_run(data_dir, tmp_path_factory):
  c = ath_config.get_config("smoke")
  with c.unlocked():
    c.data.root = data_dir
    c.train.num_steps = 4
    c.train.eval_every_steps = 0
    c.train.checkpoint_every_steps = 4
    c.ath.classifier.num_steps = 4
    c.ath.cam.num_overlays = 2
  c.lock()
  wd = str(tmp_path_factory.mktemp("ath_run"))
  systems.train_and_evaluate(c, wd)
  images = np.load(os.path.join(data_dir, "breastmnist", "breastmnist.npz"))[
      "test_images"][:5][..., None]
  return c, wd, images


def test_ath_open_run_bundle_and_explain(ath_run, tmp_path):
  """Catches: a run that does not record its classifier / class mode (no
  local view at query time), a local view made differently from
  FileLocalViews (other codes), a bundle without the classifier, and an
  explain() that returns None for ATH."""
  c, wd, images = ath_run
  r = systems.open_run(wd)
  assert r.info["two_view"] and r.record["ath"]["classifier_dir"] == "classifier"
  # The run records its local view and the retriever builds that one.
  assert r.record["ath"]["local_view"] == c.data.local_view == "multiply"
  assert r._views.view == "multiply"
  views = ath.FileLocalViews(c, wd)
  local = [v for v, _ in views.views(list(images))]
  run = loop.Run(systems.hash_config(c, wd), wd, for_training=False)
  items, _ = run.selected_variables()
  pre = data_lib.Preprocessor(image_size=28, channels=1, normalize="half")
  x = np.zeros((run.eval_batch_size, 28, 28, 1), np.float32)
  xl = np.zeros_like(x)
  for i, (img, lv) in enumerate(zip(images, local)):
    x[i], xl[i] = pre(img), pre(lv)
  live = np.asarray(run.encode_fn(run.variables_of(items), mesh_lib.shard_batch(
      {"image": x, "local_image": xl}, run.mesh)))[:len(images)]
  run.ckpt.close()
  np.testing.assert_allclose(r.encode_images(images), live, atol=1e-5)
  assert r.explain(images[0]).startswith(b"\x89PNG")
  out = str(tmp_path / "bundle")
  r.export(out)
  assert os.path.exists(os.path.join(out, "classifier.msgpack"))
  b = systems.open_run(out)
  np.testing.assert_allclose(b.encode_images(images), live, atol=1e-5)
  assert b.explain(images[0]).startswith(b"\x89PNG")
