r"""Command line: train, evaluate, encode and search.

  python -m medhash_jax.main --config=configs/dpsh.py[:smoke] --workdir=DIR \
      [--config.key=value ...] [--mode=train|evaluate|encode|search]

Kept tiny on purpose: flags are parsed here, the work is done in
`medhash_jax.train`, where it can be tested.
"""

import json
import logging

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/dpsh.py or configs/dpsh.py:smoke.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, "
                    "results.json, index).")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "encode", "search"],
                  "train: train, then evaluate on test; evaluate: a trained "
                  "workdir; encode: images to an index file; search: query "
                  "images against an index.")
flags.DEFINE_string("input", "", "encode/search: an image, a folder of images "
                    "or a .txt list of paths (encode: empty = --split).")
flags.DEFINE_string("split", "database", "encode without --input: the split "
                    "of the configured dataset to encode.")
flags.DEFINE_string("output", "", "encode: index file (default "
                    "WORKDIR/encoded.mhi); search: JSON (default "
                    "WORKDIR/search.json).")
flags.DEFINE_string("index", "", "search: index file (default WORKDIR/index.mhi).")
flags.DEFINE_integer("k", 10, "search: results per query.")


def _summary(results):
  """Headline numbers (results.json has every metric)."""
  test = {k: round(v, 4) for k, v in results["metrics"]["test"].items()
          if "/" not in k and k.startswith(("map@", "ndcg@", "precision@"))}
  return json.dumps({
      "method": results["method"], "dataset": results["dataset"],
      "num_bits": results["num_bits"], "train": results["train"],
      "selected_step": results.get("selection", {}).get("step"),
      "test": test, "efficiency": results["efficiency"],
      "results": f"{FLAGS.workdir}/results.json"}, indent=1, default=str)


class _QuietLibraries(logging.Filter):
  """Keeps orbax's per-save INFO chatter out of the run log (warnings stay)."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  from medhash_jax import train  # pylint: disable=g-import-not-at-top
  config, workdir = FLAGS.config, FLAGS.workdir
  if FLAGS.mode == "train":
    print(_summary(train.train_and_evaluate(config, workdir)))
  elif FLAGS.mode == "evaluate":
    print(_summary(train.evaluate_workdir(config, workdir)))
  elif FLAGS.mode == "encode":
    print(json.dumps(train.encode(config, workdir, input_spec=FLAGS.input,
                                  split=FLAGS.split, output=FLAGS.output)))
  else:
    train.search(config, workdir, input_spec=FLAGS.input, k=FLAGS.k,
                 index_path=FLAGS.index, output=FLAGS.output)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
