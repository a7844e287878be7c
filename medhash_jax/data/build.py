"""``build_datasets``: the one call the trainer makes into the data layer."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from absl import logging
import grain
import numpy as np

from medhash_jax.data import mask_crop as mask_crop_lib
from medhash_jax.data import splits as splits_lib
from medhash_jax.data.mask_crop import MaskStore
from medhash_jax.data.pipeline import EvalDataset, ExampleLoader, train_dataset
from medhash_jax.data.records import ImageSource
from medhash_jax.data.registry import get_source
from medhash_jax.data.transforms import Preprocessor

EVAL_SPLITS = ("val", "query", "database", "train")

# Config keys forwarded to get_source; "" / () / None mean "source default".
_SOURCE_KEYS = ("root", "path", "download", "medmnist_size", "skip_bad", "verify",
                "no_finding", "uncertainty", "frontal_only", "class_names",
                "labels_csv", "split_lists")


@dataclasses.dataclass
class Datasets:
  """What ``build_datasets`` returns. See the package docstring."""
  source: ImageSource
  splits: splits_lib.Splits
  train: grain.IterDataset
  train_iter: Any                       # grain DatasetIterator, checkpointable
  eval: dict[str, EvalDataset]          # val, query, database, train, test(=query)
  class_names: tuple[str, ...]
  num_classes: int
  multi_label: bool
  image_size: int
  channels: int
  image_dtype: str                      # "float32" (normalised) or "uint8"
  two_view: bool                        # batches carry local_image
  sampling: str
  global_batch_size: int
  per_process_batch_size: int
  steps_per_epoch: int
  split_sizes: dict[str, int]
  process_index: int = 0
  process_count: int = 1

  def close(self) -> None:
    """Stops the training iterator's worker processes / threads."""
    close = getattr(self.train_iter, "close", None)
    if close is not None:
      close()

  def example_batch(self, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Zeros with the structure of a training batch (for model.init)."""
    b = batch_size or self.per_process_batch_size
    s, c, k = self.image_size, self.channels, self.num_classes
    img = np.dtype(self.image_dtype)
    out = {"image": np.zeros((b, s, s, c), img),
           "labels": np.zeros((b, k), np.float32),
           "label_mask": np.ones((b, k), np.float32),
           "index": np.zeros((b,), np.int32),
           "valid": np.ones((b,), bool)}
    if self.two_view:
      out["local_image"] = np.zeros((b, s, s, c), img)
      out["local_fallback"] = np.zeros((b,), bool)
    if self.sampling == "triplet":
      for p in ("pos_", "neg_"):
        out[p + "image"] = np.zeros((b, s, s, c), img)
        out[p + "labels"] = np.zeros((b, k), np.float32)
        out[p + "label_mask"] = np.ones((b, k), np.float32)
        if self.two_view:
          out[p + "local_image"] = np.zeros((b, s, s, c), img)
      out["triplet_valid"] = np.ones((b,), bool)
    return out


def _get(cfg: Mapping[str, Any], key: str, default=None):
  try:
    v = cfg[key]
  except (KeyError, AttributeError):
    return default
  return default if v is None else v


def source_kwargs(data_config) -> dict[str, Any]:
  kw = {}
  for k in _SOURCE_KEYS:
    v = _get(data_config, k)
    if v is None or (isinstance(v, (str, tuple, list)) and len(v) == 0):
      continue
    kw[k] = tuple(v) if isinstance(v, list) else v
  return kw


def _process_info(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return int(process_index), int(process_count)


def build_datasets(data_config, *, workdir: str | None, global_batch_size: int,
                   seed: int, image_size: int | None = None,
                   eval_batch_size: int | None = None,
                   process_index: int | None = None,
                   process_count: int | None = None,
                   source: ImageSource | None = None) -> Datasets:
  """Source -> splits (saved in ``workdir``) -> grain pipelines.

  Args:
    data_config: ``config.data`` (see ``default_data_config()``).
    workdir: run directory; the split index files go to ``workdir/splits``.
      None keeps the split in memory (tests, benchmarks).
    global_batch_size: training batch over all processes; must be divisible
      by the process count.
    seed: training seed (shuffling and augmentation). The split uses
      ``data.split_seed`` so it does not change with the training seed.
    image_size: overrides ``data.image_size`` (the model's input size).
    eval_batch_size: global eval batch; default ``data.eval_batch_size`` or
      ``global_batch_size``.
    process_index, process_count: default ``jax.process_index()`` /
      ``jax.process_count()``.
    source: an already built source (skips ``get_source``).
  """
  pi, pc = _process_info(process_index, process_count)
  if global_batch_size % pc:
    raise ValueError(f"global batch size {global_batch_size} is not divisible "
                     f"by the number of processes {pc}.")
  name = _get(data_config, "name", "")
  if source is None:
    source = get_source(name, **source_kwargs(data_config))

  split_kw = dict(
      protocol=_get(data_config, "split", "seed"),
      seed=int(_get(data_config, "split_seed", 0)),
      grouped=bool(_get(data_config, "grouped", True)),
      split_ratios=tuple(_get(data_config, "split_ratios", (1, 3, 3))),
      val_fraction=float(_get(data_config, "val_fraction", 0.1)),
      num_query=int(_get(data_config, "num_query", 0)),
      query_fraction=float(_get(data_config, "query_fraction", 0.1)),
      num_train=int(_get(data_config, "num_train", 0)),
      train_fraction=float(_get(data_config, "train_fraction", 0.5)),
      train_in_database=bool(_get(data_config, "train_in_database", True)))
  splits = splits_lib.load_or_make_splits(source, workdir=workdir,
                                          process_index=pi, **split_kw)

  size = int(image_size or _get(data_config, "image_size", 224))
  channels = int(_get(data_config, "channels", 3))
  augment = _get(data_config, "augment", {})
  augment = dict(augment.to_dict() if hasattr(augment, "to_dict") else augment)
  normalize = _get(data_config, "normalize", "imagenet")
  image_dtype = _get(data_config, "image_dtype", "float32")
  train_pre = Preprocessor(image_size=size, channels=channels,
                           normalize=normalize, augment=augment,
                           image_dtype=image_dtype)
  eval_pre = Preprocessor(image_size=size, channels=channels,
                          normalize=normalize, augment=None,
                          image_dtype=image_dtype)
  mask_dir = _get(data_config, "mask_dir", "")
  masks = (MaskStore(mask_dir, threshold=float(_get(data_config, "mask_threshold", 0.0)),
                     resize_masks=bool(_get(data_config, "resize_masks", False)),
                     margin=float(_get(data_config, "mask_margin", 0.05)),
                     view=str(_get(data_config, "local_view",
                                   mask_crop_lib.LEGACY_LOCAL_VIEW)))
           if mask_dir else None)
  if (masks is None and _get(data_config, "jpeg_draft", True)
      and hasattr(source, "draft_size")):
    source.draft_size = size
  skip_bad = bool(_get(data_config, "skip_bad", False))
  sampling = _get(data_config, "sampling", "random")
  pipe_kw = dict(num_workers=int(_get(data_config, "num_workers", 0)),
                 read_threads=int(_get(data_config, "read_threads", 4)),
                 prefetch_buffer_size=int(_get(data_config, "prefetch_buffer_size", 64)),
                 worker_buffer_size=int(_get(data_config, "worker_buffer_size", 2)))

  local_batch = global_batch_size // pc
  train_loader = ExampleLoader(source, splits.train, train_pre,
                               masks=masks and masks.for_split("train"),
                               skip_bad=skip_bad)
  train = train_dataset(train_loader, batch_size=local_batch, seed=seed,
                        process_index=pi, process_count=pc, sampling=sampling,
                        **pipe_kw)
  eb = int(eval_batch_size or _get(data_config, "eval_batch_size", 0)
           or global_batch_size)
  evals = {}
  for split in EVAL_SPLITS:
    loader = ExampleLoader(source, splits[split], eval_pre,
                           masks=masks and masks.for_split(split),
                           skip_bad=skip_bad)
    evals[split] = EvalDataset(split, loader, global_batch_size=eb,
                               process_index=pi, process_count=pc, **pipe_kw)
  evals["test"] = evals["query"]

  ds = Datasets(
      source=source, splits=splits, train=train, train_iter=iter(train),
      eval=evals, class_names=tuple(source.class_names),
      num_classes=source.num_classes, multi_label=source.multi_label,
      image_size=size, channels=channels, image_dtype=image_dtype,
      two_view=masks is not None,
      sampling=sampling, global_batch_size=global_batch_size,
      per_process_batch_size=local_batch,
      steps_per_epoch=max(1, splits.train.size // global_batch_size),
      split_sizes=splits.sizes(), process_index=pi, process_count=pc)
  logging.info("data: %s, %s split %s, image %dx%dx%d, batch %d (%d per process)"
               ", %d steps/epoch%s%s", source.name, splits.protocol,
               ds.split_sizes, size, size, channels, global_batch_size,
               local_batch, ds.steps_per_epoch,
               ", two-view (mask-and-crop)" if masks else "",
               f", {sampling} sampling")
  return ds
