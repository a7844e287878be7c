"""A trained run's files, read from a workdir or a portable bundle; export.

`load(path)` returns the `RunParts` that `systems.open_run` builds a
retriever from: config, record, selected variables, database codes, metadata,
thumbnails (and, for ATH, the classifier). It reads either

  * a trained workdir (`train/run_files.py` lists its files), or
  * a bundle written by `export(run_path, out_dir)` (`--mode=export`):

      manifest.json      {"format": "medhash-bundle", "version": 1,
                          "package_version", "info": {...},
                          "files": {name: {"bytes": n, "sha256": hex}}}
      config.json        the run's config (stage 3's for ATH)
      inference.json     preprocessing, class list, selected step, tie seed
      variables.msgpack  the selected parameters (flax.serialization)
      index.mhi          the database codes (HammingIndex file, checksummed)
      index_meta.npz     ids, names, labels, paths, class_names
      thumbnails.npz     per case a PNG <= 96 px (concatenated + offsets)
      classifier.msgpack, classifier.json   ATH only: the Grad-CAM classifier

    A bundle is written to a temporary folder and renamed; an existing output
    is never overwritten. Loading checks the format, the version and every
    file's size and sha256, and fails naming the file.

Why parameters + config and not `jax.export`: the bundle is loaded by this
package (the server of issue #13 is part of it), so the model code is
available; ATH's query path is not one function (Grad-CAM is a vjp through
the classifier, then Otsu and a host-side mask-and-crop), and an exported
StableHLO encoder would fix the batch size unless exported with symbolic
shapes, tie the bundle to the compatibility window of the serialisation
format, and hide the parameters from inspection. Parameters + config is
small, inspectable, and exactly the selected model (tested: same codes as
the live model).

Cases appended at serving time (`Retriever.add_cases` / `add_codes`) live in
append-only segment files, `added/segment-NNNNNN.npz`, beside the others
(earlier releases: one `added_cases.npz`, still read; see added_cases.py);
`export` folds them into the bundle's index and metadata.
"""

import dataclasses
import hashlib
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np

import medhash_jax
from medhash_jax.retrieval import HammingIndex
from medhash_jax.train import checkpoint as ckpt_lib
from medhash_jax.train import run_files

MANIFEST = "manifest.json"
FORMAT = "medhash-bundle"
VERSION = 1
ADDED_FILE = "added_cases.npz"
CONFIG_FILE = "config.json"
VARIABLES_FILE = "variables.msgpack"
CLASSIFIER_FILE = "classifier.msgpack"
CLASSIFIER_RECORD = "classifier.json"
INDEX_FILE = "index.mhi"


class BundleError(ValueError):
  """A bundle or run folder that is damaged, incomplete or of another format."""


@dataclasses.dataclass
class RunParts:
  """Everything a retriever needs, independent of where it was read from."""
  root: str
  kind: str                         # "workdir" or "bundle"
  config: Dict[str, Any]
  record: Dict[str, Any]
  variables: Dict[str, Any]         # {"params": ..., ["batch_stats": ...]}
  packed: np.ndarray                # uint32 (N, W) database codes
  ids: np.ndarray                   # str (N,)
  names: np.ndarray                 # str (N,)
  labels: np.ndarray                # float32 (N, C)
  paths: np.ndarray                 # str (N,)
  thumbs: List[bytes]               # (N,) PNG bytes, b"" = none
  classifier: Optional[Dict[str, Any]] = None   # ATH: model, variables, record


def is_bundle(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MANIFEST))


