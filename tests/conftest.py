"""Shared test setup: 4 fake CPU devices (before jax is imported) and the data dir."""

import os

# Must run before the first `import jax` anywhere in the test session.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=4").strip()

import pytest  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="session")
def data_dir():
  """$MEDHASH_DATA_DIR, else ../shared/data beside the repo; skips if absent."""
  candidates = [os.environ.get("MEDHASH_DATA_DIR"),
                os.path.join(_HERE, "..", "..", "shared", "data")]
  for c in candidates:
    if c and os.path.isdir(c):
      return os.path.abspath(c)
  pytest.skip("no staged data: set MEDHASH_DATA_DIR")
