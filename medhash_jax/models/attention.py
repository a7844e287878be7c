"""Attention blocks of the seed systems; each maps (B, H, W, C) -> (B, H, W, C).

* `SE`: squeeze-and-excitation channel attention (ATH ablation "-A + SE").
* `CBAM`: channel then spatial attention (ATH ablation "-A + CBAM").
* `SpatialAttention`: SA-Hash's spatial attention from three descriptors.
* `ConvSelfAttention`: MTH's convolutional multi-head self-attention.

The attention maps are also recorded with `self.sow("intermediates", ...)`, so
`apply(..., mutable=["intermediates"])` returns them for inspection and
figures without changing the return value.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def _dense(features, dtype, name, use_bias=True):
  return nn.Dense(features, use_bias=use_bias, dtype=dtype,
                  param_dtype=jnp.float32, name=name)


def _conv(features, kernel, dtype, name, use_bias=True):
  return nn.Conv(features, (kernel, kernel), padding="SAME", use_bias=use_bias,
                 dtype=dtype, param_dtype=jnp.float32, name=name)


class SE(nn.Module):
  """Squeeze-and-Excitation (Hu et al., CVPR 2018).

  w = sigmoid(W2 relu(W1 GAP(x))),  y = x * w  (w: (B, 1, 1, C)).
  """
  reduction: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2))
    s = nn.relu(_dense(max(c // self.reduction, 1), self.dtype, "fc1")(s))
    w = nn.sigmoid(_dense(c, self.dtype, "fc2")(s))[:, None, None, :]
    self.sow("intermediates", "channel_weights", w)
    return x * w.astype(x.dtype)


class CBAM(nn.Module):
  """Convolutional Block Attention Module (Woo et al., ECCV 2018).

  Channel: Mc = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))), x' = x * Mc.
  Spatial: Ms = sigmoid(conv_kxk([mean_c(x'); max_c(x')])), y = x' * Ms.
  (The spatial conv has no BatchNorm; the paper's code adds one, which makes
  no difference to what the block can express.)
  """
  reduction: int = 16
  kernel_size: int = 7
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    fc1 = _dense(max(c // self.reduction, 1), self.dtype, "mlp_fc1")
    fc2 = _dense(c, self.dtype, "mlp_fc2")
    mlp = lambda v: fc2(nn.relu(fc1(v)))  # shared between the two pools
    mc = nn.sigmoid(mlp(jnp.mean(x, axis=(1, 2))) + mlp(jnp.max(x, axis=(1, 2))))
    x = x * mc[:, None, None, :].astype(x.dtype)
    desc = jnp.stack([jnp.mean(x, axis=-1), jnp.max(x, axis=-1)], axis=-1)
    ms = nn.sigmoid(_conv(1, self.kernel_size, self.dtype, "spatial_conv",
                          use_bias=False)(desc))
    self.sow("intermediates", "channel_weights", mc)
    self.sow("intermediates", "spatial_map", ms)
    return x * ms.astype(x.dtype)


def spatial_descriptors(x, pool_size: int, reading: str = "stacked"):
  """SA-Hash's descriptor maps of F (B, H, W, C) -> (B, H, W, 2 or 3):
  [max_c F, mean_c F, third], third = mean_c maxpool_p(F) ("stacked") or
  max_c maxpool_p(F) ("separate"); p x p window, stride 1, SAME."""
  desc = [jnp.max(x, axis=-1), jnp.mean(x, axis=-1)]
  if pool_size > 0:
    p = pool_size
    pooled = nn.max_pool(x, (p, p), strides=(1, 1), padding="SAME")
    desc.append(jnp.max(pooled, axis=-1) if reading == "separate"
                else jnp.mean(pooled, axis=-1))
  return jnp.stack(desc, axis=-1)


class SpatialAttention(nn.Module):
  """SA-Hash spatial attention (Guan et al., J. Image Graphics 2023).

  Three (B, H, W, 1) descriptors of the feature map F:
    channel-max  max_c F,
    channel-avg  mean_c F,
    max-pool     mean_c maxpool_{p x p, stride 1, SAME}(F)  (local maxima),
  concatenated -> conv k x k -> sigmoid = A (B, H, W, 1); returns F * A.
  The paper names the third descriptor only as "max pooling"; this reading
  (a local max-pool, reduced over channels) keeps the map's resolution and
  adds information the two channel pools do not carry. `pool_size=0` drops
  it (the CBAM-style two-descriptor variant).

  The OCR-damaged text admits a second reading (issue #21), suggested by
  Table 4's names F_maxc / F_avgp / F_maxp: `reading="separate"` keeps
  CBAM's channel max / channel avg pair in one conv and gives the max-pool
  descriptor, max_c maxpool_{p x p}(F), its own k x k conv:
    A = sigmoid(conv_k([max_c F; mean_c F]) + conv_k(max_c maxpool_p F)).
  `reading="stacked"` (default) is the three-channel form above. On
  BreastMNIST (configs/sa_hash.py) both readings score above the
  two-descriptor ablation by less than one standard deviation; stacked is
  best on val.
  """
  kernel_size: int = 7
  pool_size: int = 3
  reading: str = "stacked"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.reading not in ("stacked", "separate"):
      raise ValueError(f"SpatialAttention reading must be 'stacked' or "
                       f"'separate', got {self.reading!r}")
    desc = spatial_descriptors(x, self.pool_size, self.reading)
    if self.reading == "separate" and self.pool_size > 0:
      z = (_conv(1, self.kernel_size, self.dtype, "conv")(desc[..., :2]) +
           _conv(1, self.kernel_size, self.dtype, "conv_maxpool")(
               desc[..., 2:]))
      a = nn.sigmoid(z)
    else:
      a = nn.sigmoid(_conv(1, self.kernel_size, self.dtype, "conv")(desc))
    self.sow("intermediates", "spatial_map", a)
    return x * a.astype(x.dtype)


def chunked_attention(q, k, v, chunk: int):
  """softmax(q k^T / sqrt(d)) v over query chunks: the same values as the
  naive form, with O(heads * chunk * N) live memory instead of O(heads *
  N^2), forward and backward (each chunk is rematerialised under
  jax.checkpoint). q, k: (B, N, H, d); v: (B, N, H, dv) -> (B, N, H, dv).
  The last chunk is zero-padded (padded query rows are dropped; keys are
  never padded, so no masking is needed)."""
  b, n, h, d = q.shape
  chunk = max(1, min(int(chunk), n))
  m = -(-n // chunk)
  qp = jnp.pad(q, ((0, 0), (0, m * chunk - n), (0, 0), (0, 0)))
  qp = jnp.moveaxis(qp.reshape(b, m, chunk, h, d), 1, 0)
  scale = 1.0 / jnp.sqrt(jnp.float32(d))

  @jax.checkpoint
  def one(qc):
    logits = jnp.einsum("bqhd,bkhd->bhqk", qc, k,
                        preferred_element_type=jnp.float32) * scale
    attn = jax.nn.softmax(logits, -1)
    return jnp.einsum("bhqk,bkhd->bqhd", attn.astype(v.dtype), v)

  out = jax.lax.map(one, qp)                      # (m, B, chunk, H, dv)
  out = jnp.moveaxis(out, 0, 1).reshape(b, m * chunk, h, v.shape[-1])
  return out[:, :n]


class ConvSelfAttention(nn.Module):
  """Convolutional multi-head self-attention with a residual add (MTH).

  Q, K, V = 1x1 convs of x; each is split into `num_heads` heads over the
  N = H * W positions; per head
      A = softmax(Q K^T / sqrt(d_head))  (N x N),   O = A V,
  heads are concatenated, projected back to C by a 1x1 conv, and added:
      y = x + gamma * proj(O).
  gamma is 1 (plain residual, as MTH describes) unless `learnable_gamma`,
  where it is a learned scalar initialised at 0 (SAGAN), which starts the
  block as the identity. Memory is O(num_heads * N^2) unless `chunk_size`
  > 0, where the queries are processed `chunk_size` at a time
  (`chunked_attention`, O(num_heads * chunk_size * N), same values): that is
  what makes MTH's full 64 x 64 x 144 map (N = 4096) affordable at paper
  scale. The chunked form does not sow the attention map.

  Attributes:
    num_heads: heads (must divide qk_channels and C).
    qk_channels: channels of Q and K (default C // 2, rounded to the heads).
  """
  num_heads: int = 4
  qk_channels: Optional[int] = None
  learnable_gamma: bool = False
  chunk_size: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    nh = self.num_heads
    qk = self.qk_channels or max(nh, (c // 2) // nh * nh)
    if qk % nh or c % nh:
      raise ValueError(f"num_heads={nh} must divide qk_channels={qk} and the "
                       f"input channels={c}")
    q = _conv(qk, 1, self.dtype, "query")(x).reshape(b, h * w, nh, qk // nh)
    k = _conv(qk, 1, self.dtype, "key")(x).reshape(b, h * w, nh, qk // nh)
    v = _conv(c, 1, self.dtype, "value")(x).reshape(b, h * w, nh, c // nh)
    if self.chunk_size:
      o = chunked_attention(q, k, v, self.chunk_size)
    else:
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                          preferred_element_type=jnp.float32)
      attn = jax.nn.softmax(logits / jnp.sqrt(qk // nh).astype(jnp.float32),
                            -1)
      self.sow("intermediates", "attention", attn)
      o = jnp.einsum("bhqk,bkhd->bqhd", attn.astype(v.dtype), v)
    o = _conv(c, 1, self.dtype, "proj")(o.reshape(b, h, w, c))
    if self.learnable_gamma:
      gamma = self.param("gamma", nn.initializers.zeros, (), jnp.float32)
      o = o * gamma.astype(o.dtype)
    return x + o.astype(x.dtype)


ATTENTION_BLOCKS = {
    "se": SE,
    "cbam": CBAM,
    "spatial": SpatialAttention,
    "mhsa": ConvSelfAttention,
}


def get_attention(name: str, **kwargs) -> nn.Module:
  """An attention block by name ("se", "cbam", "spatial", "mhsa")."""
  if name not in ATTENTION_BLOCKS:
    raise ValueError(f"unknown attention block {name!r}; valid names: "
                     f"{', '.join(sorted(ATTENTION_BLOCKS))}")
  return ATTENTION_BLOCKS[name](**kwargs)
