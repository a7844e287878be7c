"""`--mode=encode` and `--mode=search`: codes for images, queries on an index.

encode: the model selected on val (or the latest checkpoint) encodes a split
  of the configured dataset, or image files (a file, a folder, or a .txt list
  of paths), into a HammingIndex file plus a `<index>_meta.npz` side file
  holding each item's id, path, labels and the class names.
search: query images -> top-k database items (id, path, distance, labels),
  printed as a table and written as JSON.
"""

import json
import os
from typing import Any, Dict, List, Sequence

from absl import logging
import jax
import numpy as np

from medhash_jax import data as data_lib
from medhash_jax.retrieval import HammingIndex
from medhash_jax.train import evaluate as eval_lib
from medhash_jax.train import loop
from medhash_jax.train import mesh as mesh_lib

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")


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


class _Loaded:
  """A trained workdir opened for inference."""

  def __init__(self, config, workdir: str, local_views=None):
    self.local_views = local_views
    self.run = loop.Run(config, workdir, for_training=False)
    if self.run.ckpt.latest_step() is None and not os.path.isdir(
        os.path.join(workdir, "best")):
      raise FileNotFoundError(f"{workdir} holds no trained model")
    if self.run.ckpt.latest_step() is not None:
      restored, _ = self.run.ckpt.restore(self.run.state.checkpoint_items())
      self.run.state = self.run.state.replace_from_checkpoint(restored)
    items, self.step = self.run.selected_variables()
    self.variables = self.run.variables_of(items)
    cfg = config.data
    self.pre = data_lib.Preprocessor(image_size=cfg.image_size,
                                     channels=cfg.channels,
                                     normalize=cfg.normalize, augment=None)

  def encode_files(self, paths: Sequence[str]) -> np.ndarray:
    """Codes float32 (n, K) of image files, in fixed-shape padded batches."""
    mesh, bs = self.run.mesh, self.run.eval_batch_size
    keys = self.run.task.input_keys
    # Every process lists the same files; each decodes only its slice of
    # every padded global batch (the layout of the eval pipeline).
    lb, me = bs // jax.process_count(), jax.process_index()
    two_view = tuple(keys) == ("image", "local_image")
    if tuple(keys) != ("image",) and not (two_view and self.local_views):
      raise NotImplementedError(
          f"encoding loose files needs inputs {keys} and this system gives "
          "no way to make them from a file (use a configured dataset split)")
    out = []
    zeros = self.pre.zeros()
    for s in range(0, len(paths), bs):
      chunk = paths[s:s + bs]
      mine = chunk[me * lb:(me + 1) * lb]
      decoded = [data_lib.decode_image(p) for p in mine]
      inputs = {"image": np.zeros((lb,) + zeros.shape, zeros.dtype)}
      for j, img in enumerate(decoded):
        inputs["image"][j] = self.pre(img)
      if two_view:   # the system's local view of each file (ATH: Grad-CAM)
        inputs["local_image"] = np.zeros_like(inputs["image"])
        for j, (local, _) in enumerate(self.local_views(decoded)):
          inputs["local_image"][j] = self.pre(local)
      codes = self.run.encode_fn(self.variables,
                                 mesh_lib.shard_batch(inputs, mesh))
      # Replicated output: every process reads the whole global batch.
      out.append(np.asarray(jax.device_get(codes))[:len(chunk)])
    return np.concatenate(out).astype(np.float32)


def encode(config, workdir: str, *, input_spec: str = "", split: str = "database",
           output: str = "", local_views=None) -> Dict[str, Any]:
  """Writes an index (+ meta) of a split or of image files; returns a summary."""
  loaded = _Loaded(config, workdir, local_views)
  output = output or os.path.join(workdir, "encoded.mhi")
  index = HammingIndex(config.num_bits)
  if input_spec:
    paths = list_images(input_spec)
    codes = loaded.encode_files(paths)
    meta = dict(ids=np.asarray([os.path.basename(p) for p in paths]),
                paths=np.asarray(paths), labels=np.zeros((len(paths), 0),
                                                          np.float32),
                class_names=np.asarray([], str))
  else:
    ds = loaded.run.ds.eval[split]
    codes, _ = eval_lib.encode_split(loaded.run.encode_fn, loaded.variables, ds,
                                     loaded.run.mesh,
                                     input_keys=loaded.run.task.input_keys)
    src = loaded.run.ds.source
    paths = (np.asarray(src.paths)[ds.indices] if hasattr(src, "paths")
             else np.asarray([""] * ds.size))
    meta = dict(ids=np.asarray(ds.ids).astype(str), paths=paths.astype(str),
                labels=ds.labels,
                class_names=np.asarray(loaded.run.ds.class_names).astype(str))
  index.add(codes)
  if jax.process_index() == 0:
    index.save(output)
    np.savez(meta_path(output), **meta)
  logging.info("encoded %d items with the model of step %d -> %s", len(index),
               loaded.step, output)
  return {"index_file": output, "count": len(index), "num_bits": index.num_bits,
          "model_step": loaded.step}


def _label_text(row: np.ndarray, class_names: np.ndarray) -> str:
  if row.size == 0:
    return ""
  on = np.flatnonzero(row > 0.5)
  if class_names.size:
    return "|".join(str(class_names[i]) for i in on)
  return "|".join(str(i) for i in on)


def search(config, workdir: str, *, input_spec: str, k: int = 10,
           index_path: str = "", output: str = "", local_views=None
           ) -> List[Dict[str, Any]]:
  """Top-k database items for each query image; prints a table, writes JSON."""
  if not input_spec:
    raise ValueError("--mode=search needs --input (query image, folder or list)")
  index_path = index_path or os.path.join(workdir, loop.INDEX_FILE)
  index = HammingIndex.load(index_path)
  if index.num_bits != config.num_bits:
    raise ValueError(f"{index_path} holds {index.num_bits}-bit codes but the "
                     f"config has num_bits={config.num_bits}")
  meta = (dict(np.load(meta_path(index_path), allow_pickle=False))
          if os.path.exists(meta_path(index_path)) else {})
  loaded = _Loaded(config, workdir, local_views)
  paths = list_images(input_spec)
  codes = loaded.encode_files(paths)
  dist, ids = index.search(codes, min(k, len(index)))
  db_ids = meta.get("ids")
  db_paths = meta.get("paths")
  labels = meta.get("labels")
  names = meta.get("class_names", np.asarray([], str))
  results = []
  for qi, qpath in enumerate(paths):
    hits = []
    for rank, (d, i) in enumerate(zip(dist[qi], ids[qi]), 1):
      hit = {"rank": rank, "id": int(i), "distance": int(d)}
      if db_ids is not None and i < len(db_ids):
        hit["name"] = str(db_ids[i])
        if db_paths is not None and len(db_paths) == len(db_ids):
          hit["path"] = str(db_paths[i])
        if labels is not None and labels.shape[1]:
          hit["labels"] = _label_text(labels[i], names)
      hits.append(hit)
    results.append({"query": qpath, "hits": hits})
  _print_table(results)
  output = output or os.path.join(workdir, "search.json")
  if jax.process_index() == 0:
    with open(output, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  return results


def _print_table(results):
  header = f"{'query':<32} {'rank':>4} {'dist':>4} {'id':>7}  {'name':<28} labels"
  print(header)
  print("-" * len(header))
  for r in results:
    q = os.path.basename(r["query"])[-32:]
    for h in r["hits"]:
      print(f"{q:<32} {h['rank']:>4} {h['distance']:>4} {h['id']:>7}  "
            f"{h.get('name', '')[-28:]:<28} {h.get('labels', '')}")
      q = ""
