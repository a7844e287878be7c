"""Grad-CAM (Selvaraju et al. 2017) with ``jax.vjp``, generic over the model.

For a feature map A (B, h, w, C) of the last convolutional layer and class
scores y = head(A) (B, K) (the logits: pre-sigmoid or pre-softmax scores)::

    s_b        = sum_k c_bk * y_bk                  (c: class selection weights)
    alpha_bc   = mean_{i,j} d s_b / d A_bijc        (channel weights)
    cam_b      = ReLU(sum_c alpha_bc * A_b..c)      (h, w)
    heat_b     = normalise(resize_bilinear(cam_b, (H, W)))   in [0, 1]

``normalise`` is (x - min) / (max - min) per image; a flat map (e.g. all
zeros after the ReLU) becomes all zeros, whose Otsu mask is empty, so the
mask-and-crop falls back to the full image.

Class selection ``c`` (:func:`class_weights`):

* ``"true"`` (training): c = the multi-hot labels; for a multi-label image the
  score is the *sum of the logits of all positive classes*, so the heat map
  covers every finding (the ATH paper does not say how it handles several
  labels; summing is Grad-CAM's linear extension and is one backward pass).
  A row without any positive label (e.g. "No Finding") uses the predicted
  classes instead, so it still gets a map.
* ``"predicted"`` (query time, labels unknown): single-label, the argmax class;
  multi-label, every class with logit > 0 (sigmoid > 0.5), else the argmax.

The head must treat examples independently (model in inference mode: batch
norm with running statistics, no dropout): the gradients of the summed score
are then the per-example gradients.

Three interfaces:

* :func:`gradcam` takes ``head_fn(feature_map) -> logits`` and the feature map:
  the generic core.
* :func:`gradcam_split` takes a linen module split at the map, as
  ``medhash_jax.models`` does: ``apply(..., method="backbone_features")
  ["feature_map"]`` and ``apply(fmap, method="from_feature_map")["logits"]``.
* :func:`gradcam_flax` takes any linen module, its variables and the name (or
  path) of the submodule whose output is the last conv feature map; it
  intercepts that output with :func:`flax.linen.intercept_methods`, so it works
  without changing the model.

:func:`make_cam_fn` jits either model form into ``cam_fn(images, labels)``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

CLASS_MODES = ("true", "predicted")


def class_weights(logits: jax.Array, labels: jax.Array | None = None, *,
                  mode: str = "predicted", multi_label: bool = False
                  ) -> jax.Array:
  """Class-selection weights c (B, K) in {0, 1} (see the module docstring).

  Args:
    logits: (B, K) class scores.
    labels: (B, K) multi-hot (one-hot for single-label) labels; needed for
      mode="true".
    mode: "true" or "predicted".
    multi_label: whether the classifier is multi-label (sigmoid per class).

  Returns:
    float32 (B, K), with no gradient.
  """
  logits = jax.lax.stop_gradient(logits)
  k = logits.shape[-1]
  top = jax.nn.one_hot(jnp.argmax(logits, axis=-1), k, dtype=jnp.float32)
  if multi_label:
    pos = (logits > 0).astype(jnp.float32)
    predicted = jnp.where(pos.sum(-1, keepdims=True) > 0, pos, top)
  else:
    predicted = top
  if mode == "predicted":
    return predicted
  if mode != "true":
    raise ValueError(f"unknown Grad-CAM class mode {mode!r}; expected one of "
                     f"{CLASS_MODES}")
  if labels is None:
    raise ValueError("Grad-CAM mode='true' needs the labels")
  if labels.shape != logits.shape:
    raise ValueError(f"labels shape {labels.shape} != logits shape "
                     f"{logits.shape}")
  lab = (jnp.asarray(labels) > 0).astype(jnp.float32)
  return jnp.where(lab.sum(-1, keepdims=True) > 0, lab, predicted)


def cam_from_gradients(feature_map: jax.Array, grads: jax.Array,
                       image_size: Sequence[int] | None = None) -> jax.Array:
  """Heat maps (B, H, W) in [0, 1] from A and dS/dA, both (B, h, w, C)."""
  alpha = jnp.mean(grads.astype(jnp.float32), axis=(1, 2))           # (B, C)
  cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw",
                               feature_map.astype(jnp.float32), alpha))
  if image_size is not None:
    h, w = image_size
    cam = jax.image.resize(cam, (cam.shape[0], h, w), method="bilinear")
  return normalize(cam)


def normalize(cam: jax.Array) -> jax.Array:
  """Per-image min-max scaling to [0, 1]; flat maps become 0."""
  lo = jnp.min(cam, axis=(1, 2), keepdims=True)
  hi = jnp.max(cam, axis=(1, 2), keepdims=True)
  span = hi - lo
  return jnp.where(span > 0, (cam - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def gradcam(head_fn: Callable[[jax.Array], jax.Array], feature_map: jax.Array,
            labels: jax.Array | None = None, *, mode: str = "predicted",
            multi_label: bool = False,
            image_size: Sequence[int] | None = None
            ) -> tuple[jax.Array, jax.Array]:
  """Grad-CAM heat maps from a head function and a feature map.

  Args:
    head_fn: feature map (B, h, w, C) -> logits (B, K), per-example.
    feature_map: (B, h, w, C), the last conv layer's output.
    labels: (B, K) multi-hot labels (mode="true").
    mode: class selection, "true" or "predicted".
    multi_label: sigmoid (multi-label) or softmax classifier.
    image_size: (H, W) to upsample to (bilinear); None keeps (h, w).

  Returns:
    (heat maps float32 (B, H, W) in [0, 1], logits (B, K)).
  """
  if feature_map.ndim != 4:
    raise ValueError(f"feature_map must be (B, h, w, C), got shape "
                     f"{feature_map.shape}")
  logits, vjp = jax.vjp(head_fn, feature_map)
  if logits.ndim != 2 or logits.shape[0] != feature_map.shape[0]:
    raise ValueError(f"head_fn must return (B, K) logits, got shape "
                     f"{logits.shape} for a batch of {feature_map.shape[0]}")
  c = class_weights(logits, labels, mode=mode, multi_label=multi_label)
  (grads,) = vjp(c.astype(logits.dtype))
  return cam_from_gradients(feature_map, grads, image_size), logits


def _pick(out, key: str):
  return out[key] if isinstance(out, Mapping) else out


def gradcam_split(model: nn.Module, variables: Any, images: jax.Array,
                  labels: jax.Array | None = None, *,
                  features_method: str = "backbone_features",
                  head_method: str = "from_feature_map",
                  fmap_key: str = "feature_map", logits_key: str = "logits",
                  mode: str = "predicted", multi_label: bool = False,
                  apply_kwargs: dict | None = None
                  ) -> tuple[jax.Array, jax.Array]:
  """Grad-CAM of a linen model exposing its trunk and head as two methods.

  Args:
    model, variables: the module (e.g. ``models.get_model(
      "densenet121_classifier", ...)``) and its variables.
    images: (B, H, W, C); heat maps come back at (H, W).
    labels: (B, K) multi-hot labels for mode="true".
    features_method: method returning the feature map (or a dict holding it
      under ``fmap_key``).
    head_method: method mapping the feature map to the logits (or a dict
      holding them under ``logits_key``).
    mode, multi_label: class selection (see :func:`class_weights`).
    apply_kwargs: passed to both applies (e.g. ``{"train": False}``).

  Returns:
    (heat maps float32 (B, H, W), logits (B, K)).
  """
  kw = dict(apply_kwargs or {})
  fmap = _pick(model.apply(variables, images, method=features_method, **kw),
               fmap_key)
  head = lambda f: _pick(model.apply(variables, f, method=head_method, **kw),
                         logits_key)
  return gradcam(head, fmap, labels, mode=mode, multi_label=multi_label,
                 image_size=images.shape[1:3])


def _matches(module: nn.Module, layer: str) -> bool:
  path = "/".join(module.path)
  return path == layer or (bool(module.path) and module.path[-1] == layer)


def gradcam_flax(model: nn.Module, variables: Any, images: jax.Array,
                 labels: jax.Array | None = None, *, layer: str,
                 method: str | Callable | None = None,
                 mode: str = "predicted", multi_label: bool = False,
                 logits_fn: Callable[[Any], jax.Array] | None = None,
                 fmap_key: str = "feature_map",
                 apply_kwargs: dict | None = None
                 ) -> tuple[jax.Array, jax.Array]:
  """Grad-CAM of any linen model at the output of submodule ``layer``.

  Args:
    model: the linen module (inference mode: pass e.g. ``train=False`` through
      ``apply_kwargs``).
    variables: its variables ({"params": ..., "batch_stats": ...}).
    images: (B, H, W, C) model input; heat maps come back at (H, W).
    labels: (B, K) multi-hot labels for mode="true".
    layer: the submodule whose ``__call__`` output is the last conv feature
      map (B, h, w, C), or a dict holding it under ``fmap_key``: its name
      (last path element) or its "/"-joined path, e.g. "features" or
      "backbone". It must run exactly once. Only the returned map is
      perturbed: anything the layer derives from it internally (e.g. a dict's
      pooled "features") does not carry the gradient, so the rest of the
      model must read the map itself (``models.Classifier`` does).
    method: ``model.apply``'s method (None: ``__call__``).
    mode, multi_label: class selection (see :func:`class_weights`).
    logits_fn: picks the logits out of the model's output (default: the
      output itself, or ``out["logits"]`` for a dict).
    apply_kwargs: extra keyword arguments of ``model.apply``.

  Returns:
    (heat maps float32 (B, H, W), logits (B, K)).
  """
  apply_kwargs = dict(apply_kwargs or {})
  if logits_fn is None:
    logits_fn = lambda out: out["logits"] if isinstance(out, dict) else out

  def run(delta):
    """Logits with ``delta`` added to the layer's output, and that output."""
    seen = []

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and _matches(context.module, layer):
        fmap = _pick(out, fmap_key)
        seen.append(fmap)
        if delta is not None:
          fmap = fmap + delta.astype(fmap.dtype)
          out = {**out, fmap_key: fmap} if isinstance(out, Mapping) else fmap
      return out

    with nn.intercept_methods(interceptor):
      out = model.apply(variables, images, method=method, **apply_kwargs)
    if len(seen) != 1:
      raise ValueError(f"Grad-CAM layer {layer!r} ran {len(seen)} times in "
                       f"{type(model).__name__}; name a submodule that runs "
                       "exactly once")
    return logits_fn(out), seen[0]

  fmap_shape = jax.eval_shape(lambda: run(None)[1])
  if len(fmap_shape.shape) != 4:
    raise ValueError(f"layer {layer!r} outputs shape {fmap_shape.shape}; "
                     "expected a (B, h, w, C) feature map")
  zeros = jnp.zeros(fmap_shape.shape, fmap_shape.dtype)
  logits, vjp, fmap = jax.vjp(run, zeros, has_aux=True)
  c = class_weights(logits, labels, mode=mode, multi_label=multi_label)
  (grads,) = vjp(c.astype(logits.dtype))
  return cam_from_gradients(fmap, grads, images.shape[1:3]), logits