def load(path: str) -> RunParts:
  """RunParts of a bundle (has manifest.json) or a trained workdir."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} is not a run folder or bundle")
  return load_bundle(path) if is_bundle(path) else load_workdir(path)


# -- reading --------------------------------------------------------------------


def _meta(path: str, n: int):
  try:
    m = dict(np.load(path, allow_pickle=False))
  except Exception as e:  # pylint: disable=broad-except
    raise BundleError(f"{path}: unreadable ({e})") from e
  ids = m["ids"].astype(str)
  if ids.shape != (n,):
    raise BundleError(f"{path}: {ids.shape[0]} cases but the index holds {n}")
  names = m["names"].astype(str) if "names" in m else ids
  paths = m["paths"].astype(str) if "paths" in m else np.asarray([""] * n)
  labels = np.asarray(m["labels"], np.float32).reshape(n, -1)
  return ids, names, labels, paths, m.get("class_names")


def _thumbs(path: str, ids: np.ndarray) -> List[bytes]:
  if not os.path.exists(path):
    return [b""] * len(ids)
  try:
    t = np.load(path, allow_pickle=False)
    pngs = run_files.unpack_pngs(t["png"], t["offsets"])
    stored = t["ids"].astype(str)
  except Exception as e:  # pylint: disable=broad-except
    raise BundleError(f"{path}: unreadable ({e})") from e
  if not np.array_equal(stored, ids):
    raise BundleError(f"{path}: its case ids do not match the index metadata")
  return pngs


def _index(path: str, num_bits: int) -> np.ndarray:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: the run holds no database "
                            "index (train it to the end, or --mode=evaluate)")
  try:
    index = HammingIndex.load(path)
  except ValueError as e:
    raise BundleError(str(e)) from e
  if index.num_bits != num_bits:
    raise BundleError(f"{path} holds {index.num_bits}-bit codes but the run "
                      f"has num_bits={num_bits}")
  return index.packed


def _selected_variables(workdir: str):
  """The parameters selected on val (best/), else the latest checkpoint's."""
  for sub in ("best", "checkpoints"):
    d = os.path.join(workdir, sub)
    if not os.path.isdir(d):
      continue
    ckpt = ckpt_lib.Checkpointer(d, read_only=True, async_save=False)
    try:
      if ckpt.latest_step() is None:
        continue
      step = ckpt.latest_step()
      raw = ckpt.restore_raw()
    finally:
      ckpt.close()
    v = {"params": raw["params"]}
    if raw.get("batch_stats"):
      v["batch_stats"] = raw["batch_stats"]
    return v, int(step)
  raise FileNotFoundError(f"{workdir} holds no trained model (no best/ or "
                          "checkpoints/)")


def _classifier_from_workdir(workdir: str, ath: Dict[str, Any]):
  from medhash_jax.systems import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
  d = ath["classifier_dir"]
  d = d if os.path.isabs(d) else os.path.join(workdir, d)
  model_unused, variables, record = classifier_lib.load_for_inference(d)
  del model_unused
  return {"variables": variables, "record": dict(record)}


def load_workdir(workdir: str) -> RunParts:
  """RunParts of a trained workdir (needs no training data)."""
  record = run_files.load_record(workdir)
  if record is None:
    raise FileNotFoundError(
        f"{os.path.join(workdir, run_files.RECORD_FILE)} is missing: the run "
        "was trained before runs recorded their preprocessing; run "
        "--mode=evaluate on it once (with its data) to write it")
  config = ckpt_lib.read_saved_config(workdir)
  if config is None:
    raise FileNotFoundError(f"{workdir}/checkpoints/{ckpt_lib.CONFIG_FILE} "
                            "is missing: not a trained run")
  variables, step = _selected_variables(workdir)
  if step != int(record.get("model_step", step)):
    raise BundleError(
        f"{workdir}: the selected checkpoint is step {step} but the index was "
        f"made with step {record['model_step']} (re-run --mode=evaluate)")
  packed = _index(os.path.join(workdir, INDEX_FILE), int(record["num_bits"]))
  ids, names, labels, paths, _ = _meta(
      os.path.join(workdir, run_files.META_FILE), packed.shape[0])
  thumbs = _thumbs(os.path.join(workdir, run_files.THUMBS_FILE), ids)
  classifier = (_classifier_from_workdir(workdir, record["ath"])
                if record.get("ath") else None)
  return RunParts(root=os.path.abspath(workdir), kind="workdir", config=config,
                  record=record, variables=variables, packed=packed, ids=ids,
                  names=names, labels=labels, paths=paths, thumbs=thumbs,
                  classifier=classifier)


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def verify(bundle_dir: str) -> Dict[str, Any]:
  """The manifest, after checking format, version, sizes and checksums."""
  mpath = os.path.join(bundle_dir, MANIFEST)
  try:
    manifest = run_files.read_json(mpath)
  except (OSError, ValueError) as e:
    raise BundleError(f"{mpath}: unreadable ({e})") from e
  if manifest.get("format") != FORMAT:
    raise BundleError(f"{mpath}: format {manifest.get('format')!r}, expected "
                      f"{FORMAT!r}")
  if manifest.get("version") != VERSION:
    raise BundleError(f"{mpath}: bundle version {manifest.get('version')} "
                      f"but this medhash_jax ({medhash_jax.__version__}) reads"
                      f" version {VERSION}")
  for name, want in manifest.get("files", {}).items():
    path = os.path.join(bundle_dir, name)
    if not os.path.isfile(path):
      raise BundleError(f"{path}: missing from the bundle")
    size = os.path.getsize(path)
    if size != want["bytes"]:
      raise BundleError(f"{path}: {size} bytes, the manifest says "
                        f"{want['bytes']} (truncated or altered)")
    if _sha256(path) != want["sha256"]:
      raise BundleError(f"{path}: sha256 does not match the manifest "
                        "(damaged or altered)")
  for name in (CONFIG_FILE, run_files.RECORD_FILE, VARIABLES_FILE, INDEX_FILE,
               run_files.META_FILE):
    if name not in manifest.get("files", {}):
      raise BundleError(f"{mpath}: lists no {name}")
  return manifest


