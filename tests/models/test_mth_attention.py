"""Memory-efficient (query-chunked) self-attention for MTH's full map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medhash_jax import models
from medhash_jax.models import attention


def _naive(q, k, v):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  logits -= logits.max(-1, keepdims=True)
  a = np.exp(logits)
  a /= a.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", a, v)


@pytest.mark.parametrize("chunk", [1, 4, 7, 30, 64])
def test_chunked_attention_matches_naive_softmax(chunk):
  """Same values as softmax(QK^T/sqrt d)V for chunks that do and do not
  divide N = 30 (catches: padded query rows kept, the scale applied twice,
  softmax over the query axis, or a chunk overwriting its neighbour)."""
  rng = np.random.RandomState(0)
  q, k = (rng.randn(2, 30, 2, 4).astype(np.float32) for _ in range(2))
  v = rng.randn(2, 30, 2, 3).astype(np.float32)
  got = attention.chunked_attention(jnp.asarray(q), jnp.asarray(k),
                                    jnp.asarray(v), chunk)
  np.testing.assert_allclose(np.asarray(got), _naive(q, k, v), rtol=1e-5,
                             atol=1e-6)


def test_chunked_block_equals_naive_block_and_its_gradient():
  """ConvSelfAttention with chunk_size gives the naive block's output and
  parameter gradient (catches: the chunked path not wired to the block)."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 8))
  naive = attention.ConvSelfAttention(num_heads=2)
  chunked = attention.ConvSelfAttention(num_heads=2, chunk_size=7)
  v = naive.init(jax.random.key(1), x)
  np.testing.assert_allclose(np.asarray(chunked.apply(v, x)),
                             np.asarray(naive.apply(v, x)), rtol=1e-5,
                             atol=1e-5)
  g1, g2 = (jax.grad(lambda p, m=m: jnp.sum(m.apply(p, x) ** 2))(v)
            for m in (naive, chunked))
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-4)


def test_mth_full_map_attention_option():
  """attention_size=0 + attention_chunk: the attention sees the whole map
  (no pooling) and the outputs equal the naive full-map model."""
  x = jax.random.normal(jax.random.key(2), (1, 16, 16, 3))
  kw = dict(num_bits=8, num_classes=2, small_input=True, fc_dim=16,
            attention_size=0)
  full = models.get_model("mth", **kw)
  chunk = models.get_model("mth", attention_chunk=16, **kw)
  v = full.init(jax.random.key(0), x)
  fmap = full.apply(v, x, method="backbone_features")["feature_map"]
  assert fmap.shape[1:3] == (8, 8)                 # 16 / 2, not pooled
  np.testing.assert_allclose(np.asarray(chunk.apply(v, x)["codes_real"]),
                             np.asarray(full.apply(v, x)["codes_real"]),
                             rtol=1e-5, atol=1e-5)