def make_cam_fn(model: nn.Module, variables: Any, *, layer: str | None = None,
                method: str | Callable | None = None, mode: str = "predicted",
                multi_label: bool = False,
                logits_fn: Callable[[Any], jax.Array] | None = None,
                features_method: str = "backbone_features",
                head_method: str = "from_feature_map",
                apply_kwargs: dict | None = None
                ) -> Callable[..., jax.Array]:
  """A jitted ``cam_fn(images, labels=None) -> heat maps (B, H, W)``.

  With ``layer=None`` the model is used through its split methods
  (:func:`gradcam_split`, the ``medhash_jax.models`` convention); with a layer
  name through :func:`gradcam_flax`. The variables are an argument of the
  jitted function (not baked in as constants); inputs placed on a
  batch-sharded mesh run on all devices.
  """
  if mode not in CLASS_MODES:
    raise ValueError(f"unknown Grad-CAM class mode {mode!r}; expected one of "
                     f"{CLASS_MODES}")

  @jax.jit
  def _cam(variables, images, labels):
    if layer is None:
      heat, _ = gradcam_split(model, variables, images, labels,
                              features_method=features_method,
                              head_method=head_method, mode=mode,
                              multi_label=multi_label, apply_kwargs=apply_kwargs)
    else:
      heat, _ = gradcam_flax(model, variables, images, labels, layer=layer,
                             method=method, mode=mode, multi_label=multi_label,
                             logits_fn=logits_fn, apply_kwargs=apply_kwargs)
    return heat

  def cam_fn(images, labels=None):
    if mode == "true" and labels is None:
      raise ValueError("this cam_fn selects the true classes: pass labels")
    return _cam(variables, images, labels if mode == "true" else None)

  return cam_fn


