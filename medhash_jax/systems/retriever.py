"""A trained run (workdir or exported bundle) opened for encoding and search.

The interface the CLI (`--mode=encode|search|export`) and the HTTP server
(`medhash_jax.serve`) call; it needs no training data and no --config:

    from medhash_jax import systems
    r = systems.open_run(path)        # a trained workdir or a bundle folder
    r.info                            # dict: method, num_bits, num_cases,
                                      # dataset, class_names, image_size,
                                      # channels, format, version, model_step
    codes = r.encode_images(images)   # list of uint8 (H, W, C) -> float32 (n, K)
                                      # (ATH makes each Grad-CAM local view)
    hits = r.search(codes, k=10)      # per query, a list of hit dicts:
        # {"rank": 1.., "id": case id (str), "distance": Hamming (int),
        #  "tie_group": how many cases share that distance to the query,
        #  "name": str, "labels": [class names], "path": str}
        # ties re-ranked (retrieval/rerank.py); ValueError naming k when
        # k < 1 or k > number of cases
    r.case(case_id)      # {"id", "name", "labels", "path"}; KeyError if unknown
    r.thumbnail(case_id) # PNG bytes (<= 96 px); KeyError if unknown
    r.add_cases(images, ids, labels)  # encode + append + persist; ValueError
                                      # on a duplicate id or unknown class
    r.add_codes(codes, ids, labels)   # the same for precomputed codes (float
                                      # (n, K) or packed uint32): bulk loads
    r.explain(image)     # PNG of the Grad-CAM overlay (ATH), None otherwise
    r.export(out_dir)    # a portable bundle of the current state

Search: the database's codes live in one `retrieval.HammingIndex` (the C++
kernel's block layout, searched in place, no per-search copy), and
`rerank.rerank_index` scans it twice per query batch: the distance
histogram, then the exact top (k + the rest of the boundary tie group);
only those candidates' codes are read for the tie re-rank.

Thread safety: the database is append-only (`_Cases`: the index grows in
place, metadata in lists and growable arrays; nothing below the current
count is ever rewritten), and the searchable state is an immutable
`_Snapshot` of its first n cases, O(1) to take. `add_cases` / `add_codes`
persist the new cases, append them and swap in a new snapshot under a lock;
a concurrent `search` holds one snapshot for the whole call and sees the old
or the new database, never a torn one. An add costs O(its own cases).
Encoding is a jitted function of fixed-size padded batches (power-of-two
buckets up to 64: a handful of compiles, none per request).

Persistence of added cases: one append-only segment file per add call,
`added/segment-NNNNNN.npz` in the run folder (systems/added_cases.py),
written to a temporary name, fsynced and renamed before the cases become
searchable; every segment is verified on load and a damaged one refuses the
run naming the file. The training-time index and metadata are never
rewritten, so a crash leaves the old files intact and each added case
either fully present or absent. (`added_cases.npz`, the single file older
releases rewrote per add, is still read.)
"""

import io
import threading
from typing import Any, Dict, List, Optional, Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image

from medhash_jax import data as data_lib
from medhash_jax.data import mask_crop
from medhash_jax.retrieval import HammingIndex
from medhash_jax.retrieval import layout as layout_lib
from medhash_jax.retrieval import pack_codes
from medhash_jax.retrieval import rerank
from medhash_jax.systems import added_cases
from medhash_jax.systems import bundle as bundle_lib
from medhash_jax.train import run_files

_MAX_BUCKET = 64


