r"""Command line: a vmapped sweep of one architecture (train/sweep.py).

  python -m medhash_jax.sweep --config=configs/dpsh.py:smoke \
      --sweep=seed=0,1,2 --sweep=loss.kwargs.alpha=0.05,0.1 --workdir=W

trains the 6 variants in one compiled program and writes W/sweep.md and
W/sweep.json (variants ranked by the val selection metric, with their
tie-aware test metrics) and one run per variant under W/variants/, which
search, encode and the server open like any run. Sweepable keys: seed,
loss.kwargs.<name>, loss.terms.<label>.weight|<kwarg>, optim.learning_rate.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Base config, e.g. configs/dpsh.py:smoke.",
    lock_config=True)
flags.DEFINE_multi_string("sweep", [], "key=v1,v2,...; repeat for a product.")
flags.DEFINE_string("workdir", None, "Sweep directory W.")
flags.DEFINE_integer("group_size", 0, "At most this many variants per "
                     "compiled program (0 = as many as fit in memory).")
flags.DEFINE_enum("strategy", "auto", ["auto", "vmap", "unroll"],
                  "vmap batches the variants (GPU); unroll traces them side "
                  "by side into one compiled step (auto: unroll on CPU).")


def main(argv):
  del argv
  from medhash_jax.train import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  if FLAGS.config is None or not FLAGS.workdir:
    raise app.UsageError("--config and --workdir are required")
  out = sweep_lib.run_sweep(FLAGS.config, sweep_lib.parse_sweep(FLAGS.sweep),
                            FLAGS.workdir, group_size=FLAGS.group_size,
                            strategy=FLAGS.strategy)
  best = out["variants"][0]
  logging.info("best on val: %s (%s = %.4f); table: %s/%s", best["variant"],
               out["select_metric"], best["val"][out["select_metric"]],
               FLAGS.workdir, sweep_lib.SWEEP_MD)
  print(open(f"{FLAGS.workdir}/{sweep_lib.SWEEP_MD}", encoding="utf-8").read())


if __name__ == "__main__":
  app.run(main)
