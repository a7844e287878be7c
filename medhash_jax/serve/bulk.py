"""Appending precomputed codes to an open run (benchmarks, migrations).

`Retriever.add_cases` encodes images; growing a database to a million cases
that way would measure the encoder, not the index. `add_codes` appends codes
that are already computed through the same snapshot swap and the same
persistence (`Retriever._persist_added`: one atomically replaced
`added_cases.npz`), so a server started on the run afterwards loads them as
added cases like any other. It reaches into the retriever's private
snapshot API on purpose; systems/retriever.py owns that API, and a public
`add_codes` there would replace this module.
"""

from typing import Optional, Sequence

import numpy as np

from medhash_jax.retrieval import pack_codes


def add_codes(retriever, codes: np.ndarray, ids: Sequence[str],
              labels: Optional[Sequence[Sequence[str]]] = None,
              names: Optional[Sequence[str]] = None) -> int:
  """Appends real-valued float (n, K) or packed uint32 (n, W) codes.

  Returns:
    The number of cases afterwards. ValueError on a duplicate id.
  """
  r = retriever
  codes = np.asarray(codes)
  if codes.dtype == np.uint32:
    packed = codes
  else:
    if codes.ndim != 2 or codes.shape[1] != r.num_bits:
      raise ValueError(f"codes must be (n, {r.num_bits}), got {codes.shape}")
    packed = np.asarray(pack_codes(codes.astype(np.float32)), np.uint32)
  ids = np.asarray([str(i) for i in ids])
  n = len(ids)
  if packed.shape[0] != n:
    raise ValueError(f"{packed.shape[0]} codes but {n} ids")
  if len(set(ids.tolist())) != n:
    raise ValueError("duplicate ids within the call")
  multi_hot = (np.zeros((n, len(r.class_names)), np.float32) if labels is None
               else r._multi_hot(labels))  # pylint: disable=protected-access
  names = ids if names is None else np.asarray([str(x) for x in names])
  with r._lock:  # pylint: disable=protected-access
    snap = r._snap  # pylint: disable=protected-access
    taken = [i for i in ids[:100000] if i in snap.pos]
    if taken or any(i in snap.pos for i in ids[100000:]):
      raise ValueError(f"case id(s) already in the database: {taken[:10]}")
    new = snap.extended(packed, ids, names, multi_hot, np.asarray([""] * n),
                        [b""] * n, r._seed)  # pylint: disable=protected-access
    r._persist_added(new)  # pylint: disable=protected-access
    r._snap = new  # pylint: disable=protected-access
  return len(new)
