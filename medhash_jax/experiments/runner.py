"""Running a suite: the runs, the shallow methods, the table, PR curves and
the retrieval gallery (see the package docstring)."""

import json
import os
import platform
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import jax
import numpy as np

from medhash_jax.experiments.suites import (ALL_DEEP, COLUMNS, DISPLAY, KS,
                                            Suite, REPO_ROOT, run_tag, method_config)

# ---------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------


def _metrics_row(test: Dict[str, float]) -> Dict[str, float]:
  return {"map@10": test.get("map@10"), "map@all": test.get("map@all"),
          "ndcg@100": test.get("ndcg@100"), "ndcg@all": test.get("ndcg@all"),
          "p@r2": test.get("precision@radius2"),
          "map@10_tie": test.get("map@10/tie_aware"),
          "map@all_tie": test.get("map@all/tie_aware"),
          "chance": test.get("map@10/chance"),
          "chance_map@all": test.get("map@all/chance")}


def deep_row(results: Dict[str, Any], workdir: str) -> Dict[str, Any]:
  row = _metrics_row(results["metrics"]["test"])
  train_s = results["train"].get("seconds")
  stages = os.path.join(workdir, "ath_stages.json")
  if os.path.exists(stages):
    with open(stages, encoding="utf-8") as f:
      train_s = json.load(f).get("total_train_seconds", train_s)
  eff = results.get("efficiency", {})
  row.update(train_time_s=train_s,
             encode_ms_per_image=eff.get("encode_ms_per_image"),
             query_ms=eff.get("query_ms_per_query"),
             index_bytes=eff.get("index_bytes"))
  return row


