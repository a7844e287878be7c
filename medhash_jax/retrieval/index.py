"""HammingIndex: a database of packed binary codes with exact search and a safe file format.

File format, version 1 (all little-endian):
  magic    8 bytes  b"MEDHASH\\x00"
  header   "<IIIQI" version, num_bits, words, count, flags (bit 0: explicit ids)
  codes    count * words uint32
  ids      count int64                       (only when flags bit 0 is set)
  sha256   32 bytes over everything above
The file is written to a temporary name in the same folder, fsynced and renamed
over the target, so a crash never leaves a half-written index under the real
name. `load` checks the magic, the version, the exact size implied by the
header and the checksum, and refuses anything else with a message naming the
file: a truncated or altered index never loads.
"""

import hashlib
import os
import struct
import tempfile

import numpy as np

from medhash_jax.retrieval import packing
from medhash_jax.retrieval import topk

MAGIC = b"MEDHASH\x00"
VERSION = 1
_HEADER = struct.Struct("<IIIQI")
_FLAG_IDS = 1
_DIGEST_BYTES = 32
# Queries per range-search step: bounds the (queries x max hits) work buffer.
_RANGE_QUERY_CHUNK = 256


class IndexFileError(ValueError):
  """An index file that is truncated, corrupted or of an unknown format."""


