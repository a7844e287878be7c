"""The run directory as a product (issue #12): open_run, bundles, tie
re-ranking, the config-class split, the search CLI.

One module fixture trains a tiny DPSH run on a private copy of BreastMNIST,
selecting on a constant metric (`precision@10/chance`), so the selected model
(step 4) is *not* the last one (step 8): tests can tell them apart. Each test
names the one-line bug it catches.
"""

import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from configs import dpsh as dpsh_config
from medhash_jax import systems
from medhash_jax import train
from medhash_jax.retrieval import HammingIndex, hamming_topk, pack_codes, rerank
from medhash_jax.systems import added_cases
from medhash_jax.systems import bundle as bundle_lib
from medhash_jax.train import checkpoint as ckpt_lib
from medhash_jax.train import inference
from medhash_jax.train import loop
from medhash_jax.train import run_files

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SELECTED, LAST = 4, 8


def _config(data_root, **overrides):
  c = dpsh_config.get_config("smoke")
  with c.unlocked():
    c.data.root = data_root
    c.train.num_steps = LAST
    c.train.log_every_steps = 4
    c.train.eval_every_steps = SELECTED
    c.train.checkpoint_every_steps = 4
    c.eval.select_metric = "precision@10/chance"   # constant: first eval wins
    for k, v in overrides.items():
      node = c
      *path, last = k.split(".")
      for p in path:
        node = node[p]
      node[last] = v
  c.lock()
  return c


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("product")
  data = root / "data"
  shutil.copytree(os.path.join(data_dir, "breastmnist"), data / "breastmnist")
  workdir = str(root / "run")
  config = _config(str(data))
  results = train.train_and_evaluate(config, workdir)
  images = np.load(data / "breastmnist" / "breastmnist.npz")["test_images"][:6]
  return {"config": config, "workdir": workdir, "results": results,
          "data": str(data), "root": root, "images": images[..., None]}


def _live_codes(config, workdir, images, step=None):
  """Codes of the trusted training-side path: loop.Run + its variables."""
  r = loop.Run(config, workdir, for_training=False)
  if step is None:
    items, _ = r.selected_variables()
  else:
    restored, _ = r.ckpt.restore(r.state.checkpoint_items(), step=step)
    items = {"params": restored["params"],
             "batch_stats": restored["batch_stats"]}
  from medhash_jax import data as data_lib
  pre = data_lib.Preprocessor(
      image_size=config.data.image_size, channels=config.data.channels,
      normalize=config.data.normalize)
  x = np.zeros((r.eval_batch_size,) + pre.zeros().shape, np.float32)
  for i, img in enumerate(images):
    x[i] = pre(img)
  from medhash_jax.train import mesh as mesh_lib
  codes = r.encode_fn(r.variables_of(items),
                      mesh_lib.shard_batch({"image": x}, r.mesh))
  r.ckpt.close()
  return np.asarray(codes)[:len(images)]


# -- tie re-ranking --------------------------------------------------------------


def _tied_problem(seed=0, n=300, bits=8, q=25):
  rng = np.random.default_rng(seed)
  db = rng.normal(size=(n, bits)).astype(np.float32)
  db[50:60] = db[7]            # identical codes: only the seeded key separates
  queries = rng.normal(size=(q, bits)).astype(np.float32)
  ids = [f"case-{i}" for i in range(n)]
  return queries, np.asarray(pack_codes(db)), rerank.tie_keys(ids), ids