MIN_CAM_CELLS = 7   # the paper's DenseNet-121 at 224 px: a 7 x 7 last map


class CamResolutionError(ValueError):
  """The layer Grad-CAM reads is too coarse to localise anything."""


def cam_grid(model: nn.Module, image_shape: Sequence[int], *,
             layer: str | None = None,
             features_method: str = "backbone_features",
             fmap_key: str = "feature_map",
             apply_kwargs: dict | None = None) -> tuple[int, int]:
  """(h, w) of the feature map Grad-CAM reads for inputs of ``image_shape``.

  The same two readings as :func:`make_cam_fn`: ``layer=None`` is the
  model's split (``features_method``'s ``fmap_key``), a name is the output of
  that submodule (intercepted as :func:`gradcam_flax` does). Traced with
  ``jax.eval_shape`` on (1, H, W, C) zeros: no parameters, no compute.
  """
  kw = dict(apply_kwargs or {})
  x = jax.ShapeDtypeStruct((1,) + tuple(int(d) for d in image_shape),
                           jnp.float32)
  seen = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if (layer is not None and context.method_name == "__call__"
        and _matches(context.module, layer)):
      seen.append(_pick(out, fmap_key).shape)
    return out

  def run(x):
    variables = model.init(jax.random.key(0), x, **kw)
    if layer is None:
      return _pick(model.apply(variables, x, method=features_method, **kw),
                   fmap_key)
    with nn.intercept_methods(interceptor):
      model.apply(variables, x, **kw)
    return None

  out = jax.eval_shape(run, x)
  if layer is None:
    shape = out.shape
  else:
    # init runs the layer too; the apply's call is the last one seen.
    if not seen:
      raise ValueError(f"Grad-CAM layer {layer!r} never ran in "
                       f"{type(model).__name__}; name one of its submodules "
                       "(e.g. 'denseblock3' of a DenseNet classifier)")
    shape = seen[-1]
  if len(shape) != 4:
    raise ValueError(f"Grad-CAM layer {layer or features_method!r} outputs "
                     f"shape {tuple(shape)}; expected (B, h, w, C)")
  return int(shape[1]), int(shape[2])


