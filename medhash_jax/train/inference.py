"""The modes after training: evaluate, encode, search, export.

Every mode reads the run's saved config (`checkpoints/config.json`);
`--config` is optional. When one is given (or `--set key=value`), keys that
change the model or the meaning of the data are refused, naming each key
(`checkpoint.check_config_compatible`, classes from `defaults.KEY_CLASSES`);
training and operational keys (paths, batch sizes, workers, skip_bad, ...)
may differ.

encode   `--input` given: image files -> a HammingIndex file + `<name>_meta.npz`
         (ids, paths), with the run's selected model, no training data needed
         (`systems.open_run`). No `--input`: a split of the configured data
         set (`--split`), which needs that data.
search   query images -> the top k database cases of the run (ties re-ranked,
         `retrieval/rerank.py`), a short table on stdout, JSON (schema below),
         optionally an HTML gallery (`--gallery`). Needs only the workdir or a
         bundle.
export   a portable bundle of the run (`systems/bundle.py`).

Search JSON (`"schema": "medhash-search/1"`):

    {"schema": "medhash-search/1",
     "run": {method, num_bits, num_cases, dataset, class_names, model_step, ...},
     "k": 10,
     "results": [{"query": "path/of/query.png",
                  "hits": [{"rank": 1, "id": "case id", "distance": 3,
                            "tie_group": 41, "name": "...",
                            "labels": ["Normal"], "path": "..."}, ...]}, ...],
     "skipped": [{"path": "bad.png", "error": "..."}]}

`distance` is the Hamming distance; `tie_group` the number of database cases
at that distance from the query (hits of one group are ordered by the
query's real-valued code, then a seeded order; never by file order).

Outputs are never overwritten: an explicit `--output` that exists is
refused; the default names (`search.json`, `encoded.mhi`, in the workdir, or
in the current folder for a bundle) take the next free `_2`, `_3`, ... suffix.
"""

import html
import base64
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np

from medhash_jax import data as data_lib
from medhash_jax.config import overrides
from medhash_jax.retrieval import HammingIndex
from medhash_jax.train import checkpoint as ckpt_lib
from medhash_jax.train import evaluate as eval_lib
from medhash_jax.train import loop

SCHEMA = "medhash-search/1"
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
# Above this many queries the table shows one line per query (and at most
# _TABLE_QUERIES of them); the JSON always has everything.
_FULL_TABLE_QUERIES = 5
_TABLE_QUERIES = 20


def meta_path(index_path: str) -> str:
  return os.path.splitext(index_path)[0] + "_meta.npz"


def list_images(spec: str) -> List[str]:
  """A file, a folder (recursive), or a .txt file with one path per line."""
  if os.path.isdir(spec):
    out = []
    for d, dirs, files in os.walk(spec):
      dirs.sort()
      out += [os.path.join(d, f) for f in sorted(files)
              if f.lower().endswith(_IMAGE_EXT)]
    if not out:
      raise FileNotFoundError(f"no images ({', '.join(_IMAGE_EXT)}) under {spec}")
    return out
  if spec.endswith(".txt"):
    with open(spec, encoding="utf-8") as f:
      base = os.path.dirname(os.path.abspath(spec))
      return [os.path.join(base, line.strip()) for line in f if line.strip()]
  if os.path.isfile(spec):
    return [spec]
  raise FileNotFoundError(f"--input {spec!r} is not a file, folder or list")


def read_images(paths: Sequence[str], *, skip_bad: bool = False
                ) -> Tuple[List[str], List[np.ndarray], List[Dict[str, str]]]:
  """(kept paths, uint8 images, skipped [{path, error}]).

  A file that cannot be decoded raises (naming it) unless skip_bad, which
  skips it, logs it and lists it in the third return value.
  """
  kept, images, skipped = [], [], []
  for p in paths:
    try:
      img = data_lib.decode_image(p)
      if img.ndim != 3 or img.dtype != np.uint8:
        raise ValueError(f"decoded to {img.dtype}{img.shape}, expected uint8 "
                         "(H, W, C)")
    except Exception as e:  # pylint: disable=broad-except
      if not skip_bad:
        raise ValueError(f"cannot read query image {p}: {e} (--skip_bad "
                         "skips such files)") from e
      logging.warning("skipping unreadable image %s: %s", p, e)
      skipped.append({"path": p, "error": str(e)})
      continue
    kept.append(p)
    images.append(img)
  return kept, images, skipped


