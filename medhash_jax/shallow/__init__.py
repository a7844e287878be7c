"""Shallow hashing on backbone features, in jnp: LSH, PCAH, ITQ, SSH.

Each method module has the same API::

    params = shallow.itq.fit(train_features, num_bits=32, labels=None, seed=0)
    codes = shallow.encode(params, features)        # (N, K) real; bit = code >= 0

or by name: ``shallow.get("itq").fit(...)``. Every method is a linear
projection of the zero-centred features, so ``encode`` is shared; ``params``
is a dict of jnp arrays ("mean", "projection", and method extras).
"""

from medhash_jax.shallow import itq, lsh, pcah, ssh
from medhash_jax.shallow._linear import encode

METHODS = {"lsh": lsh, "pcah": pcah, "itq": itq, "ssh": ssh}
SUPERVISED = ("ssh",)


def get(name: str):
  """The method module (with ``fit`` and ``encode``) for a name; loud on typos."""
  try:
    return METHODS[name.lower()]
  except KeyError:
    raise ValueError(f"unknown shallow hashing method {name!r}; known: "
                     f"{sorted(METHODS)}") from None


def names() -> list[str]:
  return sorted(METHODS)


__all__ = ["METHODS", "SUPERVISED", "encode", "get", "itq", "lsh", "names",
           "pcah", "ssh"]
