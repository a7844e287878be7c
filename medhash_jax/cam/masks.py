"""Heat map -> Otsu -> binary mask over a whole split, cached on disk.

Layout under a mask root (the ATH config uses ``{workdir}/masks``)::

    {root}/{split}.npy         uint8 (N, H, W), 1 = foreground, row i = position i
    {root}/{split}.ids.json    {"split", "count", "shape", "ids": [...], "meta"}

Both are written to a temporary name and renamed (the ids file last, so its
presence means the pair is complete). A cache is reused when it exists and its
ids equal the split's ids in order; any other mismatch (count, ids, shape,
dtype, values other than 0/1) raises :class:`MaskCacheError` naming the file,
rather than silently recomputing over a stale run's masks.

The data layer's mask-and-crop (:mod:`medhash_jax.data.mask_crop`) reads one
file per record, ``<mask_dir>/<mask_key(id)>.png`` (nonzero = foreground) at the
image's native resolution; :func:`export_png_dir` writes that format. The masks
here are at the model's input size (where Grad-CAM runs), so the data config
needs ``data.resize_masks=True`` (nearest-neighbour) unless images are stored at
that size. A PNG folder is keyed by record id only, so a record in two splits
whose masks differ (true vs predicted class) needs one folder per split: the
data layer's per-split layout ``<mask_dir>/<split>/`` (see
``medhash_jax.data.mask_crop``), which is what ATH writes.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from medhash_jax.cam import otsu
from medhash_jax.data import rows as rows_lib


class MaskCacheError(ValueError):
  """A mask cache that does not match its split (names the file)."""


def array_path(root: str, split: str) -> str:
  return os.path.join(root, f"{split}.npy")


def ids_path(root: str, split: str) -> str:
  return os.path.join(root, f"{split}.ids.json")


@jax.jit
def _heat_to_mask(heat: jax.Array) -> jax.Array:
  return otsu.otsu_mask(heat).astype(jnp.uint8)


def compute_masks(cam_fn: Callable[..., jax.Array],
                  batches: Iterable[Mapping[str, Any]], *, num_examples: int,
                  put_fn: Callable[[Any], Any] | None = None,
                  return_heat: bool = False):
  """Runs ``cam_fn`` and Otsu over a split's batches.

  Args:
    cam_fn: ``cam_fn(images, labels) -> heat maps (B, H, W)`` (e.g.
      :func:`medhash_jax.cam.gradcam.make_cam_fn`).
    batches: dicts with ``image`` (B, H, W, C) and optionally ``labels``
      (B, K), ``index`` (B,) positions in the split and ``valid`` (B,) (padding
      rows are skipped), as the data layer's eval iterators yield. Without
      ``index`` batches are taken to be in order.
    num_examples: N, the split size; every position must appear exactly once.
    put_fn: optional ``put_fn(array)`` placing inputs on devices (e.g. a
      batch-sharded ``jax.device_put``).
    return_heat: also return the float16 heat maps (N, H, W).

  Returns:
    masks uint8 (N, H, W) (and heat maps if asked).
  """
  put = put_fn or (lambda x: x)
  masks = rows_lib.SplitRows(num_examples, "masks", np.uint8, what="mask")
  heat_all = rows_lib.SplitRows(num_examples, "heat maps", np.float16)
  start = 0
  for batch in batches:
    images = np.asarray(batch["image"])
    b = images.shape[0]
    index = (np.asarray(batch["index"]) if "index" in batch
             else np.arange(start, start + b))
    start += b
    labels = batch.get("labels")
    heat = cam_fn(put(images), None if labels is None else put(np.asarray(labels)))
    masks.put(np.asarray(_heat_to_mask(heat)), index, batch.get("valid"))
    if return_heat:
      heat_all.put(np.asarray(heat), index, batch.get("valid"))
  masks = masks.result()
  if return_heat:
    heat_all = heat_all.result()
  return (masks, heat_all) if return_heat else masks


def _atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb"):
  d = os.path.dirname(path) or "."
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-" + os.path.basename(path))
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def save_masks(root: str, split: str, masks: np.ndarray, ids: Sequence[str],
               meta: Mapping[str, Any] | None = None) -> str:
  """Writes ``{root}/{split}.npy`` and ``{split}.ids.json`` atomically."""
  masks = np.asarray(masks)
  ids = [str(i) for i in ids]
  if masks.ndim != 3 or masks.shape[0] != len(ids):
    raise ValueError(f"masks shape {masks.shape} does not match {len(ids)} ids "
                     "(expected (N, H, W))")
  masks = (masks > 0).astype(np.uint8)
  _atomic_write(array_path(root, split), lambda f: np.save(f, masks))
  doc = dict(split=split, count=len(ids), shape=list(masks.shape), ids=ids,
             meta=dict(meta or {}))
  _atomic_write(ids_path(root, split),
                lambda f: json.dump(doc, f), mode="w")
  return array_path(root, split)


def load_masks(root: str, split: str, ids: Sequence[str] | None = None
               ) -> np.ndarray:
  """Reads and verifies a cached split; raises MaskCacheError on mismatch."""
  ap, ip = array_path(root, split), ids_path(root, split)
  if not os.path.isfile(ip) or not os.path.isfile(ap):
    raise FileNotFoundError(f"no mask cache for split {split!r} in {root} "
                            f"(need {os.path.basename(ap)} and "
                            f"{os.path.basename(ip)})")
  try:
    with open(ip) as f:
      doc = json.load(f)
    masks = np.load(ap, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise MaskCacheError(f"{ap}: unreadable mask cache ({e}); delete it to "
                         "recompute") from e
  stored = doc.get("ids", [])
  if masks.dtype != np.uint8 or masks.ndim != 3:
    raise MaskCacheError(f"{ap}: expected uint8 (N, H, W), got {masks.dtype} "
                         f"{masks.shape}")
  if masks.shape[0] != len(stored) or masks.shape[0] != doc.get("count"):
    raise MaskCacheError(f"{ap}: {masks.shape[0]} masks but {ip} lists "
                         f"{len(stored)} ids (count {doc.get('count')}); "
                         "delete both to recompute")
  if ids is not None:
    ids = [str(i) for i in ids]
    if len(ids) != len(stored):
      raise MaskCacheError(f"{ap}: cached for {len(stored)} examples, split "
                           f"{split!r} has {len(ids)}; delete it (or use "
                           "another workdir) to recompute")
    if ids != stored:
      k = next(i for i, (a, b) in enumerate(zip(ids, stored)) if a != b)
      raise MaskCacheError(f"{ap}: id at position {k} is {stored[k]!r}, split "
                           f"{split!r} has {ids[k]!r}; the cache belongs to "
                           "another split or order; delete it to recompute")
  if masks.max(initial=0) > 1:
    raise MaskCacheError(f"{ap}: values other than 0/1")
  return masks


def export_png_dir(mask_dir: str, ids: Sequence[str], masks: np.ndarray, *,
                   only_missing: bool = False) -> int:
  """Writes ``<mask_dir>/<mask_key(id)>.png`` (0/255) for the data layer.

  Returns the number of files written. Two ids with the same key raise.
  """
  from medhash_jax.data.mask_crop import mask_key  # the data layer's naming

  os.makedirs(mask_dir, exist_ok=True)
  keys = [mask_key(str(i)) for i in ids]
  if len(set(keys)) != len(keys):
    dup = next(k for k in keys if keys.count(k) > 1)
    raise ValueError(f"two record ids map to the same mask file {dup}.png")
  written = 0
  for key, m in zip(keys, masks):
    p = os.path.join(mask_dir, key + ".png")
    if only_missing and os.path.isfile(p):
      continue
    img = Image.fromarray((np.asarray(m) > 0).astype(np.uint8) * 255)
    _atomic_write(p, lambda f: img.save(f, format="PNG"))
    written += 1
  return written


def ensure_masks(root: str, split: str, ids: Sequence[str],
                 compute: Callable[[], np.ndarray], *,
                 png_dir: str | None = None, overwrite: bool = False,
                 meta: Mapping[str, Any] | None = None
                 ) -> tuple[np.ndarray, bool]:
  """Loads the split's masks if cached (verified), else computes and saves.

  Args:
    root: mask root folder.
    split: split name ("train", "query", "database", ...).
    ids: the split's record ids in position order.
    compute: ``() -> uint8 (N, H, W)``, e.g. a partial of :func:`compute_masks`.
    png_dir: also export per-record PNGs here (the data layer's mask_dir);
      on reuse only missing files are written.
    overwrite: recompute over a mismatching cache instead of raising.
    meta: stored alongside the ids (e.g. checkpoint step, class mode).

  Returns:
    (masks, reused).
  """
  ids = [str(i) for i in ids]
  reused = False
  masks = None
  if os.path.isfile(ids_path(root, split)):
    try:
      masks = load_masks(root, split, ids)
      reused = True
    except MaskCacheError:
      if not overwrite:
        raise
  if masks is None:
    masks = np.asarray(compute())
    save_masks(root, split, masks, ids, meta=meta)
    masks = load_masks(root, split, ids)
  if png_dir is not None:
    export_png_dir(png_dir, ids, masks, only_missing=reused)
  return masks, reused
