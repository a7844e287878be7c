"""Does ATH's attention localise? Box readers, localisation metrics against
brute-force references, the CAM-resolution check, and a planted-region run of
the real stage 1 -> Grad-CAM -> Otsu -> mask path (`systems.ath.prepare`).
"""

import gzip
import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image
from skimage import measure

from medhash_jax import cam
from medhash_jax import experiments
from medhash_jax import models
from medhash_jax.cam import localization
from medhash_jax.data import boxes
from medhash_jax.data.records import BadRecordError
from medhash_jax.systems import ath as ath_lib


# ----------------------------------------------------------------- boxes ----

def test_nih_bbox_list_staged_rows(data_dir):
  """The real BBox_List_2017.csv.gz: 984 boxes on 880 images, 8 findings,
  the first row as published (catches a skipped first row or a shifted
  column)."""
  path = os.path.join(data_dir, "chestxray14_labels", "BBox_List_2017.csv.gz")
  table = boxes.read_boxes(path)
  assert len(table) == 880
  assert sum(len(v.boxes) for v in table.values()) == 984
  assert {b.label for v in table.values() for b in v.boxes} == {
      "Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass",
      "Nodule", "Pneumonia", "Pneumothorax"}
  first = table["00013118_008.png"]
  assert first.frame == (1024, 1024)
  b = first.boxes[0]
  np.testing.assert_allclose([b.x, b.y, b.w, b.h],
                             [225.084745762712, 547.019216763771,
                              86.7796610169491, 79.1864406779661])
  assert b.label == "Atelectasis"


def test_nih_reader_names_file_and_line(tmp_path):
  p = str(tmp_path / "BBox_List_2017.csv")
  with open(p, "w") as f:
    f.write("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
            "a.png,Mass,1,2,3,4\na.png,Nodule,5,6,7,8\nb.png,Mass,1,2,x,4\n")
  with pytest.raises(BadRecordError, match=r"BBox_List_2017.csv.*line 4"):
    boxes.read_boxes(p)
  with open(p, "w") as f:
    f.write("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,0,4\n")
  with pytest.raises(BadRecordError, match="positive width"):
    boxes.read_boxes(p)
  gz = str(tmp_path / "b.csv.gz")
  with gzip.open(gz, "wt") as f:
    f.write("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
            "a.png,Mass,1,2,3,4\na.png,Nodule,5,6,7,8\n")
  t = boxes.read_boxes(gz)
  assert [bb.label for bb in t["a.png"].boxes] == ["Mass", "Nodule"]
  with pytest.raises(ValueError, match=r"\.json \(COCO\)"):
    boxes.read_boxes(str(tmp_path / "b.txt"))


def test_coco_reader(tmp_path):
  doc = dict(images=[dict(id=7, file_name="x/a.png", width=200, height=100),
                     dict(id=8, file_name="b.png", width=10, height=10)],
             annotations=[dict(id=1, image_id=7, bbox=[10, 20, 30, 40],
                               category_id=3)],
             categories=[dict(id=3, name="lung")])
  p = str(tmp_path / "c.json")
  with open(p, "w") as f:
    json.dump(doc, f)
  t = boxes.read_boxes(p)
  assert list(t) == ["x/a.png"]          # images without boxes are left out
  assert t["x/a.png"] == boxes.ImageBoxes((200, 100), (boxes.Box(
      10.0, 20.0, 30.0, 40.0, "lung"),))
  doc["annotations"].append(dict(id=2, image_id=9, bbox=[0, 0, 1, 1]))
  with open(p, "w") as f:
    json.dump(doc, f)
  with pytest.raises(BadRecordError, match=r"c.json.*annotations\[1\]"):
    boxes.read_boxes(p)


def test_box_mask_pixel_centres_brute_force():
  """Against a loop over pixels with the centre rule, on a non-square frame
  (catches a swapped x/y or a missing frame->size scaling)."""
  rng = np.random.default_rng(0)
  for _ in range(20):
    fw, fh = rng.integers(50, 300, 2)
    ib = boxes.ImageBoxes((int(fw), int(fh)), tuple(
        boxes.Box(*rng.uniform(0, 0.7, 2) * (fw, fh),
                  *rng.uniform(0.05, 0.4, 2) * (fw, fh))
        for _ in range(rng.integers(1, 3))))
    size = int(rng.integers(8, 40))
    want = np.zeros((size, size), bool)
    for i in range(size):
      for j in range(size):
        u, v = (j + 0.5) * fw / size, (i + 0.5) * fh / size
        want[i, j] = any(b.x <= u < b.x + b.w and b.y <= v < b.y + b.h
                         for b in ib.boxes)
    np.testing.assert_array_equal(boxes.box_mask(ib, size), want)


