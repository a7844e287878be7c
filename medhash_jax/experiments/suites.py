"""Experiment suites: which methods, code lengths, seeds and settings make
one results table, and the config of each run (`method_config`)."""

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import ml_collections

from medhash_jax.config import base as config_base
from medhash_jax.config import files as config_files
from medhash_jax.config import overrides as config_overrides

REPO_ROOT = config_files.REPO_ROOT

DISPLAY = {
    "dpsh": "DPSH", "hashnet": "HashNet", "dsh": "DSH", "dch": "DCH",
    "dfh": "DFH", "dpn": "DPN", "isdh": "ISDH", "dtsh": "DTSH",
    "lcdsh": "LCDSH", "csq": "CSQ", "mth": "MTH", "sa_hash": "SA-Hash",
    "ath": "ATH-GradCAM", "ath:no_attention": "ATH -A", "ath:se": "ATH -A+SE",
    "ath:cbam": "ATH -A+CBAM", "lsh": "LSH", "pcah": "PCAH", "itq": "ITQ",
    "ssh": "SSH",
    # The papers' other baselines. FangATH is Fang et al. 2021's
    # attention-based triplet hashing, not the seed ATH-GradCAM.
    "dh": "DH", "drh": "DRH", "fang_ath": "FangATH (Fang et al. 2021)",
}
BASELINES = ("dpsh", "hashnet", "dsh", "dch", "dfh", "dpn", "isdh", "dtsh",
             "lcdsh", "csq", "dh", "drh", "fang_ath")
SYSTEMS = ("mth", "sa_hash", "ath")
ABLATIONS = ("ath:no_attention", "ath:se", "ath:cbam")
SHALLOW = ("lsh", "pcah", "itq", "ssh")
KS = (10, 100, None)
COLUMNS = ("method", "bits", "map@10", "map@all", "ndcg@100", "ndcg@all",
           "p@r2", "map@10_tie", "map@all_tie", "chance", "chance_map@all",
           "train_time_s",
           "encode_ms_per_image", "query_ms", "index_bytes")


@dataclasses.dataclass
class Suite:
  """One table: methods x bits x seeds on one dataset setting.

  Attributes:
    variant: the config variant every method starts from ("smoke" = tiny
      models at 28 px; "" = the paper-scale configs).
    overrides: dotted config keys set on every method; keys under a section
      a method lacks (e.g. "ath.*") are skipped for it.
    method_overrides: method -> dotted keys (e.g. model.kwargs.width).
    settings: dotted key -> value applied last to every run (`--set
      key=value`); text is parsed by the field's type as
      `--config.key=value` would be (medhash_jax/config/overrides.py); keys
      under a section a method lacks are skipped for it, as above.
    feature_source: the deep method whose backbone features feed the shallow
      methods (its run at the largest code length), or "pixels".
    pr_bits: code length of the PR plot and gallery (default: the largest).
  """
  name: str
  description: str
  methods: Sequence[str]
  bits: Sequence[int] = (16, 32, 48, 64)
  seeds: Sequence[int] = (0,)
  variant: str = "smoke"
  overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
  method_overrides: Dict[str, Dict[str, Any]] = dataclasses.field(
      default_factory=dict)
  settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
  shallow: Sequence[str] = SHALLOW
  feature_source: str = "dpsh"
  pr_bits: Optional[int] = None
  gallery_queries: int = 4


ALL_DEEP = BASELINES + SYSTEMS + ABLATIONS

_SMALL_MODELS = {  # wider than smoke's width 8, still CPU-sized
    **{m: {"model.kwargs.width": 16} for m in BASELINES + ABLATIONS},
    "sa_hash": {"model.kwargs.width": 16},
    "ath": {"model.kwargs.width": 16},
}


# Chest X-rays are not left-right symmetric (the heart is on the left): their
# suites never flip them, whatever a method's own config says.
_NO_HFLIP = {"data.augment.hflip": False}


