"""Running a suite: the runs, the shallow methods, the table, PR curves and
the retrieval gallery (see the package docstring)."""

import copy
import json
import os
import platform
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import jax
import numpy as np

from medhash_jax.experiments.suites import (COLUMNS, KS, Suite, REPO_ROOT,
                                            display_name, method_config,
                                            run_tag, split_method, VARIANT_SEP)

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


def deep_row(results: Dict[str, Any], workdir: str, system=None
             ) -> Dict[str, Any]:
  """A deep run's table row; the training time is the system's (ATH: all
  three stages)."""
  if system is None:
    from medhash_jax import systems  # pylint: disable=g-import-not-at-top
    system = systems.System()
  row = _metrics_row(results["metrics"]["test"])
  eff = results.get("efficiency", {})
  row.update(train_time_s=system.train_seconds(results, workdir),
             encode_ms_per_image=eff.get("encode_ms_per_image"),
             query_ms=eff.get("query_ms_per_query"),
             index_bytes=eff.get("index_bytes"))
  return row


def ath_attention(workdir: str) -> Optional[Dict[str, Any]]:
  """What ATH's attention did in one run (`ath.attention_record`), None
  when the folder holds no ATH stage record."""
  from medhash_jax import systems  # pylint: disable=g-import-not-at-top
  return systems.ath.AthSystem().report_extras(workdir).get("ath_attention")


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


