"""HashNet (Cao et al., ICCV 2017): weighted pairwise likelihood + continuation.

The similar / dissimilar pairs are weighted |S|/|S1| and |S|/|S0| (seed 000,
Eq. 10), and the hash layer's tanh(beta z) sharpens towards sign(z) as beta
follows beta = (1 + 0.005 t) ** 0.5, raised every 200 steps in the paper.

  python -m medhash_jax.main --config=configs/hashnet.py[:smoke] --workdir=DIR
"""

from medhash_jax.config import base


def get_config(arg=None):
  smoke, _ = base.parse_arg(arg)
  c = base.base_config(smoke)
  c.method = "hashnet"
  c.loss.name = "hashnet"
  c.model.beta.schedule = "hashnet"
  c.model.beta.init = 1.0
  c.model.beta.gamma = 0.005
  c.model.beta.power = 0.5
  c.model.beta.every = 200
  if smoke:
    c.model.beta.every = 10   # a visible continuation within 40 steps
    c.model.beta.gamma = 0.05
  return base.finalize(c)
