"""ATH stage 1 (the classifier, `systems.classifier.train_classifier`) in one
process of a multi-process launch (launch/local.py), or alone.

  python tests/mp_classifier_worker.py STAGE_DIR DATA_DIR STEPS

The ATH smoke classifier (a tiny DenseNet on BreastMNIST 28 px) trained
for STEPS steps into STAGE_DIR/classifier (checkpoints, metrics.jsonl,
classifier.json); the split files go to STAGE_DIR/splits.
"""

import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medhash_jax import distributed  # pylint: disable=wrong-import-position


def classifier_config(data_dir: str, steps: int):
  """(config, ath.classifier section) of the ATH smoke config."""
  c = importlib.import_module("configs.ath").get_config("smoke")
  with c.unlocked():
    c.data.root = data_dir
    c.ath.classifier.num_steps = int(steps)
    c.ath.classifier.log_every_steps = 1
    c.ath.classifier.checkpoint_every_steps = 2
    c.ath.classifier.batch_size = 16
  return c, c.ath.classifier


def main(stage_dir: str, data_dir: str, steps: str):
  distributed.initialize("auto")
  from medhash_jax.systems import classifier  # pylint: disable=g-import-not-at-top
  config, cls_cfg = classifier_config(data_dir, int(steps))
  classifier.train_classifier(config, cls_cfg, stage_dir,
                              os.path.join(stage_dir, "classifier"))


if __name__ == "__main__":
  main(*sys.argv[1:])