class HammingIndex:
  """Exact Hamming-distance index over K-bit codes.

  Items are ranked by (Hamming distance, insertion position); `search` and
  `range_search` return the user's ids (default: insertion positions).
  """

  def __init__(self, num_bits: int):
    if isinstance(num_bits, bool) or not isinstance(num_bits, (int, np.integer)) \
        or num_bits <= 0:
      raise ValueError(f"num_bits must be a positive integer, got {num_bits!r}")
    self.num_bits = int(num_bits)
    self.words = packing.num_words(self.num_bits)
    self._packed = np.zeros((0, self.words), np.uint32)
    self._ids = None  # None: ids are insertion positions

  def __len__(self) -> int:
    return self._packed.shape[0]

  def __repr__(self) -> str:
    return f"HammingIndex(num_bits={self.num_bits}, count={len(self)})"

  @property
  def packed(self) -> np.ndarray:
    """The packed database codes, uint32 (N, words), read-only view."""
    view = self._packed.view()
    view.flags.writeable = False
    return view

  @property
  def ids(self) -> np.ndarray:
    """int64 (N,) ids of the database items."""
    if self._ids is None:
      return np.arange(len(self), dtype=np.int64)
    return self._ids.copy()

  @property
  def nbytes(self) -> int:
    """Bytes held by codes and ids."""
    return self._packed.nbytes + (0 if self._ids is None else self._ids.nbytes)

  # -- building ---------------------------------------------------------------

  def _to_packed(self, codes, name: str) -> np.ndarray:
    """Real-valued or packed codes -> validated packed numpy words."""
    if not hasattr(codes, "ndim"):
      codes = np.asarray(codes)
    if np.dtype(codes.dtype) == np.uint32:
      packed = np.asarray(packing.check_packed(codes, name))
      if packed.shape[1] != self.words:
        raise ValueError(
            f"{name} has {packed.shape[1]} words per code (shape "
            f"{packed.shape}) but this index holds {self.num_bits}-bit codes "
            f"({self.words} words)")
      spare = self.words * 32 - self.num_bits
      if spare and np.any(packed[:, -1] >> np.uint32(32 - spare)):
        row = int(np.argmax(packed[:, -1] >> np.uint32(32 - spare) != 0))
        raise ValueError(
            f"{name} row {row} has bits set above bit {self.num_bits}: not "
            f"{self.num_bits}-bit codes packed by pack_codes")
      return packed
    packing.check_real_codes(codes, name)
    if codes.shape[1] != self.num_bits:
      raise ValueError(f"{name} has {codes.shape[1]} bits (shape "
                       f"{tuple(codes.shape)}) but the index has {self.num_bits}")
    return np.asarray(packing.pack_codes(codes))

  def add(self, codes_or_packed, ids=None) -> None:
    """Appends codes (real-valued (n, K) or packed uint32 (n, words))."""
    packed = self._to_packed(codes_or_packed, "codes_or_packed")
    n = packed.shape[0]
    if ids is None:
      new_ids = None if self._ids is None else np.arange(
          len(self), len(self) + n, dtype=np.int64)
    else:
      new_ids = np.asarray(ids)
      if new_ids.shape != (n,) or not np.issubdtype(new_ids.dtype, np.integer):
        raise ValueError(f"ids must be an integer array of shape ({n},), got "
                         f"{new_ids.dtype} {new_ids.shape}")
      new_ids = new_ids.astype(np.int64)
    if new_ids is not None:
      old = self.ids
      merged = np.concatenate([old, new_ids])
      uniq, counts = np.unique(merged, return_counts=True)
      if np.any(counts > 1):
        raise ValueError(f"duplicate ids: {uniq[counts > 1][:10].tolist()}")
      self._ids = merged
    self._packed = np.concatenate([self._packed, packed])

  # -- search -----------------------------------------------------------------

  def _query_packed(self, queries) -> np.ndarray:
    if len(self) == 0:
      raise ValueError("the index is empty: add codes before searching")
    return self._to_packed(queries, "queries")

  def _map_ids(self, positions: np.ndarray) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.int64)
    return positions if self._ids is None else self._ids[positions]

  def search(self, queries, k: int, *, backend: str = "auto"):
    """k nearest items per query.

    Returns:
      (distances int32 (Q, k), ids int64 (Q, k)), sorted by (distance,
      insertion position).
    """
    q = self._query_packed(queries)
    dist, pos = topk.hamming_topk(q, self._packed, k, backend=backend)
    return np.asarray(dist), self._map_ids(pos)

  def range_search(self, queries, radius: int, *, backend: str = "auto"):
    """All items within Hamming distance <= radius of each query.

    Returns:
      (lims int64 (Q + 1,), distances int32 (L,), ids int64 (L,)) in the faiss
      layout: the results of query i are [lims[i], lims[i + 1]), sorted by
      (distance, insertion position).
    """
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) \
        or radius < 0:
      raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    q = self._query_packed(queries)
    hist = np.asarray(topk.hamming_histogram(q, self._packed, backend=backend))
    counts = hist[:, :min(int(radius), hist.shape[1] - 1) + 1].sum(axis=1)
    lims = np.zeros(q.shape[0] + 1, np.int64)
    np.cumsum(counts, out=lims[1:])
    out_d = np.empty(lims[-1], np.int32)
    out_pos = np.empty(lims[-1], np.int64)
    for s in range(0, q.shape[0], _RANGE_QUERY_CHUNK):
      chunk_counts = counts[s:s + _RANGE_QUERY_CHUNK]
      kmax = int(chunk_counts.max(initial=0))
      if kmax == 0:
        continue
      d, p = topk.hamming_topk(q[s:s + _RANGE_QUERY_CHUNK], self._packed, kmax,
                               backend=backend)
      d, p = np.asarray(d), np.asarray(p)
      for r, c in enumerate(chunk_counts):
        lo = lims[s + r]
        out_d[lo:lo + c] = d[r, :c]
        out_pos[lo:lo + c] = p[r, :c]
    return lims, out_d, self._map_ids(out_pos)

  # -- persistence ------------------------------------------------------------

  def _serialize(self) -> bytes:
    flags = 0 if self._ids is None else _FLAG_IDS
    parts = [MAGIC, _HEADER.pack(VERSION, self.num_bits, self.words, len(self),
                                 flags),
             self._packed.astype("<u4", copy=False).tobytes()]
    if self._ids is not None:
      parts.append(self._ids.astype("<i8", copy=False).tobytes())
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()

  def save(self, path) -> None:
    """Writes the index atomically (temp file in the same folder + rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path),
                               dir=folder)
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(self._serialize())
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.unlink(tmp)
      raise

  @classmethod
  def load(cls, path) -> "HammingIndex":
    """Reads and verifies an index written by `save`."""
    path = os.fspath(path)
    with open(path, "rb") as f:
      data = f.read()
    head = len(MAGIC) + _HEADER.size
    if len(data) < head + _DIGEST_BYTES or data[:len(MAGIC)] != MAGIC:
      raise IndexFileError(f"{path}: not a medhash_jax index file (bad magic "
                           f"or only {len(data)} bytes)")
    version, num_bits, words, count, flags = _HEADER.unpack(
        data[len(MAGIC):head])
    if version != VERSION:
      raise IndexFileError(f"{path}: index format version {version} is not "
                           f"supported (this library reads {VERSION})")
    if num_bits <= 0 or words != packing.num_words(num_bits) or flags & ~_FLAG_IDS:
      raise IndexFileError(f"{path}: inconsistent header (num_bits={num_bits}, "
                           f"words={words}, flags={flags})")
    code_bytes = count * words * 4
    id_bytes = count * 8 if flags & _FLAG_IDS else 0
    expected = head + code_bytes + id_bytes + _DIGEST_BYTES
    if len(data) != expected:
      raise IndexFileError(
          f"{path}: file has {len(data)} bytes but its header (num_bits="
          f"{num_bits}, count={count}) implies {expected}: truncated or "
          "appended to")
    body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
      raise IndexFileError(f"{path}: checksum mismatch: the file is corrupted")
    index = cls(num_bits)
    index._packed = np.frombuffer(body, "<u4", count * words, head).reshape(
        count, words).astype(np.uint32)
    if id_bytes:
      index._ids = np.frombuffer(body, "<i8", count, head + code_bytes).astype(
          np.int64)
    return index

  # -- faiss interop ----------------------------------------------------------

  def to_faiss(self):
    """A `faiss.IndexBinaryFlat` (wrapped in `IndexBinaryIDMap` when ids are
    explicit) with the same codes; d is num_bits rounded up to a byte, and the
    zero padding bits leave every distance unchanged."""
    faiss = _import_faiss()
    d = -(-self.num_bits // 8) * 8
    flat = faiss.IndexBinaryFlat(d)
    codes = np.ascontiguousarray(
        self._packed.astype("<u4", copy=False).view(np.uint8)[:, :d // 8])
    if self._ids is None:
      flat.add(codes)
      return flat
    wrapped = faiss.IndexBinaryIDMap(flat)
    wrapped.add_with_ids(codes, self._ids)
    return wrapped

  @classmethod
  def from_faiss(cls, faiss_index) -> "HammingIndex":
    """Builds an index from `IndexBinaryFlat` or `IndexBinaryIDMap` of one."""
    faiss = _import_faiss()
    ids = None
    inner = faiss_index
    if isinstance(faiss_index, faiss.IndexBinaryIDMap):
      ids = faiss.vector_to_array(faiss_index.id_map).astype(np.int64)
      inner = faiss.downcast_IndexBinary(faiss_index.index)
    if not isinstance(inner, faiss.IndexBinaryFlat):
      raise ValueError("from_faiss supports IndexBinaryFlat (optionally in an "
                       f"IndexBinaryIDMap), got {type(faiss_index).__name__}")
    index = cls(inner.d)
    raw = faiss.vector_to_array(inner.xb).reshape(inner.ntotal, inner.code_size)
    padded = np.zeros((inner.ntotal, index.words * 4), np.uint8)
    padded[:, :inner.code_size] = raw
    index.add(padded.view("<u4").astype(np.uint32), ids=ids)
    return index


def _import_faiss():
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("faiss interop needs faiss: pip install "
                      "'medhash_jax[faiss]' (faiss-cpu)") from e
  return faiss
