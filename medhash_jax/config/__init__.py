"""What the run configs in the top-level `configs/` share, inside the package
so a config file imports only `medhash_jax` (never another config by
putting the repository root on the import path):

  base        the shared base config (paper scale / `smoke`), the `:a,b`
              variant syntax, the staged data root, `pairwise_baseline`
  files       `configs/<name>.py[:arg]` loaded by path (suites, tests)
  overrides   `key=value` text set on a config by ml_collections' own
              `--config.key=value` parsing (the `--set` flags)
  errors      `ConfigError`

This file imports nothing, so `from medhash_jax.config import errors` stays
cheap (train/ imports it).
"""
