"""Results tables (exact text), PR curve and gallery PNGs (pixels where the
data says)."""

import os

import numpy as np
import pytest
from PIL import Image

from medhash_jax import report
from medhash_jax.report import curves as curves_lib
from medhash_jax.report import gallery as gallery_lib

ROWS = [
    {"method": "ATH", "bits": 48, "mAP@10": [0.6, 0.62, 0.64], "map@all": 0.41234,
     "ndcg@100": None, "train_time": 1234.56, "encode_ms": 0.12345,
     "index_bytes": 1234567, "chance": 0.2},
    {"method": "LSH|x", "bits": 16, "map_10": 0.3, "p@radius2": float("nan"),
     "query_ms": 2.5, "ndcg@all": {"mean": 0.25, "std": 0.01}},
]

WANT_MD = """\
| Method | Bits | mAP@10 | mAP@all | nDCG@100 | nDCG@all | P@r≤2 | mAP@10 tie-aware | mAP@all tie-aware | Chance mAP@10 | Chance mAP@all | Train (s) | Encode (ms/img) | Query (ms) | Index (bytes) |
|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| ATH | 48 | 0.6200 ± 0.0200 | 0.4123 | — | — | — | — | — | 0.2000 | — | 1234.6 | 0.123 | — | 1,234,567 |
| LSH\\|x | 16 | 0.3000 | — | — | 0.2500 ± 0.0100 | — | — | — | — | — | — | — | 2.500 | — |
"""

WANT_CSV = """\
method,bits,map@10,map@10_std,map@all,ndcg@100,ndcg@all,ndcg@all_std,p@r2,map@10_tie,map@all_tie,chance,chance_map@all,train_time_s,encode_ms_per_image,query_ms,index_bytes
ATH,48,0.62,0.02,0.41234,,,,,,,0.2,,1234.56,0.12345,,1234567
LSH|x,16,0.3,,,,0.25,0.01,,,,,,,,2.5,
"""


def test_tables_exact(tmp_path):
  assert report.format_markdown(ROWS) == WANT_MD
  assert report.format_csv(ROWS) == WANT_CSV
  md, csv = report.write_tables(ROWS, str(tmp_path / "res" / "table"),
                                preamble="command: x")
  assert open(md, encoding="utf-8").read() == "command: x\n\n" + WANT_MD
  assert open(csv, encoding="utf-8").read() == WANT_CSV
  sub = report.format_markdown(ROWS, columns=["method", "mAP@10", "seeds"])
  assert sub.splitlines()[0] == "| Method | mAP@10 | seeds |"
  assert sub.splitlines()[3] == "| LSH\\|x | 0.3000 | — |"


def test_pivot_puts_each_value_under_its_method_and_code_length():
  """Catches: swapped columns (bits unsorted or misassigned), a method's
  rows merged with another's, the wrong metric, or a missing pair shown as
  a number."""
  rows = [{"method": "B", "bits": 64, "map@10_tie": 0.5, "map@10": 0.9},
          {"method": "A", "bits": 16, "map@10_tie": [0.2, 0.4]},
          {"method": "A", "bits": 64, "map@10_tie": 0.25},
          {"method": "B", "bits": 16, "map@10_tie": 0.125}]
  got = report.format_pivot(rows, "map@10_tie").splitlines()
  assert got[0] == ("| Method | mAP@10 tie-aware, 16 bits | "
                    "mAP@10 tie-aware, 64 bits |")
  assert got[2:] == ["| B | 0.1250 | 0.5000 |",
                     "| A | 0.3000 ± 0.1414 | 0.2500 |"]
  partial = report.format_pivot(rows[:2], "map@10_tie").splitlines()
  assert partial[2:] == ["| B | — | 0.5000 |", "| A | 0.3000 ± 0.1414 | — |"]


