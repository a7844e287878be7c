"""Cases appended at serving time: append-only segment files.

In a run folder (workdir or bundle):

  added/segment-000001.npz, segment-000002.npz, ...   one per add call
  added_cases.npz    written by releases before segments: one file
                     rewritten whole per add; still read (first), never
                     written again

A segment holds the cases of one `Retriever.add_cases` / `add_codes` call:
`packed` uint32 (n, W), `ids`, `names`, `paths` (str), `labels` float32
(n, C), the thumbnails (`png` + `offsets`), `num_bits` and its own number
`segment`. It is written to a temporary name in added/, fsynced, renamed
and the folder fsynced, so a crash leaves it whole or absent (a leftover
temporary file is ignored), and an add costs O(its own cases) whatever the
database size, where rewriting one file made each add O(all added cases).

`read_all` checks every segment: the zip CRC-32 of every member (numpy reads
npz members through zipfile, which verifies it), the number inside against
the file name, num_bits, the label columns, one row per case in every array.
A damaged segment refuses the run with a `BundleError` naming the file and
the problem; it is never deleted or skipped (skipping would silently drop
cases). Segment numbers order the cases; gaps are allowed (a segment moved
aside by hand), new segments take the largest number + 1.
"""

import io
import os
import re
from typing import Dict, List, Sequence

import numpy as np

from medhash_jax.systems import bundle as bundle_lib
from medhash_jax.train import run_files

FOLDER = "added"
LEGACY_FILE = bundle_lib.ADDED_FILE
_NAME = re.compile(r"^segment-(\d{6,})\.npz$")


class SegmentError(bundle_lib.BundleError):
  """A damaged or inconsistent added-cases file (the message names it)."""


def segment_name(number: int) -> str:
  return f"segment-{int(number):06d}.npz"


def segment_paths(root: str) -> List[str]:
  """The segment files of a run folder, in order (legacy file first)."""
  out = []
  if os.path.isfile(os.path.join(root, LEGACY_FILE)):
    out.append(os.path.join(root, LEGACY_FILE))
  folder = os.path.join(root, FOLDER)
  if os.path.isdir(folder):
    numbered = [(int(m.group(1)), name) for name in os.listdir(folder)
                for m in [_NAME.match(name)] if m]
    out.extend(os.path.join(folder, name) for _, name in sorted(numbered))
  return out


def _number(path: str) -> int:
  m = _NAME.match(os.path.basename(path))
  return int(m.group(1)) if m else 0


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_segment(root: str, *, packed: np.ndarray, ids: Sequence[str],
                  names: Sequence[str], labels: np.ndarray,
                  paths: Sequence[str], thumbs: Sequence[bytes],
                  num_bits: int) -> str:
  """Writes the next segment atomically; its path."""
  folder = os.path.join(root, FOLDER)
  os.makedirs(folder, exist_ok=True)
  existing = [_number(p) for p in segment_paths(root)]
  number = max(existing, default=0) + 1
  path = os.path.join(folder, segment_name(number))
  buf = io.BytesIO()
  np.savez(buf, packed=np.asarray(packed, np.uint32),
           ids=np.asarray(ids, str), names=np.asarray(names, str),
           labels=np.asarray(labels, np.float32),
           paths=np.asarray(paths, str), num_bits=np.int64(num_bits),
           segment=np.int64(number), **run_files.pack_pngs(list(thumbs)))
  run_files.atomic_write_bytes(path, buf.getvalue())
  _fsync_dir(folder)   # the rename itself survives a power loss
  return path


def read_segment(path: str, num_bits: int, num_labels: int) -> Dict:
  """One segment's arrays, checked (SegmentError naming the file)."""
  try:
    with np.load(path, allow_pickle=False) as z:
      a = {key: z[key] for key in z.files}   # reading verifies each CRC-32
    for key in ("packed", "ids", "names", "labels", "paths", "num_bits",
                "png", "offsets"):
      if key not in a:
        raise ValueError(f"no {key!r} array")
    if int(a["num_bits"]) != num_bits:
      raise ValueError(f"{int(a['num_bits'])}-bit codes, the run has "
                       f"{num_bits}")
    want = _number(path)
    if want and int(a.get("segment", -1)) != want:
      raise ValueError(f"it says it is segment {int(a.get('segment', -1))}, "
                       f"its name says {want} (renamed or copied?)")
    n = len(a["ids"])
    words = -(-num_bits // 32)
    if a["packed"].dtype != np.uint32 or a["packed"].shape != (n, words):
      raise ValueError(f"packed codes {a['packed'].dtype} "
                       f"{a['packed'].shape}, expected uint32 ({n}, {words})")
    labels = np.asarray(a["labels"], np.float32).reshape(n, -1)
    if labels.shape[1] != num_labels:
      raise ValueError(f"{labels.shape[1]} label columns, the run has "
                       f"{num_labels}")
    for key in ("names", "paths"):
      if a[key].shape != (n,):
        raise ValueError(f"{key} has shape {a[key].shape}, expected ({n},)")
    offsets = a["offsets"]
    if offsets.shape != (n + 1,) or int(offsets[-1]) != a["png"].shape[0] or \
        np.any(np.diff(offsets) < 0):
      raise ValueError("its thumbnail offsets do not fit its thumbnails")
  except Exception as e:  # pylint: disable=broad-except
    raise SegmentError(
        f"{path}: damaged added-cases segment ({e}); the run is not opened "
        "without it: restore it from a backup, or move it out of the folder "
        "to open the run without its cases") from e
  return {"packed": a["packed"], "ids": a["ids"].astype(str),
          "names": a["names"].astype(str), "labels": labels,
          "paths": a["paths"].astype(str),
          "thumbs": run_files.unpack_pngs(a["png"], offsets), "path": path}


def read_all(root: str, num_bits: int, num_labels: int) -> List[Dict]:
  """Every segment of a run folder, in order, checked."""
  return [read_segment(p, num_bits, num_labels) for p in segment_paths(root)]
