"""SA-Hash's two readings of the third spatial-attention descriptor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medhash_jax.models import attention


def _map():
  # F: 1 x 3 x 3 x 2, channel 0 = 0..8, channel 1 = 8 - channel 0.
  a = np.arange(9, dtype=np.float32).reshape(3, 3)
  return np.stack([a, 8.0 - a], -1)[None]


def test_descriptors_match_hand_computed_maps():
  """Hand-computed: max_c, mean_c, and for a 3x3 SAME max pool at the
  centre/corner (catches: stacked and separate swapped, channel vs spatial
  reduction confused, or a VALID pool shrinking the map)."""
  f = jnp.asarray(_map())
  st = np.asarray(attention.spatial_descriptors(f, 3, "stacked"))[0]
  se = np.asarray(attention.spatial_descriptors(f, 3, "separate"))[0]
  a = np.arange(9.0).reshape(3, 3)
  np.testing.assert_allclose(st[..., 0], np.maximum(a, 8 - a))
  np.testing.assert_allclose(st[..., 1], np.full((3, 3), 4.0))
  np.testing.assert_allclose(se[..., :2], st[..., :2])
  # 3x3 max pool per channel, stride 1, SAME: ch0 -> max of the window of
  # a, ch1 -> 8 - min of the window of a.
  mp0 = np.array([[4, 5, 5], [7, 8, 8], [7, 8, 8]], np.float64)
  mp1 = 8 - np.array([[0, 0, 1], [0, 0, 1], [3, 3, 4]], np.float64)
  np.testing.assert_allclose(st[..., 2], (mp0 + mp1) / 2)     # mean_c
  np.testing.assert_allclose(se[..., 2], np.maximum(mp0, mp1))  # max_c
  assert st[1, 1, 2] == 8.0 and se[1, 1, 2] == 8.0
  assert st[0, 0, 2] == 6.0 and se[0, 0, 2] == 8.0


def test_separate_reading_has_its_own_conv_and_is_a_weighting():
  """'separate' adds a second conv on the max-pool descriptor; both
  readings return F * A with A in (0, 1) (catches: reading ignored)."""
  f = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
  for reading, convs in (("stacked", {"conv"}),
                         ("separate", {"conv", "conv_maxpool"})):
    m = attention.SpatialAttention(kernel_size=3, pool_size=3, reading=reading)
    v = m.init(jax.random.key(1), f)
    assert set(v["params"]) == convs
    out, st = m.apply(v, f, mutable=["intermediates"])
    a = np.asarray(st["intermediates"]["spatial_map"][0])
    assert ((a > 0) & (a < 1)).all()
    np.testing.assert_allclose(np.asarray(out), np.asarray(f) * a, rtol=1e-6)
  with pytest.raises(ValueError, match="reading"):
    attention.SpatialAttention(reading="cbam").init(jax.random.key(0), f)
