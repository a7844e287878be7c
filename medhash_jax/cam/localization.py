"""Does the attention localise? Masks and heat maps against ground-truth boxes.

For one image with Otsu mask M, Grad-CAM heat map H and ground-truth region
G (the union of its boxes, ``data.boxes.box_mask``), all (h, w) at the model's
input size, with |.| the pixel count:

    area share   a     = |G| / (h w)                   the chance level of all three
    mask in box  f     = |M ∩ G| / |M|                 (ATH's masked pixels that are
                                                        inside a box)
    pointing     hit   = [G at argmax H]               (Zhang et al., ECCV 2016,
                                                        tolerance 0; first maximum
                                                        in raster order)
    IoBB         iobb  = |P ∩ G| / |P|                 (Wang et al., ChestX-ray8,
                                                        CVPR 2017: intersection over
                                                        the predicted box)
    heat in box  e     = sum_G H / sum H               (the energy-based pointing
                                                        game, Wang et al., Score-CAM,
                                                        CVPR-W 2020)

where P is the filled bounding box of the largest 8-connected component of M:
the box the local view is cut from (``data.mask_crop.largest_component_bbox``,
without the crop's margin). ChestX-ray8 counts a localisation correct when
IoBB >= T and reports that accuracy for T in {0.1, 0.25, 0.5, 0.75, 0.9}.

Each is a chance-level quantity when the attention knows nothing: a mask, a
point, a box or a heat map placed uniformly at random puts a fraction ~a of
itself inside G, so each metric is reported beside the mean of a over the
same images. The heat share e is the one that sees what the Otsu threshold
hides: the ReLU of Grad-CAM zeroes the regions of negative evidence, and
without it the min-max scaling lifts all of the image's zero-evidence
background to mid heat.

Undefined cases are left out and counted, not scored: an empty mask (the
local view falls back to the full image) has no f and no P; a flat heat map
(after the ReLU, no positive evidence anywhere) has no maximum to point with.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)


def _largest_component_box(mask: np.ndarray) -> np.ndarray | None:
  from medhash_jax.data import mask_crop  # the crop's own component rule
  bb = mask_crop.largest_component_bbox(mask)
  if bb is None:
    return None
  y0, y1, x0, x1 = bb
  box = np.zeros(mask.shape, bool)
  box[y0:y1, x0:x1] = True
  return box


def per_image(masks: np.ndarray, heat: np.ndarray | None,
              regions: np.ndarray) -> dict[str, np.ndarray]:
  """Per-image values (NaN where undefined) of the module's definitions.

  Args:
    masks: (N, h, w) binary Otsu masks.
    heat: (N, h, w) heat maps, or None (no pointing game).
    regions: (N, h, w) bool ground-truth regions (union of boxes).

  Returns:
    dict of float64 (N,) arrays: "area_share", "mask_in_box", "pointing"
    (1.0 hit, 0.0 miss), "iobb", "heat_in_box", "mask_area" (|M| / (h w)).
  """
  masks = np.asarray(masks) > 0
  regions = np.asarray(regions, bool)
  if masks.shape != regions.shape or masks.ndim != 3:
    raise ValueError(f"masks {masks.shape} and box regions {regions.shape} "
                     "must both be (N, h, w)")
  n, h, w = masks.shape
  out = {k: np.full((n,), np.nan) for k in
         ("area_share", "mask_in_box", "pointing", "iobb", "heat_in_box",
          "mask_area")}
  if heat is not None:
    heat = np.asarray(heat, np.float32)
    if heat.shape != masks.shape:
      raise ValueError(f"heat maps {heat.shape} != masks {masks.shape}")
  for i in range(n):
    m, g = masks[i], regions[i]
    out["area_share"][i] = g.mean()
    out["mask_area"][i] = m.mean()
    if m.any():
      out["mask_in_box"][i] = (m & g).sum() / m.sum()
      p = _largest_component_box(m)
      out["iobb"][i] = (p & g).sum() / p.sum()
    if heat is not None and heat[i].max() > heat[i].min():
      y, x = divmod(int(np.argmax(heat[i])), w)
      out["pointing"][i] = float(g[y, x])
      hp = np.maximum(heat[i].astype(np.float64), 0.0)
      out["heat_in_box"][i] = hp[g].sum() / hp.sum()
  out["has_heat"] = heat is not None
  return out


def summarize(values: Mapping[str, np.ndarray],
              thresholds: Sequence[float] = IOBB_THRESHOLDS) -> dict:
  """Means over the images where each metric is defined, each with its
  chance level (the mean box-area share of those same images)."""
  a = np.asarray(values["area_share"])
  out = {"count": int(a.size),
         "area_share": float(np.mean(a)) if a.size else float("nan"),
         "mask_area": float(np.mean(values["mask_area"])) if a.size
                      else float("nan")}
  for key in ("mask_in_box", "pointing", "iobb", "heat_in_box"):
    v = np.asarray(values[key])
    ok = ~np.isnan(v)
    out[key] = float(v[ok].mean()) if ok.any() else float("nan")
    out[key + "_chance"] = float(a[ok].mean()) if ok.any() else float("nan")
    out[key + "_count"] = int(ok.sum())
  iobb = np.asarray(values["iobb"])
  ok = ~np.isnan(iobb)
  # ChestX-ray8's accuracy: the share of *all* boxed images localised with
  # IoBB >= T (an image without a predicted box is not localised).
  out["iobb_accuracy"] = {f"{t:g}": float(np.mean(np.where(ok, iobb, 0) >= t))
                          if a.size else float("nan") for t in thresholds}
  out["undefined_masks"] = int((~ok).sum())
  p = np.asarray(values["pointing"])
  out["flat_heat"] = int(np.isnan(p).sum()) if values.get("has_heat", True) \
      else None
  return out


def localization_report(masks: np.ndarray, heat: np.ndarray | None,
                        regions: np.ndarray) -> dict:
  """``summarize(per_image(masks, heat, regions))``."""
  return summarize(per_image(masks, heat, regions))


__all__ = ["IOBB_THRESHOLDS", "localization_report", "per_image", "summarize"]
