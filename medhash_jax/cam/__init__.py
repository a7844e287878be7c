"""The ATH attention stage: Grad-CAM with jax.vjp, Otsu in jnp, mask cache.

    from medhash_jax import cam

    # classifier = models.get_model("densenet121_classifier", ...): split at
    # the last conv map (backbone_features / from_feature_map).
    cam_fn = cam.make_cam_fn(classifier, variables, mode="true",
                             multi_label=True, apply_kwargs={"train": False})
    masks, reused = cam.ensure_masks(
        f"{workdir}/masks", "train", ds.eval["train"].ids,
        lambda: cam.compute_masks(cam_fn, ds.eval["train"],
                                  num_examples=ds.eval["train"].size),
        png_dir=f"{workdir}/masks/png")      # -> data.mask_dir

The generic form, for a model split into trunk and head, is
``cam.gradcam.gradcam(head_fn, feature_map, labels, ...)`` (the submodules
``gradcam``, ``otsu``, ``masks``, ``overlay`` are not shadowed by functions).

Resolution: ``cam.cam_grid(model, (H, W, C), layer=...)`` is the size of the
map Grad-CAM reads; ``cam.check_cam_resolution`` refuses fewer than 7 x 7
cells (ATH checks it before training anything).

Modules: :mod:`.otsu` (scikit-image-exact Otsu), :mod:`.gradcam`,
:mod:`.localization` (mask-in-box, pointing game, IoBB against boxes),
:mod:`.masks` (split-level cache + per-record PNG export for the data layer's
mask-and-crop), :mod:`.overlay` (PNG overlays).
"""

from medhash_jax.cam import localization
from medhash_jax.cam.gradcam import (CLASS_MODES, MIN_CAM_CELLS,
                                     CamResolutionError, cam_grid,
                                     check_cam_resolution, class_weights,
                                     gradcam_flax, gradcam_split, make_cam_fn)
from medhash_jax.cam.localization import localization_report
from medhash_jax.cam.masks import (MaskCacheError, compute_masks, ensure_masks,
                                   export_png_dir, load_masks, save_masks)
from medhash_jax.cam.otsu import histogram, otsu_mask, threshold_otsu
from medhash_jax.cam.overlay import jet, overlay_image, write_overlays

__all__ = [
    "CLASS_MODES", "MIN_CAM_CELLS", "CamResolutionError", "MaskCacheError",
    "cam_grid", "check_cam_resolution", "class_weights", "compute_masks",
    "localization", "localization_report",
    "ensure_masks", "export_png_dir", "gradcam_flax", "gradcam_split",
    "histogram", "jet",
    "load_masks", "make_cam_fn", "otsu_mask", "overlay_image", "save_masks",
    "threshold_otsu", "write_overlays",
]