class _Cases:
  """The database, append-only: codes in a HammingIndex (the kernel layout,
  searched in place), metadata in lists and growable arrays. Entries below
  `count` are never changed, so `_Snapshot`s of a prefix stay valid while
  this grows. Written only under `Retriever._lock`; an append costs O(new
  cases)."""

  def __init__(self, num_bits: int, num_labels: int, seed: int):
    self.index = HammingIndex(num_bits)
    self.num_labels = int(num_labels)
    self.seed = int(seed)
    self.ids, self.names, self.paths, self.thumbs = [], [], [], []
    self.labels = layout_lib.Growable(np.float32)   # (count * C,) flat
    self.keys = layout_lib.Growable(np.uint64)
    self.pos = {}
    self.count = 0

  def taken(self, ids: Sequence[str]) -> List[str]:
    return [i for i in ids if i in self.pos]

  def append(self, packed, ids, names, labels, paths, thumbs) -> None:
    """Appends cases with new, unique ids (the caller checked them)."""
    n, m, c = self.count, len(ids), self.num_labels
    labels = np.asarray(labels, np.float32).reshape(m, c)
    # Slots at >= count may hold the leftovers of a failed append: overwrite.
    self.ids[n:] = [str(i) for i in ids]
    self.names[n:] = [str(x) for x in names]
    self.paths[n:] = [str(x) for x in paths]
    self.thumbs[n:] = list(thumbs)
    self.labels.write(n * c, labels.reshape(-1))
    self.labels.size = (n + m) * c
    self.keys.write(n, rerank.tie_keys(self.ids[n:], self.seed))
    self.keys.size = n + m
    self.index.add(np.asarray(packed, np.uint32))
    self.pos.update(zip(self.ids[n:], range(n, n + m)))
    self.count = n + m


class _Snapshot:
  """The searchable database as of one moment: the first n cases of a
  `_Cases` (a frozen HammingIndex view, read-only label and key views, the
  shared lists read below n only). O(1) to take; immutable."""

  def __init__(self, cases: _Cases):
    n, c = cases.count, cases.num_labels
    self.n = n
    self.index = cases.index.frozen()
    self.ids, self.names = cases.ids, cases.names
    self.paths, self.thumbs = cases.paths, cases.thumbs
    self.labels = cases.labels.view[:n * c].reshape(n, c)
    self.keys = cases.keys.view[:n]
    for a in (self.labels, self.keys):
      a.flags.writeable = False
    self._pos = cases.pos

  def __len__(self):
    return self.n

  def position(self, case_id: str) -> int:
    """The case's position; KeyError if unknown (or added after this)."""
    p = self._pos.get(str(case_id))
    if p is None or p >= self.n:
      raise KeyError(case_id)
    return p

  @property
  def packed(self) -> np.ndarray:
    """uint32 (n, W) packed codes (a copy, O(n): export, benchmarks)."""
    return self.index.packed


def _placeholder_png() -> bytes:
  out = io.BytesIO()
  Image.new("L", (8, 8), 128).save(out, format="PNG")
  return out.getvalue()


class Retriever:
  """See the module docstring. Build with `open_run(path)`."""

  def __init__(self, parts: bundle_lib.RunParts):
    from medhash_jax.train import task as task_lib  # pylint: disable=g-import-not-at-top
    self.root = parts.root
    self.kind = parts.kind
    self.record = dict(parts.record)
    self.config = ml_collections.ConfigDict(parts.config)
    rec = self.record
    self.num_bits = int(rec["num_bits"])
    self.class_names = [str(c) for c in rec["class_names"]]
    self.two_view = bool(rec["two_view"])
    pre = rec["preprocessing"]
    self.pre = data_lib.Preprocessor(
        image_size=int(pre["image_size"]), channels=int(pre["channels"]),
        normalize=str(pre["normalize"]), augment=None)
    self.task = task_lib.build_task(
        self.config, num_classes=int(rec["num_classes"]),
        multi_label=bool(rec["multi_label"]), two_view=self.two_view,
        for_training=False)  # the loss (maybe a file) only trains
    self.variables = jax.tree.map(np.asarray, parts.variables)
    self._device_vars = jax.device_put(self.variables)
    self._encode = jax.jit(self.task.encode)
    self._seed = int(rec.get("tie_seed", 0))
    self._classifier = parts.classifier
    self._views = None
    if self.two_view:
      if parts.classifier is None:
        raise bundle_lib.BundleError(
            f"{self.root}: a two-view (ATH) run without its classifier")
      self._views = _local_views(parts.classifier, rec["ath"], rec)
    self._lock = threading.Lock()
    self._cases = _Cases(self.num_bits, len(self.class_names), self._seed)
    self._load_cases(parts)
    self._snap = _Snapshot(self._cases)

  # -- description ------------------------------------------------------------

  @property
  def info(self) -> Dict[str, Any]:
    rec = self.record
    return {"method": rec["method"], "num_bits": self.num_bits,
            "num_cases": len(self._snap), "dataset": rec["dataset"],
            "class_names": list(self.class_names),
            "image_size": int(rec["preprocessing"]["image_size"]),
            "channels": int(rec["preprocessing"]["channels"]),
            "normalize": rec["preprocessing"]["normalize"],
            "format": bundle_lib.FORMAT if self.kind == "bundle"
                      else run_files.RECORD_FORMAT,
            "version": bundle_lib.VERSION if self.kind == "bundle"
                       else int(rec["version"]),
            "kind": self.kind, "model_step": int(rec["model_step"]),
            "two_view": self.two_view, "explain": self.two_view,
            "path": self.root}

  # -- encoding ------------------------------------------------------------------

  def _check_images(self, images) -> List[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim == 4:
      images = list(images)
    out = []
    for j, img in enumerate(images):
      img = np.asarray(img)
      if img.ndim == 2:
        img = img[..., None]
      if img.ndim != 3 or img.dtype != np.uint8 or img.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image {j}: expected uint8 (H, W, C) with C in "
                         f"1, 3, 4; got {img.dtype} {img.shape}")
      if img.shape[-1] == 4:
        img = img[..., :3]
      out.append(img)
    return out

  def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """Real-valued codes float32 (n, K) of uint8 (H, W, C) images."""
    images = self._check_images(images)
    n = len(images)
    if n == 0:
      return np.zeros((0, self.num_bits), np.float32)
    local = None
    if self._views is not None:
      local = [v for v, _ in self._views.views(images)]
    out = []
    for s in range(0, n, _MAX_BUCKET):
      chunk = images[s:s + _MAX_BUCKET]
      b = 1 << max(0, (len(chunk) - 1).bit_length())   # bucket: 1, 2, 4, ...
      zeros = self.pre.zeros()
      x = {"image": np.zeros((b,) + zeros.shape, zeros.dtype)}
      for j, img in enumerate(chunk):
        x["image"][j] = self.pre(img)
      if local is not None:
        x["local_image"] = np.zeros_like(x["image"])
        for j, img in enumerate(local[s:s + _MAX_BUCKET]):
          x["local_image"][j] = self.pre(img)
      codes = self._encode(self._device_vars, x)
      out.append(np.asarray(jax.device_get(codes), np.float32)[:len(chunk)])
    return np.concatenate(out)

  # -- search ----------------------------------------------------------------------

  def _labels_of(self, row: np.ndarray) -> List[str]:
    names = self.class_names
    return [names[i] if i < len(names) else str(i)
            for i in np.flatnonzero(np.asarray(row) > 0.5)]

  def search(self, codes: np.ndarray, k: int) -> List[List[Dict[str, Any]]]:
    """Top k cases per query code, ties re-ranked; see the module docstring."""
    snap = self._snap  # one consistent database for the whole call
    codes = np.asarray(codes, np.float32)
    if codes.ndim == 1:
      codes = codes[None]
    if codes.ndim != 2 or codes.shape[1] != self.num_bits:
      raise ValueError(f"codes must be (n, {self.num_bits}), got "
                       f"{codes.shape}")
    n = len(snap)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or \
        not 1 <= k <= n:
      raise ValueError(f"k={k!r} must be an integer between 1 and the number "
                       f"of cases in the database ({n})")
    dist, pos, group = rerank.rerank_index(codes, snap.index, int(k),
                                           keys=snap.keys)
    out = []
    for qd, qp, qg in zip(dist, pos, group):
      out.append([{"rank": r + 1, "id": str(snap.ids[p]), "distance": int(d),
                   "tie_group": int(g), "name": str(snap.names[p]),
                   "labels": self._labels_of(snap.labels[p]),
                   "path": str(snap.paths[p])}
                  for r, (d, p, g) in enumerate(zip(qd, qp, qg))])
    return out

  def case(self, case_id: str) -> Dict[str, Any]:
    snap = self._snap
    p = snap.position(case_id)   # KeyError for an unknown id
    return {"id": str(snap.ids[p]), "name": str(snap.names[p]),
            "labels": self._labels_of(snap.labels[p]),
            "path": str(snap.paths[p])}

  def thumbnail(self, case_id: str) -> bytes:
    snap = self._snap
    png = snap.thumbs[snap.position(case_id)]
    return png or _placeholder_png()

  # -- appending -------------------------------------------------------------------

  def _load_cases(self, parts: bundle_lib.RunParts) -> None:
    """The run's own cases, then every added-cases segment in order."""
    c = self._cases
    ids = [str(i) for i in parts.ids]
    c.append(parts.packed, ids, parts.names, parts.labels, parts.paths,
             parts.thumbs)
    if len(c.pos) != len(ids):
      raise bundle_lib.BundleError(f"{self.root}: the database has duplicate "
                                   "case ids")
    for seg in added_cases.read_all(self.root, self.num_bits,
                                    len(self.class_names)):
      taken = c.taken(seg["ids"])
      if taken or len(set(seg["ids"].tolist())) != len(seg["ids"]):
        raise added_cases.SegmentError(
            f"{seg['path']}: case id(s) already in the database: "
            f"{(taken or ['(repeated within the segment)'])[:10]}")
      c.append(seg["packed"], seg["ids"], seg["names"], seg["labels"],
               seg["paths"], seg["thumbs"])

  def _multi_hot(self, labels) -> np.ndarray:
    out = np.zeros((len(labels), len(self.class_names)), np.float32)
    index = {c: j for j, c in enumerate(self.class_names)}
    for r, names in enumerate(labels):
      names = [names] if isinstance(names, str) else list(names or [])
      for c in names:
        if c not in index:
          raise ValueError(f"case {r}: unknown class {c!r}; the run's classes "
                           f"are {self.class_names}")
        out[r, index[c]] = 1.0
    return out

  def _new_cases(self, n: int, ids, labels, names):
    """Checked ids, multi-hot labels and names of n cases to add."""
    ids = [str(i) for i in ids]
    labels = [[]] * len(ids) if labels is None else list(labels)
    names = list(ids) if names is None else [str(x) for x in names]
    if not n == len(ids) == len(labels) == len(names):
      raise ValueError(f"{n} cases, {len(ids)} ids, {len(labels)} labels and "
                       f"{len(names)} names: give one per case")
    if any(not i for i in ids):
      raise ValueError("case ids must be non-empty strings")
    if len(set(ids)) != len(ids):
      seen, twice = set(), set()
      for i in ids:
        (twice if i in seen else seen).add(i)
      raise ValueError("duplicate case id within the call: " +
                       ", ".join(sorted(twice)[:10]))
    return ids, self._multi_hot(labels), names

  def _append(self, packed, ids, names, multi_hot, thumbs) -> int:
    """Persists one segment, then appends and swaps in a new snapshot."""
    with self._lock:
      taken = self._cases.taken(ids)
      if taken:
        raise ValueError(f"case id(s) already in the database: {taken[:10]}")
      paths = [""] * len(ids)
      added_cases.write_segment(
          self.root, packed=packed, ids=ids, names=names, labels=multi_hot,
          paths=paths, thumbs=thumbs, num_bits=self.num_bits)
      self._cases.append(packed, ids, names, multi_hot, paths, thumbs)
      self._snap = _Snapshot(self._cases)
      return len(self._snap)

  def add_cases(self, images: Sequence[np.ndarray], ids: Sequence[str],
                labels: Optional[Sequence[Sequence[str]]] = None,
                names: Optional[Sequence[str]] = None) -> int:
    """Encodes and appends cases; persisted before they become searchable.

    Args:
      images: uint8 (H, W, C) arrays.
      ids: a new, unique case id per image.
      labels: per case a list of class names (or None: unlabelled).
      names: optional display names (default: the id).

    Returns:
      The number of cases in the database afterwards.
    """
    images = self._check_images(images)
    ids, multi_hot, names = self._new_cases(len(images), ids, labels, names)
    codes = self.encode_images(images)   # outside the lock: the slow part
    packed = np.asarray(pack_codes(codes), np.uint32)
    thumbs = [run_files.thumbnail_png(img) for img in images]
    return self._append(packed, ids, names, multi_hot, thumbs)

  def add_codes(self, codes: np.ndarray, ids: Sequence[str],
                labels: Optional[Sequence[Sequence[str]]] = None,
                names: Optional[Sequence[str]] = None,
                thumbnails: Optional[Sequence[bytes]] = None) -> int:
    """Appends cases whose codes are already computed (migrations, bulk
    loads, benchmarks): the same checks, persistence and snapshot swap as
    `add_cases`, without the encoder.

    Args:
      codes: real-valued float (n, K) codes (bit = code >= 0) or packed
        uint32 (n, ceil(K / 32)) as `retrieval.pack_codes` writes them.
      ids, labels, names: as for `add_cases`.
      thumbnails: optional PNG bytes per case (default: none, b"").

    Returns:
      The number of cases in the database afterwards.
    """
    packed = self._cases.index.pack(codes, "codes")   # checked: bits, shape
    n = packed.shape[0]
    ids, multi_hot, names = self._new_cases(n, ids, labels, names)
    thumbs = [b""] * n if thumbnails is None else list(thumbnails)
    if len(thumbs) != n:
      raise ValueError(f"{len(thumbs)} thumbnails for {n} cases")
    return self._append(packed, ids, names, multi_hot, thumbs)

  # -- explanations and export -------------------------------------------------------

  def explain(self, image: np.ndarray) -> Optional[bytes]:
    """PNG of the Grad-CAM heat map + Otsu outline (ATH), else None."""
    if self._views is None:
      return None
    from medhash_jax import cam  # pylint: disable=g-import-not-at-top
    img = self._check_images([image])[0]
    v = self._views
    x = np.zeros((v.batch_size,) + v.pre.zeros().shape, v.pre.zeros().dtype)
    x[0] = v.pre(img)
    heat = np.asarray(v._cam_fn(x, None))[0]  # pylint: disable=protected-access
    mask = np.asarray(cam.otsu.otsu_mask(heat[None]))[0]
    shown = v.pre.geometry(img, None)
    out = io.BytesIO()
    Image.fromarray(cam.overlay.overlay_image(shown, heat, mask)).save(
        out, format="PNG")
    return out.getvalue()

  def parts(self) -> bundle_lib.RunParts:
    """The current state (added cases included) as RunParts."""
    snap, n = self._snap, len(self._snap)
    return bundle_lib.RunParts(
        root=self.root, kind=self.kind, config=self.config.to_dict(),
        record=self.record, variables=self.variables, packed=snap.packed,
        ids=np.asarray(snap.ids[:n], str), names=np.asarray(snap.names[:n], str),
        labels=np.array(snap.labels), paths=np.asarray(snap.paths[:n], str),
        thumbs=list(snap.thumbs[:n]), classifier=self._classifier)

  def export(self, out_dir: str) -> Dict[str, Any]:
    """A portable bundle at out_dir (which must not exist); its manifest."""
    return bundle_lib.write_bundle(self.parts(), out_dir)


