"""The quantisation penalty: how far relaxed codes are from {-1, +1}."""

import jax
import jax.numpy as jnp

from medhash_jax.losses import common

KINDS = ("l2", "l1", "logcosh")


def quantization_penalty(u, kind: str = "l2"):
  """mean_{ik} q(|u_ik| - 1): q = x^2 ("l2", = (u - sign u)^2), |x| ("l1",
  DSH's regulariser) or log cosh x ("logcosh", DHN's smooth prior)."""
  x = jnp.abs(jnp.asarray(u, jnp.float32)) - 1.0
  if kind == "l2":
    return jnp.mean(x * x)
  if kind == "l1":
    return jnp.mean(jnp.abs(x))
  if kind == "logcosh":
    ax = jnp.abs(x)
    return jnp.mean(ax + jax.nn.softplus(-2.0 * ax) - jnp.log(2.0))
  raise ValueError(f"unknown quantization kind {kind!r}; valid: {KINDS}")


def quantization(*, codes, kind: str = "l2"):
  """Quantisation penalty on its own (e.g. added to a classification loss).

    L = mean_{ik} q(|u_ik| - 1),   q in {x^2, |x|, log cosh x}

  Args:
    codes: (B, K) relaxed codes.  kind: "l2" | "l1" | "logcosh".
  Returns:
    (loss, {"quantization"}).
  """
  q = quantization_penalty(common.check_codes(codes, "quantization"), kind)
  return q, {"quantization": q}