def _mnist_suite(name, dataset, description, chest_xray=False):
  return Suite(
      name=name, description=description, methods=ALL_DEEP,
      seeds=(0, 1, 2),
      overrides={**(_NO_HFLIP if chest_xray else {}),
                 "data.name": dataset, "data.split": "official",
                 "train.num_steps": 600, "train.eval_every_steps": 200,
                 "train.checkpoint_every_steps": 200,
                 "ath.classifier.num_steps": 300},
      method_overrides=_SMALL_MODELS)


def _folder_suite(name, dataset, description, image_size=64,
                  chest_xray=False):
  # 64 px: the standard /4 stem (the smoke variant's small-input stem would
  # run the first stage at full resolution).
  # ATH's classifier reads the staged 128 px images (its masks are then at
  # the images' own size) and Grad-CAM reads its third dense block: 8x8
  # cells. At 64 px the standard stem's last map is 2x2 (every mask a
  # quarter of the image, issue #19); the small-input stem at 64 px gives
  # 8x8 too but costs 2x more per step on a 2-core CPU (0.30 vs 0.15 s).
  standard_stem = {m: {**_SMALL_MODELS.get(m, {}),
                       "model.kwargs.small_input": False} for m in ALL_DEEP}
  # MTH's dense blocks run at the input resolution with 8-40 channels: at
  # 64 px a step costs ~20 ResNet steps on a 2-core CPU (0.7 steps/s), so in
  # these CPU suites MTH reads 32 px images (the table says so).
  standard_stem["mth"] = {"data.image_size": 32,
                          "model.kwargs.small_input": True}
  return Suite(
      name=name, description=description, methods=ALL_DEEP, seeds=(0, 1, 2),
      overrides={**(_NO_HFLIP if chest_xray else {}),
                 "data.name": dataset, "data.split": "seed",
                 "data.image_size": image_size, "data.channels": 3,
                 "data.normalize": "imagenet", "data.augment.rotate_degrees": 10.0,
                 "train.num_steps": 1500, "train.eval_every_steps": 500,
                 "train.checkpoint_every_steps": 500,
                 "eval.select_metric": "map@100/tie_aware",
                 "ath.classifier.num_steps": 600,
                 "ath.classifier.kwargs.small_input": False,
                 "ath.classifier.image_size": 128,
                 "ath.cam.layer": "denseblock3"},
      method_overrides=standard_stem)


