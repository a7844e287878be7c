"""ATH's three-stage pipeline and the experiment suite, end to end on real
staged data (BreastMNIST 28 px, tiny models), plus the system configs.

One module-scoped run of the `smoke` suite restricted to DPSH and ATH at 16
bits trains: the DPSH run, then ATH's classifier -> Grad-CAM masks -> the
two-branch hash network; then the shallow methods on DPSH's backbone
features, the table, PR curves and gallery. The other tests inspect it.
"""

import dataclasses
import importlib
import json
import os

import ml_collections
import numpy as np
import pytest

from medhash_jax import cam
from medhash_jax import experiments
from medhash_jax.experiments import suites
from medhash_jax import models
from medhash_jax import systems
from medhash_jax.systems import ath as ath_lib
from medhash_jax.systems import classifier as classifier_lib
from medhash_jax.train import checkpoint as ckpt_lib
from medhash_jax.train import validation

STEPS = 6
CONFIGS = {
    "ath": ("", "smoke", "no_attention", "se", "cbam", "se,smoke",
            "no_attention,smoke", "cbam,smoke", "mask_and_crop",
            "cam_predicted,smoke", "mask_and_crop,cam_predicted"),
    "mth": ("", "smoke"), "sa_hash": ("", "smoke"),
    **{m: ("", "smoke") for m in ("dsh", "dch", "dfh", "dpn", "isdh", "dtsh",
                                  "lcdsh", "csq", "dpsh", "hashnet", "dh",
                                  "drh", "fang_ath")},
}


VARIANT = "dpsh@loss.kwargs.alpha=0.5"   # a method variant: its own row


