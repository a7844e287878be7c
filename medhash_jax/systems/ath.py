"""ATH-GradCAM end to end (Zhu et al. 2022): classifier -> masks -> hashing.

    stage 1  DenseNet-121 classifier (sigmoid BCE / softmax CE, Adam 1e-4)
             -> {stage_dir}/classifier/checkpoints
    stage 2  Grad-CAM (jax.vjp) of the classifier on every split, Otsu (jnp)
             -> binary masks, one cache per class mode and split:
                {stage_dir}/masks/{true|predicted}/{split}.npy (+ .ids.json)
             -> the data layer's per-split mask folders
                {stage_dir}/masks/local_view/{split}/
             -> Grad-CAM overlays of a sample of queries {workdir}/gradcam/
    stage 3  the two-branch hash network on (x, x') with the `ath` loss:
             `train.train_and_evaluate` on the config without its `ath`
             section and with data.mask_dir = the local-view folder.

The attention must be able to localise: before stage 1,
`check_cam_resolution` traces the classifier at its image size and refuses a
Grad-CAM map under `ath.cam.min_cells` (7) cells a side (the paper's
DenseNet-121 at 224 px gives 7x7; a 64 px image through the standard stem
gives 2x2, where every mask is a quarter of the image). `ath.cam.layer`
names an earlier block to read instead. Every run reports per split the mask
area and the fallbacks (empty masks: the local view is the full image), and,
where the data set has boxes (`ath.cam.boxes`, `box_file`), the localisation
metrics of `cam.localization` (`localize`), all in `ath_stages.json`.

`stage_dir` is the workdir unless `ath.stage_dir` names another folder
(the experiment suites share one classifier and its masks between the runs of
different code lengths).

Reuse: a finished classifier checkpoint is reused (an interrupted one
resumes), a mask cache whose ids, classifier step, class mode and image size
match is reused (a mismatch raises: delete the folder to recompute), and stage
3 resumes from the workdir's checkpoints like any run.

Class modes (`ath.cam.modes`): by default Grad-CAM weights the classes of the
true labels on the splits the model learns from and searches in (train,
database) and the predicted classes on the splits that play the query (val,
query), as at test time the query's labels are unknown. The two sides are
then built differently; `ath.cam.modes.train = ath.cam.modes.database =
"predicted"` (configs/ath.py:cam_predicted) builds every mask the way a query's
is. The modes and the CAM layer go into stage 3's `data.mask_origin` (a MODEL
key), so a run is never resumed or served with masks made otherwise.

The local view of stage 3 is `data.local_view` (data/mask_crop.py):
"multiply" (x' = Mask * x at the full frame, the paper's Eq. 4) or
"mask_and_crop"; the data layer and the query-time `FileLocalViews` (and the
retriever, from the run's inference record) build the same one.

The local views are the data layer's per-split mask layout
(`data.mask_crop`): `{local_view}/{split}/{id}.png`, so a record in two
splits (e.g. under the "deephash" protocol, where the train images are drawn
from the database) keeps the mask of each split's class mode.
"""

import json
import os
import shutil
import time
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np

from medhash_jax import cam
from medhash_jax.data import boxes as boxes_lib
from medhash_jax.data import mask_crop
from medhash_jax.systems import classifier as classifier_lib
from medhash_jax.train import mesh as mesh_lib

SECTION = "ath"
SPLITS = ("train", "val", "query", "database")
LOCAL_VIEW_DIR = "local_view"
MANIFEST = "manifest.json"
STAGES_FILE = "ath_stages.json"


