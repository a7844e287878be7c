"""Model selection in the train loop: the model kept in best/ and reported in
results.json is the one of the validation step with the largest selection
metric, ties going to the earlier step.

The selection metric is scripted (the real val pass still runs and its other
metrics are kept), so the expected step is known before training: a flipped
or non-strict comparison, or keeping the last model, picks another step.
"""

import json
import os

import jax
import numpy as np
import pytest

from medhash_jax import train
from medhash_jax.train import loop
from tests.test_train_loop import smoke

# Val metric at steps 2, 4, 6, 8, 10: the maximum 0.5 first at step 4, tied at
# step 8, and the last step is not the best.
SCRIPT = [0.1, 0.5, 0.3, 0.5, 0.2]
WANT_STEP = 4


def _config(data_dir):
  return smoke(data_dir, **{"train.num_steps": 10, "train.eval_every_steps": 2,
                            "train.checkpoint_every_steps": 10,
                            "train.log_every_steps": 5})


def test_selection_keeps_the_first_argmax_of_the_val_metric(
    data_dir, tmp_path, monkeypatch):
  config = _config(data_dir)
  select = config.eval.select_metric
  real = loop.Run.evaluate_val
  calls = []

  def scripted(self, variables, **kw):
    out = real(self, variables, **kw)
    if kw.get("return_gallery"):
      return out
    out = dict(out)
    out[select] = SCRIPT[len(calls)]
    calls.append(out[select])
    return out

  monkeypatch.setattr(loop.Run, "evaluate_val", scripted)
  params_at = {}

  def keep_params(step, state):
    params_at[step] = jax.device_get(state.params)

  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir, hooks=[keep_params])
  assert calls == SCRIPT                       # five validation points
  assert results["selection"] == {"metric": select, "split": "val",
                                  "step": WANT_STEP}
  with open(os.path.join(workdir, loop.BEST_FILE)) as f:
    best = json.load(f)
  assert best["step"] == WANT_STEP and best["value"] == 0.5
  assert results["metrics"]["val"][select] == 0.5
  # The parameters in best/ are those of step 4, not of the last step.
  monkeypatch.setattr(loop.Run, "evaluate_val", real)
  run = loop.Run(config, workdir, for_training=False)
  try:
    items, step = run.selected_variables()
  finally:
    run.ds.close()
    run.ckpt.close()
  assert step == WANT_STEP
  got = jax.tree.leaves(jax.device_get(items["params"]))
  want = jax.tree.leaves(params_at[WANT_STEP])
  last = jax.tree.leaves(params_at[10])
  assert all(np.array_equal(g, w) for g, w in zip(got, want))
  assert not all(np.array_equal(g, w) for g, w in zip(got, last))