def check_reusable(config, workdir: str):
  """Refuses to reuse a finished run trained under another config (another
  --steps, --set, or a config file edited since), naming every key that
  differs but for logistics keys (`defaults.KEY_CLASSES`: paths, logging
  and checkpoint cadence, loader threads); runs without a config record
  (none are written so) pass."""
  from medhash_jax import systems  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import validation  # pylint: disable=g-import-not-at-top
  saved = ckpt_lib.read_saved_config(workdir)
  if saved is None:
    return
  current = copy.deepcopy(systems.hash_config(config, workdir))
  # The run recorded its loss's source (name, or file + sha256) when it
  # trained; record the current one the same way, so an edited loss file
  # makes the run non-reusable and an unchanged one compares equal.
  current.loss.source = tuple(validation.resolve_training_loss(current)[1])
  ckpt_lib.check_config_compatible(
      saved, current.to_dict(),
      f"{workdir} (a finished run the suite would reuse; --rerun retrains "
      "it)", changeable=ckpt_lib.REUSE)


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
    codes, _ = eval_lib.map_split(
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
    feats, _ = eval_lib.map_split(
        self._features_fn, self.variables, self.run.ds.eval[split],
        self.run.mesh, input_keys=task.input_keys)
    return feats

  def close(self):
    self.run.ds.close()
    if self.run.ckpt is not None:
      self.run.ckpt.close()


def pixel_features(ds, split: str, max_dim: int = 1024) -> np.ndarray:
  """Raw eval images, flattened (average-pooled down to <= max_dim values)."""
  from medhash_jax.data import rows as rows_lib  # pylint: disable=g-import-not-at-top
  eds = ds.eval[split]
  rows = rows_lib.SplitRows(eds.size, f"split {split!r}", np.float32)
  for batch in eds:
    x = np.asarray(batch["image"], np.float32)
    while x.shape[1] * x.shape[2] * x.shape[3] > max_dim and x.shape[1] >= 2:
      b, h, w, c = x.shape
      x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(
          b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    rows.put(x.reshape(x.shape[0], -1), batch["index"], batch["valid"])
  return rows.result()


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


class _Plan:
  """What one `run_suite` call covers: methods, bits, seeds and folders."""

  def __init__(self, suite: Suite, output: str, workdir: str, methods, bits,
               seeds, steps, rerun: bool, command: str):
    self.suite, self.output, self.workdir = suite, output, workdir
    self.methods = list(methods or suite.methods)
    self.bits = [int(b) for b in (bits or suite.bits)]
    self.seeds = [int(s) for s in (seeds or suite.seeds)]
    for m in self.methods:   # unknown methods and variant keys fail here
      split_method(m)
      if VARIANT_SEP in m:
        method_config(suite, m, self.bits[0], self.seeds[0], "", steps)
    self.pr_bits = suite.pr_bits if suite.pr_bits in self.bits else max(
        self.bits)
    self.steps, self.rerun, self.command = steps, rerun, command
    self.stage_root = os.path.join(workdir, "_ath_stages")
    self.first_seed = self.seeds[0]

  def config(self, method: str, bits: int, seed: int):
    return method_config(self.suite, method, bits, seed, self.stage_root,
                         self.steps)

  def run_dir(self, method: str, bits: int, seed: int) -> str:
    return os.path.join(self.workdir, run_tag(method), f"b{bits}-s{seed}")


def run_suite(suite: Suite, output: str, workdir: str, *,
              methods: Optional[Sequence[str]] = None,
              bits: Optional[Sequence[int]] = None,
              seeds: Optional[Sequence[int]] = None,
              steps: Optional[int] = None, rerun: bool = False,
              command: str = "", allow_dirty: bool = False) -> Dict[str, Any]:
  """Runs (or reuses) every run of the suite and writes the reports; refuses
  a dirty git tree unless `allow_dirty` (`check_clean`)."""
  plan = _Plan(suite, output, workdir, methods, bits, seeds, steps, rerun,
               command)
  tree = git_state()
  check_clean(tree, allow_dirty)
  os.makedirs(output, exist_ok=True)
  t_suite = time.perf_counter()
  runs, per_method = _deep_runs(plan)
  opened = _Reopened(plan)
  try:
    feats, labels, feature_note = _shallow_features(plan, opened)
    curves = dict(opened.curves)
    for (m, k), v in shallow_rows(suite.shallow, plan.bits, feats, labels,
                                  plan.first_seed).items():
      per_method[(m, k)] = [v["row"]]
      runs.append({"method": m, "bits": k, "seed": plan.first_seed,
                   "row": v["row"], "features": feature_note})
      if k == plan.pr_bits:
        curves[display_name(m)] = _pr(*v["codes"], labels)
    info = _suite_info(plan, feature_note, time.perf_counter() - t_suite,
                       tree)
    outputs = _write_table(plan, info, _table_rows(plan, per_method), runs)
    outputs.update(_write_curves(plan, curves))
    if opened.gallery is not None:
      outputs["gallery"] = os.path.join(output, "gallery.png")
      write_gallery(outputs["gallery"], *opened.gallery,
                    n=suite.gallery_queries)
  finally:
    opened.close()
  info["outputs"] = outputs
  info["runs"] = runs
  with open(os.path.join(output, "runs.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2, default=str)
  logging.info("experiments: wrote %s", ", ".join(outputs.values()))
  return info


def _deep_runs(plan: _Plan):
  """Trains (or reuses) every deep run: (run entries, (method, bits) ->
  per-seed rows)."""
  from medhash_jax import systems  # pylint: disable=g-import-not-at-top
  runs, per_method = [], {}
  for method in plan.methods:
    for k in plan.bits:
      for seed in plan.seeds:
        cfg, wd = plan.config(method, k, seed), plan.run_dir(method, k, seed)
        system = systems.system_of(cfg)
        logging.info("experiments: %s, %d bits, seed %d -> %s", method, k,
                     seed, wd)
        results = _run_or_reuse(system, cfg, wd, plan.rerun)
        row = deep_row(results, wd, system)
        runs.append({"method": method, "bits": k, "seed": seed,
                     "workdir": wd, "row": row, **system.report_extras(wd),
                     **run_record(cfg, wd, results)})
        per_method.setdefault((method, k), []).append(row)
  return runs, per_method


def _run_or_reuse(system, cfg, wd: str, rerun: bool) -> Dict[str, Any]:
  """The run's results: its results.json when finished under the same
  config (and not `rerun`), else trained now."""
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
    return results
  return system.train_and_evaluate(cfg, wd)


def _pr(q, db, labels) -> tuple:
  from medhash_jax import metrics  # pylint: disable=g-import-not-at-top
  pr = metrics.pr_curve(q, db, labels["query"], labels["database"])
  return pr["precision"], pr["recall"]


class _Reopened:
  """Seed-0 runs re-opened at pr_bits (PR curves, the gallery) and the
  feature source's run at its largest code length (shallow features)."""

  def __init__(self, plan: _Plan):
    from medhash_jax import systems  # pylint: disable=g-import-not-at-top
    self.curves, self.gallery, self.feats, self.labels = {}, None, None, None
    self.opened = []
    seed, splits = plan.first_seed, ("train", "query", "database")
    source_bits = max(plan.bits)
    for method in plan.methods:
      needed = {plan.pr_bits}
      if method == plan.suite.feature_source:
        needed.add(source_bits)
      for k in sorted(needed):
        cfg, wd = plan.config(method, k, seed), plan.run_dir(method, k, seed)
        tr = Trained(cfg, wd)
        self.opened.append(tr)
        ds = tr.run.ds
        if k == plan.pr_bits:
          q, db = tr.codes("query"), tr.codes("database")
          labels = {s: ds.eval[s].labels for s in splits}
          self.curves[display_name(method)] = _pr(q, db, labels)
          system = systems.system_of(cfg)
          overlays = system.query_overlays(wd, _gallery_ids(
              ds, plan.suite.gallery_queries))
          # The first run's, or the first with overlays (ATH's Grad-CAM).
          if self.gallery is None or (overlays and not self.gallery[-1]):
            self.gallery = (q, db, ds, overlays)
        if method == plan.suite.feature_source and k == source_bits:
          self.feats = {s: tr.features(s) for s in splits}
          self.labels = {s: ds.eval[s].labels for s in splits}

  def close(self):
    for tr in self.opened:
      tr.close()


def _shallow_features(plan: _Plan, opened: _Reopened):
  """(features, labels, note) the shallow methods are fitted on: the
  feature source's backbone features, else raw pixels."""
  from medhash_jax import systems  # pylint: disable=g-import-not-at-top
  if plan.suite.feature_source != "pixels" and opened.feats is not None:
    return opened.feats, opened.labels, (
        f"pooled backbone features of the "
        f"{display_name(plan.suite.feature_source)} model "
        f"({max(plan.bits)} bits, "
        f"seed {plan.first_seed})")
  cfg = plan.config(plan.methods[0], plan.bits[0], plan.first_seed)
  ds = systems.plain_datasets(cfg, os.path.join(plan.workdir, "_pixels"),
                              cfg.train.batch_size, cfg.data.image_size)
  splits = ("train", "query", "database")
  feats = {s: pixel_features(ds, s) for s in splits}
  labels = {s: ds.eval[s].labels for s in splits}
  ds.close()
  return feats, labels, "raw pixels"


def _table_rows(plan: _Plan, per_method) -> List[Dict[str, Any]]:
  """Table rows in method order (deep, then shallow), then bits."""
  rows = []
  for m in plan.methods + list(plan.suite.shallow):
    for k in plan.bits:
      if (m, k) in per_method:
        r = _merge_seeds(per_method[(m, k)])
        r.update(method=display_name(m), bits=k)
        rows.append(r)
  return rows


def _suite_info(plan: _Plan, feature_note: str, seconds: float,
                tree: Dict[str, Any]) -> Dict[str, Any]:
  return {
      "suite": plan.suite.name, "description": plan.suite.description,
      "command": plan.command, "commit": tree["commit"], "git": tree,
      "machine": _machine(),
      "seeds": plan.seeds, "bits": plan.bits, "methods": plan.methods,
      "shallow": list(plan.suite.shallow), "shallow_features": feature_note,
      "steps_override": plan.steps, "suite_seconds": seconds,
      "date": time.strftime("%Y-%m-%d %H:%M:%S"),
  }


def _preamble(plan: _Plan, info: Dict[str, Any]) -> str:
  m = info["machine"]
  return "\n".join([
      f"# {plan.suite.name}", "",
      f"- suite definition: {plan.suite.description}",
      f"- this run: methods {', '.join(plan.methods)}; bits "
      f"{list(plan.bits)}; seeds {list(plan.seeds)}; steps "
      f"{plan.steps or 'as configured'}",
      f"- command: `{plan.command}`",
      f"- commit: `{info['commit']}` ({_tree_note(info['git'])})",
      f"- machine: {m['device_kind']} x {m['device_count']} "
      f"({m['platform']}), {m['cpu_count']} CPUs ({m['cpu_model']}), "
      f"JAX {m['jax']}",
      f"- seeds: {plan.seeds} (numbers with ± are mean ± std over seeds)",
      f"- test protocol: query vs database; model selected on val vs train",
      f"- shallow methods on {info['shallow_features']}",
      "- chance: expected mAP of a random ranking (mAP@10 and mAP@all)",
      "- train time: ATH-GradCAM's includes its classifier and Grad-CAM masks"
      " (shared between its code lengths); shallow methods: the fit"])


def _write_table(plan: _Plan, info, rows, runs) -> Dict[str, str]:
  """results.md / results.csv, with the ATH attention section beside."""
  from medhash_jax import report  # pylint: disable=g-import-not-at-top
  md, csv = report.write_tables(rows, os.path.join(plan.output, "results"),
                                columns=COLUMNS,
                                preamble=_preamble(plan, info))
  # The seed papers' layout: one metric across code lengths (ATH-GradCAM's
  # mAP@10, SA-Hash's and MTH's mAP), tie-aware.
  with open(md, "a", encoding="utf-8") as f:
    for key, title in (("map@10_tie", "mAP@10"), ("map@all_tie", "mAP@all")):
      f.write(f"\n## Tie-aware {title} by code length\n\n" +
              report.format_pivot(rows, key))
  attention_md = ath_attention_markdown(
      [dict(method=display_name(r["method"]), bits=r["bits"], seed=r["seed"],
            attention=r["ath_attention"]) for r in runs
       if r.get("ath_attention")])
  if attention_md:  # beside the retrieval table, in the same file
    with open(md, "a", encoding="utf-8") as f:
      f.write("\n" + attention_md)
  return {"markdown": md, "csv": csv}


def _write_curves(plan: _Plan, curves) -> Dict[str, str]:
  """PR plots; one holds at most the palette's number of curves: more go to
  pr_curves_<K>bits_2.png, ..."""
  from medhash_jax import report  # pylint: disable=g-import-not-at-top
  outputs = {}
  names, per = list(curves), len(report.curves.PALETTE)
  for i in range(0, len(names), per):
    part = "" if i == 0 else f"_{i // per + 1}"
    path = os.path.join(plan.output, f"pr_curves_{plan.pr_bits}bits{part}.png")
    outputs["pr_curves" + part] = path
    report.plot_pr_curves(
        {n: curves[n] for n in names[i:i + per]}, path,
        title=f"{plan.suite.name}: precision-recall, {plan.pr_bits} bits")
  return outputs


def _gallery_ids(ds, n: int) -> List[str]:
  """Ids of the gallery's queries: n spread over the classes (the queries
  ATH draws overlays of)."""
  from medhash_jax import report  # pylint: disable=g-import-not-at-top
  q = ds.eval["query"]
  return [str(q.ids[i]) for i in report.spread_queries(q.labels, n)]


def write_gallery(path: str, q_codes, db_codes, ds, overlays=None, *,
                  n: int = 4, k: int = 10):
  """Top-k of n queries spread over the classes, with the system's overlays
  of them (`System.query_overlays`) when it has some."""
  from medhash_jax import report  # pylint: disable=g-import-not-at-top
  from medhash_jax.retrieval import HammingIndex  # pylint: disable=g-import-not-at-top
  q_ds, db_ds = ds.eval["query"], ds.eval["database"]
  q_lab, db_lab = q_ds.labels, db_ds.labels
  pick = report.spread_queries(q_lab, n)
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
  report.save_gallery(path, q_img, r_img, relevant, distances=dist,
                      query_labels=[caption(l) for l in q_lab[pick]],
                      result_labels=[[caption(db_lab[j]) for j in row]
                                     for row in ids],
                      overlays=overlays or None)