def test_match_ids():
  ib = boxes.ImageBoxes((4, 4), (boxes.Box(0, 0, 1, 1),))
  assert boxes.match_ids({"a.png": ib, "d/c.png": ib},
                         ["x/a.png", "b.png", "d/c.png"]) == {0: ib, 2: ib}
  with pytest.raises(ValueError, match="'a.png'.*2 records"):
    boxes.match_ids({"a.png": ib}, ["x/a.png", "y/a.png"])


# ---------------------------------------------------------------- metrics ---

def _ref_one(mask, heat, region):
  """Plain transcription of the definitions, with scikit-image's labelling
  for the largest 8-connected component (lowest label on ties)."""
  a = region.sum() / region.size
  if not mask.any():
    f = iobb = np.nan
  else:
    f = (mask & region).sum() / mask.sum()
    lab = measure.label(mask, connectivity=2)
    sizes = [(lab == k).sum() for k in range(1, lab.max() + 1)]
    ys, xs = np.nonzero(lab == 1 + int(np.argmax(sizes)))
    box = np.zeros_like(mask)
    box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    iobb = (box & region).sum() / box.sum()
  if heat.max() == heat.min():
    hit = share = np.nan
  else:
    best = np.argwhere(heat == heat.max())[0]     # first in raster order
    hit = float(region[best[0], best[1]])
    share = sum(float(heat[i, j]) for i, j in np.argwhere(region)) / float(
        heat.astype(np.float64).sum())
  return a, f, hit, iobb, share


def test_localization_metrics_against_reference():
  rng = np.random.default_rng(0)
  n, h, w = 40, 12, 15
  masks = rng.random((n, h, w)) < rng.uniform(0.05, 0.5, (n, 1, 1))
  masks[3] = False                                  # empty: undefined
  heat = rng.random((n, h, w)).astype(np.float32)
  heat[5] = 0.0                                     # flat: no pointing
  regions = np.zeros((n, h, w), bool)
  for i in range(n):
    y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
    regions[i, y:y + rng.integers(2, h - y), x:x + rng.integers(2, w - x)] = True
  got = localization.per_image(masks, heat, regions)
  ref = np.array([_ref_one(masks[i], heat[i], regions[i]) for i in range(n)])
  for k, key in enumerate(("area_share", "mask_in_box", "pointing", "iobb",
                            "heat_in_box")):
    np.testing.assert_allclose(got[key], ref[:, k], err_msg=key)
  rep = localization.summarize(got)
  assert rep["undefined_masks"] == 1 and rep["flat_heat"] == 1
  ok = ~np.isnan(ref[:, 1])
  assert rep["mask_in_box"] == pytest.approx(np.mean(ref[ok, 1]))
  assert rep["mask_in_box_chance"] == pytest.approx(np.mean(ref[ok, 0]))
  assert rep["iobb_accuracy"]["0.5"] == pytest.approx(
      np.mean(np.nan_to_num(ref[:, 3]) >= 0.5))


def test_localization_hand_example_and_chance():
  region = np.zeros((1, 4, 4), bool)
  region[0, :2, :2] = True                          # a quarter of the image
  mask = np.zeros((1, 4, 4), bool)
  mask[0, 0, 0:3] = True                            # 2 of 3 pixels inside
  heat = np.zeros((1, 4, 4), np.float32)
  heat[0, 3, 3] = 1.0                               # points outside
  rep = localization.localization_report(mask, heat, region)
  assert rep["mask_in_box"] == pytest.approx(2 / 3)
  assert rep["iobb"] == pytest.approx(2 / 3)        # box = the 1x3 row
  assert rep["pointing"] == 0.0 and rep["area_share"] == 0.25
  assert rep["heat_in_box"] == 0.0
  # Masks placed at random score their box's area share on average (the
  # chance level the reports print beside each number).
  rng = np.random.default_rng(1)
  masks = rng.random((400, 16, 16)) < 0.3
  heat = rng.random((400, 16, 16)).astype(np.float32)
  reg = np.zeros((400, 16, 16), bool)
  reg[:, 2:10, 4:12] = True
  rep = localization.localization_report(masks, heat, reg)
  assert abs(rep["mask_in_box"] - rep["mask_in_box_chance"]) < 0.01
  assert abs(rep["pointing"] - rep["pointing_chance"]) < 0.06
  assert abs(rep["heat_in_box"] - rep["heat_in_box_chance"]) < 0.01