def free_output(path: str, default: str) -> str:
  """`path` if given (refused when it exists), else the first free variant
  of `default` (name, name_2, name_3, ...)."""
  if path:
    if os.path.exists(path):
      raise FileExistsError(f"{path} exists; choose another --output (earlier"
                            " outputs are never overwritten)")
    return path
  stem, ext = os.path.splitext(default)
  n, out = 1, default
  while os.path.exists(out) or os.path.exists(meta_path(out)):
    n += 1
    out = f"{stem}_{n}{ext}"
  return out


# -- config --------------------------------------------------------------------


def run_config(workdir: str, config: Optional[ml_collections.ConfigDict] = None,
               settings: Sequence[Tuple[str, Any]] = ()
               ) -> ml_collections.ConfigDict:
  """The run's saved config, with the caller's allowed changes applied.

  Args:
    workdir: a trained run.
    config: an optional full config (--config); refused where it differs
      from the run in a model key. Multi-stage (ATH) configs are mapped to
      their hashing stage first.
    settings: (dotted key, value) pairs (--set) applied on top; text is
      typed as `--config.key=text` would be (config/overrides.py).

  Raises:
    ConfigMismatchError: naming every model key that differs.
  """
  saved = ckpt_lib.read_saved_config(workdir)
  if saved is None:
    raise FileNotFoundError(f"{workdir} is not a trained run (no "
                            f"checkpoints/{ckpt_lib.CONFIG_FILE})")
  if config is not None:
    from medhash_jax import systems  # pylint: disable=g-import-not-at-top
    wanted = systems.hash_config(config, workdir).to_dict()
  else:
    wanted = json.loads(json.dumps(saved))
  c = overrides.apply(ml_collections.ConfigDict(wanted), settings, "--set")
  ckpt_lib.check_config_compatible(saved, c.to_dict(), workdir,
                                   changeable=ckpt_lib.INFERENCE)
  c.lock()
  return c


# -- modes ---------------------------------------------------------------------


def evaluate(workdir: str, config=None, settings=()) -> Dict[str, Any]:
  """`--mode=evaluate`: the final evaluation again (needs the data set)."""
  return loop.evaluate_workdir(run_config(workdir, config, settings), workdir)


def encode(config, workdir: str, *, input_spec: str = "", split: str = "database",
           output: str = "", local_views=None, skip_bad: bool = False,
           settings=()) -> Dict[str, Any]:
  """Writes an index (+ meta) of image files or of a split; a summary.

  With `input_spec` only the run is read (`systems.open_run`; `config` may be
  None, and when given is only checked). Without, the configured data set's
  `split` is encoded (that needs the data).
  """
  del local_views  # the run makes them itself (ATH)
  from medhash_jax import systems  # pylint: disable=g-import-not-at-top
  if input_spec:
    if config is not None or settings:
      run_config(workdir, config, settings)      # refuse model-key changes
    r = systems.open_run(workdir)
    paths, images, skipped = read_images(list_images(input_spec),
                                         skip_bad=skip_bad)
    codes = r.encode_images(images)
    meta = dict(ids=np.asarray([os.path.basename(p) for p in paths], str),
                paths=np.asarray(paths, str),
                labels=np.zeros((len(paths), 0), np.float32),
                class_names=np.asarray(r.class_names, str))
    step, num_bits = r.info["model_step"], r.num_bits
  else:
    cfg = run_config(workdir, config, settings)
    run = loop.Run(cfg, workdir, for_training=False)
    items, step = run.selected_variables()
    variables = run.variables_of(items)
    ds = run.ds.eval[split]
    codes, _ = eval_lib.map_split(run.encode_fn, variables, ds, run.mesh,
                                     input_keys=run.task.input_keys)
    src = run.ds.source
    paths = (np.asarray(src.paths)[ds.indices] if hasattr(src, "paths")
             else np.asarray([""] * ds.size))
    meta = dict(ids=np.asarray(ds.ids).astype(str), paths=paths.astype(str),
                labels=ds.labels,
                class_names=np.asarray(run.ds.class_names).astype(str))
    num_bits, skipped = int(cfg.num_bits), []
  index = HammingIndex(num_bits)
  index.add(codes)
  out_dir = os.getcwd() if _is_bundle(workdir) else workdir
  output = free_output(output, os.path.join(out_dir, "encoded.mhi"))
  if jax.process_index() == 0:
    index.save(output)
    np.savez(meta_path(output), **meta)
  logging.info("encoded %d items with the model of step %d -> %s", len(index),
               step, output)
  return {"index_file": output, "count": len(index), "num_bits": num_bits,
          "model_step": step, "skipped": skipped}


