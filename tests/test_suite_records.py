"""What a suite records besides its numbers, and what it refuses: the
validation cadence (>= 5 points per run), the git tree state (a dirty tree
is refused unless allowed). The end-to-end checks of runs.json and the table
columns live in test_systems.py (they read its suite run)."""

import dataclasses
import os
import subprocess

import pytest

from medhash_jax import experiments
from medhash_jax.experiments import runner
from medhash_jax.experiments import suites


@pytest.mark.parametrize("steps, every, want", [
    (600, 200, 120), (1500, 500, 300), (3000, 1000, 600), (10, 0, 2),
    (1000, 100, 100), (1000, 200, 200), (6, 0, 1), (3, 5, 1), (1000, 201, 200)])
def test_validation_cadence(steps, every, want):
  assert suites.validation_cadence(steps, every) == want


@pytest.mark.parametrize("name", sorted(experiments.SUITES))
@pytest.mark.parametrize("steps", [None, 6, 40])
def test_every_suite_run_validates_at_least_five_times(name, steps, tmp_path):
  suite = experiments.SUITES[name]
  for method in suite.methods:
    c = experiments.method_config(suite, method, suite.bits[0], 0,
                                  str(tmp_path), steps)
    every = c.train.eval_every_steps
    assert every > 0 and c.train.num_steps // every >= 5, (method, every)


def _git(repo, *args):
  subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
                 cwd=repo, check=True, capture_output=True)


def test_git_state_clean_dirty_and_no_checkout(tmp_path):
  repo = tmp_path / "repo"
  (repo / "results" / "x").mkdir(parents=True)
  (repo / "code.py").write_text("a = 1\n")
  (repo / "results" / "x" / "results.md").write_text("old\n")
  _git(repo, "init", "-q")
  _git(repo, "add", "-A")
  _git(repo, "commit", "-qm", "first")
  state = runner.git_state(str(repo))
  assert len(state["commit"]) == 40 and state["dirty"] is False
  # A regenerated report alone leaves the tree clean.
  (repo / "results" / "x" / "results.md").write_text("new\n")
  (repo / "results" / "y").mkdir()
  (repo / "results" / "y" / "runs.json").write_text("{}\n")
  assert runner.git_state(str(repo))["dirty"] is False
  # An edited or a new source file makes it dirty, named.
  (repo / "code.py").write_text("a = 2\n")
  state = runner.git_state(str(repo))
  assert state["dirty"] is True and state["changes"] == ["code.py"]
  _git(repo, "checkout", "-q", "code.py")
  (repo / "new_config.py").write_text("b = 1\n")
  assert runner.git_state(str(repo))["changes"] == ["new_config.py"]
  assert runner.git_state(str(tmp_path / "nothing_here")) == {
      "commit": "unknown", "dirty": None, "changes": []}


def test_check_clean_refuses_a_dirty_tree_unless_allowed():
  dirty = {"commit": "c" * 40, "dirty": True, "changes": ["medhash_jax/x.py"]}
  with pytest.raises(RuntimeError, match=r"medhash_jax/x\.py.*--allow_dirty"):
    runner.check_clean(dirty, allow_dirty=False)
  runner.check_clean(dirty, allow_dirty=True)
  runner.check_clean({**dirty, "dirty": False, "changes": []}, False)
  runner.check_clean({**dirty, "dirty": None, "changes": []}, False)


def test_run_suite_refuses_a_dirty_tree_before_training(tmp_path, monkeypatch):
  monkeypatch.setattr(runner, "git_state", lambda: {
      "commit": "c" * 40, "dirty": True, "changes": ["configs/dsh.py"]})
  trained = []
  from medhash_jax import systems
  monkeypatch.setattr(systems, "train_and_evaluate",
                      lambda *a, **k: trained.append(a))
  suite = dataclasses.replace(experiments.SUITES["smoke"],
                              overrides={**experiments.SUITES["smoke"].overrides,
                                         "data.root": str(tmp_path)})
  with pytest.raises(RuntimeError, match="configs/dsh.py"):
    experiments.run_suite(suite, str(tmp_path / "out"), str(tmp_path / "runs"),
                          methods=["dpsh"], bits=[16])
  assert not trained and not os.path.exists(tmp_path / "out")


def test_validation_curve_reads_val_rows_last_write_wins(tmp_path):
  rows = ['{"step": 2, "val/map@10": 0.1, "time": 0}',
          '{"step": 2, "train/loss": 1.0, "time": 0}',
          '{"step": 4, "val/map@10": 0.3, "time": 0}',
          '{"step": 2, "val/map@10": 0.2, "time": 0}']   # step 2 again (resume)
  (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + "\n")
  assert runner.validation_curve(str(tmp_path), "map@10") == {
      "metric": "map@10", "steps": [2, 4], "values": [0.2, 0.3]}
  (tmp_path / "metrics.jsonl").write_text(rows[0] + "\n{broken\n")
  with pytest.raises(ValueError, match=r"metrics.jsonl line 2"):
    runner.validation_curve(str(tmp_path), "map@10")
