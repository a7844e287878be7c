r"""Reproducible results: every method x code length on one dataset.

  python -m medhash_jax.experiments --suite=smoke
  python -m medhash_jax.experiments --suite=breastmnist [--output=results/x]
      [--workdir=runs/experiments/x] [--methods=dpsh,ath] [--bits=16,32]
      [--seeds=0,1,2] [--steps=N] [--set=key=value ...] [--rerun]

For each deep method (its `configs/<method>.py`, starting from the suite's
variant, with the suite's overrides), each code length and each seed, one run
(`systems.train_and_evaluate`: ATH runs its three stages; its classifier and
masks are shared between code lengths of one seed) with model selection on
val and the table from test (query vs database). Then the shallow methods
(LSH, PCAH, ITQ, SSH; `medhash_jax.shallow`) on backbone features: the pooled
backbone features of the suite's `feature_source` deep run (no ImageNet
weights are available offline, so they inherit that run's supervised
training; "pixels" uses the raw eval images instead).

Written to the output folder:
  results.md / results.csv   mAP@10, mAP@all, nDCG@100, nDCG@all, P@r<=2,
                             tie-aware mAP@10, chance levels, training time,
                             encode ms/image, query ms, index bytes; per-seed
                             values shown as mean ± std
  pr_curves_<K>bits.png      precision-recall over Hamming radii, seed 0
  gallery.png                a few queries with their top 10 (distance,
                             labels, relevant in green) and, when ATH ran,
                             its Grad-CAM overlay
  runs.json                  every run's numbers, the command, commit,
                             machine, seeds and settings
A finished run (its results.json) is reused unless --rerun, and only when
the config it was trained with equals this suite's (logging, checkpoint
cadence and loader parallelism aside); otherwise the suite stops and names
the keys that differ.
"""

from medhash_jax.experiments.runner import Trained
from medhash_jax.experiments.runner import run_suite
from medhash_jax.experiments.suites import ALL_DEEP
from medhash_jax.experiments.suites import DISPLAY
from medhash_jax.experiments.suites import SUITES
from medhash_jax.experiments.suites import Suite
from medhash_jax.experiments.suites import method_config
from medhash_jax.experiments.suites import with_overrides

__all__ = ["ALL_DEEP", "DISPLAY", "SUITES", "Suite", "Trained",
           "with_overrides",
           "method_config", "run_suite"]
