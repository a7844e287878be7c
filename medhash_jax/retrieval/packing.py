"""Binary code packing and input validation shared by every retrieval backend.

Convention (see DESIGN.md): bit j of a code is set iff the real-valued code
component j is >= 0, so sign(0) = +1. Bits are packed little-endian into uint32
words: bit j lives in word j // 32 at bit j % 32. On a little-endian machine the
bytes of a packed row are then exactly what `faiss.IndexBinary*` expects (byte
j // 8, bit j % 8). Padding bits beyond K are zero, so they never add distance.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

WORD_BITS = 32


def num_words(num_bits: int) -> int:
  """Number of uint32 words holding `num_bits` bits."""
  return math.ceil(num_bits / WORD_BITS)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_real_codes(codes, name: str = "codes"):
  """Validates a (n, K) real-valued code matrix; returns it unchanged."""
  if codes.ndim != 2:
    raise ValueError(f"{name} must be a 2-D (n, num_bits) array, got shape "
                     f"{tuple(codes.shape)}")
  if codes.shape[1] == 0:
    raise ValueError(f"{name} has zero bits (shape {tuple(codes.shape)})")
  dtype = np.dtype(codes.dtype)
  if dtype == np.bool_ or np.issubdtype(dtype, np.unsignedinteger):
    # {0, 1} codes would silently become all ones under the `>= 0` rule.
    raise ValueError(
        f"{name} has dtype {dtype}; pass real-valued or {{-1, +1}} signed "
        "codes (bit = code >= 0), e.g. `2 * bits.astype(np.int8) - 1` for 0/1 "
        "bits, or already packed uint32 words")
  if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.signedinteger)
          or dtype == jnp.bfloat16):
    raise ValueError(f"{name} has unsupported dtype {dtype}")
  if _is_concrete(codes) and not np.issubdtype(dtype, np.integer):
    finite = (np.isfinite(codes).all() if isinstance(codes, np.ndarray)
              else jnp.all(jnp.isfinite(jnp.asarray(codes))))  # no host copy
    if not bool(finite):
      bad = np.argwhere(~np.isfinite(np.asarray(codes, np.float32)))[0]
      raise ValueError(f"{name} contains NaN or Inf (first at row {bad[0]}, "
                       f"bit {bad[1]}; shape {tuple(codes.shape)})")
  return codes


def check_packed(packed, name: str = "packed"):
  """Validates a packed (n, W) uint32 code matrix; returns it unchanged."""
  if packed.ndim != 2:
    raise ValueError(f"{name} must be a 2-D (n, words) uint32 array, got shape "
                     f"{tuple(packed.shape)}")
  if np.dtype(packed.dtype) != np.uint32:
    raise ValueError(f"{name} must have dtype uint32 (use pack_codes), got "
                     f"{np.dtype(packed.dtype)} with shape {tuple(packed.shape)}")
  if packed.shape[1] == 0:
    raise ValueError(f"{name} has zero words (shape {tuple(packed.shape)})")
  return packed


def pack_codes(codes) -> jax.Array:
  """Packs real-valued codes (n, K) into uint32 words (n, ceil(K / 32)).

  Args:
    codes: (n, K) float or signed-integer array; bit j is set iff
      `codes[:, j] >= 0`.

  Returns:
    uint32 array of shape (n, ceil(K / 32)), little-endian bit order, zero
    padding above bit K.
  """
  codes = check_real_codes(codes if hasattr(codes, "ndim") else np.asarray(codes))
  n, k = codes.shape
  w = num_words(k)
  bits = jnp.asarray(codes) >= 0
  bits = jnp.pad(bits, ((0, 0), (0, w * WORD_BITS - k)))
  bits = bits.reshape(n, w, WORD_BITS).astype(jnp.uint32)
  weights = jnp.left_shift(jnp.uint32(1), jnp.arange(WORD_BITS, dtype=jnp.uint32))
  # Bits are disjoint, so a sum is a bitwise OR.
  return jnp.sum(bits * weights, axis=-1, dtype=jnp.uint32)


def pack_codes_host(codes) -> np.ndarray:
  """`pack_codes` in numpy, for host arrays on a latency path (a server's
  query): the same words, checks and errors, without eager JAX dispatch
  (several primitives, ~1 ms together on a loaded machine)."""
  codes = check_real_codes(np.asarray(codes))
  n, k = codes.shape
  w = num_words(k)
  bits = np.zeros((n, w * WORD_BITS), np.uint8)
  bits[:, :k] = codes >= 0
  return np.packbits(bits, axis=1, bitorder="little").view("<u4").astype(
      np.uint32, copy=False)


def unpack_codes(packed, num_bits: int) -> jax.Array:
  """Inverse of `pack_codes`: returns (n, num_bits) int8 codes in {-1, +1}."""
  packed = check_packed(packed if hasattr(packed, "ndim") else np.asarray(packed))
  if num_bits <= 0 or num_words(num_bits) != packed.shape[1]:
    raise ValueError(f"num_bits={num_bits} does not fit packed words of shape "
                     f"{tuple(packed.shape)} (needs {packed.shape[1] * 32 - 31}.."
                     f"{packed.shape[1] * 32} bits)")
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
  bits = (jnp.asarray(packed)[:, :, None] >> shifts) & jnp.uint32(1)
  bits = bits.reshape(packed.shape[0], -1)[:, :num_bits]
  return (2 * bits.astype(jnp.int8) - 1).astype(jnp.int8)


def as_packed(codes_or_packed, name: str = "codes"):
  """Returns packed uint32 words for either packed or real-valued codes."""
  if not hasattr(codes_or_packed, "ndim"):
    codes_or_packed = np.asarray(codes_or_packed)
  if np.dtype(codes_or_packed.dtype) == np.uint32:
    return check_packed(codes_or_packed, name)
  return pack_codes(check_real_codes(codes_or_packed, name))


def check_query_db(query_packed, db_packed):
  """Validates a (query, database) pair of packed code matrices."""
  check_packed(query_packed, "query_packed")
  check_packed(db_packed, "db_packed")
  if query_packed.shape[1] != db_packed.shape[1]:
    raise ValueError(
        "query and database codes have different lengths: query_packed "
        f"{tuple(query_packed.shape)} vs db_packed {tuple(db_packed.shape)} "
        "(words of 32 bits)")
  if db_packed.shape[0] == 0:
    raise ValueError(f"the database is empty (db_packed shape "
                     f"{tuple(db_packed.shape)})")


def check_k(k, n: int, name: str = "k") -> int:
  """Validates 1 <= k <= n for a database of n items."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise ValueError(f"{name} must be an integer, got {k!r}")
  if k <= 0 or k > n:
    raise ValueError(f"{name}={k} is out of range: need 1 <= {name} <= N = {n} "
                     "(database size)")
  return int(k)
