"""The files that make a trained run usable without its training data.

After training (`loop.final_evaluation`), beside the checkpoints, a workdir
holds (README, "What a run writes"):

  checkpoints/config.json  the run's config (written when training starts)
  best/                    the parameters selected on val (orbax)
  index.mhi                the database's binary codes (HammingIndex file)
  index_meta.npz           per database case: ids, names, labels (multi-hot),
                           paths (relative to the data root), class_names
  thumbnails.npz           per database case a small PNG (<= THUMB_SIZE px):
                           `png` (all PNGs concatenated, uint8), `offsets`
                           (int64, n + 1), `ids`
  inference.json           what encoding needs besides config and parameters:
                           preprocessing, class list, head layout, the
                           selected step, the tie-break seed (+ "ath" for ATH)

Every file is written to a temporary name and renamed, so a crash never
leaves a half-written one under the real name.
"""

import concurrent.futures
import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

import medhash_jax

RECORD_FILE = "inference.json"
THUMBS_FILE = "thumbnails.npz"
META_FILE = "index_meta.npz"
RECORD_FORMAT = "medhash-run"
RECORD_VERSION = 1
THUMB_SIZE = 96


def atomic_write_bytes(path: str, data: bytes):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def atomic_savez(path: str, **arrays):
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  atomic_write_bytes(path, buf.getvalue())


def write_json(path: str, obj: Any):
  atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def read_json(path: str) -> Dict[str, Any]:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


# -- thumbnails ---------------------------------------------------------------


def thumbnail_png(image: np.ndarray, size: int = THUMB_SIZE) -> bytes:
  """uint8 (H, W[, C]) -> PNG bytes, longest side <= size (aspect kept)."""
  img = np.asarray(image)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  pil = Image.fromarray(img.astype(np.uint8))
  pil.thumbnail((size, size), Image.Resampling.BILINEAR)
  out = io.BytesIO()
  pil.save(out, format="PNG", optimize=False)
  return out.getvalue()


def pack_pngs(pngs: Sequence[bytes]) -> Dict[str, np.ndarray]:
  lengths = np.asarray([len(p) for p in pngs], np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  buf = np.frombuffer(b"".join(pngs), np.uint8) if len(pngs) else np.zeros(
      (0,), np.uint8)
  return {"png": buf, "offsets": offsets}


def unpack_pngs(png: np.ndarray, offsets: np.ndarray) -> List[bytes]:
  data = np.asarray(png, np.uint8).tobytes()
  return [data[int(a):int(b)] for a, b in zip(offsets[:-1], offsets[1:])]


def make_thumbnails(read_image, count: int, threads: int = 4) -> List[bytes]:
  """PNG thumbnails of `read_image(i)` for i < count (b"" where it fails)."""

  def one(i):
    try:
      return thumbnail_png(read_image(i))
    except Exception:  # pylint: disable=broad-except
      return b""       # a missing thumbnail must not lose a finished run

  with concurrent.futures.ThreadPoolExecutor(max(1, int(threads))) as ex:
    return list(ex.map(one, range(count)))


# -- what final_evaluation writes ---------------------------------------------


def relative_paths(paths: Sequence[str], roots: Sequence[str]) -> List[str]:
  """Each path relative to the first root it lies under (else unchanged)."""
  roots = [os.path.abspath(r) for r in roots if r]
  out = []
  for p in paths:
    p = str(p)
    if not p:
      out.append("")
      continue
    ap = os.path.abspath(p)
    for r in roots:
      if ap.startswith(r.rstrip(os.sep) + os.sep):
        ap = os.path.relpath(ap, r)
        break
    out.append(ap if ap != os.path.abspath(p) else p)
  return out


def inference_record(config, ds, *, model_step: int) -> Dict[str, Any]:
  """The record `systems.open_run` rebuilds the encoder from."""
  return {
      "format": RECORD_FORMAT, "version": RECORD_VERSION,
      "package_version": medhash_jax.__version__,
      "method": str(config.method), "dataset": str(config.data.name),
      "num_bits": int(config.num_bits), "model_step": int(model_step),
      "model": str(config.model.name),
      "class_names": [str(c) for c in ds.class_names],
      "num_classes": int(ds.num_classes),
      "multi_label": bool(ds.multi_label), "two_view": bool(ds.two_view),
      "preprocessing": {"image_size": int(ds.image_size),
                        "channels": int(ds.channels),
                        "normalize": str(config.data.normalize),
                        "resize": "bilinear, to image_size x image_size"},
      "tie_seed": int(config.seed),
  }


def write_run_files(workdir: str, config, ds, *, model_step: int,
                    thumbnails: bool = True):
  """index_meta.npz, thumbnails.npz and inference.json of a finished run
  (`loop.final_evaluation`; process 0 only)."""
  db = ds.eval["database"]
  src = ds.source
  ids = np.asarray(db.ids).astype(str)
  if hasattr(src, "paths"):
    # Relative to the data set's folder (or its configured places), so the
    # record does not carry this machine's mount points.
    paths = relative_paths(np.asarray(src.paths)[db.indices],
                           [getattr(src, "dir", ""),
                            getattr(config.data, "path", ""),
                            getattr(config.data, "root", "")])
  else:
    paths = [""] * len(ids)
  names = [os.path.basename(p) if p else i for p, i in zip(paths, ids)]
  atomic_savez(os.path.join(workdir, META_FILE), labels=db.labels, ids=ids,
               names=np.asarray(names, str), paths=np.asarray(paths, str),
               source_indices=np.asarray(db.indices),
               class_names=np.asarray(ds.class_names).astype(str),
               dataset=np.asarray(config.data.name))
  if thumbnails:
    indices = np.asarray(db.indices)
    pngs = make_thumbnails(lambda i: src.read_image(int(indices[i])),
                           len(ids), threads=int(config.data.read_threads))
    atomic_savez(os.path.join(workdir, THUMBS_FILE), ids=ids,
                 **pack_pngs(pngs))
  record = inference_record(config, ds, model_step=model_step)
  path = os.path.join(workdir, RECORD_FILE)
  if os.path.exists(path):  # keep what a system added (ATH: "ath")
    old = read_json(path)
    record.update({k: v for k, v in old.items() if k not in record})
  write_json(path, record)


def update_record(workdir: str, **entries):
  """Adds entries to a run's inference.json (systems: e.g. ath=...)."""
  path = os.path.join(workdir, RECORD_FILE)
  record = read_json(path) if os.path.exists(path) else {}
  record.update(entries)
  write_json(path, record)


def load_record(path: str) -> Optional[Dict[str, Any]]:
  p = os.path.join(path, RECORD_FILE)
  return read_json(p) if os.path.exists(p) else None