def check_cam_resolution(grid: Sequence[int], image_size: int, *,
                         min_cells: int = MIN_CAM_CELLS, layer: str = "",
                         where: str = "the classifier") -> None:
  """Raises CamResolutionError when the CAM grid is under min_cells a side.

  A Grad-CAM map of h x w cells, upsampled to the image, can only place its
  heat on one of h x w blocks; at 2 x 2 every mask is a quarter or a half of
  the image, whatever the classifier looked at.
  """
  h, w = int(grid[0]), int(grid[1])
  if min(h, w) >= int(min_cells):
    return
  raise CamResolutionError(
      f"Grad-CAM of {where} at {image_size} px reads "
      f"{'layer ' + repr(layer) if layer else 'the last feature map'}, which "
      f"is {h}x{w} cells; at least {min_cells}x{min_cells} are needed to "
      f"localise (the paper's DenseNet-121 at 224 px gives 7x7). Remedies: "
      f"the small-input stem (ath.classifier.kwargs.small_input=True: /8 "
      f"instead of /32 for a 4-block DenseNet), an earlier block "
      f"(ath.cam.layer='denseblock3' halves the stride; make_cam_fn's "
      f"`layer`), or a larger image (ath.classifier.image_size >= "
      f"{int(min_cells) * -(-int(image_size) // max(1, min(h, w)))}).")


__all__ = ["CLASS_MODES", "CamResolutionError", "MIN_CAM_CELLS", "cam_grid",
           "cam_from_gradients", "check_cam_resolution", "class_weights", "gradcam",
           "gradcam_flax", "gradcam_split", "make_cam_fn", "normalize"]
