"""`python -m medhash_jax.experiments --suite=<name>` (see the package docstring)."""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from medhash_jax.config.overrides import split_setting
from medhash_jax.experiments.runner import run_suite
from medhash_jax.experiments.suites import SUITES
from medhash_jax.experiments.suites import with_overrides
from medhash_jax.train import writers

def _define_flags():
  """Defined only when run as a program, so importing this module (tests,
  notebooks) never collides with medhash_jax.main's --workdir/--output."""
  flags.DEFINE_string("suite", "smoke", f"one of {sorted(SUITES)}")
  flags.DEFINE_string("output", "", "report folder (default results/<suite>)")
  flags.DEFINE_string("workdir", "",
                      "run folder (default runs/experiments/<suite>)")
  flags.DEFINE_list("methods", [], "subset of the suite's deep methods")
  flags.DEFINE_list("bits", [], "code lengths (default the suite's)")
  flags.DEFINE_list("seeds", [], "seeds (default the suite's)")
  flags.DEFINE_integer("steps", 0, "override every run's number of steps")
  flags.DEFINE_bool("rerun", False, "retrain runs that already finished")
  flags.DEFINE_bool("allow_dirty", False,
                    "write results from a git tree with uncommitted changes "
                    "(recorded as dirty); refused by default")
  flags.DEFINE_multi_string(
      "set", [], "key=value set on every run's config, after the suite's "
      "overrides (repeatable), typed as --config.key=value types it, e.g. "
      "--set=data.image_size=32 --set=model.dtype=bfloat16")


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  writers.quiet_library_logs()
  if FLAGS.suite not in SUITES:
    raise app.UsageError(f"unknown suite {FLAGS.suite!r}; known: {sorted(SUITES)}")
  try:
    settings = dict(split_setting(t) for t in FLAGS.set)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  suite = with_overrides(SUITES[FLAGS.suite], settings)
  info = run_suite(
      suite, FLAGS.output or os.path.join("results", suite.name),
      FLAGS.workdir or os.path.join("runs", "experiments", suite.name),
      methods=FLAGS.methods or None,
      bits=[int(b) for b in FLAGS.bits] or None,
      seeds=[int(s) for s in FLAGS.seeds] or None,
      steps=FLAGS.steps or None, rerun=FLAGS.rerun,
      allow_dirty=FLAGS.allow_dirty,
      command=" ".join(["python -m medhash_jax.experiments"] + sys.argv[1:]))
  print(json.dumps(info["outputs"], indent=1))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