@pytest.fixture(scope="module")
def suite_run(data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("suite")
  base = experiments.SUITES["smoke"]
  suite = dataclasses.replace(
      base, overrides={**base.overrides, "data.root": data_dir})
  info = experiments.run_suite(
      suite, str(root / "out"), str(root / "runs"),
      methods=["dpsh", "ath", VARIANT], bits=[16], steps=STEPS,
      command="pytest", allow_dirty=True)
  return {"info": info, "suite": suite, "root": root}


def _ath_workdir(run):
  return str(run["root"] / "runs" / "ath" / "b16-s0")


def _ath_config(run):
  return experiments.method_config(
      run["suite"], "ath", 16, 0, str(run["root"] / "runs" / "_ath_stages"),
      STEPS)


def test_ath_stages_leave_their_artifacts(suite_run):
  wd = _ath_workdir(suite_run)
  cfg = _ath_config(suite_run)
  sdir = ath_lib.stage_dir(cfg, wd)
  assert sdir.endswith("seed0") and sdir != os.path.abspath(wd)
  # Stage 1: a finished classifier checkpoint and its val accuracy.
  with open(os.path.join(sdir, "classifier", "classifier.json")) as f:
    clf = json.load(f)
  assert clf["step"] == STEPS and 0.0 <= clf["val"]["accuracy"] <= 1.0
  # Stage 2: one mask cache per split under its class mode.
  modes = cfg.ath.cam.modes
  sizes = {}
  for split in ath_lib.SPLITS:
    with open(cam.masks.ids_path(os.path.join(sdir, "masks", modes[split]),
                                 split)) as f:
      doc = json.load(f)
    assert doc["meta"] == {"mode": modes[split], "classifier_step": STEPS,
                           "image_size": 28, "cam_layer": "denseblock3"}
    sizes[split] = doc["count"]
  assert modes["train"] == modes["database"] == "true"
  assert modes["val"] == modes["query"] == "predicted"
  local = ath_lib.local_view_dir(cfg, wd)
  with open(os.path.join(local, ath_lib.MANIFEST)) as f:
    manifest = json.load(f)
  # One folder per split, one PNG per record of the split.
  for split in ath_lib.SPLITS:
    pngs = [n for n in os.listdir(os.path.join(local, split))
            if n.endswith(".png")]
    assert manifest["counts"][split] == len(pngs) == sizes[split], split
  overlays = os.listdir(os.path.join(wd, "gradcam", "overlay"))
  assert len(overlays) == cfg.ath.cam.num_overlays
  # Stage 3: a two-view run of the two-branch model reading those masks.
  with open(os.path.join(wd, "checkpoints", "config.json")) as f:
    saved = json.load(f)
  assert "ath" not in saved
  assert saved["model"]["name"] == "ath_two_branch"
  assert saved["data"]["mask_dir"] == local and saved["data"]["resize_masks"]
  assert saved["loss"]["kwargs"]["multi_label"] is False   # BreastMNIST
  with open(os.path.join(wd, "results.json")) as f:
    results = json.load(f)
  assert results["train"]["steps"] == STEPS
  assert 0.0 <= results["metrics"]["test"]["map@10"] <= 1.0
  with open(os.path.join(wd, ath_lib.STAGES_FILE)) as f:
    stages = json.load(f)
  assert stages["total_train_seconds"] >= results["train"]["seconds"] > 0
  # What the attention did: the 7x7 grid it read, mask area and fallbacks.
  assert stages["cam"] == {"layer": "denseblock3", "grid": [7, 7],
                           "image_size": 28, "boxes": ""}
  for split in ath_lib.SPLITS:
    m = stages["masks"][split]
    assert 0.0 <= m["mask_area"] <= 1.0 and 0 <= m["fallbacks"] <= m["count"]
  assert stages["localization"] is None        # BreastMNIST has no boxes


def test_ath_rerun_reuses_every_stage(suite_run):
  wd = _ath_workdir(suite_run)
  cfg = _ath_config(suite_run)
  ckpt_dir = os.path.join(ath_lib.stage_dir(cfg, wd), "classifier",
                          "checkpoints", str(STEPS))
  before = os.path.getmtime(ckpt_dir)
  with open(os.path.join(wd, ath_lib.STAGES_FILE)) as f:
    first = json.load(f)
  results = systems.train_and_evaluate(cfg, wd)
  stages = results["stages"]
  # The system's training time stays the first measurement.
  assert stages["hash_seconds"] == first["hash_seconds"]
  assert stages["total_train_seconds"] == pytest.approx(
      first["total_train_seconds"])
  assert stages["classifier_reused"]
  assert all(m["reused"] for m in stages["masks"].values())
  assert results["train"]["resumed_from"].startswith("workdir checkpoint")
  assert os.path.getmtime(ckpt_dir) == before
  # The stored stage-3 config evaluates and validates on its own.
  cfg3 = systems.hash_config(cfg, wd)
  validation.validate_config(cfg3)
  assert cfg3.data.mask_dir == ath_lib.local_view_dir(cfg, wd)


def test_suite_reuses_only_runs_of_the_same_config(suite_run):
  from medhash_jax.experiments import runner
  root = suite_run["root"] / "runs"
  for method in ("dpsh", "ath"):
    wd = str(root / method / "b16-s0")
    runner.check_reusable(experiments.method_config(
        suite_run["suite"], method, 16, 0, str(root / "_ath_stages"), STEPS), wd)
  # Another step count: refused before anything is trained, naming the key.
  with pytest.raises(ckpt_lib.ConfigMismatchError,
                     match=r"(?s)dpsh.*--rerun.*train.num_steps \(operational "
                     rf"key\): the run has {STEPS}, the config asks for "
                     rf"{STEPS + 1}"):
    experiments.run_suite(suite_run["suite"], str(root.parent / "out2"),
                          str(root), methods=["dpsh"], bits=[16],
                          steps=STEPS + 1, allow_dirty=True)
  other = experiments.with_overrides(suite_run["suite"],
                                     {"optim.learning_rate": 0.5})
  with pytest.raises(ckpt_lib.ConfigMismatchError, match="learning_rate"):
    runner.check_reusable(experiments.method_config(
        other, "ath", 16, 0, str(root / "_ath_stages"), STEPS),
        str(root / "ath" / "b16-s0"))
  assert not os.path.exists(root.parent / "out2" / "results.md")


def test_classifier_of_another_config_is_refused(suite_run):
  cfg = _ath_config(suite_run)
  wd = _ath_workdir(suite_run)
  sdir = ath_lib.stage_dir(cfg, wd)
  cls = ml_collections.ConfigDict(cfg.ath.classifier.to_dict())
  cls.kwargs.growth_rate = 8
  ds = classifier_lib.build_plain_datasets(cfg, sdir, 32, 28)
  try:
    with pytest.raises(ckpt_lib.ConfigMismatchError, match="growth_rate"):
      classifier_lib.finished_step(cfg, cls, ds,
                                   os.path.join(sdir, "classifier"))
  finally:
    ds.close()


def test_suite_writes_table_curves_and_gallery(suite_run):
  info = suite_run["info"]
  out = info["outputs"]
  for key in ("markdown", "csv", "pr_curves", "gallery"):
    assert os.path.getsize(out[key]) > 0, key
  with open(out["markdown"]) as f:
    md = f.read()
  for name in ("DPSH", "ATH-GradCAM", "LSH", "PCAH", "ITQ", "SSH"):
    assert f"| {name} | 16 |" in md, name
  assert "commit:" in md and "seeds: [0]" in md
  # ATH's attention beside the retrieval table.
  assert "## ATH attention" in md
  assert "| ATH-GradCAM | 16 | 0 | 7x7 at 28 px (denseblock3) |" in md
  with open(out["csv"]) as f:
    header = f.readline().strip().split(",")
  for col in ("method", "bits", "map@10", "map@all", "ndcg@100", "ndcg@all",
              "p@r2", "map@10_tie", "map@all_tie", "chance", "chance_map@all",
              "train_time_s",
              "encode_ms_per_image", "query_ms", "index_bytes"):
    assert col in header, col
  runs = {(r["method"], r["bits"]): r["row"] for r in info["runs"]}
  ath_row = runs[("ath", 16)]
  assert ath_row["train_time_s"] > 0 and ath_row["index_bytes"] == -(-546 // 16) * 16 * 2
  # 16-bit codes: ceil(16 / 8) = 2 bytes each, in blocks of 16 codes (the
  # kernel layout), so 546 codes occupy 35 blocks.
  for row in runs.values():
    assert 0.0 <= row["map@10"] <= 1.0 and 0.0 < row["chance"] < 1.0
  with open(os.path.join(os.path.dirname(out["markdown"]), "runs.json")) as f:
    saved = json.load(f)
  assert saved["machine"]["platform"] == "cpu" and saved["seeds"] == [0]
  assert f"({saved['machine']['cpu_model']}), JAX " in md


# Table column -> retrieval_report key, written here independently of
# runner._metrics_row: a column filled from another key fails the test below.
COLUMN_METRICS = {
    "map@10": "map@10", "map@all": "map@all", "ndcg@100": "ndcg@100",
    "ndcg@all": "ndcg@all", "p@r2": "precision@radius2",
    "map@10_tie": "map@10/tie_aware", "map@all_tie": "map@all/tie_aware",
    "chance": "map@10/chance", "chance_map@all": "map@all/chance"}


def test_table_columns_equal_retrieval_report_of_reencoded_codes(suite_run):
  """Every metric column of results.csv equals `metrics.retrieval_report` on
  the query and database codes encoded again from each run's selected model,
  under the column's own name."""
  import csv
  from medhash_jax import metrics
  from medhash_jax.experiments import runner
  metric_cols = [c for c in suites.COLUMNS if c not in (
      "method", "bits", "train_time_s", "encode_ms_per_image", "query_ms",
      "index_bytes")]
  assert set(metric_cols) == set(COLUMN_METRICS)     # a new column: map it
  with open(suite_run["info"]["outputs"]["csv"]) as f:
    rows = {(r["method"], int(r["bits"])): r for r in csv.DictReader(f)}
  distinct = set()
  for method in ("dpsh", "ath", VARIANT):
    cfg = (_ath_config(suite_run) if method == "ath" else
           experiments.method_config(suite_run["suite"], method, 16, 0,
                                     str(suite_run["root"] / "runs" /
                                         "_ath_stages"), STEPS))
    tr = runner.Trained(cfg, str(suite_run["root"] / "runs" /
                                 suites.run_tag(method) / "b16-s0"))
    try:
      q, db = tr.codes("query"), tr.codes("database")
      ql = tr.run.ds.eval["query"].labels
      dl = tr.run.ds.eval["database"].labels
    finally:
      tr.close()
    rep = metrics.retrieval_report(q, db, ql, dl, ks=(10, 100, None))
    row = rows[(suites.display_name(method), 16)]
    for col, key in COLUMN_METRICS.items():
      assert float(row[col]) == pytest.approx(rep[key], rel=1e-6, abs=1e-9), (
          method, col)
    distinct |= {key for key in COLUMN_METRICS.values()
                 if all(abs(rep[key] - rep[o]) > 1e-6
                        for o in COLUMN_METRICS.values() if o != key)}
  # The check can tell the columns apart: the tie-aware and index-ordered
  # values differ on these (heavily tied) codes.
  assert {"map@all", "map@all/tie_aware", "map@10",
          "map@10/tie_aware"} <= distinct


def test_runs_json_records_configs_curves_tree_and_machine(suite_run):
  import jax
  with open(os.path.join(os.path.dirname(
      suite_run["info"]["outputs"]["markdown"]), "runs.json")) as f:
    saved = json.load(f)
  deep = [r for r in saved["runs"] if r["method"] in ("dpsh", "ath")]
  assert len(deep) == 2
  variant = [r for r in saved["runs"] if r["method"] == VARIANT]
  assert len(variant) == 1
  assert variant[0]["config"]["loss"]["kwargs"]["alpha"] == 0.5
  assert deep[0]["config"]["loss"]["kwargs"].get("alpha") != 0.5
  for r in deep:
    cfg = r["config"]
    assert cfg["num_bits"] == 16 and cfg["train"]["num_steps"] == STEPS
    assert cfg["train"]["eval_every_steps"] == 1    # >= 5 points in 6 steps
    assert ("ath" in cfg) == (r["method"] == "ath")
    v = r["validation"]
    assert v["metric"] == cfg["eval"]["select_metric"]
    assert v["steps"] == list(range(1, STEPS + 1))
    best = int(np.argmax(v["values"]))                # first maximum
    assert v["selected_step"] == v["steps"][best]
    with open(os.path.join(r["workdir"], "best.json")) as f:
      assert json.load(f)["step"] == v["selected_step"]
  # Tree state, CPU model and JAX version, in runs.json and results.md.
  assert saved["git"]["dirty"] in (True, False, None)
  assert saved["commit"] == saved["git"]["commit"]
  with open("/proc/cpuinfo") as f:
    model = next(l.split(":", 1)[1].strip() for l in f
                 if l.startswith("model name"))
  assert saved["machine"]["cpu_model"] == model
  assert saved["machine"]["jax"] == jax.__version__
  assert saved["machine"]["device_kind"] == jax.devices()[0].device_kind
  with open(suite_run["info"]["outputs"]["markdown"]) as f:
    md = f.read()
  note = ("no git checkout" if saved["git"]["dirty"] is None else
          "DIRTY tree, allowed by --allow_dirty" if saved["git"]["dirty"]
          else "clean tree")
  assert f"`{saved['commit']}` ({note}" in md
  # The papers' layout: each method's tie-aware mAP@10 by code length.
  pivot = md.split("## Tie-aware mAP@10 by code length", 1)[1]
  assert "| Method | mAP@10 tie-aware, 16 bits |" in pivot
  assert f"| {suites.display_name(VARIANT)} | " in pivot


def test_ath_encodes_loose_files_like_its_query_split(suite_run, tmp_path):
  """Query images written as PNG files and encoded through --mode=encode's
  path (classifier -> Grad-CAM -> Otsu -> mask-and-crop per file) give the
  stage-2 masks and the codes of the same images read as the query split."""
  from PIL import Image
  from medhash_jax import data as data_lib
  from medhash_jax.train import inference
  wd = _ath_workdir(suite_run)
  cfg = _ath_config(suite_run)
  n = 12
  src = np.load(os.path.join(cfg.data.root, "breastmnist", "breastmnist.npz"))
  images = src["test_images"][:n]          # official split: query = test
  folder = tmp_path / "files"
  folder.mkdir()
  for i, img in enumerate(images):
    Image.fromarray(img).save(folder / f"q{i:02d}.png")
  views = systems.file_local_views(cfg, wd)
  decoded = [data_lib.decode_image(str(folder / f"q{i:02d}.png"))
             for i in range(n)]
  stage2 = cam.load_masks(os.path.join(ath_lib.stage_dir(cfg, wd), "masks",
                                       cfg.ath.cam.modes.query), "query")[:n]
  masks = views.masks(decoded)
  assert masks.shape == stage2.shape
  assert np.mean(masks == (stage2 > 0)) > 0.995   # float ties at the threshold
  hcfg = systems.hash_config(cfg, wd)
  from medhash_jax.retrieval import HammingIndex, unpack_codes
  inference.encode(hcfg, wd, input_spec=str(folder),
                   output=str(tmp_path / "files.mhi"), local_views=views.views)
  inference.encode(hcfg, wd, split="query", output=str(tmp_path / "query.mhi"))
  bits = [unpack_codes(HammingIndex.load(str(tmp_path / name)).packed[:n], 16)
          for name in ("files.mhi", "query.mhi")]
  # PNG round trip and batch composition can move a code bit near 0.
  assert np.mean(bits[0] == bits[1]) > 0.95
  # A single-view system has no such step.
  assert systems.file_local_views(experiments.method_config(
      suite_run["suite"], "dpsh", 16, 0, str(tmp_path), STEPS), wd) is None


def _fake_ds(split_ids):
  class E:
    def __init__(self, ids):
      self.ids = np.asarray(ids)
  class D:
    eval = {k: E(v) for k, v in split_ids.items()}
  return D()


def test_local_views_are_per_split_when_a_record_is_in_two_splits(tmp_path):
  """Record 'b' is in train, database and val (deephash protocol) with
  different class modes: each split's folder keeps its own mask, and the
  data layer's store reads the right one for each split."""
  from medhash_jax.data import mask_crop
  ids = {"train": ["a", "b"], "database": ["a", "b", "c"], "val": ["b"],
         "query": ["q"]}
  modes = {"train": "true", "database": "predicted", "val": "predicted",
           "query": "predicted"}
  rows_of = {"train": 1, "database": 2, "val": 3, "query": 4}
  root = str(tmp_path / "masks")
  for split, rids in ids.items():
    m = np.zeros((len(rids), 4, 4), np.uint8)
    m[:, : rows_of[split]] = 1          # each split's masks are recognisable
    cam.save_masks(os.path.join(root, modes[split]), split, m, rids)
  out = str(tmp_path / "local")
  doc = ath_lib.assemble_local_view_dir(root, _fake_ds(ids), modes, out,
                                        {"classifier_step": 1})
  assert doc["counts"] == {k: len(v) for k, v in ids.items()}
  store = mask_crop.MaskStore(out, margin=0.0)
  image = np.ones((4, 4, 1), np.uint8)
  for split, rids in ids.items():
    for rid in rids:
      local, fell_back = store.for_split(split).local_view(image, rid)
      assert not fell_back and local.shape[0] == rows_of[split], (split, rid)
  # Same settings: reused as is; other settings: rebuilt.
  assert ath_lib.assemble_local_view_dir(root, _fake_ds(ids), modes, out,
                                         {"classifier_step": 1}) == doc
  modes2 = dict(modes, database="true")
  cam.save_masks(os.path.join(root, "true"), "database",
                 np.ones((3, 4, 4), np.uint8), ids["database"])
  doc2 = ath_lib.assemble_local_view_dir(root, _fake_ds(ids), modes2, out,
                                         {"classifier_step": 1})
  assert doc2["modes"]["database"] == "true"
  local, _ = store.for_split("database").local_view(image, "b")
  assert local.shape[0] == 4          # the rebuilt, all-ones mask
  assert not os.path.exists(out + ".tmp")


def _views_without_classifier(view, margin, masks):
  """FileLocalViews with its Grad-CAM replaced by given masks (the view
  step alone: what it does with a mask)."""
  v = ath_lib.FileLocalViews.__new__(ath_lib.FileLocalViews)
  v.view, v.margin = view, margin
  v.masks = lambda images: masks
  return v


def test_ath_view_query_time_equals_train_time_for_both_views(data_dir,
                                                              tmp_path):
  """Catches: query-time views (FileLocalViews, the retriever) built with
  another view than the data layer's, a run's recorded view ignored, or a
  run recorded before data.local_view served with the multiply view."""
  from medhash_jax.data import mask_crop
  from medhash_jax.systems import retriever
  src = np.load(os.path.join(data_dir, "breastmnist", "breastmnist.npz"))
  images = [np.repeat(im[..., None], 3, -1) for im in src["test_images"][:3]]
  rng = np.random.default_rng(0)
  masks = rng.random((3, 14, 14)) < 0.3      # classifier size != image size
  masks[2] = False                            # an empty one: the fallback
  for i, m in enumerate(masks):
    mask_crop.save_mask(str(tmp_path / "train"), f"r{i}.png", m)
  for view in mask_crop.LOCAL_VIEWS:
    store = mask_crop.MaskStore(str(tmp_path), resize_masks=True, margin=0.1,
                                view=view).for_split("train")
    query = _views_without_classifier(view, 0.1, masks).views(images)
    for i, img in enumerate(images):
      local, fell_back = store.local_view(img, f"r{i}.png")
      np.testing.assert_array_equal(query[i][0], local)
      assert query[i][1] == fell_back == (i == 2)
    assert (query[0][0].shape == images[0].shape) == (view == "multiply")
  # The retriever's views follow the run's record; older records crop.
  crec = {"model": "densenet121_classifier", "num_classes": 2, "kwargs": {},
          "image_size": 14}
  rec = {"preprocessing": {"channels": 3, "normalize": "half"}}
  ath = {"cam_mode": "predicted", "mask_margin": 0.1, "multi_label": False}
  for stored, want in (({"local_view": "multiply"}, "multiply"),
                       ({}, "mask_and_crop")):
    v = retriever._local_views({"record": crec, "variables": {}},
                               dict(ath, **stored), rec)
    assert v.view == want
  # The ATH config trains on the paper's multiply view and records it.
  from configs import ath as ath_config
  c = ath_config.get_config("smoke")
  assert c.data.local_view == "multiply"
  assert ath_lib.hash_config(c, str(tmp_path)).data.local_view == "multiply"
  assert ath_config.get_config("mask_and_crop").data.local_view == \
      "mask_and_crop"
  from medhash_jax.train import defaults
  assert defaults.key_class("data.local_view") == defaults.MODEL
  assert defaults.key_class("data.mask_origin") == defaults.MODEL


class _TinyClassifier:
  """test_cam's two-conv, three-class classifier with random weights, as
  `make_masks` gets it."""

  def __init__(self):
    import jax
    import jax.numpy as jnp
    from tests.test_cam import _Classifier
    from medhash_jax.train import mesh as mesh_lib
    rng = np.random.default_rng(1)
    self.model = _Classifier()
    shapes = jax.eval_shape(self.model.init, jax.random.key(0),
                            jnp.zeros((1, 16, 16, 1)))
    self.variables = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), shapes)
    self.mesh = mesh_lib.make_mesh(1)