# ------------------------------------------------------------- resolution ---

@pytest.mark.parametrize("small_input,blocks,size,layer,want", [
    (False, (1, 2, 2, 1), 64, None, (2, 2)),         # the suites
    (False, (1, 2, 2, 1), 128, None, (4, 4)),
    (False, (1, 2, 2, 1), 128, "denseblock3", (8, 8)),
    (True, (1, 2, 2, 1), 28, None, (3, 3)),
    (True, (1, 2, 2, 1), 28, "denseblock3", (7, 7)),
    (False, (6, 12, 24, 16), 224, None, (7, 7)),     # the paper
])
def test_cam_grid(small_input, blocks, size, layer, want):
  """Stride 32 (standard stem) or 8 (small-input) with flax's floor pooling;
  an earlier block halves it per transition skipped."""
  m = models.get_model("densenet121_classifier", num_classes=2,
                       small_input=small_input, block_config=blocks,
                       growth_rate=4, num_init_features=8)
  assert cam.cam_grid(m, (size, size, 1), layer=layer,
                      apply_kwargs={"train": False}) == want


def test_resolution_check_refuses_the_2x2_cam(tmp_path):
  # The covid19 suite's ATH before the fix: 64 px, standard stem, last map.
  suite = experiments.with_overrides(
      experiments.SUITES["covid19"],
      {"ath.classifier.image_size": 0, "ath.cam.layer": ""})
  c = experiments.method_config(suite, "ath", 48, 0, str(tmp_path))
  with pytest.raises(cam.CamResolutionError,
                     match=r"64 px .* 2x2 cells.*small_input=True.*"
                     r"ath.cam.layer='denseblock3'.*image_size >= 224"):
    ath_lib.check_cam_resolution(c)
  # prepare() refuses before it reads data or trains anything.
  with pytest.raises(cam.CamResolutionError):
    ath_lib.prepare(c, str(tmp_path / "wd"))
  assert not os.path.exists(tmp_path / "wd")


@pytest.mark.parametrize("name", sorted(experiments.SUITES))
def test_every_suite_and_config_reads_at_least_7x7(name, tmp_path):
  c = experiments.method_config(experiments.SUITES[name], "ath", 48, 0,
                                str(tmp_path))
  h, w = ath_lib.check_cam_resolution(c)
  assert min(h, w) >= 7
  if name == "smoke":
    import configs.ath as ath_config  # pylint: disable=g-import-not-at-top
    for variant in ("", "smoke"):
      assert min(ath_lib.check_cam_resolution(
          ath_config.get_config(variant))) >= 7


# --------------------------------------------------------- planted region ---

SIZE, BOX = 32, 12
HEAT_SHARE_MIN = 0.7


