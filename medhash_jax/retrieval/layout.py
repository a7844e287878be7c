"""The kernel layout of a code database, built and read in numpy.

`HammingIndex` stores its codes in the layout the C++ kernel scans
(csrc/hamming.h, `DbLayout`), so that a search reads them in place: no
per-search transposition, and the layout can be memory-mapped from a file.

Layout: codes of B = ceil(K / 8) bytes (faiss's code size) in blocks of 16;
each block takes 16 * B bytes. With F = B // 4 full 32-bit words and
t = B % 4 tail bytes, a block holds, in order:
  F columns of 16 little-endian uint32 (word j of the block's 16 codes),
  if t >= 2, a column of 16 uint16 (bytes 4F, 4F + 1 of each code),
  if t is odd, a column of 16 uint8 (the last byte of each code).
The last block is zero-padded. One SIMD register then holds one word of 16
codes, and the narrow tail columns keep storage at exactly B bytes a code
(plus at most 15 codes of padding) for any K.

Byte rows ("faiss rows", uint8 (n, B)) are the packed uint32 rows of
`pack_codes` cut to B bytes: both put bit j in byte j // 8, bit j % 8.
"""

import numpy as np

LANES = 16


def bytes_per_code(num_bits: int) -> int:
  """ceil(K / 8): bytes a code takes in the layout (and in faiss)."""
  return -(-int(num_bits) // 8)


def layout_nbytes(n: int, bytes_per: int) -> int:
  """Bytes of the layout of n codes (whole blocks of 16)."""
  return -(-int(n) // LANES) * LANES * int(bytes_per)


def packed_to_rows(packed: np.ndarray, bytes_per: int) -> np.ndarray:
  """uint32 (n, W) packed rows -> uint8 (n, B) byte rows (a view if possible)."""
  packed = np.ascontiguousarray(packed, dtype="<u4")
  return packed.view(np.uint8).reshape(packed.shape[0], -1)[:, :bytes_per]


def rows_to_packed(rows: np.ndarray) -> np.ndarray:
  """uint8 (n, B) byte rows -> uint32 (n, ceil(B / 4)) packed rows."""
  n, b = rows.shape
  words = -(-b // 4)
  out = np.zeros((n, 4 * words), np.uint8)
  out[:, :b] = rows
  return out.view("<u4").astype(np.uint32, copy=False)


def rows_to_layout(rows: np.ndarray) -> np.ndarray:
  """uint8 (n, B) byte rows -> uint8 (layout_nbytes(n, B),) layout."""
  rows = np.asarray(rows, np.uint8)
  n, b = rows.shape
  nb = -(-n // LANES)
  if n % LANES:
    rows = np.concatenate([rows, np.zeros((nb * LANES - n, b), np.uint8)])
  blocks = rows.reshape(nb, LANES, b)
  f, t = divmod(b, 4)
  out = np.empty((nb, LANES * b), np.uint8)
  if f:
    out[:, :64 * f] = blocks[:, :, :4 * f].reshape(nb, LANES, f, 4).transpose(
        0, 2, 1, 3).reshape(nb, 64 * f)
  o = 64 * f
  if t >= 2:
    out[:, o:o + 32] = blocks[:, :, 4 * f:4 * f + 2].reshape(nb, 32)
    o += 32
  if t % 2:
    out[:, o:o + LANES] = blocks[:, :, b - 1]
  return out.reshape(-1)


def layout_to_rows(layout: np.ndarray, n: int, bytes_per: int) -> np.ndarray:
  """Inverse of `rows_to_layout`: the first n codes as uint8 (n, B) rows."""
  b = int(bytes_per)
  nb = -(-int(n) // LANES)
  blocks = np.asarray(layout[:nb * LANES * b], np.uint8).reshape(nb, LANES * b)
  f, t = divmod(b, 4)
  rows = np.empty((nb, LANES, b), np.uint8)
  if f:
    rows[:, :, :4 * f] = blocks[:, :64 * f].reshape(nb, f, LANES, 4).transpose(
        0, 2, 1, 3).reshape(nb, LANES, 4 * f)
  o = 64 * f
  if t >= 2:
    rows[:, :, 4 * f:4 * f + 2] = blocks[:, o:o + 32].reshape(nb, LANES, 2)
    o += 32
  if t % 2:
    rows[:, :, b - 1] = blocks[:, o:o + LANES]
  return rows.reshape(nb * LANES, b)[:n]


class Growable:
  """A 1-D numpy buffer with amortised growth (capacity doubles).

  Appending n items copies only those n (and, rarely, moves the buffer when
  the capacity is exhausted), instead of the whole array per append.
  """

  def __init__(self, dtype, initial=None):
    self.dtype = np.dtype(dtype)
    self._buf = np.zeros(0, self.dtype) if initial is None else initial
    self.size = 0 if initial is None else initial.shape[0]

  @property
  def view(self) -> np.ndarray:
    return self._buf[:self.size]

  def reserve(self, size: int) -> None:
    if size <= self._buf.shape[0] and self._buf.flags.writeable:
      return
    cap = max(size, 2 * self._buf.shape[0], 1024)
    buf = np.zeros(cap, self.dtype)
    buf[:self.size] = self._buf[:self.size]
    self._buf = buf

  def write(self, start: int, values: np.ndarray) -> None:
    """Writes values at [start, start + len) (start <= size), growing."""
    end = start + values.shape[0]
    self.reserve(end)
    self._buf[start:end] = values
    self.size = max(self.size, end)


class LayoutStore:
  """Codes in the kernel layout, appended to without rebuilding the rest.

  `append` re-encodes only the last, partially filled block of 16 (its
  codes are decoded, joined with the new ones and written back) and the new
  blocks. A store opened on a read-only (memory-mapped) array copies it into
  memory on the first append.
  """

  def __init__(self, bytes_per: int, layout=None, count: int = 0):
    self.bytes_per = int(bytes_per)
    self.count = int(count)
    self._buf = Growable(np.uint8, layout)
    self._buf.size = layout_nbytes(self.count, self.bytes_per)

  @property
  def layout(self) -> np.ndarray:
    """uint8 (layout_nbytes(count, B),): the kernel layout, whole blocks."""
    return self._buf.view

  def append(self, rows: np.ndarray) -> None:
    rows = np.asarray(rows, np.uint8)
    if rows.ndim != 2 or rows.shape[1] != self.bytes_per:
      raise ValueError(f"rows must be uint8 (n, {self.bytes_per}), got "
                       f"{rows.shape}")
    if rows.shape[0] == 0:
      return
    block = self.count // LANES
    start = block * LANES * self.bytes_per
    held = self.count - block * LANES
    if held:  # the partial last block is rewritten with the new codes
      head = layout_to_rows(self._buf.view[start:], held, self.bytes_per)
      rows = np.concatenate([head, rows])
    self._buf.write(start, rows_to_layout(rows))
    self.count += rows.shape[0] - held

  def rows(self, start: int = 0, stop=None) -> np.ndarray:
    """Codes [start, stop) as uint8 (n, B) byte rows (a copy)."""
    stop = self.count if stop is None else min(int(stop), self.count)
    b = self.bytes_per
    first = start // LANES
    sub = self.layout[first * LANES * b:]
    rows = layout_to_rows(sub, stop - first * LANES, b)
    return rows[start - first * LANES:]
