"""Data layer: sources -> leakage-free splits -> grain pipelines.

The trainer's entry point::

    from medhash_jax import data

    config.data = data.default_data_config()        # in configs/<method>.py
    ds = data.build_datasets(config.data, workdir=workdir,
                             global_batch_size=config.batch_size,
                             seed=config.seed, image_size=model_input_size)

    batch = next(ds.train_iter)       # dict of numpy arrays, per-process batch
    for batch in ds.eval["database"]:  # padded; use batch["valid"], batch["index"]
      ...

``ds`` (a :class:`Datasets`) has:

* ``train_iter``: grain ``DatasetIterator`` over infinite, shuffled, augmented
  per-process batches of ``per_process_batch_size`` (= global / process count;
  ``drop_remainder``). Checkpoint it with orbax:
  ``ocp.args.Composite(state=..., data_iter=grain.checkpoint.CheckpointSave(ds.train_iter))``
  and restore with ``grain.checkpoint.CheckpointRestore(ds.train_iter)``; or
  ``train_iter.get_state()`` / ``set_state()``. ``train`` is the IterDataset
  itself (``iter(ds.train)`` gives a fresh iterator).
* ``eval``: ``{"val", "query", "database", "train", "test"}`` ->
  :class:`EvalDataset` (``test`` is ``query``). Each iteration yields
  ``num_batches`` padded batches; padding has ``valid=False``,
  ``index=-1``; over all processes ``index[valid]`` covers ``range(size)``
  exactly once. ``.labels`` (size, K) and ``.ids`` give the split's labels
  and ids in position order for the metrics. Retrieval evaluation: query vs
  database for the final numbers; val vs train (the gallery) for model
  selection.
* ``num_classes``, ``class_names``, ``multi_label``, ``split_sizes``,
  ``steps_per_epoch``, ``image_size``, ``channels``, ``image_dtype``,
  ``two_view`` (batches carry ``local_image``), ``example_batch()`` (zeros
  with the training batch's structure, for ``model.init``), ``close()``.

Batch keys (see :mod:`medhash_jax.data.pipeline`): ``image`` float32
(b, S, S, C), normalised; with ``data.image_dtype="uint8"`` it stays uint8
and the step normalises on device with
``normalize_images(x, config.data.normalize)``. ``labels`` float32 (b, K)
multi-hot, ``label_mask`` float32 (b, K), ``index`` int32 (b,), ``valid``
bool (b,); with ``data.mask_dir``: ``local_image``, ``local_fallback``; with
``data.sampling="triplet"``: ``pos_image``, ``pos_labels``, ``neg_image``,
``neg_labels``, ``triplet_valid``.

Config keys (``default_data_config()``, in :mod:`medhash_jax.data.config`):
``name root path download medmnist_size skip_bad verify no_finding
uncertainty frontal_only class_names labels_csv split_lists split split_seed
split_ratios val_fraction grouped num_query query_fraction num_train
train_fraction train_in_database image_size channels normalize image_dtype
jpeg_draft augment.{enabled,random_resized_crop,crop_scale,hflip,vflip,
rotate_degrees}
mask_dir local_view mask_origin mask_margin mask_threshold resize_masks sampling eval_batch_size
num_workers worker_buffer_size read_threads prefetch_buffer_size``.

Lower-level pieces: :func:`get_source` (registry; unknown names raise),
:mod:`.splits`, :mod:`.transforms`, :mod:`.mask_crop`, :mod:`.sampling`,
:mod:`.paths` (data root: ``data.root``, else ``$MEDHASH_DATA_DIR``, else
``~/.cache/medhash_jax``).
"""

from medhash_jax.data.build import Datasets, build_datasets, source_kwargs
from medhash_jax.data.config import default_data_config
from medhash_jax.data.mask_crop import MaskStore, mask_and_crop, mask_key, save_mask
from medhash_jax.data.medmnist import MEDMNIST_2D
from medhash_jax.data.paths import resolve_root
from medhash_jax.data.pipeline import EvalDataset, ExampleLoader, train_dataset
from medhash_jax.data.records import (BadRecordError, DataError, DataNotFoundError,
                                      ImageSource)
from medhash_jax.data.registry import get_source, register, source_names
from medhash_jax.data.splits import Splits, load_or_make_splits, make_splits
from medhash_jax.data.transforms import Preprocessor, decode_image, normalize_images

__all__ = [
    "BadRecordError", "DataError", "DataNotFoundError", "Datasets",
    "EvalDataset", "ExampleLoader", "ImageSource", "MEDMNIST_2D", "MaskStore",
    "Preprocessor", "Splits", "build_datasets", "decode_image",
    "default_data_config", "get_source", "load_or_make_splits", "make_splits",
    "normalize_images",
    "mask_and_crop", "mask_key", "register", "resolve_root", "save_mask",
    "source_kwargs", "source_names", "train_dataset",
]