class _Split:
  def __init__(self, images, labels):
    self.images, self.labels = images, labels
    self.size = len(images)
    self.ids = np.asarray([f"x{i}" for i in range(self.size)])

  def __iter__(self):
    yield {"image": self.images, "labels": self.labels,
           "index": np.arange(self.size), "valid": np.ones(self.size, bool)}


def test_ath_cam_predicted_database_masks_use_predicted_classes(tmp_path):
  """Catches: `ath.cam.modes.database`/`train` ignored (the database built
  from true labels whatever the option), or predicted masks that are not
  the masks of the argmax classes."""
  import jax.numpy as jnp
  from skimage.filters import threshold_otsu
  from configs import ath as ath_config
  from medhash_jax.cam import gradcam
  k, n = 3, 12
  clf = _TinyClassifier()
  rng = np.random.default_rng(2)
  images = rng.normal(size=(n, 16, 16, 1)).astype(np.float32)
  labels = np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
  ds = type("DS", (), {"eval": {s: _Split(images, labels)
                                for s in ath_lib.SPLITS},
                       "image_size": 16, "multi_label": False})()
  logits = np.asarray(clf.model.apply(clf.variables, jnp.asarray(images)))
  predicted = np.eye(k, dtype=np.float32)[logits.argmax(1)]
  wrong = (predicted != labels).any(1)
  assert 0 < wrong.sum() < n          # both cases occur

  def reference(one_hot):   # Grad-CAM of the given classes + skimage's Otsu
    heat = np.asarray(gradcam.gradcam_flax(
        clf.model, clf.variables, jnp.asarray(images), jnp.asarray(one_hot),
        layer="features", mode="true")[0])
    return np.stack([h > threshold_otsu(h) for h in heat])

  default = ath_lib.cam_modes(ath_config.get_config("smoke"))
  alike = ath_lib.cam_modes(ath_config.get_config("cam_predicted,smoke"))
  assert default["database"] == default["train"] == "true"
  assert alike == dict(default, train="predicted", database="predicted")
  for modes, want in ((default, labels), (alike, predicted)):
    root = str(tmp_path / modes["database"])
    info = ath_lib.make_masks(lambda: clf, ds, 1, modes, root,
                              layer="features")
    assert info["database"]["mode"] == modes["database"]
    for split in ("train", "database"):
      got = cam.load_masks(os.path.join(root, modes[split]), split) > 0
      agree = np.mean(got == reference(want), axis=(1, 2))
      assert agree.min() > 0.99, (modes[split], split, agree)
  true_db = cam.load_masks(os.path.join(str(tmp_path / "true"), "true"),
                           "database") > 0
  pred_db = cam.load_masks(os.path.join(str(tmp_path / "predicted"),
                                        "predicted"), "database") > 0
  same = (true_db == pred_db).all(axis=(1, 2))
  np.testing.assert_array_equal(same, ~wrong)   # differ exactly where wrong
  # The modes are part of what a run is (a MODEL key of stage 3).
  a, b = (ath_lib.hash_config(ath_config.get_config(v), str(tmp_path))
          for v in ("smoke", "cam_predicted,smoke"))
  assert "database=true" in a.data.mask_origin
  assert "database=predicted" in b.data.mask_origin
  assert "data.mask_origin" in ckpt_lib.config_differences(
      a.to_dict(), b.to_dict(), changeable=ckpt_lib.INFERENCE)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_variant_validates(name):
  module = importlib.import_module(f"configs.{name}")
  for arg in CONFIGS[name]:
    c = module.get_config(arg or None)
    if "ath" in c:
      assert c.model.name == "ath_two_branch"
      c = ath_lib.hash_config(c, "/tmp/unused")
    validation.validate_config(c)
    assert models.is_hash_model(c.model.name)
  with pytest.raises(ValueError, match="unknown config variant"):
    module.get_config("nonsense")


