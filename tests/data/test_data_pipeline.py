"""Grain pipelines: pad+mask coverage, determinism, sharding, checkpoints,
triplets, two-view mask-and-crop, skip_bad."""

import logging

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from medhash_jax import data
from medhash_jax.data import pipeline
from medhash_jax.data.records import BadRecordError
from medhash_jax.data.sampling import relevance
from medhash_jax.data.transforms import Preprocessor
from tests.data.conftest import ArraySource


def _cfg(**over):
  c = data.default_data_config()
  c.image_size = 8
  c.channels = 1
  c.normalize = "none"
  c.read_threads = 2
  c.prefetch_buffer_size = 8
  for k, v in over.items():
    setattr(c, k, v)
  return c


def _build(source, cfg=None, **kw):
  kw.setdefault("global_batch_size", 8)
  kw.setdefault("seed", 0)
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  return data.build_datasets(cfg or _cfg(), workdir=None, source=source, **kw)


def _pixel_ids(images):
  """ArraySource writes index % 256 into every pixel; read it back."""
  return np.rint(images[:, 0, 0, 0] * 255).astype(int)


@pytest.mark.parametrize("n,procs", [(1, 1), (37, 1), (37, 2), (64, 4), (45, 4)])
def test_eval_pad_and_mask_covers_every_item_once(n, procs):
  src = ArraySource(n=n)
  idx = np.arange(n)
  pre = Preprocessor(image_size=8, channels=1, normalize="none")
  seen, num_batches = [], set()
  for p in range(procs):
    ev = pipeline.EvalDataset("database", pipeline.ExampleLoader(src, idx, pre),
                              global_batch_size=8, process_index=p,
                              process_count=procs, read_threads=1)
    batches = list(ev)
    assert len(batches) == ev.num_batches == -(-n // 8)
    num_batches.add(len(batches))
    for b in batches:
      assert b["image"].shape == (8 // procs, 8, 8, 1)
      v = b["valid"]
      assert (b["index"][~v] == -1).all() and (b["image"][~v] == 0).all()
      np.testing.assert_array_equal(_pixel_ids(b["image"][v]), b["index"][v] % 256)
      np.testing.assert_array_equal(b["labels"][v], src.labels[b["index"][v]])
      seen.extend(b["index"][v].tolist())
  assert len(num_batches) == 1  # every process runs the same number of steps
  assert sorted(seen) == list(range(n))  # each exactly once


def test_eval_global_batch_order_is_position_order():
  src = ArraySource(n=20)
  pre = Preprocessor(image_size=8, channels=1, normalize="none")
  per_proc = [list(pipeline.EvalDataset(
      "q", pipeline.ExampleLoader(src, np.arange(20), pre), global_batch_size=8,
      process_index=p, process_count=2, read_threads=1)) for p in range(2)]
  glued = np.concatenate([np.concatenate([per_proc[p][k]["index"] for p in range(2)])
                          for k in range(3)])
  np.testing.assert_array_equal(glued[:20], np.arange(20))


def test_seeded_iteration_is_deterministic():
  src = ArraySource(n=60, size=16)
  cfg = _cfg()
  a = _build(src, cfg, seed=7)
  b = _build(src, cfg, seed=7)
  c = _build(src, cfg, seed=8)
  for _ in range(10):  # > one epoch (54 train images / 8)
    x, y, z = next(a.train_iter), next(b.train_iter), next(c.train_iter)
    np.testing.assert_array_equal(x["index"], y["index"])
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not np.array_equal(x["index"], z["index"])


def test_crop_and_flip_keep_content_rotation_pads():
  src = ArraySource(n=60, size=16)
  cfg = _cfg()
  cfg.augment.rotate_degrees = 0.0
  b = next(_build(src, cfg).train_iter)
  assert b["image"].shape == (8, 8, 8, 1) and b["valid"].all()
  # Each synthetic image is constant: crops and flips never pad, so the value
  # survives and still identifies the record.
  assert np.allclose(b["image"].std(axis=(1, 2, 3)), 0, atol=1e-6)
  np.testing.assert_array_equal(_pixel_ids(b["image"]),
                                _build(src, cfg).splits.train[b["index"]] % 256)


def test_per_process_slices_are_disjoint_within_an_epoch():
  n, procs = 48, 2
  src = ArraySource(n=n)
  cfg = _cfg(val_fraction=0.0001, split="seed", split_ratios=(1.0, 6.0, 1.0))
  seen = []
  for p in range(procs):
    ds = _build(src, cfg, global_batch_size=4, process_index=p, process_count=procs)
    n_train = ds.split_sizes["train"]
    k = n_train // procs // 2  # batches of 2 per process, half an epoch each
    pos = np.concatenate([next(ds.train_iter)["index"] for _ in range(k)])
    seen.append(set(pos.tolist()))
  assert not seen[0] & seen[1]


def test_iterator_state_roundtrip():
  ds = _build(ArraySource(n=60))
  it = ds.train_iter
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it)["index"] for _ in range(4)]
  it.set_state(state)
  got = [next(it)["index"] for _ in range(4)]
  for w, g in zip(want, got):
    np.testing.assert_array_equal(w, g)