@pytest.mark.parametrize("k", [1, 10, 37, 300])
def test_rerank_matches_brute_force(k):
  """Catches: the boundary tie group not collected whole (`need = k`), the
  asymmetric distance with the wrong sign, tie_group counted inside the top
  k only, or the seeded key ignored (index order among identical codes)."""
  queries, db, keys, _ = _tied_problem()
  d, i, g = rerank.rerank_topk(queries, db, k, keys=keys)
  ref = rerank.rerank_reference(queries, db, k, keys=keys)
  for r in range(len(queries)):
    assert list(zip(d[r].tolist(), i[r].tolist(), g[r].tolist())) == ref[r]
  # The exact (distance) contract is kept: only ties are reordered.
  hd, _ = hamming_topk(np.asarray(pack_codes(queries)), db, k)
  np.testing.assert_array_equal(d, np.asarray(hd))
  # The boundary group is larger than its share of the top k somewhere, so
  # collecting only the top k would have changed the answer.
  assert (g[:, -1] > 1).any()
  # The server's path: the same over a HammingIndex (built in two adds, the
  # kernel's layout searched in place), and over a frozen view of a prefix
  # while the index grows past it.
  index = HammingIndex(8)
  index.add(db[:100])
  view = index.frozen()
  index.add(db[100:])
  for got, want in zip(rerank.rerank_index(queries, index, k, keys=keys),
                       (d, i, g)):
    np.testing.assert_array_equal(got, want)
  # Long codes: boundary groups fit the first top-m scan (no histogram);
  # short ones above overflow it. Both paths against brute force.
  q40, db40, keys40, _ = _tied_problem(seed=2, bits=40)
  ref40 = rerank.rerank_reference(q40, db40, k, keys=keys40)
  index40 = HammingIndex(40)
  index40.add(db40)
  for got in (rerank.rerank_topk(q40, db40, k, keys=keys40),
              rerank.rerank_index(q40, index40, k, keys=keys40)):
    for r in range(len(q40)):
      assert list(zip(*(a[r].tolist() for a in got))) == ref40[r]
  k_view = min(k, 100)
  ref = rerank.rerank_reference(queries, db[:100], k_view, keys=keys[:100])
  dv, iv, gv = rerank.rerank_index(queries, view, k_view, keys=keys[:100])
  for r in range(len(queries)):
    assert list(zip(dv[r].tolist(), iv[r].tolist(), gv[r].tolist())) == ref[r]


def test_rerank_is_not_file_order():
  """Catches a last tie-break by database position: the same cases stored
  in another order give the same ranked ids."""
  queries, db, keys, ids = _tied_problem(seed=1)
  perm = np.random.default_rng(0).permutation(len(ids))
  _, i1, _ = rerank.rerank_topk(queries, db, 20, keys=keys)
  _, i2, _ = rerank.rerank_topk(queries, db[perm], 20, keys=keys[perm])
  np.testing.assert_array_equal(np.asarray(ids)[i1],
                                np.asarray(ids)[perm][i2])
  for bad in (0, len(ids) + 1):
    with pytest.raises(ValueError, match=f"k={bad}"):
      rerank.rerank_topk(queries, db, bad, keys=keys)


# -- what a run writes, and open_run -----------------------------------------------


def test_run_files_and_headline(run):
  """Catches: results.json's headline taken from index-ordered metrics, or a
  run that does not record its selected step / thumbnails."""
  wd = run["workdir"]
  head = run["results"]["headline"]
  assert head and all(k.endswith("/tie_aware") for k in head)
  with open(os.path.join(wd, loop.RESULTS_FILE)) as f:
    assert json.load(f)["headline"] == pytest.approx(head)
  rec = run_files.load_record(wd)
  assert rec["model_step"] == SELECTED and rec["num_bits"] == 16
  assert rec["preprocessing"] == {"image_size": 28, "channels": 1,
                                  "normalize": "half",
                                  "resize": rec["preprocessing"]["resize"]}
  r = systems.open_run(wd)
  info = r.info
  assert info["num_cases"] == 546 and info["model_step"] == SELECTED
  assert info["class_names"] == ["malignant", "normal, benign"]
  hit = r.search(r.encode_images(run["images"][:1]), 3)[0][0]
  assert set(hit) == {"rank", "id", "distance", "tie_group", "name", "labels",
                      "path"}
  assert r.case(hit["id"])["labels"] == hit["labels"]
  assert r.thumbnail(hit["id"]).startswith(b"\x89PNG")
  with pytest.raises(KeyError):
    r.case("no such case")
  with pytest.raises(KeyError):
    r.thumbnail("no such case")
  assert r.explain(run["images"][0]) is None       # not a Grad-CAM system
  for bad in (0, 547):
    with pytest.raises(ValueError, match=f"k={bad}"):
      r.search(r.encode_images(run["images"][:1]), bad)