def test_ath_configs_paper_settings_and_ablations():
  from configs import ath as ath_config
  c = ath_config.get_config()
  assert (c.optim.name, c.optim.learning_rate, c.optim.momentum,
          c.optim.weight_decay, c.optim.head_lr_mult) == ("sgd", 1e-4, 0.9,
                                                          5e-4, 10.0)
  assert (c.train.batch_size, c.train.num_steps, c.num_bits) == (32, 10000, 48)
  assert c.model.beta.schedule == "hashnet" and c.loss.name == "ath"
  assert c.ath.classifier.model == "densenet121_classifier"
  assert (c.ath.classifier.optimizer, c.ath.classifier.learning_rate) == (
      "adam", 1e-4)
  for arg, attention in (("no_attention", None), ("se", "se"),
                         ("cbam", "cbam")):
    a = ath_config.get_config(arg)
    assert "ath" not in a and a.model.name == "resnet50"
    assert a.model.kwargs.get("attention") == attention
    assert a.loss.name == "ath" and a.model.kwargs.class_head
  with pytest.raises(ValueError, match="one ablation"):
    ath_config.get_config("se,cbam")


SMOKE_RUNS = [(m, "smoke") for m in ("hashnet", "dsh", "dch", "dfh", "dpn",
                                      "isdh", "dtsh", "lcdsh", "csq", "dh", "drh",
                                      "fang_ath", "mth",
                                      "sa_hash")] + [
    ("ath", f"{a},smoke") for a in ("no_attention", "se", "cbam")]