def ath_attention(workdir: str) -> Optional[Dict[str, Any]]:
  """What ATH's attention did in one run (from its `ath_stages.json`): the
  CAM grid, the classifier's val accuracy, per split the mask area (mean
  share of the image) and fallbacks (empty masks: the local view is the full
  image), and the localisation metrics where the data set has boxes."""
  path = os.path.join(workdir, "ath_stages.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    st = json.load(f)
  masks = st.get("masks", {})
  camd = st.get("cam") or {}
  out = {"cam_layer": camd.get("layer", ""), "cam_grid": camd.get("grid"),
         "cam_image_size": camd.get("image_size"),
         "classifier_val_accuracy": (st.get("classifier", {}).get("val") or {}
                                     ).get("accuracy"),
         "mask_area": {k: v.get("mask_area", v.get("foreground"))
                       for k, v in masks.items()},
         "fallbacks": {k: v.get("fallbacks", v.get("empty"))
                       for k, v in masks.items()},
         "counts": {k: v.get("count") for k, v in masks.items()},
         "boxes": camd.get("boxes", ""),
         "localization": st.get("localization")}
  return out


def _fmt(v, spec=".3f"):
  return "–" if v is None or (isinstance(v, float) and v != v) else format(
      v, spec)


def ath_attention_markdown(entries: List[Dict[str, Any]]) -> str:
  """The "ATH attention" section of results.md (one line per ATH run)."""
  if not entries:
    return ""
  splits = ("train", "val", "query", "database")
  lines = [
      "## ATH attention (Grad-CAM -> Otsu masks)", "",
      "Mask area: mean share of the image inside the Otsu mask; fallbacks: "
      "empty masks, whose local view is the full image. Localisation (query "
      "split, predicted class; `cam.localization`): mask-in-box = share of "
      "mask pixels inside a ground-truth box, pointing = CAM maximum inside a "
      "box, IoBB = intersection over the predicted (largest-component) box "
      "(ChestX-ray8), heat in box = share of the heat map's mass inside a "
      "box; each beside its chance level, the boxes' area share.",
      "",
      "| Method | Bits | Seed | CAM | Classifier val acc | Mask area "
      "train / val / query / db | Fallbacks train / val / query / db | "
      "Boxed queries | Mask in box (chance) | Pointing (chance) | "
      "IoBB (chance) | Heat in box (chance) |",
      "|:---|---:|---:|:---|---:|:---|:---|---:|:---|:---|:---|:---|"]
  for e in entries:
    a = e["attention"]
    grid = a.get("cam_grid")
    camtxt = (f"{grid[0]}x{grid[1]} at {a.get('cam_image_size')} px"
              f" ({a.get('cam_layer') or 'last map'})" if grid else "–")
    area = " / ".join(_fmt(a["mask_area"].get(s)) for s in splits)
    fb = " / ".join(f"{a['fallbacks'].get(s)} of {a['counts'].get(s)}"
                    for s in splits)
    loc = (a.get("localization") or {}).get("query") or {}
    if loc.get("count"):
      n = str(loc["count"])
      mib = f"{_fmt(loc['mask_in_box'])} ({_fmt(loc['mask_in_box_chance'])})"
      pg = f"{_fmt(loc['pointing'])} ({_fmt(loc['pointing_chance'])})"
      io = f"{_fmt(loc['iobb'])} ({_fmt(loc['iobb_chance'])})"
      he = (f"{_fmt(loc.get('heat_in_box'))} "
            f"({_fmt(loc.get('heat_in_box_chance'))})")
    else:
      n = "0 (no boxes)" if not a.get("boxes") else "0"
      mib = pg = io = he = "–"
    lines.append(f"| {e['method']} | {e['bits']} | {e['seed']} | {camtxt} | "
                 f"{_fmt(a.get('classifier_val_accuracy'))} | {area} | {fb} "
                 f"| {n} | {mib} | {pg} | {io} | {he} |")
  return "\n".join(lines) + "\n"


def _merge_seeds(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
  """Per-seed rows -> one row whose numbers are per-seed lists."""
  if len(rows) == 1:
    return dict(rows[0])
  out = {}
  for k in rows[0]:
    vals = [r.get(k) for r in rows]
    if all(isinstance(v, (int, float)) for v in vals) and k != "bits":
      out[k] = [float(v) for v in vals]
    else:
      out[k] = vals[0]
  return out


# Keys that do not change what a finished run computed: logging, checkpoint
# cadence, where the data lives and how many threads read it.
REUSE_IGNORED_KEYS = (
    "train.log_every_steps", "train.checkpoint_every_steps",
    "train.keep_checkpoints", "resume", "data.root", "data.path",
    "data.num_workers", "data.worker_buffer_size", "data.read_threads",
    "data.prefetch_buffer_size")


def check_reusable(config, workdir: str):
  """Refuses to reuse a finished run trained under another config (another
  --steps, --set, or a config file edited since), naming every key that
  differs; runs without a config record (none are written so) pass."""
  from medhash_jax import systems  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  saved = ckpt_lib.read_saved_config(workdir)
  if saved is None:
    return
  ckpt_lib.check_config_compatible(
      saved, systems.hash_config(config, workdir).to_dict(),
      f"{workdir} (a finished run the suite would reuse; --rerun retrains "
      "it)", changeable=(), ignored=REUSE_IGNORED_KEYS)


# ---------------------------------------------------------------------------
# Re-opening trained runs (codes for PR curves, features, gallery)
# ---------------------------------------------------------------------------


class Trained:
  """A finished run opened read-only: its val-selected model and datasets."""

  def __init__(self, config, workdir: str):
    from medhash_jax import systems  # pylint: disable=g-import-not-at-top
    from medhash_jax.train import loop  # pylint: disable=g-import-not-at-top
    self.config = systems.hash_config(config, workdir)
    self.run = loop.Run(self.config, workdir, for_training=False)
    items, self.step = self.run.selected_variables()
    self.variables = self.run.variables_of(items)
    self._features_fn = None

  def codes(self, split: str) -> np.ndarray:
    from medhash_jax.train import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
    codes, _ = eval_lib.encode_split(
        self.run.encode_fn, self.variables, self.run.ds.eval[split],
        self.run.mesh, input_keys=self.run.task.input_keys)
    return codes

  def features(self, split: str) -> np.ndarray:
    """The model's "features" output (pooled backbone for plain models)."""
    from medhash_jax.train import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
    task = self.run.task
    if self._features_fn is None:
      def fn(variables, inputs):
        args = [inputs[k] for k in task.input_keys]
        return task.model.apply(variables, *args, train=False)["features"]
      self._features_fn = eval_lib.make_encode_fn(fn, self.run.mesh)
    feats, _ = eval_lib.encode_split(
        self._features_fn, self.variables, self.run.ds.eval[split],
        self.run.mesh, input_keys=task.input_keys)
    return feats

  def close(self):
    self.run.ds.close()
    if self.run.ckpt is not None:
      self.run.ckpt.close()


def pixel_features(ds, split: str, max_dim: int = 1024) -> np.ndarray:
  """Raw eval images, flattened (average-pooled down to <= max_dim values)."""
  eds = ds.eval[split]
  out = None
  for batch in eds:
    x = np.asarray(batch["image"], np.float32)
    while x.shape[1] * x.shape[2] * x.shape[3] > max_dim and x.shape[1] >= 2:
      b, h, w, c = x.shape
      x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(
          b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    x = x.reshape(x.shape[0], -1)
    if out is None:
      out = np.zeros((eds.size, x.shape[1]), np.float32)
    keep = np.asarray(batch["valid"]) & (np.asarray(batch["index"]) >= 0)
    out[np.asarray(batch["index"])[keep]] = x[keep]
  return out


def shallow_rows(methods: Sequence[str], bits: Sequence[int], feats, labels,
                 seed: int) -> Dict[tuple, Dict[str, Any]]:
  """(method, bits) -> row for the shallow methods on fixed features."""
  from medhash_jax import metrics  # pylint: disable=g-import-not-at-top
  from medhash_jax import shallow  # pylint: disable=g-import-not-at-top
  from medhash_jax.retrieval import HammingIndex  # pylint: disable=g-import-not-at-top
  out = {}
  for m in methods:
    mod = shallow.get(m)
    for k in bits:
      if k > feats["train"].shape[1] and m in ("pcah", "itq", "ssh"):
        logging.warning("%s needs num_bits <= feature dim %d; skipping %d bits",
                        m, feats["train"].shape[1], k)
        continue
      t0 = time.perf_counter()
      params = mod.fit(feats["train"], num_bits=k,
                       labels=labels["train"] if m in shallow.SUPERVISED
                       else None, seed=seed)
      jax.block_until_ready(params)
      fit_s = time.perf_counter() - t0
      db = np.asarray(shallow.encode(params, feats["database"]))
      t0 = time.perf_counter()
      q = np.asarray(shallow.encode(params, feats["query"]))
      enc_ms = (time.perf_counter() - t0) * 1e3 / max(len(q), 1)
      rep = metrics.retrieval_report(q, db, labels["query"], labels["database"],
                                     ks=KS)
      index = HammingIndex(k)
      index.add(db)
      index.search(q[:8], 10)
      t0 = time.perf_counter()
      index.search(q, 10)
      q_ms = (time.perf_counter() - t0) * 1e3 / max(len(q), 1)
      row = _metrics_row({kk: float(v) for kk, v in rep.items()
                          if np.ndim(v) == 0})
      row.update(train_time_s=fit_s, encode_ms_per_image=enc_ms, query_ms=q_ms,
                 index_bytes=int(index.nbytes))
      out[(m, k)] = {"row": row, "codes": (q, db)}
  return out


# ---------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------


# Paths whose changes do not change what a suite computes: the reports
# themselves (regenerating one table must not block the next).
_REPORT_PATHS = ("results/",)


def git_state(repo: str = REPO_ROOT) -> Dict[str, Any]:
  """The commit of `repo` and whether its tree is clean: `dirty` is None
  where there is no git checkout (an installed package), else True when a
  tracked file is modified or an untracked, not ignored file exists outside
  results/ (`changes` lists up to 20 of them)."""
  def git(*args):
    return subprocess.run(["git", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout
  try:
    commit = git("rev-parse", "HEAD").strip()
    status = git("status", "--porcelain", "--untracked-files=all")
  except (OSError, subprocess.CalledProcessError):
    return {"commit": "unknown", "dirty": None, "changes": []}
  changes = [line[3:] for line in status.splitlines()
             if line[3:] and not line[3:].strip('"').startswith(_REPORT_PATHS)]
  return {"commit": commit, "dirty": bool(changes), "changes": changes[:20]}


def check_clean(state: Dict[str, Any], allow_dirty: bool):
  """Refuses a suite on a dirty tree (its numbers would belong to no commit)
  unless `allow_dirty`; the state is recorded either way."""
  if state["dirty"] and not allow_dirty:
    raise RuntimeError(
        f"the git tree at {REPO_ROOT} has uncommitted changes "
        f"({', '.join(state['changes'])}): the results would belong to no "
        f"commit. Commit them, or pass --allow_dirty (recorded as dirty in "
        "runs.json and results.md)")


def _tree_note(state: Dict[str, Any]) -> str:
  if state["dirty"] is None:
    return "no git checkout"
  return ("DIRTY tree, allowed by --allow_dirty: " + ", ".join(state["changes"])
          if state["dirty"] else "clean tree")


def validation_curve(workdir: str, metric: str) -> Dict[str, Any]:
  """The run's validation points of `metric` from its metrics.jsonl (the
  last row of a step wins: a resumed run may write a step twice)."""
  path = os.path.join(workdir, "metrics.jsonl")
  points = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        try:
          row = json.loads(line)
        except ValueError as e:
          raise ValueError(f"{path} line {n} is not JSON ({e})") from e
        if f"val/{metric}" in row:
          points[int(row["step"])] = row[f"val/{metric}"]
  steps = sorted(points)
  return {"metric": metric, "steps": steps, "values": [points[s] for s in steps]}


def run_record(cfg, workdir: str, results: Dict[str, Any]) -> Dict[str, Any]:
  """What runs.json keeps of one deep run besides its row: the full config,
  the validation curve of the selection metric and the selected step."""
  select = results.get("selection", {})
  return {"config": cfg.to_dict(),
          "validation": {**validation_curve(workdir, cfg.eval.select_metric),
                         "selected_step": select.get("step")}}


def _machine() -> Dict[str, Any]:
  from medhash_jax.retrieval import cpu_kernel  # pylint: disable=g-import-not-at-top
  d = jax.devices()[0]
  return {"platform": d.platform, "device_kind": d.device_kind,
          "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
          "cpu_model": cpu_kernel.cpu_model(),
          "host": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__}


def run_suite(suite: Suite, output: str, workdir: str, *,
              methods: Optional[Sequence[str]] = None,
              bits: Optional[Sequence[int]] = None,
              seeds: Optional[Sequence[int]] = None,
              steps: Optional[int] = None, rerun: bool = False,
              command: str = "", allow_dirty: bool = False) -> Dict[str, Any]:
  """Runs (or reuses) every run of the suite and writes the reports; refuses
  a dirty git tree unless `allow_dirty` (`check_clean`)."""
  from medhash_jax import metrics  # pylint: disable=g-import-not-at-top
  from medhash_jax import report  # pylint: disable=g-import-not-at-top
  from medhash_jax import systems  # pylint: disable=g-import-not-at-top
  methods = list(methods or suite.methods)
  bits = [int(b) for b in (bits or suite.bits)]
  seeds = [int(s) for s in (seeds or suite.seeds)]
  unknown = [m for m in methods if m not in ALL_DEEP]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; known: {list(ALL_DEEP)}")
  tree = git_state()
  check_clean(tree, allow_dirty)
  pr_bits = suite.pr_bits if suite.pr_bits in bits else max(bits)
  os.makedirs(output, exist_ok=True)
  stage_root = os.path.join(workdir, "_ath_stages")
  t_suite = time.perf_counter()
  runs, per_method = [], {}
  for method in methods:
    for k in bits:
      for seed in seeds:
        cfg = method_config(suite, method, k, seed, stage_root, steps)
        wd = os.path.join(workdir, run_tag(method), f"b{k}-s{seed}")
        res_path = os.path.join(wd, "results.json")
        if os.path.exists(res_path) and not rerun:
          check_reusable(cfg, wd)
          with open(res_path, encoding="utf-8") as f:
            try:
              results = json.load(f)
            except ValueError as e:  # a copy cut short, a full disk
              raise ValueError(
                  f"{res_path} is corrupt or truncated ({e}); --mode=evaluate"
                  f" --workdir={wd} writes it again from the run") from e
          logging.info("experiments: reusing %s", wd)
        else:
          logging.info("experiments: %s, %d bits, seed %d -> %s", method, k,
                       seed, wd)
          results = systems.train_and_evaluate(cfg, wd)
        row = deep_row(results, wd)
        runs.append({"method": method, "bits": k, "seed": seed, "workdir": wd,
                     "row": row, **run_record(cfg, wd, results)})
        attention = ath_attention(wd) if method == "ath" else None
        if attention is not None:
          runs[-1]["ath_attention"] = attention
        per_method.setdefault((method, k), []).append(row)

  # Re-open seed-0 runs at pr_bits: PR curves, gallery, shallow features.
  curves, gallery_src, feats, labels, opened = {}, None, None, None, []
  first_seed = seeds[0]
  source_bits = max(bits)
  for method in methods:
    needed = {pr_bits}
    if method == suite.feature_source:
      needed.add(source_bits)
    for k in sorted(needed):
      cfg = method_config(suite, method, k, first_seed, stage_root, steps)
      wd = os.path.join(workdir, run_tag(method), f"b{k}-s{first_seed}")
      tr = Trained(cfg, wd)
      opened.append(tr)
      ds = tr.run.ds
      if k == pr_bits:
        q, db = tr.codes("query"), tr.codes("database")
        pr = metrics.pr_curve(q, db, ds.eval["query"].labels,
                              ds.eval["database"].labels)
        curves[DISPLAY[method]] = (pr["precision"], pr["recall"])
        if gallery_src is None or method == "ath":  # ATH has overlays
          gallery_src = (method, q, db, ds)
      if method == suite.feature_source and k == source_bits:
        feats = {s: tr.features(s) for s in ("train", "query", "database")}
        labels = {s: ds.eval[s].labels for s in ("train", "query", "database")}
  if suite.feature_source == "pixels" or feats is None:
    from medhash_jax.systems import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
    cfg = method_config(suite, methods[0], bits[0], first_seed, stage_root,
                        steps)
    ds = classifier_lib.build_plain_datasets(
        cfg, os.path.join(workdir, "_pixels"), cfg.train.batch_size,
        cfg.data.image_size)
    feats = {s: pixel_features(ds, s) for s in ("train", "query", "database")}
    labels = {s: ds.eval[s].labels for s in ("train", "query", "database")}
    ds.close()
    feature_note = "raw pixels"
  else:
    feature_note = (f"pooled backbone features of the {DISPLAY[suite.feature_source]}"
                    f" model ({source_bits} bits, seed {first_seed})")
  shallow_out = shallow_rows(suite.shallow, bits, feats, labels, first_seed)
  for (m, k), v in shallow_out.items():
    per_method[(m, k)] = [v["row"]]
    runs.append({"method": m, "bits": k, "seed": first_seed, "row": v["row"],
                 "features": feature_note})
    if k == pr_bits:
      q, db = v["codes"]
      pr = metrics.pr_curve(q, db, labels["query"], labels["database"])
      curves[DISPLAY[m]] = (pr["precision"], pr["recall"])

  # Table rows: method order, then bits.
  rows = []
  for m in methods + [s for s in suite.shallow]:
    for k in bits:
      if (m, k) in per_method:
        r = _merge_seeds(per_method[(m, k)])
        r.update(method=DISPLAY[m], bits=k)
        rows.append(r)
  info = {
      "suite": suite.name, "description": suite.description,
      "command": command, "commit": tree["commit"], "git": tree,
      "machine": _machine(),
      "seeds": seeds, "bits": bits, "methods": methods,
      "shallow": list(suite.shallow), "shallow_features": feature_note,
      "steps_override": steps, "suite_seconds": time.perf_counter() - t_suite,
      "date": time.strftime("%Y-%m-%d %H:%M:%S"),
  }
  preamble = "\n".join([
      f"# {suite.name}", "",
      f"- suite definition: {suite.description}",
      f"- this run: methods {', '.join(methods)}; bits {list(bits)}; seeds "
      f"{list(seeds)}; steps {steps or 'as configured'}",
      f"- command: `{command}`",
      f"- commit: `{info['commit']}` ({_tree_note(tree)})",
      f"- machine: {info['machine']['device_kind']} x "
      f"{info['machine']['device_count']} ({info['machine']['platform']}), "
      f"{info['machine']['cpu_count']} CPUs ({info['machine']['cpu_model']}), "
      f"JAX {info['machine']['jax']}",
      f"- seeds: {seeds} (numbers with ± are mean ± std over seeds)",
      f"- test protocol: query vs database; model selected on val vs train",
      f"- shallow methods on {feature_note}",
      "- chance: expected mAP of a random ranking (mAP@10 and mAP@all)",
      "- train time: ATH-GradCAM's includes its classifier and Grad-CAM masks"
      " (shared between its code lengths); shallow methods: the fit"])
  md, csv = report.write_tables(rows, os.path.join(output, "results"),
                                columns=COLUMNS, preamble=preamble)
  attention_md = ath_attention_markdown(
      [dict(method=DISPLAY[r["method"]], bits=r["bits"], seed=r["seed"],
            attention=r["ath_attention"]) for r in runs
       if r.get("ath_attention")])
  if attention_md:  # beside the retrieval table, in the same file
    with open(md, "a", encoding="utf-8") as f:
      f.write("\n" + attention_md)
  outputs = {"markdown": md, "csv": csv}
  if curves:
    # One plot holds at most the palette's number of curves: more go to
    # pr_curves_<K>bits_2.png, ...
    names, per = list(curves), len(report.curves.PALETTE)
    for i in range(0, len(names), per):
      part = "" if i == 0 else f"_{i // per + 1}"
      path = os.path.join(output, f"pr_curves_{pr_bits}bits{part}.png")
      outputs["pr_curves" + part] = path
      report.plot_pr_curves(
          {n: curves[n] for n in names[i:i + per]}, path,
          title=f"{suite.name}: precision-recall, {pr_bits} bits")
  if gallery_src is not None:
    outputs["gallery"] = os.path.join(output, "gallery.png")
    write_gallery(outputs["gallery"], *gallery_src, workdir=workdir,
                  seed=first_seed, bits=pr_bits, n=suite.gallery_queries)
  for tr in opened:
    tr.close()
  info["outputs"] = outputs
  info["runs"] = runs
  with open(os.path.join(output, "runs.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2, default=str)
  logging.info("experiments: wrote %s", ", ".join(outputs.values()))
  return info


def write_gallery(path: str, method: str, q_codes, db_codes, ds, *,
                  workdir: str, seed: int, bits: int, n: int = 4, k: int = 10):
  """Top-k of n queries spread over the classes; ATH's Grad-CAM overlay
  when it exists."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from medhash_jax import report  # pylint: disable=g-import-not-at-top
  from medhash_jax.data import mask_crop  # pylint: disable=g-import-not-at-top
  from medhash_jax.retrieval import HammingIndex  # pylint: disable=g-import-not-at-top
  q_ds, db_ds = ds.eval["query"], ds.eval["database"]
  q_lab, db_lab = q_ds.labels, db_ds.labels
  pick = report.spread_queries(q_lab, n)   # the queries ATH has overlays of
  n = pick.size
  k = min(k, db_ds.size)
  index = HammingIndex(q_codes.shape[1])
  index.add(db_codes)
  dist, ids = index.search(np.asarray(q_codes)[pick], k)
  names = np.asarray(ds.class_names)
  caption = lambda lab: [str(names[i]) for i in np.flatnonzero(lab > 0.5)]
  q_img = [q_ds.loader.display_image(int(i)) for i in pick]
  r_img = [[db_ds.loader.display_image(int(j)) for j in row] for row in ids]
  relevant = (q_lab[pick] @ db_lab.T > 0)[np.arange(n)[:, None], ids]
  overlays = None
  ov_dir = os.path.join(workdir, "ath", f"b{bits}-s{seed}", "gradcam", "overlay")
  if os.path.isdir(ov_dir):
    files = [os.path.join(ov_dir, mask_crop.mask_key(str(q_ds.ids[i])) + ".png")
             for i in pick]
    if all(os.path.exists(f) for f in files):
      overlays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
  report.save_gallery(path, q_img, r_img, relevant, distances=dist,
                      query_labels=[caption(l) for l in q_lab[pick]],
                      result_labels=[[caption(db_lab[j]) for j in row]
                                     for row in ids],
                      overlays=overlays)
  del method


