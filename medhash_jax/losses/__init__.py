"""The loss zoo: pure functions of a whole global batch, one registry.

Calling convention (every entry of `LOSSES`, via `get_loss(name)`):

    loss, terms = loss_fn(*, codes, labels, features=None, logits=None,
                          triplets=None, label_mask=None, code_logits=None,
                          **hyper)

  codes       (B, K) float  the model's relaxed codes ("codes_real")
  labels      (B, C) float  multi-hot (int (B,) class ids where C is not needed)
  features    (B, D) float  deep features (MTH)
  logits      (B, C) float  class-head output (MTH, SA-Hash, ATH, CE/BCE)
  triplets    (T, 3) int    (anchor, positive, negative) batch indices; rows
                            with a negative index are ignored; None = every
                            valid triplet of the batch (DTSH, MTH)
  label_mask  (B, C) float  1 where a label is known (BCE)
  code_logits (B, C) float  a projection rho of the codes onto the classes
                            (MTH's semantic term; MTHNet's "code_logits")
  **hyper     the loss's hyper-parameters (see its docstring)
  -> loss: float32 scalar; terms: dict name -> float32 scalar (unweighted)

Inputs a loss does not use are ignored, a needed one that is None raises
ValueError, an unknown hyper-parameter raises TypeError. Similarity is
S_ij = 1 when samples i and j share at least one label, over every pair
i != j of the batch. The functions in the family modules (pairwise, triplet,
centers, composite, quantization, classification) can also be called directly
with only the inputs they declare.

Names: dpsh, dhn, hashnet, dch, dsh, dfh, lcdsh, isdh (pairwise); dtsh, mth,
fang_ath (triplet; fang_ath is Fang et al. 2021's attention-based triplet
hashing, not the seed ATH-GradCAM); dh, drh (bit properties: quantisation,
balance, independence); csq, dpn (hash centres); sa_hash, ath (seed-system
composites); quantization; softmax_ce, sigmoid_bce.

Your own loss, without editing the package (resolve.py): `loss.name` may be
`package.module:function` or `path/to/file.py:function` (loaded by path),
or a name given with the `@register("name")` decorator; `loss.name="terms"`
with `loss.terms=[{name, weight, kwargs}, ...]` sums weighted losses.
`resolve_loss(spec)` -> (function with this convention, source record).
"""

from medhash_jax.losses import bit_properties
from medhash_jax.losses import centers
from medhash_jax.losses import classification
from medhash_jax.losses import common
from medhash_jax.losses import composite
from medhash_jax.losses import pairwise
from medhash_jax.losses import quantization
from medhash_jax.losses import triplet
from medhash_jax.losses.centers import hash_centers
from medhash_jax.losses.common import similarity
from medhash_jax.losses.registry import INPUTS
from medhash_jax.losses.registry import LOSSES
from medhash_jax.losses.registry import get_loss
from medhash_jax.losses.resolve import LossSpecError
from medhash_jax.losses.resolve import register
from medhash_jax.losses.resolve import resolve_loss
from medhash_jax.losses.resolve import resolve_objective
