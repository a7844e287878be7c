r"""Command line: train, evaluate, encode, search and export.

  python -m medhash_jax.main --config=configs/dpsh.py[:smoke] --workdir=DIR \
      [--config.key=value ...]                      # train (the default mode)
  python -m medhash_jax.main --workdir=DIR --mode=search --input=IMAGES [--k=10]
  python -m medhash_jax.main --workdir=DIR --mode=encode --input=IMAGES
  python -m medhash_jax.main --workdir=DIR --mode=export --output=BUNDLE
  python -m medhash_jax.main --workdir=DIR --mode=evaluate [--set=data.root=...]

After training, --config is optional: the run's saved config is used; a given
--config (or --set) may change operational and training keys only
(`train/inference.py`). search and encode --input need no training data and
accept a bundle folder as --workdir.

Multi-process (one process per host or per accelerator; launch/README.md):
jax.distributed starts when the process count is > 1 (flags below or env
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, as set by
launch/local.py) or under an srun / mpirun step of several tasks;
--distributed=on for TPU VM pods. Only process 0 writes files and prints.

Kept tiny on purpose: flags are parsed here, the work is done in
`medhash_jax.train`, where it can be tested.
"""

import json

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/dpsh.py or configs/dpsh.py:smoke.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, "
                    "results.json, index); search/encode: also a bundle.")
flags.DEFINE_enum("mode", "train",
                  ["train", "evaluate", "encode", "search", "export"],
                  "train: train, then evaluate on test; evaluate: a trained "
                  "workdir again; encode: images to an index file; search: "
                  "query images against the run's database; export: a "
                  "portable bundle (--output=DIR).")
flags.DEFINE_multi_string("set", [], "evaluate/encode/search: key=value on "
                          "the run's saved config (operational or training "
                          "keys only; typed as --config.key=value types it), "
                          "e.g. --set=data.root=/new/place.")
flags.DEFINE_bool("skip_bad", False, "encode/search: skip unreadable --input "
                  "files (listed in the output and the log) instead of "
                  "failing on the first.")
flags.DEFINE_string("gallery", "", "search: also write an HTML page of each "
                    "query and its hits (a new file).")
flags.DEFINE_string("input", "", "encode/search: an image, a folder of images "
                    "or a .txt list of paths (encode: empty = --split).")
flags.DEFINE_string("split", "database", "encode without --input: the split "
                    "of the configured dataset to encode.")
flags.DEFINE_string("output", "", "encode: index file (default "
                    "WORKDIR/encoded.mhi); search: JSON (default "
                    "WORKDIR/search.json); export: the bundle folder. Never "
                    "overwritten (defaults take the next free name).")
flags.DEFINE_integer("k", 10, "search: results per query (at most the "
                     "database size; larger is refused).")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "jax.distributed: auto = only for a multi-process launch "
                  "(process count > 1, or an srun/mpirun step of several "
                  "tasks); on = always (TPU VM pods: cluster auto-detection);"
                  " off = never.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0's "
                    "coordinator (default env JAX_COORDINATOR_ADDRESS, else "
                    "cluster auto-detection).")
flags.DEFINE_string("coordinator_bind_address", None, "Address process 0's "
                    "coordinator listens on (default env "
                    "JAX_COORDINATOR_BIND_ADDRESS, else all interfaces).")
flags.DEFINE_integer("num_processes", None, "Process count (default env "
                     "JAX_NUM_PROCESSES, else auto-detection).")
flags.DEFINE_integer("process_id", None, "This process's index (default env "
                     "JAX_PROCESS_ID, else auto-detection).")
flags.DEFINE_string("local_device_ids", None, "Comma-separated accelerator "
                    "ids this process uses (default env JAX_LOCAL_DEVICE_IDS;"
                    " under SLURM jax picks [SLURM_LOCALID], i.e. one GPU per "
                    "task).")
flags.DEFINE_string("cpu_collectives", "gloo", "CPU cross-process collectives "
                    "(jax_cpu_collectives_implementation: gloo or mpi).")
flags.DEFINE_bool("log_all_processes", False, "INFO logs on every process "
                  "(default: only process 0; the others log warnings).")


def _summary(results):
  """Headline numbers (results.json has every metric). Tie-aware: what a
  ranking shown to a user gives, whatever the database order."""
  test = {k: round(v, 4) for k, v in results.get("headline", {}).items()}
  return json.dumps({
      "method": results["method"], "dataset": results["dataset"],
      "num_bits": results["num_bits"], "train": results["train"],
      "selected_step": results.get("selection", {}).get("step"),
      "test": test, "efficiency": results["efficiency"],
      "results": f"{FLAGS.workdir}/results.json"}, indent=1, default=str)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from medhash_jax.train import writers  # pylint: disable=g-import-not-at-top
  writers.quiet_library_logs()  # orbax's per-save INFO lines
  # Before anything touches a JAX backend.
  from medhash_jax import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(
      FLAGS.distributed, coordinator_address=FLAGS.coordinator_address,
      coordinator_bind_address=FLAGS.coordinator_bind_address,
      num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
      local_device_ids=FLAGS.local_device_ids,
      cpu_collectives=FLAGS.cpu_collectives)
  distributed.log_topology()
  main_process = distributed.is_main_process()
  if not main_process and not FLAGS.log_all_processes:
    absl_logging.set_verbosity(absl_logging.WARNING)
  from medhash_jax import systems  # pylint: disable=g-import-not-at-top
  from medhash_jax.config.overrides import split_setting  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import inference  # pylint: disable=g-import-not-at-top
  config, workdir = FLAGS.config, FLAGS.workdir
  settings = [split_setting(t) for t in FLAGS.set]
  out = print if main_process else (lambda *a: None)
  if FLAGS.mode == "train":
    if config is None:
      raise app.UsageError("--mode=train needs --config")
    # Multi-stage systems (ATH) run all their stages; the rest go to train/.
    out(_summary(systems.system_of(config).train_and_evaluate(config,
                                                              workdir)))
  elif FLAGS.mode == "evaluate":
    out(_summary(inference.evaluate(workdir, config, settings)))
  elif FLAGS.mode == "encode":
    out(json.dumps(inference.encode(
        config, workdir, input_spec=FLAGS.input, split=FLAGS.split,
        output=FLAGS.output, skip_bad=FLAGS.skip_bad, settings=settings)))
  elif FLAGS.mode == "search":
    inference.search(config, workdir, input_spec=FLAGS.input, k=FLAGS.k,
                     output=FLAGS.output, gallery=FLAGS.gallery,
                     skip_bad=FLAGS.skip_bad, settings=settings, print_fn=out)
  else:
    out(json.dumps(inference.export(workdir, FLAGS.output), indent=1))


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