def default_section() -> ml_collections.ConfigDict:
  """The `ath` section of a config (configs/ath.py overrides it)."""
  return ml_collections.ConfigDict(dict(
      stage_dir="",   # "" = the workdir; else a folder shared between runs
      classifier=dict(
          model="densenet121_classifier",
          kwargs=dict(small_input=False),
          image_size=0,          # 0 = data.image_size
          num_steps=2000,
          batch_size=32,
          optimizer="adam", learning_rate=1e-4, b1=0.9, b2=0.999, eps=1e-8,
          momentum=0.9, weight_decay=0.0, schedule="constant",
          # "" = random weights; else an orbax checkpoint or a torchvision
          # DenseNet-121 .pth/.safetensors (models/convert.py), weights only.
          init_from="",
          log_every_steps=50, checkpoint_every_steps=500),
      cam=dict(
          modes=dict(train="true", val="predicted", query="predicted",
                     database="true"),
          # "" = the classifier's last feature map (the paper); else a
          # submodule name, e.g. "denseblock3" (cam.make_cam_fn's `layer`).
          layer="",
          # The map Grad-CAM reads must have >= min_cells a side at the
          # classifier's image size (checked before anything is trained).
          min_cells=cam.MIN_CAM_CELLS,
          # Ground-truth boxes for the localisation metrics: "" = the
          # dataset's own when it has them (ChestX-ray14's
          # BBox_List_2017.csv), "none" = off, else a path (NIH CSV or COCO
          # JSON).
          boxes="",
          num_overlays=16),
  ))


def classifier_image_size(config) -> int:
  return int(config[SECTION].classifier.image_size or config.data.image_size)


def cam_layer(config) -> Optional[str]:
  return str(config[SECTION].cam.get("layer", "")) or None


def check_cam_resolution(config, num_classes: int = 2) -> Tuple[int, int]:
  """The (h, w) grid Grad-CAM reads at the classifier's image size; raises
  cam.CamResolutionError below `ath.cam.min_cells` a side.

  The grid does not depend on the class count; the shapes are traced
  (jax.eval_shape), nothing is computed.
  """
  from medhash_jax import models  # pylint: disable=g-import-not-at-top
  sec = config[SECTION]
  size = classifier_image_size(config)
  model = models.get_model(sec.classifier.model, num_classes=num_classes,
                           **dict(sec.classifier.kwargs.to_dict()))
  layer = cam_layer(config)
  grid = cam.cam_grid(model, (size, size, int(config.data.channels)),
                      layer=layer, apply_kwargs={"train": False})
  cam.check_cam_resolution(
      grid, size, min_cells=int(sec.cam.get("min_cells", cam.MIN_CAM_CELLS)),
      layer=layer or "",
      where=f"{sec.classifier.model}({dict(sec.classifier.kwargs.to_dict())})")
  return grid


def is_ath(config) -> bool:
  return SECTION in config


def stage_dir(config, workdir: str) -> str:
  return os.path.abspath(config[SECTION].stage_dir or workdir)


def local_view_dir(config, workdir: str) -> str:
  return os.path.join(stage_dir(config, workdir), "masks", LOCAL_VIEW_DIR)


def cam_modes(config) -> Dict[str, str]:
  """{split: "true" | "predicted"}: the Grad-CAM classes of each split's
  masks (`ath.cam.modes`; see the module docstring)."""
  modes = dict(config[SECTION].cam.modes.to_dict())
  missing = [s for s in SPLITS if s not in modes]
  if missing:
    raise ValueError(f"ath.cam.modes lacks {missing}")
  for split, mode in modes.items():
    if mode not in cam.CLASS_MODES:
      raise ValueError(f"ath.cam.modes.{split}={mode!r}; expected one of "
                       f"{cam.CLASS_MODES}")
  return modes


def mask_origin(config) -> str:
  """Stage 3's `data.mask_origin` (a MODEL key): the class modes and layer
  its masks were made with, so a run is never resumed or served with masks
  made otherwise (e.g. database masks of predicted instead of true classes)."""
  modes = cam_modes(config)
  return ("ath grad-cam " + " ".join(f"{s}={modes[s]}" for s in SPLITS) +
          f" layer={cam_layer(config) or 'last'}")