def _planted(d, n, seed=0):
  """Class = orientation of the stripes inside a 12x12 box placed anywhere
  (box share 0.14), on noise with bright/dark blobs and a plaid patch of
  both orientations as strong as the box (high-contrast, class-free) and weak stripe
  patches of either orientation (evidence for and against); a folder
  dataset (labels.csv) plus the planted boxes as COCO JSON."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
  rows, images, anns = ["path,label"], [], []
  for i in range(n):
    cls = i % 2
    img = 128 + rng.normal(0, 12, (SIZE, SIZE))
    for _ in range(3):
      cy, cx = rng.uniform(0, SIZE, 2)
      s = rng.uniform(1.5, 3)
      img += rng.choice([-1, 1]) * 90 * np.exp(
          -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    for _ in range(2):
      y0, x0 = rng.integers(0, SIZE - 8, 2)
      wave = np.sin(np.pi / 2 * (yy if rng.integers(0, 2) == 0 else xx))
      img[y0:y0 + 8, x0:x0 + 8] += 40 * wave[y0:y0 + 8, x0:x0 + 8]
    # The box and the patch side by side, in a random order and position.
    first = rng.integers(0, SIZE - 2 * BOX + 1)
    y0, v0 = rng.integers(0, SIZE - BOX + 1, 2)
    x0, u0 = first, first + BOX + rng.integers(0, SIZE - 2 * BOX - first + 1)
    if rng.integers(0, 2):
      x0, u0 = u0, x0
    if rng.integers(0, 2):   # or one above the other
      x0, y0, u0, v0 = y0, x0, v0, u0
    # A class-free patch beside the box: both classes' stripes at once (a
    # plaid, the same under the transpose that swaps the classes). The
    # features fire on it as on the box, but the evidence of the two classes
    # cancels: only the gradient weights can tell it from the box.
    plaid = (np.sign(np.sin(np.pi / 2 * (yy + 0.5)))
             + np.sign(np.sin(np.pi / 2 * (xx + 0.5))))
    img[v0:v0 + BOX, u0:u0 + BOX] = 128 + 60 * plaid[v0:v0 + BOX, u0:u0 + BOX]
    wave = np.sign(np.sin(np.pi / 2 * ((yy if cls == 0 else xx) + 0.5)))
    img[y0:y0 + BOX, x0:x0 + BOX] = (128 + 80 * wave[y0:y0 + BOX, x0:x0 + BOX]
                                     + rng.normal(0, 12, (BOX, BOX)))
    name = f"c{cls}/img{i:04d}.png"
    os.makedirs(os.path.join(d, f"c{cls}"), exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
        os.path.join(d, name))
    rows.append(f"{name},c{cls}")
    images.append(dict(id=i, file_name=name, width=SIZE, height=SIZE))
    anns.append(dict(id=i, image_id=i, bbox=[int(x0), int(y0), BOX, BOX],
                     category_id=1))
  with open(os.path.join(d, "labels.csv"), "w") as f:
    f.write("\n".join(rows) + "\n")
  with open(os.path.join(d, "boxes.json"), "w") as f:
    json.dump(dict(images=images, annotations=anns,
                   categories=[dict(id=1, name="pattern")]), f)


def test_planted_region_masks_land_in_the_box(tmp_path):
  """Stage 1 (a tiny DenseNet, 150 Adam steps) -> Grad-CAM -> Otsu -> the
  cached masks, through `ath.prepare` on a folder dataset, scored by its own
  localisation report against the planted COCO boxes, on every split (train
  and database with the true class, val and query with the predicted one):
  >= 0.8 of the mask pixels inside the box (chance 0.14), and >= 0.7 of the
  heat map's mass (energy-based pointing game).

  Each planted bug fails it (measured, query split; correct code: mask in
  box 0.93, heat in box 0.77):
  * the CAM read from a 2x2 map: mask in box 0.39;
  * masks of the wrong class: mask in box 0.00;
  * Grad-CAM without its ReLU: heat in box 0.46 (the masks stay at 0.93:
    Otsu still cuts at the box, but the zero-evidence background is lifted
    to mid heat);
  * without the gradient weights (alpha = 1): heat in box 0.62 (the plaid
    patch, class-free, lights up as the box does).
  """
  import configs.ath as ath_config  # pylint: disable=g-import-not-at-top
  d = str(tmp_path / "planted")
  _planted(d, 320)
  c = ml_collections.ConfigDict(ath_config.get_config("smoke").to_dict())
  c.data.name, c.data.path, c.data.root = "folder", d, ""
  c.data.split, c.data.image_size = "seed", SIZE
  c.data.channels, c.data.normalize = 1, "half"
  c.data.eval_batch_size = 64
  # Small-input stem and one transition: a 16x16 last map at 32 px.
  c.ath.classifier.kwargs = ml_collections.ConfigDict(dict(
      small_input=True, growth_rate=8, num_init_features=16,
      block_config=(1, 1)))
  c.ath.classifier.num_steps = 150
  c.ath.classifier.learning_rate = 3e-3
  c.ath.classifier.checkpoint_every_steps = 150
  c.ath.cam.layer = ""
  c.ath.cam.boxes = os.path.join(d, "boxes.json")
  c.ath.cam.num_overlays = 2
  stages = ath_lib.prepare(c, str(tmp_path / "wd"))
  assert stages["cam"]["grid"] == [16, 16]
  assert stages["classifier"]["val"]["accuracy"] >= 0.9, stages["classifier"]
  loc = stages["localization"]
  report = {s: (round(r["mask_in_box"], 3), round(r["mask_in_box_chance"], 3),
                round(r["mask_area"], 3)) for s, r in loc.items()}
  for split in ath_lib.SPLITS:
    r = loc[split]
    assert r["count"] == stages["masks"][split]["count"]   # every image boxed
    assert r["mask_in_box_chance"] < 0.2
    assert r["mask_in_box"] >= 0.8, (split, report)
    assert r["pointing"] >= 0.9, (split, report)
    assert r["heat_in_box"] >= HEAT_SHARE_MIN, (split, r["heat_in_box"])
    assert stages["masks"][split]["fallbacks"] == 0, (split, report)


# ----------------------------------------------------------------- report ---

def test_report_prints_attention_beside_the_table(tmp_path):
  """`ath_stages.json` -> the "ATH attention" lines (catches a dropped
  fallback count, a split shown under another's name, or localisation
  printed without its chance level)."""
  from medhash_jax.experiments import runner  # pylint: disable=g-import-not-at-top
  masks = {s: {"count": 10 * (i + 1), "mask_area": 0.1 * (i + 1),
               "fallbacks": i, "empty": i}
           for i, s in enumerate(ath_lib.SPLITS)}
  loc = {"query": {"count": 7, "mask_in_box": 0.812, "mask_in_box_chance":
                   0.141, "pointing": 0.9, "pointing_chance": 0.142,
                   "iobb": 0.7, "iobb_chance": 0.143}}
  with open(tmp_path / "ath_stages.json", "w") as f:
    json.dump({"masks": masks, "classifier": {"val": {"accuracy": 0.95}},
               "cam": {"layer": "denseblock3", "grid": [8, 8],
                       "image_size": 128, "boxes": "/b.json"},
               "localization": loc}, f)
  a = runner.ath_attention(str(tmp_path))
  md = runner.ath_attention_markdown(
      [dict(method="ATH-GradCAM", bits=48, seed=0, attention=a)])
  line = md.strip().splitlines()[-1]
  assert "8x8 at 128 px (denseblock3)" in line
  assert "0.100 / 0.200 / 0.300 / 0.400" in line
  assert "0 of 10 / 1 of 20 / 2 of 30 / 3 of 40" in line
  assert "| 7 | 0.812 (0.141) | 0.900 (0.142) | 0.700 (0.143) | – (–) |" in line
  a["localization"], a["boxes"] = None, ""
  md = runner.ath_attention_markdown(
      [dict(method="ATH-GradCAM", bits=48, seed=0, attention=a)])
  assert "0 (no boxes)" in md
  assert runner.ath_attention(str(tmp_path / "none")) is None


def test_box_file_choice(tmp_path):
  """`ath.cam.boxes`: "" finds the dataset folder's NIH list, "none" turns
  it off, a missing path is named (catches the auto-discovery looking in the
  wrong folder or ignoring "none")."""
  import types  # pylint: disable=g-import-not-at-top
  src = types.SimpleNamespace(dir=str(tmp_path))
  ds = types.SimpleNamespace(eval={"query": types.SimpleNamespace(
      loader=types.SimpleNamespace(source=src))})
  c = ml_collections.ConfigDict({"ath": ath_lib.default_section()})
  assert ath_lib.box_file(c, ds) is None
  (tmp_path / "BBox_List_2017.csv.gz").write_bytes(b"")
  assert ath_lib.box_file(c, ds) == str(tmp_path / "BBox_List_2017.csv.gz")
  c.ath.cam.boxes = "none"
  assert ath_lib.box_file(c, ds) is None
  c.ath.cam.boxes = str(tmp_path / "nope.json")
  with pytest.raises(FileNotFoundError, match="nope.json"):
    ath_lib.box_file(c, ds)