@pytest.mark.parametrize("workers", [0, 2])
def test_orbax_checkpoint_of_iterator(tmp_path, workers):
  src = ArraySource(n=60)
  ds = _build(src, _cfg(num_workers=workers, worker_buffer_size=1))
  it = ds.train_iter
  mgr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  try:
    for _ in range(3):
      next(it)
    mgr.save(3, args=ocp.args.Composite(
        data_iter=grain.checkpoint.CheckpointSave(it)), force=True)
    mgr.wait_until_finished()
    want = [next(it)["index"] for _ in range(3)]
    fresh = iter(ds.train)
    mgr.restore(3, args=ocp.args.Composite(
        data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    got = [next(fresh)["index"] for _ in range(3)]
    for w, g in zip(want, got):
      np.testing.assert_array_equal(w, g)
  finally:
    mgr.close()
    ds.close()
    if workers:
      fresh.close()


def test_triplet_sampling_multilabel_relevance():
  src = ArraySource(n=80, num_classes=5, multi_label=True)
  ds = _build(src, _cfg(sampling="triplet"))
  for _ in range(5):
    b = next(ds.train_iter)
    ok = b["triplet_valid"]
    assert ok.any()
    a, p, n = b["labels"], b["pos_labels"], b["neg_labels"]
    for i in np.nonzero(ok)[0]:
      if a[i].sum() == 0:   # "no label" pseudo-class
        assert p[i].sum() == 0 and n[i].sum() > 0
      else:
        assert relevance(a[i:i + 1], p[i:i + 1])[0, 0]
        assert not relevance(a[i:i + 1], n[i:i + 1])[0, 0]
    assert b["pos_image"].shape == b["image"].shape
  assert set(ds.example_batch()) == set(b)


def test_two_view_mask_and_crop(tmp_path):
  src = ArraySource(n=30, size=16)
  for i, rid in enumerate(src.ids):
    m = np.zeros((16, 16), bool)
    if i % 3:  # every third mask is empty -> full-image fallback
      m[4:8, 2:12] = True
    data.save_mask(str(tmp_path), rid, m)
  cfg = _cfg(mask_dir=str(tmp_path), mask_margin=0.0)
  ds = _build(src, cfg)
  b = next(ds.train_iter)
  assert b["local_image"].shape == b["image"].shape
  ev = list(ds.eval["database"])[0]
  fb = ev["local_fallback"][ev["valid"]]
  idx = ev["index"][ev["valid"]]
  src_idx = ds.splits.database[idx]
  np.testing.assert_array_equal(fb, src_idx % 3 == 0)
  assert set(ds.example_batch()) == set(b)


class _BadSource(ArraySource):
  bad_index = -1

  def read_image(self, index):
    if index == self.bad_index:
      raise BadRecordError("cannot decode image (truncated)",
                           file=f"/x/img{index}.png", row="line 7 of labels.csv")
    return super().read_image(index)


def test_skip_bad_in_pipelines(caplog):
  src = _BadSource(n=40)
  cfg = _cfg(split_ratios=(1.0, 30.0, 1.0), val_fraction=0.0001)
  ds = _build(src, cfg)
  src.bad_index = bad = int(ds.splits.train[3])
  with pytest.raises(BadRecordError, match=rf"img{bad}\.png, line 7 of labels\.csv"):
    for _ in range(20):
      next(ds.train_iter)
  cfg.skip_bad = True
  ds = _build(src, cfg)
  with caplog.at_level(logging.WARNING):
    for _ in range(12):  # > 2 epochs
      b = next(ds.train_iter)
      assert b["valid"].all() and b["index"].shape == (8,)
      assert 3 not in b["index"]
    ev = list(ds.eval["train"])
  assert "skipping bad record" in caplog.text and f"img{bad}.png" in caplog.text
  valid = np.concatenate([x["index"][x["valid"]] for x in ev])
  assert 3 not in valid and valid.size == ds.split_sizes["train"] - 1


def test_build_on_staged_breastmnist(data_dir, tmp_path):
  cfg = data.default_data_config()
  cfg.root = data_dir
  cfg.download = False
  cfg.split = "official"
  ds = data.build_datasets(cfg, workdir=str(tmp_path), global_batch_size=16,
                           seed=0, image_size=32, process_index=0, process_count=1)
  assert ds.num_classes == 2 and ds.split_sizes["query"] == 156
  b = next(ds.train_iter)
  assert b["image"].shape == (16, 32, 32, 3) and b["image"].dtype == np.float32
  # Gray -> RGB repeats the channel (before per-channel normalisation).
  std = np.array([0.229, 0.224, 0.225])
  mean = np.array([0.485, 0.456, 0.406])
  raw = b["image"] * std + mean
  np.testing.assert_allclose(raw[..., 0], raw[..., 1], atol=1e-5)
  assert {k: v.shape for k, v in ds.example_batch().items()} == {
      k: v.shape for k, v in b.items()}
  assert ds.eval["test"] is ds.eval["query"] and len(ds.eval["query"]) == 10
  assert (tmp_path / "splits" / "breastmnist-official-seed0.npz").is_file()
  with pytest.raises(ValueError, match="not divisible"):
    data.build_datasets(cfg, workdir=None, global_batch_size=10, seed=0,
                        process_index=0, process_count=4)
  ds.close()


def test_locked_config_default_process_info_and_eval_workers(data_dir):
  cfg = data.default_data_config()
  cfg.root = data_dir
  cfg.download = False
  cfg.image_size = 16
  cfg.num_workers = 2
  cfg.lock()
  with pytest.raises(AttributeError):
    cfg.no_such_key = 1
  ds = data.build_datasets(cfg, workdir=None, global_batch_size=64, seed=0)
  try:
    assert (ds.process_index, ds.process_count) == (0, 1)  # from jax
    ev = ds.eval["query"]
    idx = np.concatenate([b["index"][b["valid"]] for b in ev])
    np.testing.assert_array_equal(idx, np.arange(ev.size))  # order kept
  finally:
    ds.close()
