"""The run configs in the top-level `configs/` folder, loaded by file path.

`configs/` is not an importable package when the library is used from
elsewhere; loading `configs/<name>.py` through importlib's file loader (what
`ml_collections.config_flags` does for `--config=configs/x.py`) needs no
import-path entry, and each load runs the file afresh.
"""

import importlib.util
import os

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")


def config_path(name: str) -> str:
  """'ath' -> <repo>/configs/ath.py; an unknown name lists the known ones."""
  path = os.path.join(CONFIG_DIR, f"{name}.py")
  if not os.path.isfile(path):
    known = sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                   if f.endswith(".py") and not f.startswith("_")) \
        if os.path.isdir(CONFIG_DIR) else []
    raise FileNotFoundError(f"no config file {path} for {name!r}; known: "
                            f"{known}")
  return path


def load_module(name: str):
  """The module of configs/<name>.py (not registered in sys.modules)."""
  path = config_path(name)
  spec = importlib.util.spec_from_file_location(f"medhash_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(spec: str) -> ml_collections.ConfigDict:
  """'ath:se,smoke' -> configs/ath.py's get_config('se,smoke'), as
  `--config=configs/ath.py:se,smoke` gives it."""
  name, _, arg = spec.partition(":")
  return load_module(name).get_config(arg or None)