def search(config, workdir: str, *, input_spec: str, k: int = 10,
           output: str = "", gallery: str = "", skip_bad: bool = False,
           settings=(), local_views=None, print_fn=print
           ) -> List[Dict[str, Any]]:
  """Top-k database cases per query image: table, JSON, optional gallery.

  Args:
    config: None (the run's own), or a config to check against the run.
    workdir: a trained workdir or an exported bundle.
    input_spec: an image, a folder of images or a .txt list of paths.
    k: hits per query; refused (ValueError naming it) when larger than the
      database, never clamped.
    output: the JSON file (default WORKDIR/search.json, next free name).
    gallery: optional .html file: each query with its hits' thumbnails.
    skip_bad: skip unreadable query files (listed in the JSON and the log)
      instead of failing on the first.

  Returns:
    The JSON's "results": per query {"query", "hits"}.
  """
  del local_views
  from medhash_jax import systems  # pylint: disable=g-import-not-at-top
  if not input_spec:
    raise ValueError("--mode=search needs --input (query image, folder or list)")
  if (config is not None or settings) and not _is_bundle(workdir):
    run_config(workdir, config, settings)
  r = systems.open_run(workdir)
  n = r.info["num_cases"]
  if isinstance(k, bool) or not 1 <= int(k) <= n:
    raise ValueError(f"--k={k}: the database of {workdir} holds {n} cases; "
                     f"choose 1 <= k <= {n}")
  # A bundle is a read-only product: default outputs go to the current folder.
  out_dir = os.getcwd() if _is_bundle(workdir) else workdir
  out_path = free_output(output, os.path.join(out_dir, "search.json"))
  gallery_path = free_output(gallery, "") if gallery else ""
  paths, images, skipped = read_images(list_images(input_spec),
                                       skip_bad=skip_bad)
  hits = r.search(r.encode_images(images), int(k)) if images else []
  results = [{"query": p, "hits": h} for p, h in zip(paths, hits)]
  doc = {"schema": SCHEMA, "run": _run_info(r), "k": int(k),
         "results": results, "skipped": skipped}
  if jax.process_index() == 0:
    loop._write_json(out_path, doc)  # pylint: disable=protected-access
    if gallery_path:
      write_gallery(gallery_path, r, paths, images, results)
  print_fn(format_table(results, skipped, out_path))
  return results


def export(workdir: str, output: str) -> Dict[str, Any]:
  """`--mode=export --output=DIR`: a bundle of the run (never overwrites)."""
  from medhash_jax import systems  # pylint: disable=g-import-not-at-top
  if not output:
    raise ValueError("--mode=export needs --output=DIR (a new folder)")
  manifest = systems.open_run(workdir).export(output)
  return {"bundle": os.path.abspath(output), **manifest["info"],
          "files": sorted(manifest["files"])}


