"""A loss variant outside the package: DPSH's likelihood with a margin.

  python -m medhash_jax.main --config=configs/dpsh.py:smoke \
      --config.loss.name=examples/my_loss.py:margin_dpsh \
      --config.loss.kwargs.margin=0.5 --workdir=/tmp/my_loss

The convention (medhash_jax/losses/__init__.py): keyword-only inputs, then
hyper-parameters with defaults; return (scalar loss, {term: scalar}).
"""

import jax
import jax.numpy as jnp


def margin_dpsh(*, codes, labels, margin: float = 0.0, eta: float = 0.1):
  """L = mean_{i!=j} [log(1 + e^{T_ij}) - S_ij T_ij] + eta mean (|u| - 1)^2,
  T_ij = u_i.u_j / 2 - margin (S_ij: samples i, j share a label)."""
  s = (labels @ labels.T > 0).astype(jnp.float32)
  t = 0.5 * codes @ codes.T - margin
  off = 1.0 - jnp.eye(codes.shape[0])
  lik = jnp.sum((jax.nn.softplus(t) - s * t) * off) / jnp.sum(off)
  quant = jnp.mean((jnp.abs(codes) - 1.0) ** 2)
  return lik + eta * quant, {"likelihood": lik, "quantization": quant}