def test_export_load_gives_the_selected_models_codes(run, tmp_path):
  """Catches an export (or open_run) that takes the last checkpoint's
  parameters instead of the selected ones (best/)."""
  wd, images = run["workdir"], run["images"]
  live = _live_codes(run["config"], wd, images)
  last = _live_codes(run["config"], wd, images, step=LAST)
  assert np.abs(live - last).max() > 1e-3     # the two models differ
  out = str(tmp_path / "bundle")
  systems.open_run(wd).export(out)
  b = systems.open_run(out)
  assert b.info["kind"] == "bundle" and b.info["model_step"] == SELECTED
  np.testing.assert_allclose(b.encode_images(images), live, atol=1e-5)
  np.testing.assert_allclose(systems.open_run(wd).encode_images(images), live,
                             atol=1e-5)
  q = b.encode_images(images)
  assert b.search(q, 5) == systems.open_run(wd).search(q, 5)
  with pytest.raises(FileExistsError):
    systems.open_run(wd).export(out)        # never overwritten


@pytest.mark.parametrize("damage", ["flip", "truncate", "version", "missing"])
def test_damaged_bundle_refused(run, tmp_path, damage):
  """Catches a loader that skips the checksum, size or version check."""
  out = str(tmp_path / "bundle")
  systems.open_run(run["workdir"]).export(out)
  target = os.path.join(out, bundle_lib.VARIABLES_FILE)
  if damage == "flip":
    with open(target, "r+b") as f:
      f.seek(100)
      byte = f.read(1)
      f.seek(100)
      f.write(bytes([byte[0] ^ 1]))
  elif damage == "truncate":
    with open(target, "r+b") as f:
      f.truncate(os.path.getsize(target) - 10)
  elif damage == "missing":
    os.remove(target)
  else:
    target = os.path.join(out, bundle_lib.MANIFEST)
    m = run_files.read_json(target)
    m["version"] = bundle_lib.VERSION + 1
    run_files.write_json(target, m)
  with pytest.raises(bundle_lib.BundleError, match=os.path.basename(target)):
    systems.open_run(out)


def test_add_cases_persist_atomically_and_search_sees_them(run, tmp_path,
                                                           monkeypatch):
  """Catches: added cases not persisted (gone on reopen), a duplicate id
  accepted, a failed write that still swaps the snapshot in, or a search
  racing add_cases that sees a torn database."""
  wd = str(tmp_path / "copy")
  shutil.copytree(run["workdir"], wd)
  r = systems.open_run(wd)
  img = run["images"][:2]
  n = r.add_cases(img, ["new-0", "new-1"], [["malignant"], []])
  assert n == 548 and r.info["num_cases"] == 548
  q = r.encode_images(img[:1])
  assert "new-0" in [h["id"] for h in r.search(q, 548)[0]
                     if h["distance"] == 0]
  assert r.case("new-0")["labels"] == ["malignant"]
  assert r.thumbnail("new-1").startswith(b"\x89PNG")
  with pytest.raises(ValueError, match="new-0"):
    r.add_cases(img[:1], ["new-0"], [[]])
  with pytest.raises(ValueError, match="unknown class"):
    r.add_cases(img[:1], ["new-2"], [["Normal"]])
  again = systems.open_run(wd)
  assert again.info["num_cases"] == 548 and again.case("new-1")["id"] == "new-1"
  # Append-only: one segment per add, earlier segments never rewritten.
  segs = added_cases.segment_paths(wd)
  assert [os.path.basename(p) for p in segs] == ["segment-000001.npz"]
  before = {p: open(p, "rb").read() for p in segs}
  # A crash while persisting: old segments intact, the case absent everywhere.
  real_replace = os.replace

  def crash(src, dst):
    if os.path.basename(dst).startswith("segment-"):
      raise OSError("disk full")
    return real_replace(src, dst)

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(OSError):
    r.add_cases(img[:1], ["new-3"], [[]])
  monkeypatch.setattr(os, "replace", real_replace)
  assert added_cases.segment_paths(wd) == segs
  assert {p: open(p, "rb").read() for p in segs} == before
  with pytest.raises(KeyError):
    r.case("new-3")
  assert systems.open_run(wd).info["num_cases"] == 548
  r.add_cases(run["images"][2:3], ["new-3"], [["malignant"]])   # id free again
  assert len(added_cases.segment_paths(wd)) == 2
  assert {p: open(p, "rb").read() for p in segs} == before
  # Searches while cases are appended: every answer is a whole database.
  errors = []

  def searcher():
    for _ in range(30):
      snap_hits = r.search(q, 5)[0]
      try:
        for h in snap_hits:
          r.case(h["id"])
        assert [h["rank"] for h in snap_hits] == [1, 2, 3, 4, 5]
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)

  t = threading.Thread(target=searcher)
  t.start()
  for j in range(5):
    r.add_cases(img[:1], [f"more-{j}"], [[]])
  t.join()
  assert not errors and r.info["num_cases"] == 554