SUITES: Dict[str, Suite] = {
    "smoke": Suite(
        name="smoke",
        description="CI check of the whole table machinery: BreastMNIST 28 px, "
        "tiny models, a few steps; the numbers mean nothing.",
        methods=("dpsh", "mth", "sa_hash", "ath"), bits=(16, 32),
        overrides={"train.num_steps": 10, "train.eval_every_steps": 0,
                   "train.checkpoint_every_steps": 10,
                   "train.log_every_steps": 5,
                   "ath.classifier.num_steps": 10,
                   "ath.cam.num_overlays": 4},
        shallow=SHALLOW),
    "breastmnist": _mnist_suite(
        "breastmnist", "breastmnist",
        "BreastMNIST (official split, 28 px), every method, 3 seeds."),
    "pneumoniamnist": _mnist_suite(
        "pneumoniamnist", "pneumoniamnist",
        "PneumoniaMNIST (official split, 28 px, no horizontal flip), every "
        "method, 3 seeds.", chest_xray=True),
    "ham10000": _folder_suite(
        "ham10000", "ham10000",
        "HAM10000 (lesion-grouped seed split 1:3:3, 64 px; MTH 32 px; ATH's "
        "classifier and Grad-CAM 128 px, 8x8 CAM), 3 seeds."),
    "covid19": _folder_suite(
        "covid19", "covid19_radiography",
        "COVID-19 Radiography (seed split 1:3:3, per image, 64 px; MTH 32 px; "
        "ATH's classifier and Grad-CAM 128 px, 8x8 CAM; no horizontal flip), "
        "3 seeds.", chest_xray=True),
    "paper_gpu": Suite(
        name="paper_gpu",
        description="Paper scale for one GPU: the methods' own configs "
        "(ResNet-50 / DenseNet-121 at 224 px with the ImageNet stem, MTH at "
        "224 px; random initialisation -- the papers fine-tune ImageNet "
        "weights: add --set init_from_resnet50=resnet50.pth --set "
        "init_from_densenet121=densenet121.pth (torchvision files) and every "
        "run with that backbone starts from them, ATH's classifier included) "
        "on HAM10000 with lesion-grouped seed splits; the "
        "staged images are 128 px, so 224 px is an upsampling. "
        "launch/gpu_session.sh runs it inside a time budget.",
        methods=ALL_DEEP, seeds=(0,), variant="",
        overrides={"data.name": "ham10000", "data.split": "seed",
                   "data.image_size": 224, "data.channels": 3,
                   "data.normalize": "imagenet",
                   "train.num_steps": 3000, "train.eval_every_steps": 1000,
                   "train.checkpoint_every_steps": 1000,
                   "data.num_workers": 8,
                   "ath.classifier.num_steps": 2000},
        # MTH's own config reads 64 px with 2x2 pools. MTHNet has no stem:
        # at 224 px (small_input=False) its three dense blocks run at the
        # full 224 x 224 resolution and each is followed by a 4x4 max pool
        # (224 -> 56), then the map is max-pooled to <= 16 x 16 positions for
        # the self-attention (model.kwargs.attention_size).
        method_overrides={"mth": {"data.image_size": 224,
                                  "model.kwargs.small_input": False}}),
}


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------


def with_overrides(suite: Suite, settings: Dict[str, Any]) -> Suite:
  """The suite with `settings` (dotted key -> text as after `--set`, or a
  Python value) set on every run after the suite's own overrides, per-method
  ones included."""
  if not settings:
    return suite
  return dataclasses.replace(suite, settings={**suite.settings, **settings})


# A method variant: a method with its own settings, one row of an ablation
# table, e.g. "ath@loss.kwargs.reduction=mean" or
# "sa_hash@optim.learning_rate=0.001@model.kwargs.attention_reading=separate".
VARIANT_SEP = "@"


def split_method(method: str) -> Tuple[str, List[Tuple[str, str]]]:
  """'ath:se@loss.kwargs.alpha=0.5' -> ('ath:se', [('loss.kwargs.alpha',
  '0.5')]); ValueError naming the method when the base method is unknown or
  a setting is not key=value."""
  base, *texts = method.split(VARIANT_SEP)
  if base not in ALL_DEEP:
    raise ValueError(f"unknown method {base!r} in {method!r}; known: "
                     f"{list(ALL_DEEP)} (a variant adds @key=value settings)")
  return base, [config_overrides.split_setting(t, f"method {method!r}")
                for t in texts]


def display_name(method: str) -> str:
  """The table's name of a method (deep or shallow) or a method variant."""
  if VARIANT_SEP not in method:
    return DISPLAY[method]
  base, settings = split_method(method)
  return f"{DISPLAY[base]} [{', '.join(f'{k}={v}' for k, v in settings)}]"


def _has_section(c: ml_collections.ConfigDict, key: str) -> bool:
  return key.split(".")[0] in c


# Suite settings naming a pretrained file per backbone architecture
# (`--set init_from_resnet50=PATH`): each run whose backbone it is gets it as
# its `init_from` (both ATH branches, SA-Hash's and the baselines' ResNet-50),
# and ATH's classifier as `ath.classifier.init_from` (its DenseNet-121).
# MTH has no backbone and stays random, as in its paper.
PRETRAINED_SETTINGS = {"init_from_resnet50": "resnet50",
                       "init_from_densenet121": "densenet121"}
