"""The ``config.data`` section: ``default_data_config()``.

Configs do ``config.data = default_data_config()`` and override what differs,
e.g. ``config.data.name = "ham10000"; config.data.split = "seed"``.
"""

from __future__ import annotations

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
  """Every key the data layer reads, with its default."""
  c = ml_collections.ConfigDict()

  # --- which data, and where ------------------------------------------------
  c.name = "breastmnist"   # a registered source (data.source_names())
  c.root = ""              # data root; "" -> $MEDHASH_DATA_DIR -> ~/.cache/medhash_jax
  c.path = ""              # the dataset folder itself (wins over root); "folder" needs it
  c.download = True        # MedMNIST: fetch a missing .npz (md5-checked)
  c.medmnist_size = 28     # MedMNIST+ file resolution: 28, 64, 128 or 224

  # --- source options (each source reads the ones it knows) ---------------
  c.skip_bad = False       # skip (and log) bad records instead of raising
  c.verify = "exists"      # build-time file check: exists | header | decode
  c.no_finding = "zeros"   # ChestX-ray14: "zeros" (all-zero vector) | "class"
  c.uncertainty = "ones"   # CheXpert -1 policy: ones | zeros | ignore
  c.frontal_only = False   # CheXpert: drop lateral views
  c.class_names = ()       # CheXpert subset / folder class list; () = all found
  c.labels_csv = ""        # label file name override ("" = the source's default)
  c.split_lists = ""       # ChestX-ray14: folder of published split lists
                           # (configs/splits/chestxray14) for split="official"

  # --- splits ---------------------------------------------------------------
  c.split = "seed"         # official | seed (query:train:database) | deephash
  c.split_seed = 0         # independent of the training seed
  c.split_ratios = (1.0, 3.0, 3.0)   # seed protocol: query, train, database
  c.val_fraction = 0.1     # val carved from train (when not official)
  c.grouped = True         # keep each patient / lesion on one side
  c.num_query = 0          # deephash: number of queries (0 -> query_fraction)
  c.query_fraction = 0.1
  c.num_train = 0          # deephash: number of train images (0 -> train_fraction)
  c.train_fraction = 0.5
  c.train_in_database = True   # deephash: train drawn from the database

  # --- images ---------------------------------------------------------------
  c.image_size = 224       # build_datasets(image_size=...) overrides
  c.channels = 3           # 3: gray -> RGB for ImageNet backbones; 1: RGB -> gray
  c.normalize = "imagenet"  # imagenet | half | none
  c.image_dtype = "float32"  # float32 (normalised here) | uint8 (normalise on
                             # device with data.normalize_images; ~2x faster
                             # pipeline at 224 px, 4x fewer bytes to transfer)
  c.jpeg_draft = True      # decode big JPEGs at reduced scale (not with masks)
  c.augment = ml_collections.ConfigDict(dict(
      enabled=True,
      random_resized_crop=True,
      crop_scale=(0.8, 1.0),
      hflip=True,
      vflip=False,
      rotate_degrees=10.0,
  ))

  # --- the two-branch local view (data/mask_crop.py) -----------------------
  c.mask_dir = ""          # "" = no local view; else <mask_dir>/[<split>/]<id>.png|.npy
  c.local_view = "mask_and_crop"  # multiply (mask * image, full frame: seed
                                  # 000 Eq. 4) | mask_and_crop (largest
                                  # component's box); configs/ath.py: multiply
  c.mask_origin = ""       # what made the masks (ATH's stage 3 writes its
                           # Grad-CAM class modes and layer): recorded so a
                           # run is never resumed or served with other masks
  c.mask_margin = 0.05     # mask_and_crop: margin around the largest component, x (H, W)
  c.mask_threshold = 0.0   # foreground = mask value > threshold
  c.resize_masks = False   # allow masks of another size (nearest resize)

  # --- batches and workers --------------------------------------------------
  c.sampling = "random"    # random (pair losses: all pairs) | triplet (b anchors
                           # + a sampled positive and negative each: 3b images)
  c.eval_batch_size = 0    # global; 0 -> the training global batch size
  c.num_workers = 0        # grain mp_prefetch worker processes (0 = threads only)
  c.worker_buffer_size = 2
  c.read_threads = 4       # threads of to_iter_dataset, per process / worker
  c.prefetch_buffer_size = 64
  return c
