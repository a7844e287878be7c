"""`System`: what the rest of the project may ask of a trainable system.

A system turns a config into a trained run and knows its own files; callers
(main.py, the experiment suites, inference) go through this interface and
never read a system's records themselves:

  train_and_evaluate(config, workdir)  the whole training; results dict
  inference_config(config, workdir)    the single-run config to evaluate,
                                       encode or search the run with
  local_views(config, workdir)         the maker of loose files' second
                                       views (None: single-view system)
  train_seconds(results, workdir)      the system's training time (all
                                       its stages)
  report_extras(workdir)               per-run records for reports
                                       (stage records, attention)
  query_overlays(workdir, query_ids)   images shown beside those queries in
                                       a gallery, or None

`System` itself is the plain one: one `train.train_and_evaluate` run.
ATH-GradCAM's three stages are `ath.AthSystem`.
"""

from typing import Any, Dict, List, Optional, Sequence


class System:
  """A single training run of `medhash_jax.train` (every method but ATH)."""

  name = "plain"

  def train_and_evaluate(self, config, workdir: str, **kwargs
                         ) -> Dict[str, Any]:
    from medhash_jax import train  # pylint: disable=g-import-not-at-top
    return train.train_and_evaluate(config, workdir, **kwargs)

  def inference_config(self, config, workdir: str):
    del workdir
    return config

  def local_views(self, config, workdir: str, batch_size: int = 32):
    del config, workdir, batch_size
    return None

  def train_seconds(self, results: Dict[str, Any], workdir: str
                    ) -> Optional[float]:
    del workdir
    return results["train"].get("seconds")

  def report_extras(self, workdir: str) -> Dict[str, Any]:
    del workdir
    return {}

  def query_overlays(self, workdir: str, query_ids: Sequence[str]
                     ) -> Optional[List[Any]]:
    del workdir, query_ids
    return None