def _read_msgpack(path: str):
  from flax import serialization  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    return serialization.msgpack_restore(f.read())


def load_bundle(bundle_dir: str) -> RunParts:
  verify(bundle_dir)
  j = lambda name: run_files.read_json(os.path.join(bundle_dir, name))
  config, record = j(CONFIG_FILE), j(run_files.RECORD_FILE)
  variables = _read_msgpack(os.path.join(bundle_dir, VARIABLES_FILE))
  packed = _index(os.path.join(bundle_dir, INDEX_FILE), int(record["num_bits"]))
  ids, names, labels, paths, _ = _meta(
      os.path.join(bundle_dir, run_files.META_FILE), packed.shape[0])
  thumbs = _thumbs(os.path.join(bundle_dir, run_files.THUMBS_FILE), ids)
  classifier = None
  if record.get("ath"):
    classifier = {
        "variables": _read_msgpack(os.path.join(bundle_dir, CLASSIFIER_FILE)),
        "record": j(CLASSIFIER_RECORD)}
  return RunParts(root=os.path.abspath(bundle_dir), kind="bundle",
                  config=config, record=record, variables=variables,
                  packed=packed, ids=ids, names=names, labels=labels,
                  paths=paths, thumbs=thumbs, classifier=classifier)


# -- writing ----------------------------------------------------------------------


def _write_msgpack(path: str, tree):
  from flax import serialization  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  tree = jax.tree.map(np.asarray, tree)
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(tree))


def write_bundle(parts: RunParts, out_dir: str) -> Dict[str, Any]:
  """Writes `parts` as a bundle at out_dir (must not exist); the manifest."""
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir):
    raise FileExistsError(f"{out_dir} exists; export into a new folder (an "
                          "earlier export is never overwritten)")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
  try:
    p = lambda name: os.path.join(tmp, name)
    run_files.write_json(p(CONFIG_FILE), parts.config)
    record = dict(parts.record)
    if record.get("ath"):
      record["ath"] = dict(record["ath"], classifier_dir=None)
    run_files.write_json(p(run_files.RECORD_FILE), record)
    _write_msgpack(p(VARIABLES_FILE), parts.variables)
    index = HammingIndex(int(record["num_bits"]))
    index.add(parts.packed)
    index.save(p(INDEX_FILE))
    np.savez(p(run_files.META_FILE), ids=parts.ids, names=parts.names,
             labels=parts.labels, paths=parts.paths,
             class_names=np.asarray(record["class_names"], str))
    np.savez(p(run_files.THUMBS_FILE), ids=parts.ids,
             **run_files.pack_pngs(parts.thumbs))
    if parts.classifier is not None:
      _write_msgpack(p(CLASSIFIER_FILE), parts.classifier["variables"])
      run_files.write_json(p(CLASSIFIER_RECORD), parts.classifier["record"])
    files = {name: {"bytes": os.path.getsize(p(name)), "sha256": _sha256(p(name))}
             for name in sorted(os.listdir(tmp))}
    manifest = {"format": FORMAT, "version": VERSION,
                "package_version": medhash_jax.__version__,
                "source": parts.root,
                "info": {"method": record["method"],
                         "num_bits": record["num_bits"],
                         "num_cases": int(parts.packed.shape[0]),
                         "dataset": record["dataset"],
                         "model_step": record["model_step"]},
                "files": files}
    run_files.write_json(p(MANIFEST), manifest)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest
