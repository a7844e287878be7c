"""Grain input pipelines: training (infinite, augmented) and evaluation (padded).

Training, per process:

    MapDataset.range(n_train) -> shuffle(seed) -> repeat()  (reshuffled each epoch)
      -> random_map(load + mask-and-crop + augment + normalise)
      -> process p's rows of each global batch (same global batches, rows
         and augmentation for any process count; `_ProcessBlocks`)
      -> to_iter_dataset(ReadOptions(threads))  -> batch(b, drop_remainder=True)
      -> mp_prefetch(MultiprocessingOptions(num_workers))   when num_workers > 0

Batching comes after ``to_iter_dataset`` so that with ``skip_bad`` a record
that fails to decode (``None``) is dropped *before* batching and batches keep
their fixed shape; the skip is logged by the worker that met it.

Evaluation, per process, for a split of n images and a global batch B = b * P:
the split is padded to ``ceil(n / B) * B`` positions; global batch k holds
positions [k*B, (k+1)*B) and process p gets the slice [k*B + p*b, k*B + (p+1)*b)
of it, so every image is encoded exactly once across processes. Padding
examples are zeros with ``valid=False`` and ``index=-1``.

Every batch is a dict of numpy arrays (b = per-process batch size, S =
image_size, C = channels, K = number of classes):

    image       float32 (b, S, S, C)  normalised (uint8 if data.image_dtype="uint8")
    labels      float32 (b, K)        multi-hot
    label_mask  float32 (b, K)        1 where the label is known
    index       int32   (b,)          position in the split; -1 for padding
    valid       bool    (b,)          False for padding (and skipped bad records)
  with masks (``data.mask_dir``), the two-branch local view:
    local_image    like image
    local_fallback bool    (b,)      True where the mask was empty (full image)
  with ``sampling="triplet"`` (training only), for positive and negative:
    pos_image, pos_labels, pos_label_mask, neg_image, neg_labels,
    neg_label_mask (+ pos_/neg_local_image), triplet_valid bool (b,)
"""

from __future__ import annotations

import math
from typing import Any

from absl import flags
from absl import logging
import grain
import numpy as np

from medhash_jax.data.mask_crop import MaskStore
from medhash_jax.data.records import BadRecordError, ImageSource
from medhash_jax.data.sampling import TripletSampler
from medhash_jax.data.transforms import Preprocessor


def _sub_seed(*ints: int) -> int:
  return int(np.random.SeedSequence([int(i) for i in ints]).generate_state(1)[0])


class ExampleLoader:
  """Split position -> example dict; shared by the train and eval pipelines.

  Picklable (grain ships it to worker processes).
  """

  def __init__(self, source: ImageSource, indices: np.ndarray,
               preprocessor: Preprocessor, *, masks: MaskStore | None = None,
               skip_bad: bool = False):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    self.pre = preprocessor
    self.masks = masks
    self.skip_bad = skip_bad
    self.num_skipped = 0      # per process; see the logs for the total
    self.num_fallbacks = 0    # empty masks, per process

  def __len__(self) -> int:
    return int(self.indices.size)

  def views(self, pos: int, rng: np.random.Generator | None) -> dict[str, Any]:
    """Image (+ local view) of split position ``pos``; may raise BadRecordError."""
    i = int(self.indices[pos])
    img = self.source.read_image(i)
    if img.ndim != 3 or img.dtype != np.uint8:
      raise self.source.bad_record(i, f"decoded to {img.dtype}{img.shape}, "
                                   "expected uint8 (H, W, C)")
    out = {}
    if self.masks is not None:
      file, row = self.source.describe(i)
      local, fell_back = self.masks.local_view(
          img, str(self.source.ids[i]), image_file=file, row=row)
      if fell_back:
        self.num_fallbacks += 1
      out["local_image"] = self.pre(local, rng)
      out["local_fallback"] = np.bool_(fell_back)
    out["image"] = self.pre(img, rng)
    return out

  def display_image(self, pos: int) -> np.ndarray:
    """uint8 (s, s, C) of split position ``pos`` as the model sees it at eval
    time, before normalisation (for galleries and overlays: min-max scaling a
    per-channel-normalised input shifts its colours)."""
    return self.pre.geometry(
        self.source.read_image(int(self.indices[pos])), None)

  def example(self, pos: int, rng: np.random.Generator | None) -> dict[str, Any]:
    i = int(self.indices[pos])
    ex = self.views(pos, rng)
    ex["labels"] = self.source.labels[i].astype(np.float32)
    ex["label_mask"] = self.source.label_mask_of(i).astype(np.float32)
    ex["index"] = np.int32(pos)
    ex["valid"] = np.bool_(True)
    return ex

  def padding(self, pos: int = -1) -> dict[str, Any]:
    k = self.source.num_classes
    ex = {"image": self.pre.zeros()}
    if self.masks is not None:
      ex["local_image"] = self.pre.zeros()
      ex["local_fallback"] = np.bool_(False)
    ex.update(labels=np.zeros((k,), np.float32),
              label_mask=np.zeros((k,), np.float32),
              index=np.int32(pos), valid=np.bool_(False))
    return ex

  def skip(self, err: BadRecordError) -> None:
    if not self.skip_bad:
      raise err
    self.num_skipped += 1
    logging.warning("skipping bad record (skip_bad=True; %d skipped so far in "
                    "this process): %s", self.num_skipped, err)