def test_pr_curve_pixels(tmp_path):
  path = str(tmp_path / "pr" / "pr.png")
  curves = {"diag": ([1.0, 0.5, 0.2], [0.0, 0.5, 1.0]),
            "flat": (np.full(11, 0.5), np.linspace(0, 1, 11)),
            "dot": ([0.1], [0.9])}
  img = report.plot_pr_curves(curves, path, title="t", size=(400, 300))
  with Image.open(path) as im:   # a PNG that decodes, the image returned
    assert im.format == "PNG" and im.size == (400, 300) and im.mode == "RGB"
    px = np.asarray(im)
  np.testing.assert_array_equal(px, np.asarray(img))
  assert os.listdir(tmp_path / "pr") == ["pr.png"]  # no temporary left
  area = curves_lib.plot_area((400, 300), title=True)
  pal = curves_lib.PALETTE

  def near(x, y, colour, r=1, tol=12):
    """Some pixel within r of (x, y) has `colour` (anti-aliasing: +-tol)."""
    c, row = area.to_pixel(x, y)
    win = px[row - r:row + r + 1, c - r:c + r + 1].reshape(-1, 3).astype(int)
    return bool((np.abs(win - colour).max(axis=1) <= tol).any())

  assert near(0.7, 0.5, pal[1], r=0)                   # on "flat", exactly
  assert near(0.25, 0.75, pal[0]) and near(0.75, 0.35, pal[0])   # on "diag"
  assert near(0.9, 0.1, pal[2])                        # the single point
  for colour in pal[:3]:                               # nowhere else
    assert not near(0.3, 0.2, colour, r=2, tol=60)
    assert not near(0.2, 0.3, colour, r=2, tol=60)
  assert near(0.0, 0.05, curves_lib.AXIS)              # the y axis
  with pytest.raises(ValueError, match="differ"):
    report.plot_pr_curves({"bad": ([1, 0.5], [0.0])})


def test_gallery_png(tmp_path):
  rng = np.random.default_rng(0)
  q, k = 2, 4
  relevant = np.array([[1, 0, 1, 1], [0, 0, 1, 0]], bool)
  path = str(tmp_path / "g" / "gallery.png")
  report.save_gallery(
      path, rng.random((q, 20, 20)), rng.integers(0, 255, (q, k, 20, 20, 3), dtype=np.uint8),
      relevant, distances=rng.integers(0, 9, (q, k)), query_labels=["mel", ["nv", "bkl"]],
      result_labels=[["nv"] * k, ["a very long label list"] * k],
      overlays=rng.integers(0, 255, (q, 20, 20, 3), dtype=np.uint8), tile=40)
  lay = gallery_lib.GalleryLayout(q, k, True, tile=40)
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size == lay.size
    px = np.asarray(im)
  for r in range(q):
    x0, y0, x1, y1 = lay.box(r, 0)
    assert tuple(px[y0 + 1, x0 + 1]) == gallery_lib.QUERY
    for j in range(k):
      x0, y0, x1, y1 = lay.result_box(r, j)
      want = gallery_lib.RELEVANT if relevant[r, j] else gallery_lib.IRRELEVANT
      assert tuple(px[y0 + 1, x0 + 1]) == want
      assert tuple(px[y1 - 2, x1 - 2]) == want
  with pytest.raises(ValueError, match="relevant"):
    report.render_gallery(np.zeros((2, 4, 4)), [[np.zeros((4, 4))]] * 2,
                          np.zeros((3, 1), bool))
  assert os.path.getsize(path) > 0


def test_spread_queries_round_robin_over_classes():
  # Stored class by class: 5 of class 0, 3 of class 1, 1 unlabelled, 2 of 2.
  labels = np.zeros((11, 3))
  labels[:5, 0] = 1
  labels[5:8, 1] = 1
  labels[9:, 2] = 1
  pick = report.spread_queries(labels, 7)
  np.testing.assert_array_equal(pick, [0, 5, 9, 8, 1, 6, 10])
  # A shorter request is a prefix (the gallery's queries have ATH overlays).
  np.testing.assert_array_equal(report.spread_queries(labels, 3), pick[:3])
  assert sorted(report.spread_queries(labels, 50)) == list(range(11))