def test_added_segments_verified_legacy_read_and_exported(run, tmp_path):
  """Append-only segments (systems/added_cases.py). Catches: a damaged
  segment skipped (cases silently gone) or deleted instead of refused naming
  the file; a segment renamed into another's place accepted; the old single
  `added_cases.npz` no longer read; `add_codes` accepting codes of the wrong
  width; an export that drops the added cases."""
  wd = str(tmp_path / "copy")
  shutil.copytree(run["workdir"], wd)
  r = systems.open_run(wd)
  rng = np.random.default_rng(3)
  codes = rng.standard_normal((5, r.num_bits)).astype(np.float32)
  with pytest.raises(ValueError, match=r"\(5, 3\)"):
    r.add_codes(codes[:, :3], [f"c{j}" for j in range(5)])
  assert r.add_codes(codes[:3], ["c0", "c1", "c2"],
                     [["malignant"], [], ["normal, benign"]]) == 549
  assert r.add_codes(np.asarray(pack_codes(codes[3:])), ["c3", "c4"]) == 551
  with pytest.raises(ValueError, match="c4"):
    r.add_codes(codes[:1], ["c4"])
  segs = added_cases.segment_paths(wd)
  assert [os.path.basename(p) for p in segs] == ["segment-000001.npz",
                                                 "segment-000002.npz"]
  again = systems.open_run(wd)
  assert again.info["num_cases"] == 551
  assert again.case("c0")["labels"] == ["malignant"]
  hits = again.search(codes, 551)
  for j, row in enumerate(hits):
    assert f"c{j}" in [h["id"] for h in row if h["distance"] == 0]
  # Export folds the added cases into the bundle's own index.
  out = str(tmp_path / "bundle")
  again.export(out)
  b = systems.open_run(out)
  assert b.info["num_cases"] == 551 and b.case("c2")["labels"] == ["normal, benign"]
  assert not added_cases.segment_paths(out)
  # A snapshot taken before an add keeps its database (what a search that
  # started earlier holds): not the new case, not the new length.
  snap = again._snap  # pylint: disable=protected-access
  want = again.search(codes[:2], 20)
  again.add_codes(codes[:1], ["late"])
  assert len(snap) == len(snap.index) == 551
  with pytest.raises(KeyError):
    snap.position("late")
  again._snap, live = snap, again._snap  # pylint: disable=protected-access
  assert again.search(codes[:2], 20) == want
  again._snap = live  # pylint: disable=protected-access
  assert "late" in [h["id"] for h in again.search(codes[:1], 552)[0]]
  # A damaged segment (one flipped byte, then a truncation) refuses the run,
  # naming the file, and is left in place.
  good = open(segs[1], "rb").read()
  for damaged in (good[:len(good) // 2] + bytes([good[len(good) // 2] ^ 1]) +
                  good[len(good) // 2 + 1:], good[:-7]):
    with open(segs[1], "wb") as f:
      f.write(damaged)
    with pytest.raises(bundle_lib.BundleError, match="segment-000002.npz"):
      systems.open_run(wd)
    assert open(segs[1], "rb").read() == damaged
  # A segment copied over another number is refused too.
  shutil.copy(segs[0], segs[1])
  with pytest.raises(bundle_lib.BundleError, match="segment 1, its name says 2"):
    systems.open_run(wd)
  # The format before segments: one added_cases.npz, still read (first).
  legacy = str(tmp_path / "legacy")
  shutil.copytree(run["workdir"], legacy)
  pngs = [b"\x89PNG-not-checked", b""]
  np.savez(os.path.join(legacy, "added_cases.npz"),
           packed=np.asarray(pack_codes(codes[:2]), np.uint32),
           ids=np.asarray(["old-0", "old-1"]), names=np.asarray(["A", "B"]),
           labels=np.asarray([[0, 1], [1, 0]], np.float32),
           paths=np.asarray(["", ""]), num_bits=np.int64(r.num_bits),
           png=np.frombuffer(b"".join(pngs), np.uint8),
           offsets=np.asarray([0, len(pngs[0]), len(pngs[0])], np.int64))
  old = systems.open_run(legacy)
  assert old.info["num_cases"] == 548 and old.case("old-1")["name"] == "B"
  assert old.case("old-0")["labels"] == [old.class_names[1]]
  old.add_codes(codes[2:3], ["new"])
  assert systems.open_run(legacy).info["num_cases"] == 549
  with pytest.raises(ValueError, match="old-0"):
    old.add_codes(codes[2:3], ["old-0"])


# -- config classes -------------------------------------------------------------------


def test_config_classes_at_inference_and_on_resume(run, tmp_path):
  """Catches: a model key accepted at inference, an operational key refused
  (data.skip_bad, the issue's example), advice to delete checkpoints, and a
  resume refused because the data folder moved."""
  wd = run["workdir"]
  with pytest.raises(ckpt_lib.ConfigMismatchError) as e:
    inference.run_config(wd, settings=[("model.kwargs.width", 16)])
  msg = str(e.value)
  assert "model.kwargs.width (model key)" in msg and "delete" not in msg
  with pytest.raises(ckpt_lib.ConfigMismatchError, match="num_bits"):
    inference.run_config(wd, _config(run["data"], num_bits=32))
  c = inference.run_config(wd, settings=[("data.skip_bad", True),
                                         ("data.eval_batch_size", 64)])
  assert c.data.skip_bad and c.data.eval_batch_size == 64
  assert inference.run_config(wd, _config(run["data"], **{
      "data.skip_bad": True, "optim.learning_rate": 0.5})).data.skip_bad
  # The data set moved: a resume in the new place continues the run.
  moved = str(tmp_path / "moved_data")
  shutil.copytree(run["data"], moved)
  wd2 = str(tmp_path / "resume")
  shutil.copytree(wd, wd2)
  # --mode=evaluate with no --config: the saved one, the data root moved.
  again = inference.evaluate(wd2, settings=[("data.root", moved)])
  assert again["metrics"]["test"] == pytest.approx(
      run["results"]["metrics"]["test"], abs=1e-6)
  res = train.train_and_evaluate(_config(moved, **{"train.num_steps": 10}),
                                 wd2)
  assert res["train"]["resumed_from"] == f"workdir checkpoint step {LAST}"
  assert res["train"]["steps"] == 10


# -- the CLI on a copied run, with no data set --------------------------------------


def _cli(args, cwd, env_extra=None):
  env = {k: v for k, v in os.environ.items() if k != "MEDHASH_DATA_DIR"}
  env["PYTHONPATH"] = _REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", "medhash_jax.main", *args],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=600)


def test_cli_search_and_encode_copied_run_without_data(run, tmp_path):
  """Acceptance: train with overrides, copy the workdir, delete the data:
  encode and search need only --workdir and --input, use the selected model,
  write the documented JSON, skip bad files only with --skip_bad.
  Catches a search that rebuilds the data pipeline or needs --config."""
  from PIL import Image
  wd = str(tmp_path / "elsewhere" / "run")
  shutil.copytree(run["workdir"], wd)
  queries = tmp_path / "queries"
  queries.mkdir()
  for i, img in enumerate(run["images"][:3]):
    Image.fromarray(img[..., 0]).save(queries / f"q{i}.png")
  (queries / "broken.png").write_bytes(b"not a png")
  hidden = str(tmp_path / "hidden_data")
  os.rename(run["data"], hidden)   # the data set is nowhere to be found
  try:
    _copied_run_checks(run, wd, queries, tmp_path)
  finally:
    os.rename(hidden, run["data"])


def _copied_run_checks(run, wd, queries, tmp_path):
  from PIL import Image
  # Default: fail naming the file (in-process; same code path).
  with pytest.raises(ValueError, match="broken.png"):
    inference.search(None, wd, input_spec=str(queries), k=5)
  p = _cli([f"--workdir={wd}", "--mode=search", f"--input={queries}",
            "--k=5", "--skip_bad", f"--gallery={tmp_path / 'g.html'}"],
           cwd=str(tmp_path))
  assert p.returncode == 0, p.stderr[-3000:]
  assert "broken.png" in p.stdout and "tie" in p.stdout
  with open(os.path.join(wd, "search.json")) as f:
    doc = json.load(f)
  assert doc["schema"] == inference.SCHEMA and doc["k"] == 5
  assert doc["run"]["model_step"] == SELECTED
  assert [s["path"].endswith("broken.png") for s in doc["skipped"]] == [True]
  assert len(doc["results"]) == 3
  for res in doc["results"]:
    assert set(res) == {"query", "hits"} and len(res["hits"]) == 5
    for h in res["hits"]:
      assert set(h) >= {"rank", "id", "distance", "tie_group", "name",
                        "labels"}
  assert (tmp_path / "g.html").read_text().count("<img") == 3 * 6
  # The codes are the selected model's: same hits as in-process.
  r = systems.open_run(wd)
  files = [np.asarray(Image.open(queries / f"q{i}.png"))[..., None]
           for i in range(3)]
  assert [res["hits"] for res in doc["results"]] == r.search(
      r.encode_images(files), 5)
  p = _cli([f"--workdir={wd}", "--mode=encode", f"--input={queries}",
            "--skip_bad"], cwd=str(tmp_path))
  assert p.returncode == 0, p.stderr[-3000:]
  summary = json.loads(p.stdout.strip().splitlines()[-1])
  assert summary["count"] == 3 and summary["model_step"] == SELECTED


def test_search_output_rules(run, tmp_path, capsys):
  """Catches: an earlier output overwritten, --k beyond the database
  clamped, and a table that prints every hit of many queries."""
  from PIL import Image
  wd = str(tmp_path / "run")
  shutil.copytree(run["workdir"], wd)
  queries = tmp_path / "q"
  queries.mkdir()
  for i in range(12):
    Image.fromarray(run["images"][i % 6][..., 0]).save(queries / f"q{i}.png")
  with pytest.raises(ValueError, match="--k=547"):
    inference.search(None, wd, input_spec=str(queries), k=547)
  inference.search(None, wd, input_spec=str(queries), k=10)
  inference.search(None, wd, input_spec=str(queries), k=10)
  assert os.path.exists(os.path.join(wd, "search.json"))
  assert os.path.exists(os.path.join(wd, "search_2.json"))
  with pytest.raises(FileExistsError, match="search.json"):
    inference.search(None, wd, input_spec=str(queries), k=3,
                     output=os.path.join(wd, "search.json"))
  out = capsys.readouterr().out
  assert len(out.strip().splitlines()) < 40          # not 12 x 10 hit lines
