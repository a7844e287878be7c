"""The app in-process over a stub run (no model): the ATH-only paths.

The real-server tests (test_serve.py) run a single-view DPSH run; training
an ATH run for them would take minutes. These check, against a stub that
has `explain`, that the search answer carries the Grad-CAM overlay when the
page asks for it and the run can explain, and not otherwise.
"""

import base64
import io

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from medhash_jax.serve import app as app_lib  # noqa: E402


class StubRun:

  def __init__(self, explain: bool):
    self._explain = explain
    self.calls = []

  @property
  def info(self):
    return {"method": "ath", "num_bits": 16, "num_cases": 3,
            "class_names": ["A", "B"], "image_size": 8, "channels": 1,
            "version": 1, "explain": self._explain, "path": "/secret"}

  def encode_images(self, images):
    self.calls.append(images[0].shape)
    return np.zeros((len(images), 16), np.float32)

  def search(self, codes, k):
    return [[{"rank": j + 1, "id": f"c{j}", "distance": j, "tie_group": 1,
              "name": f"c{j}", "labels": ["A"], "path": "/secret/x"}
             for j in range(k)] for _ in codes]

  def explain(self, image):
    if not self._explain:
      return None
    out = io.BytesIO()
    Image.fromarray(np.zeros(image.shape[:2], np.uint8)).save(out, "PNG")
    return out.getvalue()


def _png():
  out = io.BytesIO()
  Image.fromarray(np.full((20, 30), 9, np.uint8)).save(out, "PNG")
  return out.getvalue()


@pytest.mark.parametrize("can_explain", [True, False])
def test_gradcam_in_search(can_explain):
  """Catches: the overlay dropped from the answer (the page then shows no
  Grad-CAM for ATH), or server paths leaking into hits / info."""
  run = StubRun(can_explain)
  app = app_lib.create_app(run)
  with TestClient(app) as c:
    info = c.get("/api/info").json()
    assert info["explain"] is can_explain and "path" not in info
    r = c.post("/api/search", files={"file": ("q", _png())},
               data={"k": "2", "explain": "1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [h["id"] for h in body["hits"]] == ["c0", "c1"]
    assert all("path" not in h for h in body["hits"])
    if can_explain:
      png = base64.b64decode(body["gradcam"].split(",", 1)[1])
      assert Image.open(io.BytesIO(png)).size == (30, 20)
      assert "explain" in body["timing_ms"]
    else:
      assert body["gradcam"] is None
    r = c.post("/api/search", files={"file": ("q", _png())}, data={"k": "2"})
    assert r.json()["gradcam"] is None     # only when asked
    assert c.get("/healthz").status_code == 503   # never warmed up
