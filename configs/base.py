"""Shared run config; method configs import it and override what differs.

  python -m medhash_jax.main --config=configs/dpsh.py --workdir=runs/dpsh
  python -m medhash_jax.main --config=configs/dpsh.py:smoke --workdir=/tmp/x

Every key, with its meaning, is in medhash_jax/train/defaults.py. Variants
(the `:arg` after the file name):
  (none)  the method's real settings: ResNet-50 (ImageNet stem), 224 px,
          HAM10000 with lesion-grouped splits.
  smoke   a real staged dataset (BreastMNIST, 28 px, official split), a tiny
          ResNet-18 (width 8, small-input stem), 16 bits, 40 steps: under a
          minute on a laptop CPU; used by the tests and CI.

Initialisation: the papers fine-tune ImageNet-pretrained backbones; here
every model starts from random weights unless `init_from` is given (an orbax
checkpoint, or torchvision .pth / .safetensors weights through the converter
in medhash_jax/models/convert.py), e.g. --config.init_from=resnet50.pth.
"""

import ml_collections

from medhash_jax.train.defaults import default_config

VARIANTS = ("", "smoke")


def get_config(arg=None) -> ml_collections.ConfigDict:
  """The full (unlocked) base config; `finalize` locks it."""
  arg = arg or ""
  if arg not in VARIANTS:
    raise ValueError(f"unknown config variant {arg!r}; valid: "
                     f"{[v for v in VARIANTS if v]}")
  c = default_config()
  c.num_bits = 48
  c.model.name = "resnet50"
  c.model.kwargs = ml_collections.ConfigDict(dict(small_input=False))
  c.data.name = "ham10000"
  c.data.split = "seed"          # query:train:database = 1:3:3, lesion-grouped
  c.data.image_size = 224
  c.train.batch_size = 64
  c.train.num_steps = 5000
  c.eval.ks = (10, 100)
  if arg == "smoke":
    smoke(c)
  return c


def smoke(c: ml_collections.ConfigDict) -> None:
  """Tiny, fast and still real: BreastMNIST 28 px, official split."""
  c.num_bits = 16
  c.model.name = "resnet18"
  c.model.kwargs = ml_collections.ConfigDict(dict(small_input=True, width=8))
  c.data.name = "breastmnist"
  c.data.download = False        # tests use the staged copy, never the net
  c.data.split = "official"
  c.data.image_size = 28
  c.data.channels = 1
  c.data.normalize = "half"
  c.data.augment.rotate_degrees = 0.0
  c.data.read_threads = 1
  c.data.prefetch_buffer_size = 8
  c.data.eval_batch_size = 128
  c.train.batch_size = 32
  c.train.num_steps = 40
  c.train.log_every_steps = 10
  c.train.eval_every_steps = 20
  c.train.checkpoint_every_steps = 20
  c.train.keep_checkpoints = 2
  c.optim.learning_rate = 0.01
  c.eval.ks = (10, 50)
  c.eval.select_metric = "map@50/tie_aware"


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c.lock()
  return c