class _TrainMap(grain.transforms.RandomMap):
  """Position -> augmented example, or None for a skipped bad record."""

  def __init__(self, loader: ExampleLoader, triplets: TripletSampler | None):
    self.loader = loader
    self.triplets = triplets

  def random_map(self, element: int, rng: np.random.Generator):
    pos = int(element)
    try:
      ex = self.loader.example(pos, rng)
      if self.triplets is not None:
        p, ok_p = self.triplets.positive(pos, rng)
        n, ok_n = self.triplets.negative(pos, rng)
        for prefix, q in (("pos_", p), ("neg_", n)):
          other = self.loader.example(q, rng)
          ex[prefix + "image"] = other["image"]
          ex[prefix + "labels"] = other["labels"]
          ex[prefix + "label_mask"] = other["label_mask"]
          if "local_image" in other:
            ex[prefix + "local_image"] = other["local_image"]
        ex["triplet_valid"] = np.bool_(ok_p and ok_n)
      return ex
    except BadRecordError as e:
      self.loader.skip(e)
      return None


class _EvalMap(grain.transforms.Map):
  """Per-process element -> padded-layout example (no augmentation)."""

  def __init__(self, loader: ExampleLoader, *, size: int, global_batch: int,
               local_batch: int, process_index: int):
    self.loader = loader
    self.size = size
    self.global_batch = global_batch
    self.local_batch = local_batch
    self.process_index = process_index

  def position(self, element: int) -> int:
    k, r = divmod(int(element), self.local_batch)
    return k * self.global_batch + self.process_index * self.local_batch + r

  def map(self, element: int):
    pos = self.position(element)
    if pos >= self.size:
      return self.loader.padding(-1)
    try:
      return self.loader.example(pos, None)
    except BadRecordError as e:
      self.loader.skip(e)
      return self.loader.padding(pos)  # valid=False: not encoded, but logged


def _read_options(threads: int, buffer: int) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=int(threads), prefetch_buffer_size=int(buffer))


def _maybe_mp(ds: grain.IterDataset, num_workers: int,
              buffer: int) -> grain.IterDataset:
  if num_workers <= 0:
    return ds
  # grain's workers read absl flags; outside absl.app (tests, notebooks,
  # benchmarks) they are unparsed and grain would raise.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return ds.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(
      num_workers=int(num_workers), per_worker_buffer_size=int(buffer)))


class _ProcessBlocks(grain.MapDataset):
  """Process p's part of a global stream cut into global batches of b * P.

  Element j of process p is global element ``(j // b) * b * P + p * b + j % b``:
  global batch k is the concatenation, in process order, of every process's
  batch k, which is exactly how `jax.make_array_from_process_local_data`
  assembles it. So P processes see the same global batches, in the same row
  order, as one process (a plain ``[p::P]`` slice would interleave the rows).
  """

  def __init__(self, parent: grain.MapDataset, *, local_batch: int,
               process_index: int, process_count: int):
    super().__init__(parent)
    self._b = int(local_batch)
    self._p = int(process_index)
    self._n = int(process_count)

  def __len__(self) -> int:
    return len(self._parent) // self._n

  def __str__(self) -> str:
    return (f"ProcessBlocks(local_batch={self._b}, process={self._p}/"
            f"{self._n})")

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    k, r = divmod(int(index), self._b)
    return self._parent[(k * self._n + self._p) * self._b + r]