@pytest.mark.parametrize("name,arg", SMOKE_RUNS)
def test_smoke_variant_trains_and_evaluates(name, arg, data_dir,
                                            tmp_path_factory):
  """Every config's :smoke variant end to end (DPSH and ATH run in the
  suite fixture above): a few steps, val selection, test metrics, index."""
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  with c.unlocked():
    c.data.root = data_dir
    c.train.num_steps = 3
    c.train.log_every_steps = 1
    c.train.eval_every_steps = 0
    c.train.checkpoint_every_steps = 3
    if "ath" in c:   # the ablations share one classifier and its masks
      c.ath.classifier.num_steps = 3
      c.ath.cam.num_overlays = 2
      c.ath.stage_dir = str(tmp_path_factory.getbasetemp() / "ath_smoke_stages")
  wd = str(tmp_path_factory.mktemp(f"{name}_{arg.replace(',', '_')}"))
  results = systems.train_and_evaluate(c, wd)
  assert results["train"]["steps"] == 3
  assert np.isfinite(results["train"]["final_loss"])
  test = results["metrics"]["test"]
  assert 0.0 <= test["map@10"] <= 1.0 and 0.0 < test["map@10/chance"] < 1.0
  assert os.path.isfile(os.path.join(wd, "results.json"))
  assert os.path.isfile(results["index_file"])