def hash_config(config, workdir: str, *,
                multi_label: Optional[bool] = None
                ) -> ml_collections.ConfigDict:
  """Stage 3's config: `config` without the `ath` section, reading the local
  views from the stage-2 folder; a locked copy.

  Args:
    multi_label: the dataset's kind, when known, written into the loss's
      `multi_label` hyper-parameter (BCE for multi-label data, softmax CE
      otherwise) if the loss has one.
  """
  d = config.to_dict()
  d.pop(SECTION, None)
  c = ml_collections.ConfigDict(d)
  c.data.mask_dir = local_view_dir(config, workdir)
  c.data.resize_masks = True   # masks are at the classifier's input size
  c.data.mask_origin = mask_origin(config)
  if multi_label is not None and "multi_label" in c.loss.kwargs:
    if bool(c.loss.kwargs.multi_label) != bool(multi_label):
      logging.info("ath: loss.kwargs.multi_label=%s to match the dataset",
                   bool(multi_label))
    c.loss.kwargs.multi_label = bool(multi_label)
  c.lock()
  return c


# ---------------------------------------------------------------------------
# Stage 2: masks
# ---------------------------------------------------------------------------


def _check_meta(root: str, split: str, meta: Dict[str, Any]):
  path = cam.masks.ids_path(root, split)
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    stored = json.load(f).get("meta", {})
  diff = {k: (stored.get(k), v) for k, v in meta.items() if stored.get(k) != v}
  if diff:
    raise cam.MaskCacheError(
        f"{path}: masks made under other settings {diff} (stored, now); "
        f"delete {root} to recompute them")