def train_dataset(loader: ExampleLoader, *, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  sampling: str = "random", num_workers: int = 0,
                  read_threads: int = 4, prefetch_buffer_size: int = 64,
                  worker_buffer_size: int = 2) -> grain.IterDataset:
  """The infinite training IterDataset of one process (per-process batches)."""
  if sampling not in ("random", "triplet"):
    raise ValueError(f"data.sampling must be 'random' or 'triplet', got {sampling!r}")
  n = len(loader)
  if n < batch_size * process_count:
    raise ValueError(f"the train split has {n} images, fewer than one global "
                     f"batch ({batch_size} x {process_count} processes).")
  triplets = (TripletSampler(loader.source.labels[loader.indices])
              if sampling == "triplet" else None)
  ds = grain.MapDataset.range(n).shuffle(seed=_sub_seed(seed, 1)).repeat(None)
  # Augmentation before the per-process cut, with one seed for all processes:
  # grain draws each element's rng from (seed, element position), so the
  # global batch, augmentation included, does not depend on the process count.
  ds = ds.random_map(_TrainMap(loader, triplets), seed=_sub_seed(seed, 2, 0))
  ds = _ProcessBlocks(ds, local_batch=batch_size, process_index=process_index,
                      process_count=process_count)
  it = ds.to_iter_dataset(_read_options(read_threads, prefetch_buffer_size))
  it = it.batch(batch_size, drop_remainder=True)
  return _maybe_mp(it, num_workers, worker_buffer_size)


class EvalDataset:
  """One evaluation split of one process: padded, masked, finite.

  Iterate it (each ``iter()`` starts from the beginning) to get
  ``num_batches`` batches of ``local_batch_size``; the union over processes
  of ``index[valid]`` is exactly ``range(size)``.

  Attributes:
    name: split name.
    size: number of real images in the split (all processes).
    padded_size: ``num_batches * global_batch_size``.
    num_batches: batches per process (equal on every process).
    labels: float32 (size, K), labels of the split in position order.
    ids: str (size,), record ids in position order.
    indices: int64 (size,), source indices in position order.
  """

  def __init__(self, name: str, loader: ExampleLoader, *, global_batch_size: int,
               process_index: int = 0, process_count: int = 1,
               num_workers: int = 0, read_threads: int = 4,
               prefetch_buffer_size: int = 64, worker_buffer_size: int = 2):
    if global_batch_size % process_count:
      raise ValueError(f"eval batch size {global_batch_size} is not divisible "
                       f"by the process count {process_count}.")
    self.name = name
    self.loader = loader
    self.size = len(loader)
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.num_batches = max(1, math.ceil(self.size / global_batch_size))
    self.padded_size = self.num_batches * global_batch_size
    self.process_index = process_index
    self.process_count = process_count
    self._opts = (num_workers, read_threads, prefetch_buffer_size, worker_buffer_size)

  @property
  def indices(self) -> np.ndarray:
    return self.loader.indices

  @property
  def labels(self) -> np.ndarray:
    return self.loader.source.labels[self.loader.indices].astype(np.float32)

  @property
  def ids(self) -> np.ndarray:
    return self.loader.source.ids[self.loader.indices]

  def dataset(self) -> grain.IterDataset:
    num_workers, threads, buffer, wbuffer = self._opts
    m = _EvalMap(self.loader, size=self.size,
                 global_batch=self.global_batch_size,
                 local_batch=self.local_batch_size,
                 process_index=self.process_index)
    ds = grain.MapDataset.range(self.num_batches * self.local_batch_size).map(m)
    ds = ds.batch(self.local_batch_size, drop_remainder=False)
    it = ds.to_iter_dataset(_read_options(threads, buffer))
    return _maybe_mp(it, num_workers, wbuffer)

  def __iter__(self):
    return iter(self.dataset())

  def __len__(self) -> int:
    return self.num_batches

  def __repr__(self) -> str:
    return (f"EvalDataset({self.name!r}, size={self.size}, batches={self.num_batches}"
            f" x {self.local_batch_size} on process {self.process_index}/"
            f"{self.process_count})")
