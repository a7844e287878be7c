"""The schema of a run config: every key the trainer reads, with its default.

`medhash_jax/config/base.py` starts from `default_config()`; method configs
(configs/<method>.py) override values only. `validation.validate_config`
rejects any key that is not here (a typo would otherwise be ignored
silently), except inside the free-form
`model.kwargs` and `loss.kwargs`, which are checked against the signatures of
the registered model and loss.
"""

import ml_collections

from medhash_jax import data as data_lib

# Sub-dicts whose keys are free-form (validated against a signature instead).
FREE_FORM = ("model.kwargs", "loss.kwargs")

# Every key belongs to one of four classes, declared here and nowhere else
# (a key, or a prefix ending in "."; the longest match wins; unlisted keys
# are MODEL keys):
#   MODEL        what the codes mean: architecture, code length, the data, its
#                split and preprocessing. Never changes for a trained run.
#   TRAINING     how the parameters were fitted (loss, optimizer, batches,
#                augmentation, seed). Fixed on resume; irrelevant once trained,
#                so evaluate/encode/search/serve accept any value.
#   OPERATIONAL  how long, evaluation batch sizes and report cut-offs, the
#                device count, where to start from: free to change on resume
#                and at inference, but a finished run trained under other
#                values computed other numbers (the suites retrain it).
#   LOGISTICS    operational keys that change nothing a run computes: where
#                files are, logging and checkpoint cadence, reader threads.
#                The only keys a suite ignores when it reuses a finished run.
MODEL, TRAINING, OPERATIONAL, LOGISTICS = ("model", "training", "operational",
                                           "logistics")
KEY_CLASSES = {
    "seed": TRAINING,
    "model.beta.": TRAINING,      # tanh(beta z): sign, hence codes, unchanged
    "loss.": TRAINING,
    "optim.": TRAINING,
    "train.": TRAINING,
    "data.sampling": TRAINING,
    "data.augment.": TRAINING,
    "num_devices": OPERATIONAL,   # the batch is global
    "resume": LOGISTICS,
    "init_from": OPERATIONAL,
    # A longer run extends the schedule (a suite retrains a shorter one).
    "train.num_steps": OPERATIONAL,
    "train.eval_every_steps": OPERATIONAL,   # which steps model selection saw
    "train.log_every_steps": LOGISTICS,
    "train.log_every_seconds": LOGISTICS,
    "train.checkpoint_every_steps": LOGISTICS,
    "train.checkpoint_every_minutes": LOGISTICS,
    "train.keep_checkpoints": LOGISTICS,
    "eval.": OPERATIONAL,
    "data.root": LOGISTICS,
    "data.path": LOGISTICS,
    "data.download": OPERATIONAL,
    "data.skip_bad": OPERATIONAL,
    "data.verify": OPERATIONAL,
    "data.mask_dir": OPERATIONAL,
    # Which local view (mask * image, or mask-and-crop) the codes were
    # trained on: a run is never served with the other.
    "data.local_view": MODEL,
    "data.eval_batch_size": OPERATIONAL,
    "data.num_workers": LOGISTICS,
    "data.worker_buffer_size": LOGISTICS,
    "data.read_threads": LOGISTICS,
    "data.prefetch_buffer_size": LOGISTICS,
}


def key_class(key: str) -> str:
  """MODEL, TRAINING, OPERATIONAL or LOGISTICS for a dotted config key (see
  KEY_CLASSES)."""
  best, best_len = MODEL, -1
  for name, cls in KEY_CLASSES.items():
    hit = key == name or (name.endswith(".") and key.startswith(name))
    if hit and len(name) > best_len:
      best, best_len = cls, len(name)
  return best


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "dpsh"          # name used in results.json and tables
  c.seed = 0                 # init, shuffling, augmentation, per-step keys
  c.num_bits = 48            # K, the code length
  c.num_devices = 0          # 0 = every local device

  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet18"  # a models registry name
  c.model.kwargs = ml_collections.ConfigDict()   # forwarded to get_model
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  # tanh(beta * z) continuation (HashNet): beta = init * (1 + gamma * step)
  # ** power, raised every `every` steps; "constant" keeps beta = init.
  c.model.beta = ml_collections.ConfigDict(dict(
      schedule="constant", init=1.0, gamma=0.005, power=0.5, every=1))

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "dpsh"       # registered name | module:function | file.py:function
  c.loss.kwargs = ml_collections.ConfigDict()    # forwarded to the loss
  c.loss.classification_weight = 0.0  # + w * BCE/CE on the class head
  # loss.name="terms": sum of {name, weight, kwargs} (losses/resolve.py).
  c.loss.terms = ()
  # Written by the trainer: where the loss came from (a file's path and
  # sha256), so a run names the exact code that trained it.
  c.loss.source = ()

  c.data = data_lib.default_data_config()

  c.optim = ml_collections.ConfigDict(dict(
      name="sgd",            # sgd | adam | adamw | rmsprop
      learning_rate=0.01,    # backbone lr; the head gets head_lr_mult x this
      momentum=0.9,
      nesterov=False,
      b1=0.9, b2=0.999, eps=1e-8,
      rms_decay=0.9,
      weight_decay=5e-4,
      decay_bias_and_norm=False,
      head_lr_mult=10.0,     # seed 000: the hash layer learns 10x faster
      head_patterns=("hash",),  # regexes on '/'-joined param paths
      schedule="cosine",     # constant | cosine | linear | step | exponential
      warmup_steps=0,
      end_lr_factor=0.0,     # final lr / lr (cosine, linear, exponential)
      step_boundaries=(0.5, 0.75),  # fractions of the decay steps
      step_factor=0.1,
      grad_clip_norm=0.0,    # 0 = off
      grad_clip_value=0.0,
  ))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=64,         # global, over all devices and processes
      num_steps=2000,
      log_every_steps=50,
      eval_every_steps=500,  # val retrieval for model selection; 0 = at end
      checkpoint_every_steps=500,
      # Wall-time cadences on top of the step ones, so that a slow model is
      # safe by default: a checkpoint at least every N minutes (0 = steps
      # only) and a progress line at least every N seconds (0 = steps only).
      checkpoint_every_minutes=10.0,
      log_every_seconds=30.0,
      keep_checkpoints=3,
  ))

  c.eval = ml_collections.ConfigDict(dict(
      ks=(10, 100),          # cut-offs of the retrieval report
      # val key that selects the model (higher wins). Tie-aware: with short
      # or collapsed codes the index-ordered value depends on the database
      # file order (class-sorted in HAM10000's CSV), not on the model.
      select_metric="map@100/tie_aware",
  ))

  c.resume = ""     # another run's workdir / checkpoint: full state
  c.init_from = ""  # weights only: a checkpoint, or .pth/.safetensors file
  return c