def _local_views(classifier: Dict[str, Any], ath: Dict[str, Any], rec):
  """ATH's query-time local views from the stored classifier."""
  from medhash_jax import cam  # pylint: disable=g-import-not-at-top
  from medhash_jax import models  # pylint: disable=g-import-not-at-top
  from medhash_jax.systems import ath as ath_lib  # pylint: disable=g-import-not-at-top
  crec = classifier["record"]
  model = models.get_model(crec["model"], num_classes=int(crec["num_classes"]),
                           **dict(crec["kwargs"]))

  class _Views(ath_lib.FileLocalViews):
    """FileLocalViews built from stored parts instead of a stage folder."""

    def __init__(self):  # pylint: disable=super-init-not-called
      self.mode = str(ath["cam_mode"])
      # A run recorded before data.local_view was trained on mask-and-crop.
      self.view = mask_crop.check_local_view(
          str(ath.get("local_view", mask_crop.LEGACY_LOCAL_VIEW)),
          "the run's ath.local_view")
      self.margin = float(ath["mask_margin"])
      self.batch_size = 8
      self.size = int(crec["image_size"])
      pre = rec["preprocessing"]
      self.pre = data_lib.Preprocessor(
          image_size=self.size, channels=int(pre["channels"]),
          normalize=str(pre["normalize"]), augment=None)
      self._cam_fn = cam.make_cam_fn(
          model, classifier["variables"], mode=self.mode,
          layer=str(ath.get("cam_layer", "")) or None,
          multi_label=bool(ath["multi_label"]), apply_kwargs={"train": False})

  return _Views()


def open_run(path: str) -> Retriever:
  """A Retriever over a trained workdir or an exported bundle."""
  return Retriever(bundle_lib.load(path))