def make_masks(get_clf: Callable[[], classifier_lib.Classifier], ds,
               classifier_step: int, modes: Dict[str, str], root: str,
               layer: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
  """Grad-CAM + Otsu masks of every split (cached); returns per-split info:
  "mask_area" (mean share of the image in the mask) and "fallbacks" (empty
  masks: the data layer's local view is then the full image).

  `get_clf()` builds (or restores) the classifier; it is only called when a
  split's masks have to be computed. `layer`: see `cam.make_cam_fn`.
  """
  cam_fns = {}

  def compute(split, mode):
    clf = get_clf()
    if mode not in cam_fns:
      cam_fns[mode] = cam.make_cam_fn(
          clf.model, clf.variables, layer=layer, mode=mode,
          multi_label=ds.multi_label, apply_kwargs={"train": False})
    eds = ds.eval[split]
    return cam.compute_masks(
        cam_fns[mode], eds, num_examples=eds.size,
        put_fn=lambda x: mesh_lib.shard_batch(np.asarray(x), clf.mesh))

  info = {}
  for split in SPLITS:
    mode = modes[split]
    if mode not in cam.CLASS_MODES:
      raise ValueError(f"ath.cam.modes.{split}={mode!r}; expected one of "
                       f"{cam.CLASS_MODES}")
    eval_ds = ds.eval[split]
    mode_root = os.path.join(root, mode)
    meta = {"mode": mode, "classifier_step": int(classifier_step),
            "image_size": int(ds.image_size), "cam_layer": layer or ""}
    _check_meta(mode_root, split, meta)
    t0 = time.perf_counter()
    masks, reused = cam.ensure_masks(
        mode_root, split, eval_ds.ids,
        lambda split=split, mode=mode: compute(split, mode), meta=meta)
    seconds = time.perf_counter() - t0
    timing = os.path.join(mode_root, f"{split}.timing.json")
    if not reused and jax.process_index() == 0:
      with open(timing, "w", encoding="utf-8") as f:
        json.dump({"compute_seconds": seconds}, f)
    compute_seconds = seconds
    if reused and os.path.exists(timing):
      with open(timing, encoding="utf-8") as f:
        compute_seconds = float(json.load(f)["compute_seconds"])
    empty = int(np.sum(~masks.reshape(len(masks), -1).any(1)))
    area = float(masks.mean()) if masks.size else 0.0
    info[split] = {"mode": mode, "count": int(eval_ds.size), "reused": reused,
                   "seconds": seconds, "compute_seconds": compute_seconds,
                   "empty": empty, "fallbacks": empty,
                   "foreground": area, "mask_area": area}
    logging.info("ath masks %s (%s labels): %d, %s in %.1f s, %d empty, "
                 "%.1f%% foreground", split, mode, eval_ds.size,
                 "reused" if reused else "computed", info[split]["seconds"],
                 info[split]["empty"], 100 * info[split]["foreground"])
  return info


def box_file(config, ds) -> Optional[str]:
  """The ground-truth box file of `ath.cam.boxes` ("" = the dataset folder's
  NIH box list when it has one; "none" = none)."""
  spec = str(config[SECTION].cam.get("boxes", ""))
  if spec == "none":
    return None
  if spec:
    if not os.path.isfile(spec):
      raise FileNotFoundError(f"ath.cam.boxes={spec!r}: no such file (a NIH "
                              "BBox_List_2017.csv[.gz] or a COCO .json)")
    return os.path.abspath(spec)
  d = getattr(ds.eval["query"].loader.source, "dir", None)
  return boxes_lib.find_nih_boxes(d) if d else None


def localize(get_clf: Callable[[], classifier_lib.Classifier], ds,
             modes: Dict[str, str], root: str, box_path: str,
             meta: Dict[str, Any], layer: Optional[str] = None,
             batch_size: int = 32) -> Dict[str, Dict[str, Any]]:
  """Localisation metrics (`cam.localization`) of every split's masks and
  heat maps against the boxes of `box_path`, for the records it annotates.

  The masks are the cached ones stage 3 reads; the heat maps are recomputed
  for the boxed records only (with the split's class mode). One JSON per
  split next to the masks, reused while `meta` and the box file match.
  """
  table = boxes_lib.read_boxes(box_path)
  st = os.stat(box_path)
  meta = dict(meta, boxes=box_path, boxes_bytes=int(st.st_size))
  out, cam_fns = {}, {}
  for split in SPLITS:
    mode, eds = modes[split], ds.eval[split]
    path = os.path.join(root, mode, f"{split}.localization.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        doc = json.load(f)
      if doc.get("meta") == meta:
        out[split] = doc["report"]
        continue
    matched = boxes_lib.match_ids(table, eds.ids)
    if not matched:
      out[split] = {"count": 0}
      continue
    masks = cam.load_masks(os.path.join(root, mode), split)
    size = masks.shape[1:]
    pos = np.array(sorted(matched))
    regions = np.stack([boxes_lib.box_mask(matched[p], size) for p in pos])
    clf = get_clf()
    if mode not in cam_fns:
      cam_fns[mode] = cam.make_cam_fn(
          clf.model, clf.variables, layer=layer, mode=mode,
          multi_label=ds.multi_label, apply_kwargs={"train": False})
    b = max(batch_size // clf.mesh.size, 1) * clf.mesh.size
    heat = np.zeros((pos.size,) + tuple(size), np.float32)
    for s0 in range(0, pos.size, b):   # fixed-shape padded batches: 1 compile
      chunk = pos[s0:s0 + b]
      ex = [eds.loader.example(int(p), None) for p in chunk]
      ex += [ex[-1]] * (b - len(chunk))
      images = np.stack([e["image"] for e in ex])
      labels = np.stack([e["labels"] for e in ex])
      h = cam_fns[mode](mesh_lib.shard_batch(images, clf.mesh),
                        mesh_lib.shard_batch(labels, clf.mesh)
                        if mode == "true" else None)
      heat[s0:s0 + len(chunk)] = np.asarray(h)[:len(chunk)]
    report = cam.localization_report(masks[pos], heat, regions)
    out[split] = report
    logging.info("ath localisation %s (%d boxed images): mask in box %.3f, "
                 "pointing %.3f, IoBB %.3f; chance (box share) %.3f", split,
                 report["count"], report["mask_in_box"], report["pointing"],
                 report["iobb"], report["area_share"])
    if jax.process_index() == 0:
      with open(path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "report": report}, f, indent=2)
  return out


def assemble_local_view_dir(root: str, ds, modes: Dict[str, str],
                            out_dir: str, meta: Dict[str, Any]
                            ) -> Dict[str, Any]:
  """Per-split, per-record PNGs for the data layer (`{out_dir}/{split}/`),
  each split's from its class mode's cache; skipped when the manifest
  matches. Written to a temporary folder and renamed, so an interrupted
  export never passes for a finished one."""
  manifest_path = os.path.join(out_dir, MANIFEST)
  want = {"layout": "per_split", "modes": dict(modes), **meta}
  if os.path.exists(manifest_path):
    with open(manifest_path, encoding="utf-8") as f:
      have = json.load(f)
    if {k: have.get(k) for k in want} == want:
      return have
    logging.info("ath: local-view masks made under other settings; rebuilding "
                 "%s", out_dir)
  tmp = out_dir + ".tmp"
  for d in (out_dir, tmp):  # stale, or interrupted before its manifest
    if os.path.exists(d):
      shutil.rmtree(d)
  counts = {}
  for split in SPLITS:
    ids = [str(i) for i in ds.eval[split].ids]
    masks = cam.load_masks(os.path.join(root, modes[split]), split, ids)
    cam.export_png_dir(os.path.join(tmp, split), ids, masks)
    counts[split] = len(ids)
  os.replace(tmp, out_dir)
  doc = dict(want, counts=counts)
  with open(manifest_path, "w", encoding="utf-8") as f:
    json.dump(doc, f, indent=2)
  return doc


def overlay_queries(ds, n: int):
  """Query positions that get overlays: spread over the classes, the same
  choice as the experiment gallery's."""
  from medhash_jax import report  # pylint: disable=g-import-not-at-top
  return report.spread_queries(ds.eval["query"].labels, n)


def overlay_names(ds, n: int) -> list:
  ids = ds.eval["query"].ids
  return [mask_crop.mask_key(str(ids[i])) for i in overlay_queries(ds, n)]


def write_query_overlays(clf: classifier_lib.Classifier, mode: str,
                         masks_root: str, out_dir: str, n: int,
                         layer: Optional[str] = None) -> list:
  """Grad-CAM overlays (heat map + Otsu outline) of n queries spread over
  the classes (`overlay_queries`):
  `{out_dir}/{id}.png` = [image | overlay], `{out_dir}/overlay/{id}.png` =
  the overlay alone (what the retrieval gallery shows)."""
  q = clf.ds.eval["query"]
  pick = overlay_queries(clf.ds, n)
  if pick.size == 0:
    return []
  examples = [q.loader.example(int(i), None) for i in pick]
  images = np.stack([e["image"] for e in examples])      # normalised: the CAM
  shown = np.stack([q.loader.display_image(int(i)) for i in pick])  # uint8
  labels = np.stack([e["labels"] for e in examples])
  cam_fn = cam.make_cam_fn(clf.model, clf.variables, layer=layer, mode=mode,
                           multi_label=clf.ds.multi_label,
                           apply_kwargs={"train": False})
  heat = np.asarray(cam_fn(images, labels if mode == "true" else None))
  masks = cam.load_masks(os.path.join(masks_root, mode), "query")[pick]
  names = overlay_names(clf.ds, n)
  paths = cam.write_overlays(out_dir, shown, heat, masks, names)
  cam.write_overlays(os.path.join(out_dir, "overlay"), shown, heat, masks,
                     names, side_by_side=False)
  return paths


# ---------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------


def prepare(config, workdir: str) -> Dict[str, Any]:
  """Stages 1 and 2 (each reused when done); returns what stage 3 needs.

  The classifier is only rebuilt when something must be computed with it:
  with a finished checkpoint, valid mask caches and existing overlays, the
  stages cost a data-set build and a few file checks.
  """
  sec = config[SECTION]
  cls_cfg = sec.classifier
  # Before any data is read or anything trained: a CAM too coarse to
  # localise makes the whole system meaningless.
  grid = check_cam_resolution(config)
  layer = cam_layer(config)
  sdir = stage_dir(config, workdir)
  os.makedirs(sdir, exist_ok=True)
  cls_dir = os.path.join(sdir, "classifier")
  t0 = time.perf_counter()
  # The split is made once, in the stage folder, and shared by every stage
  # and every run that shares the stage folder.
  ds = classifier_lib.build_plain_datasets(
      config, sdir, int(cls_cfg.batch_size),
      int(cls_cfg.image_size or config.data.image_size))
  clf = None

  def get_clf():
    nonlocal clf
    if clf is None:
      clf = classifier_lib.train_classifier(config, cls_cfg, sdir, cls_dir,
                                            ds=ds)
    return clf

  step = classifier_lib.finished_step(config, cls_cfg, ds, cls_dir)
  if step is None:
    step = get_clf().step
  t1 = time.perf_counter()
  modes = cam_modes(config)
  masks_root = os.path.join(sdir, "masks")
  info = make_masks(get_clf, ds, step, modes, masks_root, layer=layer)
  manifest = assemble_local_view_dir(
      masks_root, ds, modes, local_view_dir(config, workdir),
      {"classifier_step": int(step), "image_size": int(ds.image_size),
       "cam_layer": layer or ""})
  box_path = box_file(config, ds)
  localization = None
  if box_path:
    localization = localize(
        get_clf, ds, modes, masks_root, box_path,
        {"classifier_step": int(step), "image_size": int(ds.image_size),
         "cam_layer": layer or ""}, layer=layer,
        batch_size=int(cls_cfg.batch_size))
  n_over = min(int(sec.cam.num_overlays), ds.eval["query"].size)
  over_dir = os.path.join(workdir, "gradcam")
  if not all(os.path.exists(os.path.join(over_dir, "overlay", name + ".png"))
             for name in overlay_names(ds, n_over)):
    write_query_overlays(get_clf(), modes["query"], masks_root, over_dir,
                         n_over, layer=layer)
  t2 = time.perf_counter()
  metrics = clf.metrics if clf is not None else classifier_lib.load_metrics(
      cls_dir)
  multi_label = bool(ds.multi_label)
  ds.close()
  return {"classifier": metrics, "classifier_seconds": t1 - t0,
          "classifier_reused": clf is None or bool(metrics.get("reused")),
          "masks": info, "mask_seconds": t2 - t1,
          "cam": {"layer": layer or "", "grid": list(grid),
                  "image_size": int(classifier_image_size(config)),
                  "boxes": box_path or ""},
          "localization": localization,
          "local_view": manifest.get("counts"),
          "overlays": n_over, "multi_label": multi_label,
          "stage_dir": sdir}


def train_and_evaluate(config, workdir: str, **kwargs) -> Dict[str, Any]:
  """All three stages; returns stage 3's results plus a "stages" entry
  (also written to `{workdir}/ath_stages.json`)."""
  from medhash_jax import train  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  stages = prepare(config, workdir)
  cfg3 = hash_config(config, workdir, multi_label=stages["multi_label"])
  if stage_dir(config, workdir) != os.path.abspath(workdir):
    _share_split(stage_dir(config, workdir), workdir)
  results = train.train_and_evaluate(cfg3, workdir, **kwargs)
  # Training time of the system = classifier training + mask computation +
  # hash training, each as first measured (a reused stage costs ~0 now).
  stages["hash_seconds"] = results["train"]["seconds"]
  stages_path = os.path.join(workdir, STAGES_FILE)
  finished = f"workdir checkpoint step {int(cfg3.train.num_steps)}"
  if results["train"].get("resumed_from") == finished and os.path.exists(
      stages_path):  # nothing was trained now: keep the first measurement
    with open(stages_path, encoding="utf-8") as f:
      stages["hash_seconds"] = json.load(f).get("hash_seconds",
                                                stages["hash_seconds"])
  stages["total_train_seconds"] = (
      float(stages["classifier"].get("seconds") or 0.0) +
      sum(m["compute_seconds"] for m in stages["masks"].values()) +
      float(stages["hash_seconds"] or 0.0))
  if jax.process_index() == 0:
    with open(stages_path, "w", encoding="utf-8") as f:
      json.dump(stages, f, indent=2, default=str)
  results = dict(results)
  results["stages"] = stages
  return results


class FileLocalViews:
  """The local views of loose image files (query time, `--mode=encode|search
  --input=...`): the stage-1 classifier's Grad-CAM of the predicted classes
  (`ath.cam.modes.query`), Otsu, the run's `data.local_view` (mask * image
  or mask-and-crop) at the image's own resolution -- the steps stage 2 and
  the data layer take for a split.

  Call: `views(images)` with a list of uint8 (H, W, C) images -> list of
  (local uint8 view, fell_back) in the same order.
  """

  def __init__(self, config, workdir: str, batch_size: int = 32):
    from medhash_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    sdir = stage_dir(config, workdir)
    model, variables, record = classifier_lib.load_for_inference(
        os.path.join(sdir, "classifier"))
    multi_label = (read_stages(workdir) or {}).get("multi_label")
    if multi_label is None:  # no stage record: the config's own setting
      multi_label = bool(config.loss.kwargs.get("multi_label", False))
    self.mode = str(config[SECTION].cam.modes.query)
    self.view = mask_crop.check_local_view(str(config.data.get(
        "local_view", mask_crop.LEGACY_LOCAL_VIEW)))
    self.margin = float(config.data.mask_margin)
    self.batch_size = int(batch_size)
    self.size = int(record["image_size"])
    self.pre = data_lib.Preprocessor(
        image_size=self.size, channels=int(config.data.channels),
        normalize=config.data.normalize, augment=None)
    self._cam_fn = cam.make_cam_fn(model, variables, layer=cam_layer(config),
                                   mode=self.mode,
                                   multi_label=bool(multi_label),
                                   apply_kwargs={"train": False})

  def masks(self, images) -> np.ndarray:
    """bool (n, size, size): Otsu masks of the Grad-CAM maps (stage 2's
    `cam.compute_masks` over fixed-shape padded batches: one compile)."""
    n, b = len(images), self.batch_size
    if n == 0:
      return np.zeros((0, self.size, self.size), bool)

    def batches():
      for s in range(0, n, b):
        chunk = images[s:s + b]
        x = np.zeros((b,) + self.pre.zeros().shape, self.pre.zeros().dtype)
        for j, img in enumerate(chunk):
          x[j] = self.pre(img)
        yield {"image": x, "index": np.arange(s, s + b),
               "valid": np.arange(b) < len(chunk)}

    return cam.compute_masks(self._cam_fn, batches(), num_examples=n) > 0

  def views(self, images):
    masks = self.masks(images)
    out = []
    for img, m in zip(images, masks):
      m = np.asarray(m, bool)
      if m.shape != img.shape[:2]:   # nearest, as data.resize_masks does
        m = mask_crop.resize_mask(m, img.shape[:2])
      out.append(mask_crop.local_view(img, m, view=self.view,
                                      margin=self.margin))
    return out


def _share_split(src_dir: str, workdir: str):
  """Copies the stage folder's split files into the workdir, so stage 3 uses
  the very split its masks were made for (the data layer re-checks it)."""
  src = os.path.join(src_dir, "splits")
  dst = os.path.join(workdir, "splits")
  if not os.path.isdir(src):
    return
  os.makedirs(dst, exist_ok=True)
  for name in os.listdir(src):
    if not os.path.exists(os.path.join(dst, name)):
      shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


# ---------------------------------------------------------------------------
# The system interface (systems/system.py)
# ---------------------------------------------------------------------------


def read_stages(workdir: str) -> Optional[Dict[str, Any]]:
  """The run's stage record (`ath_stages.json`), None before stage 3."""
  path = os.path.join(workdir, STAGES_FILE)
  if not os.path.exists(path):
    return None
  from medhash_jax.train import fit as fit_lib  # pylint: disable=g-import-not-at-top
  return fit_lib.read_json(path, "training the run again (same --workdir) "
                           "rewrites it")


def attention_record(stages: Dict[str, Any]) -> Dict[str, Any]:
  """What the attention did in one run: the CAM grid, the classifier's val
  accuracy, per split the mask area (mean share of the image) and fallbacks
  (empty masks: the local view is the full image), and the localisation
  metrics where the data set has boxes."""
  masks = stages.get("masks", {})
  camd = stages.get("cam") or {}
  return {"cam_layer": camd.get("layer", ""), "cam_grid": camd.get("grid"),
          "cam_image_size": camd.get("image_size"),
          "classifier_val_accuracy": (
              (stages.get("classifier", {}).get("val") or {}).get("accuracy")),
          "mask_area": {k: v.get("mask_area", v.get("foreground"))
                        for k, v in masks.items()},
          "fallbacks": {k: v.get("fallbacks", v.get("empty"))
                        for k, v in masks.items()},
          "counts": {k: v.get("count") for k, v in masks.items()},
          "boxes": camd.get("boxes", ""),
          "localization": stages.get("localization")}


def record_inference(config, workdir: str, multi_label: Optional[bool]):
  """Adds what query-time Grad-CAM needs to the run's inference.json (the
  stage-3 config has no `ath` section): the classifier's folder (relative
  when inside the workdir), the query class mode, the local view and its
  mask margin."""
  from medhash_jax.train import run_files  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  cls_dir = os.path.join(stage_dir(config, workdir), "classifier")
  rel = os.path.relpath(cls_dir, os.path.abspath(workdir))
  run_files.update_record(workdir, ath={
      "classifier_dir": cls_dir if rel.startswith("..") else rel,
      "cam_mode": str(config[SECTION].cam.modes.query),
      # The block Grad-CAM reads ("" = the model's last feature map).
      "cam_layer": cam_layer(config) or "",
      "local_view": str(config.data.get("local_view",
                                        mask_crop.LEGACY_LOCAL_VIEW)),
      "mask_margin": float(config.data.mask_margin),
      "multi_label": bool(multi_label if multi_label is not None else
                          config.loss.kwargs.get("multi_label", False))})


class AthSystem:
  """ATH-GradCAM as a `systems.System`: classifier -> masks -> hashing."""

  name = "ath"

  def train_and_evaluate(self, config, workdir: str, **kwargs
                         ) -> Dict[str, Any]:
    results = train_and_evaluate(config, workdir, **kwargs)
    record_inference(config, workdir,
                     results.get("stages", {}).get("multi_label"))
    return results

  def inference_config(self, config, workdir: str):
    """Stage 3's config, with the data set's kind as the stages found it."""
    stages = read_stages(workdir) or {}
    return hash_config(config, workdir, multi_label=stages.get("multi_label"))

  def local_views(self, config, workdir: str, batch_size: int = 32):
    return FileLocalViews(config, workdir, batch_size)

  def train_seconds(self, results: Dict[str, Any], workdir: str
                    ) -> Optional[float]:
    """Classifier + masks + hash training, each as first measured."""
    stages = read_stages(workdir) or {}
    return stages.get("total_train_seconds", results["train"].get("seconds"))

  def report_extras(self, workdir: str) -> Dict[str, Any]:
    stages = read_stages(workdir)
    return {} if stages is None else {"ath_attention": attention_record(stages)}

  def query_overlays(self, workdir: str, query_ids) -> Optional[list]:
    """The Grad-CAM overlays stage 2 wrote of these queries (all or None)."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    ov_dir = os.path.join(workdir, "gradcam", "overlay")
    files = [os.path.join(ov_dir, mask_crop.mask_key(str(i)) + ".png")
             for i in query_ids]
    if not files or not all(os.path.exists(f) for f in files):
      return None
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]