def _is_bundle(path: str) -> bool:
  from medhash_jax.systems import bundle  # pylint: disable=g-import-not-at-top
  return bundle.is_bundle(path)


def _run_info(r) -> Dict[str, Any]:
  info = dict(r.info)
  return {k: info[k] for k in ("method", "num_bits", "num_cases", "dataset",
                               "class_names", "model_step", "kind", "path")}


# -- output ----------------------------------------------------------------------


def format_table(results, skipped, out_path: str) -> str:
  """A few queries: every hit; many: one line per query, the first 20."""
  lines = []
  if len(results) <= _FULL_TABLE_QUERIES:
    header = (f"{'query':<28} {'rank':>4} {'dist':>4} {'tie':>5}  "
              f"{'name':<24} labels")
    lines += [header, "-" * len(header)]
    for r in results:
      q = os.path.basename(r["query"])[-28:]
      for h in r["hits"]:
        lines.append(f"{q:<28} {h['rank']:>4} {h['distance']:>4} "
                     f"{h['tie_group']:>5}  {h['name'][-24:]:<24} "
                     f"{'|'.join(h['labels'])}")
        q = ""
  else:
    header = f"{'query':<28} {'top-1 (dist)':<30} labels among the hits"
    lines += [header, "-" * len(header)]
    for r in results[:_TABLE_QUERIES]:
      counts: Dict[str, int] = {}
      for h in r["hits"]:
        for lab in h["labels"] or ["(none)"]:
          counts[lab] = counts.get(lab, 0) + 1
      top = r["hits"][0]
      first = f"{top['name'][-24:]} ({top['distance']})"
      summary = ", ".join(f"{lab} {c}" for lab, c in
                          sorted(counts.items(), key=lambda t: -t[1]))
      lines.append(f"{os.path.basename(r['query'])[-28:]:<28} {first:<30} "
                   f"{summary}")
    if len(results) > _TABLE_QUERIES:
      lines.append(f"... and {len(results) - _TABLE_QUERIES} more queries")
  if skipped:
    lines.append(f"skipped {len(skipped)} unreadable file(s): " + ", ".join(
        s["path"] for s in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
  lines.append(f"{len(results)} queries; every hit in {out_path}")
  return "\n".join(lines)


def _data_uri(png: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(png).decode()


def write_gallery(path: str, r, paths, images, results, max_queries: int = 50):
  """A self-contained HTML page: each query, then its hits' thumbnails with
  rank, distance, tie group and labels."""
  from medhash_jax.train import run_files  # pylint: disable=g-import-not-at-top
  esc = html.escape
  rows = []
  for p, img, res in list(zip(paths, images, results))[:max_queries]:
    cells = [f'<figure class="q"><img src="{_data_uri(run_files.thumbnail_png(img))}">'
             f"<figcaption>{esc(os.path.basename(p))}</figcaption></figure>"]
    for h in res["hits"]:
      cells.append(
          f'<figure><img src="{_data_uri(r.thumbnail(h["id"]))}"><figcaption>'
          f"#{h['rank']} d={h['distance']} (tie {h['tie_group']})<br>"
          f"{esc(', '.join(h['labels']))}<br><small>{esc(h['name'])}</small>"
          "</figcaption></figure>")
    rows.append('<div class="row">' + "".join(cells) + "</div>")
  more = (f"<p>{len(results) - max_queries} more queries in the JSON.</p>"
          if len(results) > max_queries else "")
  doc = ("<!doctype html><meta charset=utf-8><title>medhash search</title>"
         "<style>body{font:12px sans-serif}.row{display:flex;gap:6px;"
         "margin:8px 0}figure{margin:0;width:100px}img{width:96px;height:96px;"
         "object-fit:contain;background:#eee}.q img{outline:3px solid #1e5adc}"
         "</style>"
         f"<h1>{esc(r.info['method'])} · {r.info['num_bits']} bits · "
         f"{r.info['num_cases']} cases</h1>" + "".join(rows) + more)
  run_files.atomic_write_bytes(path, doc.encode())