_CLASSIFIER_ARCH = {"densenet121_classifier": "densenet121",
                    "resnet50_classifier": "resnet50",
                    "resnet18_classifier": "resnet18"}


def backbone_arch(c: ml_collections.ConfigDict) -> str:
  """The torchvision architecture of a run's hash model's backbone ("" for
  a model without one, e.g. MTH)."""
  if c.model.name in ("resnet18", "resnet50", "densenet121"):
    return str(c.model.name)
  return str(c.model.kwargs.get("backbone", ""))


def _set_pretrained(c: ml_collections.ConfigDict, settings: Dict[str, Any]):
  paths = {PRETRAINED_SETTINGS[k]: str(v) for k, v in settings.items()
           if k in PRETRAINED_SETTINGS and v}
  if backbone_arch(c) in paths:
    c.init_from = paths[backbone_arch(c)]
  if "ath" in c and _CLASSIFIER_ARCH.get(c.ath.classifier.model) in paths:
    c.ath.classifier.init_from = paths[_CLASSIFIER_ARCH[c.ath.classifier.model]]


def method_config(suite: Suite, method: str, bits: int, seed: int,
                  stage_root: str, steps: Optional[int] = None
                  ) -> ml_collections.ConfigDict:
  """configs/<method>.py (suite variant) + the suite's overrides, locked."""
  base, variant_settings = split_method(method)
  name, _, ablation = base.partition(":")
  arg = ",".join(t for t in (ablation, suite.variant) if t)
  c = config_files.get_config(f"{name}:{arg}")
  c = ml_collections.ConfigDict(c.to_dict())      # unlocked copy
  for k, v in suite.overrides.items():
    if _has_section(c, k):
      config_overrides.set_value(c, k, v, f"suite {suite.name} override")
  for k, v in suite.method_overrides.get(base, {}).items():
    config_overrides.set_value(c, k, v, f"suite {suite.name} {base} override")
  config_overrides.apply(
      c, [(k, v) for k, v in suite.settings.items() if _has_section(c, k)],
      "--set")
  config_overrides.apply(c, variant_settings, f"method {method!r}")
  _set_pretrained(c, suite.settings)
  if steps:
    c.train.num_steps = int(steps)
    if "ath" in c:
      c.ath.classifier.num_steps = int(steps)
  c.train.eval_every_steps = validation_cadence(c.train.num_steps,
                                                c.train.eval_every_steps)
  if not c.data.root:
    c.data.root = config_base.staged_data_root()
  c.num_bits = int(bits)
  c.seed = int(seed)
  c.eval.ks = KS
  if c.eval.select_metric.split("@")[-1].split("/")[0] not in (
      "10", "100", "all"):
    c.eval.select_metric = "map@100/tie_aware"
  if "ath" in c:
    c.ath.stage_dir = os.path.join(stage_root, f"seed{seed}")
  if "multi_label" in c.loss.kwargs:  # follow the suite's dataset
    c.loss.kwargs.multi_label = config_base.is_multi_label(c.data.name)
  c.lock()
  return c


# Model selection needs several validation points: one point is no selection.
MIN_VALIDATION_POINTS = 5


def validation_cadence(num_steps: int, eval_every: int,
                       min_points: int = MIN_VALIDATION_POINTS) -> int:
  """The `train.eval_every_steps` of a suite run: the configured cadence when
  it gives at least `min_points` validation points in `num_steps`, else
  num_steps // min_points (every step when the run is shorter than that)."""
  num_steps, eval_every = int(num_steps), int(eval_every)
  if eval_every > 0 and num_steps // eval_every >= min_points:
    return eval_every
  return max(1, num_steps // min_points)


def run_tag(method: str) -> str:
  """The run folder's name of a method (variant): no ':' or '/'."""
  return method.replace(":", "-").replace("/", "_")


