"""`data.rows.SplitRows`: padded, shuffled batches back in split order."""

import numpy as np
import pytest

from medhash_jax.data import rows as rows_lib


def _batches(values, order, b):
  """Padded batches of `values` in `order` (the last one padded with
  valid=False rows pointing at a real position), as the data layer's eval
  iterators yield them."""
  for s in range(0, len(order), b):
    idx = order[s:s + b]
    pad = b - len(idx)
    index = np.concatenate([idx, np.repeat(idx[:1], pad)])
    valid = np.arange(b) < len(idx)
    out = np.concatenate([values[idx], np.full((pad,) + values.shape[1:], 9.0)])
    yield out, index, valid


def test_split_rows_puts_rows_back_and_checks_coverage():
  """Catches: padding rows written (the 9s), rows kept in batch order
  instead of split order, a duplicate or a missing position passing."""
  rng = np.random.default_rng(0)
  values = rng.normal(size=(11, 3)).astype(np.float32)
  order = rng.permutation(11)
  rows = rows_lib.SplitRows(11, "val", np.float32)
  for out, index, valid in _batches(values, order, 4):
    rows.put(out, index, valid)
  np.testing.assert_array_equal(rows.result(), values)

  dup = rows_lib.SplitRows(3, "val")
  dup.put(values[:2], np.array([0, 1]))
  with pytest.raises(ValueError, match="seen twice"):
    dup.put(values[:1], np.array([1]))
  with pytest.raises(ValueError, match=r"1 of 3 positions got no row.*\[2\]"):
    dup.result()
  with pytest.raises(ValueError, match="outside the split of 3"):
    dup.put(values[:1], np.array([3]))
  with pytest.raises(ValueError, match="empty"):
    rows_lib.SplitRows(2, "val").result()