def test_ath_classifier_init_from_loads_before_the_first_step(
    data_dir, tmp_path, monkeypatch):
  """Catches: `ath.classifier.init_from` ignored (the classifier random
  whatever the flag), loaded without the DenseNet converter, or missing from
  the classifier's run record (a stage folder reused across inits)."""
  import jax
  from configs import ath as ath_config
  c = ath_config.get_config("smoke")
  with c.unlocked():
    c.data.root = data_dir
  cls = c.ath.classifier
  ds = classifier_lib.build_plain_datasets(c, str(tmp_path), 32, 28)
  calls = []

  def fake_load(path, params, stats, converter=None):
    calls.append((path, converter))
    return jax.tree.map(lambda p: p + 1.0, params), stats

  monkeypatch.setattr(classifier_lib.ckpt_lib, "load_weights", fake_load)
  try:
    scratch = classifier_lib._Stage1(c, cls, ds, str(tmp_path / "a"))
    assert not calls and "init_from" not in scratch.record
    with c.unlocked():
      cls.init_from = "/w/densenet121.pth"
    loaded = classifier_lib._Stage1(c, cls, ds, str(tmp_path / "b"))
  finally:
    ds.close()
  assert [p for p, _ in calls] == ["/w/densenet121.pth"] and calls[0][1]
  assert loaded.record["init_from"] == "/w/densenet121.pth"
  diffs = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(np.asarray(b) - np.asarray(a) - 1))),
      scratch.state.params, loaded.state.params))
  assert max(diffs) < 1e-6       # the loaded weights, not a fresh init
