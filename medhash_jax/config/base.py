"""The shared base of every method config in `configs/`, and its helpers.

  python -m medhash_jax.main --config=configs/dpsh.py --workdir=runs/dpsh
  python -m medhash_jax.main --config=configs/dpsh.py:smoke --workdir=/tmp/x

Every key, with its meaning, is in medhash_jax/train/defaults.py. Variants
(the `:arg` after the file name, comma-separated: `configs/ath.py:se,smoke`):
  (none)  the method's real settings: ResNet-50 (ImageNet stem), 224 px,
          HAM10000 with lesion-grouped splits.
  smoke   a real staged dataset (BreastMNIST, 28 px, official split), a tiny
          ResNet-18 (width 8, small-input stem), 16 bits, 40 steps: under a
          minute on a laptop CPU; used by the tests and CI.

Initialisation: the papers fine-tune ImageNet-pretrained backbones; here
every model starts from random weights unless `init_from` is given (an orbax
checkpoint, or torchvision .pth / .safetensors weights through the converter
in medhash_jax/models/convert.py), e.g. --config.init_from=resnet50.pth.

* `base_config(smoke)`: the unlocked base with the data root filled in;
  `finalize(c)` locks it.
* `parse_arg(arg, choices)`: the `:a,b` variant syntax.
* `staged_data_root()`: where the data is when nothing says otherwise, so the
  design card's example command works as written from a checkout beside
  `../shared/data`.
* `is_multi_label(name)`: whether a dataset is multi-label (the seed-system
  losses take it as a hyper-parameter).
* `pairwise_baseline(loss, arg, **loss_kwargs)`: a baseline config over the
  shared backbone in one line, with the optimiser, learning rate or hash
  activation replaced where a baseline needs it.
"""

import os

import ml_collections

from medhash_jax.config import files
from medhash_jax.train.defaults import default_config

MULTI_LABEL_DATASETS = ("chestxray14", "chexpert", "chestmnist")


def parse_arg(arg, choices=()):
  """'smoke' / 'se,smoke' / '' -> (smoke: bool, [other tokens]); unknown
  tokens raise, naming the valid ones."""
  tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
  bad = [t for t in tokens if t != "smoke" and t not in choices]
  if bad:
    raise ValueError(f"unknown config variant(s) {bad}; valid: "
                     f"{['smoke', *choices]} (comma-separated)")
  return "smoke" in tokens, [t for t in tokens if t != "smoke"]


def staged_data_root() -> str:
  """"" when $MEDHASH_DATA_DIR is set (the data layer reads it), else the
  staged `../shared/data` beside this checkout when it exists, else ""."""
  if os.environ.get("MEDHASH_DATA_DIR"):
    return ""
  staged = os.path.join(os.path.dirname(files.REPO_ROOT), "shared", "data")
  return staged if os.path.isdir(staged) else ""


def is_multi_label(dataset: str) -> bool:
  return dataset in MULTI_LABEL_DATASETS


def base_config(smoke: bool) -> ml_collections.ConfigDict:
  """The full (unlocked) base config, paper scale or smoke; `finalize`
  locks it."""
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
  if smoke:
    _smoke(c)
  if not c.data.root:
    c.data.root = staged_data_root()
  return c


def _smoke(c: ml_collections.ConfigDict) -> None:
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


def pairwise_baseline(loss: str, arg=None, *, optimizer: str = "",
                      learning_rate: float = 0.0, hash_activation: str = "",
                      **loss_kwargs) -> ml_collections.ConfigDict:
  """A baseline: the shared backbone and data, `loss` with `loss_kwargs`;
  `optimizer`, `learning_rate` and `hash_activation` replace the shared
  settings when given (each config's docstring says why it needs to)."""
  smoke, _ = parse_arg(arg)
  c = base_config(smoke)
  c.method = loss
  c.loss.name = loss
  c.loss.kwargs = ml_collections.ConfigDict(loss_kwargs)
  if optimizer:
    c.optim.name = optimizer
  if learning_rate:
    c.optim.learning_rate = learning_rate
  if hash_activation:
    c.model.kwargs.hash_activation = hash_activation
  return finalize(c)
