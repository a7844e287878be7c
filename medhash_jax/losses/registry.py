"""Losses by name: `get_loss(name)` and the `LOSSES` dict.

Every entry has the uniform calling convention of the package (see
__init__.py): keyword-only model outputs and batch fields, then the loss's own
hyper-parameters, returning (scalar loss, dict of named scalar terms):

    loss, terms = get_loss("hashnet")(codes=out["codes_real"],
                                      labels=batch["labels"],
                                      features=out["features"],
                                      logits=out["logits"], alpha=0.1)

Inputs a loss does not use are accepted and ignored; an input it needs that
is None raises ValueError naming it; an unknown hyper-parameter raises
TypeError listing the valid ones. `inspect.signature(LOSSES[name])` is the
underlying function's (inputs + hyper-parameters with their defaults), which
is what config validation checks `loss.kwargs` against.
"""

import functools
import inspect
from typing import Any, Callable, Dict, Tuple

from medhash_jax.losses import bit_properties
from medhash_jax.losses import centers
from medhash_jax.losses import classification
from medhash_jax.losses import composite
from medhash_jax.losses import pairwise
from medhash_jax.losses import quantization
from medhash_jax.losses import triplet

# The inputs the trainer may pass to any loss (everything else is a
# hyper-parameter of that loss).
INPUTS = ("codes", "labels", "features", "logits", "triplets", "label_mask",
          "code_logits")

LossFn = Callable[..., Tuple[Any, Dict[str, Any]]]


def uniform(fn: Callable, name: str) -> LossFn:
  """`fn` with the package's calling convention (module docstring)."""
  sig = inspect.signature(fn)
  takes = tuple(n for n in INPUTS if n in sig.parameters)
  required = tuple(n for n in takes
                   if sig.parameters[n].default is inspect.Parameter.empty)
  hyper = {n: p.default for n, p in sig.parameters.items() if n not in INPUTS}

  @functools.wraps(fn)
  def call(*, codes=None, labels=None, features=None, logits=None,
           triplets=None, label_mask=None, code_logits=None, **hyper_kwargs):
    unknown = sorted(set(hyper_kwargs) - set(hyper))
    if unknown:
      raise TypeError(f"loss {name!r} got unknown hyper-parameters {unknown}; "
                      f"valid: {sorted(hyper)}")
    given = dict(codes=codes, labels=labels, features=features, logits=logits,
                 triplets=triplets, label_mask=label_mask,
                 code_logits=code_logits)
    for n in required:
      if given[n] is None:
        raise ValueError(f"loss {name!r} needs `{n}` but it was not given")
    return fn(**{n: given[n] for n in takes}, **hyper_kwargs)

  call.loss_name = name
  call.inputs = takes
  call.required_inputs = required
  call.hyperparameters = hyper
  return call


_FUNCTIONS = {
    "dpsh": pairwise.dpsh,
    "dhn": pairwise.dhn,
    "hashnet": pairwise.hashnet,
    "dch": pairwise.dch,
    "dsh": pairwise.dsh,
    "dfh": pairwise.dfh,
    "lcdsh": pairwise.lcdsh,
    "isdh": pairwise.isdh,
    "dh": bit_properties.dh,
    "drh": bit_properties.drh,
    "dtsh": triplet.dtsh,
    "fang_ath": triplet.fang_ath,
    "mth": triplet.mth,
    "csq": centers.csq,
    "dpn": centers.dpn,
    "sa_hash": composite.sa_hash,
    "ath": composite.ath,
    "quantization": quantization.quantization,
    "softmax_ce": classification.softmax_ce,
    "sigmoid_bce": classification.sigmoid_bce,
}

LOSSES: Dict[str, LossFn] = {n: uniform(f, n) for n, f in _FUNCTIONS.items()}


def get_loss(name: str) -> LossFn:
  """The registered loss `name` (uniform calling convention)."""
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; valid names: "
                     f"{', '.join(sorted(LOSSES))}")
  return LOSSES[name]
