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


@pytest.fixture(scope="session")
def serve_run(data_dir, tmp_path_factory):
  """A tiny trained run for the server tests (tests/serve_harness.py): DPSH
  smoke on 168 staged COVID-19 Radiography X-rays, trained once per session."""
  from tests import serve_harness  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(os.path.join(data_dir, serve_harness.COVID)):
    pytest.skip("staged covid19_radiography data missing")
  reuse = os.environ.get("MEDHASH_TEST_SERVE_RUN")   # dev: keep one trained
  return serve_harness.train_run(
      data_dir, reuse or str(tmp_path_factory.mktemp("serve_run")))
