"""HammingIndex: a database of binary codes with exact search and a safe, mmap-able file.

The codes live in the C++ kernel's block layout (layout.py), ceil(K / 8) bytes
a code, built once as codes are added and read in place by every search: a
search never copies the database, and an index file can be memory-mapped.

File format, version 2 (all little-endian):
  magic     8 bytes   b"MEDHASH\\x00"
  header    "<IIIQI"  version = 2, num_bits, bytes_per_code, count, flags
                      (flags bit 0: explicit ids)
  geometry  "<QQQQ"   chunk_bytes, data_offset, ids_offset, file_size
  table     uint32 CRC32 of every chunk: the codes region cut into
            chunk_bytes pieces, then the ids region likewise
  digest    32 bytes, SHA-256 of everything above
  (zero padding to data_offset, a multiple of 4096)
  codes     the layout, layout_nbytes(count, bytes_per_code) bytes
  ids       count int64 at ids_offset   (only when flags bit 0 is set)
and file_size is the exact size. CRC32 (zlib's, in the standard library,
several GB/s, parallel over chunks since zlib releases the GIL) keeps full
verification near the disk read time.

Version 1 (still read): magic, header "<IIIQI" (version 1, num_bits, uint32
words per code, count, flags), codes as count * words uint32, ids, SHA-256 of
all that.

Integrity. Files are written to a temporary name in the same folder, fsynced
and renamed over the target, so a crash never leaves a half-written index
under the real name. `load` checks the magic, the version, the header digest
and the exact size implied by the header, and refuses anything else with a
message naming the file. `load(path)` reads the file and verifies every chunk
before returning. `load(path, mmap=True)` maps it and returns at once (the
header and the checksum table are verified); the chunks are verified on the
first use of the codes or ids (the first search touches them all), or
eagerly with `verify()`. A damaged file is refused naming the file and the
chunk, never searched.
"""

import concurrent.futures
import hashlib
import os
import struct
import tempfile
import threading
import zlib

import numpy as np

from medhash_jax.retrieval import layout as layout_lib
from medhash_jax.retrieval import packing
from medhash_jax.retrieval import topk

MAGIC = b"MEDHASH\x00"
VERSION = 2
_HEADER = struct.Struct("<IIIQI")
_GEOMETRY = struct.Struct("<QQQQ")
_FLAG_IDS = 1
_DIGEST_BYTES = 32
_PAGE = 4096
CHUNK_BYTES = 4 << 20
# Queries per range-search step: bounds the (queries x max hits) work buffer.
_RANGE_QUERY_CHUNK = 256


class IndexFileError(ValueError):
  """An index file that is truncated, corrupted or of an unknown format."""


def _threads() -> int:
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:
    return os.cpu_count() or 1


def _crcs(regions, chunk_bytes: int):
  """CRC32 of every chunk of every region (uint8 arrays), in parallel."""
  pieces = [(r, s) for r in regions for s in range(0, r.shape[0], chunk_bytes)]

  def one(piece):
    r, s = piece
    return zlib.crc32(r[s:s + chunk_bytes])

  if len(pieces) <= 1:
    return [one(p) for p in pieces]
  with concurrent.futures.ThreadPoolExecutor(_threads()) as pool:
    return list(pool.map(one, pieces))


class HammingIndex:
  """Exact Hamming-distance index over K-bit codes.

  Items are ranked by (Hamming distance, insertion position); `search` and
  `range_search` return the user's ids (default: insertion positions). Codes
  take ceil(K / 8) bytes each (plus 8 for explicit ids); searches are
  thread-safe (the kernel runs without the GIL) and allocate only their
  answers.
  """

  def __init__(self, num_bits: int):
    if isinstance(num_bits, bool) or not isinstance(num_bits, (int, np.integer)) \
        or num_bits <= 0:
      raise ValueError(f"num_bits must be a positive integer, got {num_bits!r}")
    self.num_bits = int(num_bits)
    self.words = packing.num_words(self.num_bits)
    self.bytes_per_code = layout_lib.bytes_per_code(self.num_bits)
    self._store = layout_lib.LayoutStore(self.bytes_per_code)
    self._ids = None  # None: ids are insertion positions; else Growable int64
    self._path = None  # the file a mapped index came from
    self._pending = []  # (chunk array, crc, where) still to verify
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return self._store.count

  def __repr__(self) -> str:
    return f"HammingIndex(num_bits={self.num_bits}, count={len(self)})"

  @property
  def layout(self) -> np.ndarray:
    """The codes in the kernel layout (layout.py), uint8, read-only view."""
    self._ensure_verified()
    view = self._store.layout.view()
    view.flags.writeable = False
    return view

  @property
  def packed(self) -> np.ndarray:
    """The codes as packed uint32 (N, words) rows: a read-only copy, built
    from the layout on each access (O(N); the index itself does not keep
    rows)."""
    self._ensure_verified()
    packed = layout_lib.rows_to_packed(self._store.rows())
    packed.flags.writeable = False
    return packed

  @property
  def ids(self) -> np.ndarray:
    """int64 (N,) ids of the database items."""
    if self._ids is None:
      return np.arange(len(self), dtype=np.int64)
    self._ensure_verified()
    return np.array(self._ids.view, np.int64)

  @property
  def explicit_ids(self) -> bool:
    """True when items carry ids given to `add` (else ids = positions)."""
    return self._ids is not None

  @property
  def nbytes(self) -> int:
    """Bytes held by codes (whole blocks of 16) and ids."""
    return self._store.layout.nbytes + (
        0 if self._ids is None else self._ids.view.nbytes)

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

  def pack(self, codes, name: str = "codes") -> np.ndarray:
    """Real-valued (n, K) or packed uint32 (n, words) codes -> packed
    uint32 numpy, checked against this index's num_bits (ValueError naming
    `name`, the shape and the offending row)."""
    return np.asarray(self._to_packed(codes, name), np.uint32)

  def add(self, codes_or_packed, ids=None) -> None:
    """Appends codes (real-valued (n, K) or packed uint32 (n, words)).

    Only the new codes (and the last partial block of 16) are written into
    the layout; the rest of the database is not copied (the buffer grows by
    doubling). Adding to a memory-mapped index first copies it into memory.
    """
    self._ensure_verified()
    packed = self._to_packed(codes_or_packed, "codes_or_packed")
    n = packed.shape[0]
    new_ids = None
    if ids is not None:
      new_ids = np.asarray(ids)
      if new_ids.shape != (n,) or not np.issubdtype(new_ids.dtype, np.integer):
        raise ValueError(f"ids must be an integer array of shape ({n},), got "
                         f"{new_ids.dtype} {new_ids.shape}")
      new_ids = new_ids.astype(np.int64)
    elif self._ids is not None:
      new_ids = np.arange(len(self), len(self) + n, dtype=np.int64)
    if new_ids is not None:
      old = self.ids
      uniq, counts = np.unique(np.concatenate([old, new_ids]),
                               return_counts=True)
      if np.any(counts > 1):
        raise ValueError(f"duplicate ids: {uniq[counts > 1][:10].tolist()}")
      if self._ids is None:
        self._ids = layout_lib.Growable(np.int64, old.copy())
      self._ids.write(len(self), new_ids)
    self._store.append(layout_lib.packed_to_rows(packed, self.bytes_per_code))

  # -- search -----------------------------------------------------------------

  def _query_packed(self, queries) -> np.ndarray:
    if len(self) == 0:
      raise ValueError("the index is empty: add codes before searching")
    return self._to_packed(queries, "queries")

  def _map_ids(self, positions: np.ndarray) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.int64)
    return positions if self._ids is None else self._ids.view[positions]

  def _topk(self, q, k: int, backend: str):
    """(distances, positions) numpy: the kernel over the stored layout, or
    the generic dispatcher over rows (reference / GPU backends)."""
    self._ensure_verified()
    if backend == "cpu":
      from medhash_jax.retrieval import cpu_kernel  # pylint: disable=g-import-not-at-top
      return cpu_kernel.layout_topk(self._store.layout, len(self),
                                    self.bytes_per_code, q, k)
    d, i = topk.hamming_topk(q, self.packed, k, backend=backend)
    return np.asarray(d), np.asarray(i)

  def _histogram(self, q, backend: str) -> np.ndarray:
    self._ensure_verified()
    if backend == "cpu":
      from medhash_jax.retrieval import cpu_kernel  # pylint: disable=g-import-not-at-top
      return cpu_kernel.layout_histogram(self._store.layout, len(self),
                                         self.bytes_per_code, q)
    return np.asarray(topk.hamming_histogram(q, self.packed, backend=backend))

  def histogram(self, queries, *, backend: str = "auto") -> np.ndarray:
    """int32 (Q, 32 W + 1): entry [q, d] = number of items at distance d."""
    q = self._query_packed(queries)
    return self._histogram(q, topk.resolve_backend(backend))

  def packed_at(self, positions) -> np.ndarray:
    """Packed uint32 (m, words) codes of the items at insertion positions
    (0 <= p < len): gathered from the layout, O(m)."""
    p = np.asarray(positions, np.int64).reshape(-1)
    if p.size and (p.min() < 0 or p.max() >= len(self)):
      raise IndexError(f"positions must lie in [0, {len(self)}), got "
                       f"{int(p.min())}..{int(p.max())}")
    self._ensure_verified()
    return layout_lib.rows_to_packed(layout_lib.gather_rows(
        self._store.layout, p, self.bytes_per_code))

  def frozen(self) -> "HammingIndex":
    """A view of the index as it is now, O(1): it shares the layout.

    Later `add`s to this index do not change what the view holds: they
    write past its codes (the partially filled last block is rewritten with
    the same bytes for the codes the view holds; its other lanes are
    padding, masked by the kernel), and a grown buffer is a new array the
    view does not see. So a view is a consistent snapshot that concurrent
    searches can read while another thread appends (the retrieval server's
    swap-under-lock). Adding to the view itself copies it first.
    """
    self._ensure_verified()
    view = HammingIndex(self.num_bits)
    layout = self._store.layout.view()
    layout.flags.writeable = False
    view._store = layout_lib.LayoutStore(self.bytes_per_code, layout, len(self))
    if self._ids is not None:
      ids = self._ids.view.view()
      ids.flags.writeable = False
      view._ids = layout_lib.Growable(np.int64, ids)
    return view

  def search(self, queries, k: int, *, backend: str = "auto"):
    """k nearest items per query.

    Returns:
      (distances int32 (Q, k), ids int64 (Q, k)), sorted by (distance,
      insertion position).
    """
    q = self._query_packed(queries)
    k = packing.check_k(k, len(self))
    dist, pos = self._topk(q, k, topk.resolve_backend(backend))
    return dist, self._map_ids(pos)

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
    backend = topk.resolve_backend(backend)
    hist = self._histogram(q, backend)
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
      d, p = self._topk(q[s:s + _RANGE_QUERY_CHUNK], kmax, backend)
      for r, c in enumerate(chunk_counts):
        lo = lims[s + r]
        out_d[lo:lo + c] = d[r, :c]
        out_pos[lo:lo + c] = p[r, :c]
    return lims, out_d, self._map_ids(out_pos)

  # -- integrity of a mapped file -----------------------------------------------

  def verify(self) -> None:
    """Verifies every not yet verified chunk of a mapped file now (a no-op
    for an index built in memory or loaded with mmap=False).

    Raises:
      IndexFileError naming the file and the first damaged chunk.
    """
    self._ensure_verified()

  def _ensure_verified(self) -> None:
    if not self._pending:
      return
    with self._lock:
      pending = self._pending
      if not pending:
        return
      _check_chunks(self._path, pending)
      self._pending = []

  # -- persistence ------------------------------------------------------------

  def save(self, path, *, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Writes the index (format version 2) atomically: a temporary file in
    the same folder, fsynced, renamed over `path`."""
    self._ensure_verified()
    path = os.fspath(path)
    if chunk_bytes <= 0:
      raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    data = self._store.layout
    ids = None if self._ids is None else np.ascontiguousarray(
        self._ids.view, "<i8").view(np.uint8)
    regions = [data] + ([ids] if ids is not None else [])
    crcs = _crcs(regions, chunk_bytes)
    meta_bytes = len(MAGIC) + _HEADER.size + _GEOMETRY.size + 4 * len(crcs)
    data_offset = -(-(meta_bytes + _DIGEST_BYTES) // _PAGE) * _PAGE
    ids_offset = data_offset + data.nbytes
    file_size = ids_offset + (0 if ids is None else ids.nbytes)
    flags = 0 if ids is None else _FLAG_IDS
    meta = b"".join([
        MAGIC,
        _HEADER.pack(VERSION, self.num_bits, self.bytes_per_code, len(self),
                     flags),
        _GEOMETRY.pack(chunk_bytes, data_offset, ids_offset, file_size),
        np.asarray(crcs, "<u4").tobytes()])
    head = meta + hashlib.sha256(meta).digest()
    head += b"\0" * (data_offset - len(head))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path),
                               dir=folder)
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(head)
        for region in regions:
          f.write(memoryview(region))
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.unlink(tmp)
      raise

  @classmethod
  def load(cls, path, *, mmap: bool = False) -> "HammingIndex":
    """Opens an index written by `save` (format 1 or 2).

    Args:
      path: the file.
      mmap: map the codes and ids read-only instead of reading them: opening
        costs the header only, the OS pages the codes in as searches read
        them, and several processes share one copy. Chunks are verified on
        first use (or by `verify()`). Format-1 files are always read.

    Raises:
      IndexFileError (naming the file) for anything that is not an intact
      index file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
      start = f.read(len(MAGIC) + _HEADER.size)
      size = os.fstat(f.fileno()).st_size
      if len(start) < len(MAGIC) + _HEADER.size or start[:len(MAGIC)] != MAGIC:
        raise IndexFileError(f"{path}: not a medhash_jax index file (bad magic "
                             f"or only {size} bytes)")
      version = _HEADER.unpack(start[len(MAGIC):])[0]
      if version == 1:
        f.seek(0)
        return cls._load_v1(path, f.read())
      if version != VERSION:
        raise IndexFileError(f"{path}: index format version {version} is not "
                             f"supported (this library reads 1 and {VERSION})")
      return cls._load_v2(path, f, start, size, mmap)

  @classmethod
  def _load_v2(cls, path, f, start, size, mmap):
    _, num_bits, bytes_per, count, flags = _HEADER.unpack(start[len(MAGIC):])
    geometry = f.read(_GEOMETRY.size)
    if len(geometry) < _GEOMETRY.size:
      raise IndexFileError(f"{path}: truncated header ({size} bytes)")
    chunk_bytes, data_offset, ids_offset, file_size = _GEOMETRY.unpack(geometry)
    if num_bits <= 0 or bytes_per != layout_lib.bytes_per_code(num_bits) or \
        flags & ~_FLAG_IDS or chunk_bytes <= 0:
      raise IndexFileError(f"{path}: inconsistent header (num_bits={num_bits},"
                           f" bytes_per_code={bytes_per}, flags={flags}): "
                           "corrupted or not written by this library")
    data_bytes = layout_lib.layout_nbytes(count, bytes_per)
    id_bytes = 8 * count if flags & _FLAG_IDS else 0
    n_chunks = -(-data_bytes // chunk_bytes) + -(-id_bytes // chunk_bytes)
    meta_bytes = len(MAGIC) + _HEADER.size + _GEOMETRY.size + 4 * n_chunks
    if meta_bytes + _DIGEST_BYTES > size:
      raise IndexFileError(
          f"{path}: file has {size} bytes, less than its header (num_bits="
          f"{num_bits}, count={count}) needs: truncated")
    # The digest first: then any damage in the header reads as such.
    rest = f.read(meta_bytes + _DIGEST_BYTES - len(start) - _GEOMETRY.size)
    meta = start + geometry + rest[:-_DIGEST_BYTES]
    if hashlib.sha256(meta).digest() != rest[-_DIGEST_BYTES:]:
      raise IndexFileError(f"{path}: header checksum mismatch: the file is "
                           "corrupted or truncated")
    if (data_offset < meta_bytes + _DIGEST_BYTES or
        ids_offset != data_offset + data_bytes or
        file_size != ids_offset + id_bytes):
      raise IndexFileError(f"{path}: inconsistent header (offsets do not fit "
                           f"num_bits={num_bits}, count={count})")
    if size != file_size:
      raise IndexFileError(
          f"{path}: file has {size} bytes but its header (num_bits={num_bits},"
          f" count={count}) implies {file_size}: truncated or appended to")
    # The padding up to the codes is not in a checksum: it must be zeros.
    if f.read(data_offset - meta_bytes - _DIGEST_BYTES).strip(b"\0"):
      raise IndexFileError(f"{path}: non-zero bytes in the header padding: "
                           "the file is corrupted")
    crcs = np.frombuffer(meta, "<u4", n_chunks,
                         len(MAGIC) + _HEADER.size + _GEOMETRY.size)
    if mmap:
      data = _map(path, data_offset, data_bytes)
      ids = _map(path, ids_offset, id_bytes)
    else:
      data = _read(f, data_offset, data_bytes)
      ids = _read(f, ids_offset, id_bytes)
    index = cls(num_bits)
    index._path = path
    index._store = layout_lib.LayoutStore(bytes_per, data, count)
    if id_bytes:
      index._ids = layout_lib.Growable(np.int64, ids.view("<i8"))
    pending, c = [], 0
    for name, region in (("codes", data), ("ids", ids)):
      for s in range(0, region.shape[0], chunk_bytes):
        pending.append((region[s:s + chunk_bytes], int(crcs[c]),
                        f"{name} chunk {s // chunk_bytes} (file bytes "
                        f"{(data_offset if name == 'codes' else ids_offset) + s}"
                        "..)"))
        c += 1
    index._pending = pending
    if not mmap:
      index.verify()
    return index

  @classmethod
  def _load_v1(cls, path, data: bytes) -> "HammingIndex":
    head = len(MAGIC) + _HEADER.size
    if len(data) < head + _DIGEST_BYTES:
      raise IndexFileError(f"{path}: not a medhash_jax index file (bad magic "
                           f"or only {len(data)} bytes)")
    _, num_bits, words, count, flags = _HEADER.unpack(data[len(MAGIC):head])
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
    packed = np.frombuffer(body, "<u4", count * words, head).reshape(
        count, words).astype(np.uint32)
    index._store.append(layout_lib.packed_to_rows(packed, index.bytes_per_code))
    if id_bytes:
      index._ids = layout_lib.Growable(np.int64, np.frombuffer(
          body, "<i8", count, head + code_bytes).astype(np.int64))
    return index

  # -- faiss interop ----------------------------------------------------------

  def to_faiss(self):
    """A `faiss.IndexBinaryFlat` (wrapped in `IndexBinaryIDMap` when ids are
    explicit) with the same codes; d is num_bits rounded up to a byte, and the
    zero padding bits leave every distance unchanged."""
    faiss = _import_faiss()
    self._ensure_verified()
    flat = faiss.IndexBinaryFlat(8 * self.bytes_per_code)
    codes = np.ascontiguousarray(self._store.rows())
    if self._ids is None:
      flat.add(codes)
      return flat
    wrapped = faiss.IndexBinaryIDMap(flat)
    wrapped.add_with_ids(codes, self.ids)
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
    index.add(layout_lib.rows_to_packed(raw), ids=ids)
    return index


def _check_chunks(path, pending) -> None:
  """Verifies (chunk, crc, where) triples in parallel; raises on the first
  mismatch in file order."""
  got = _crcs([chunk for chunk, _, _ in pending], max(
      1, max(chunk.shape[0] for chunk, _, _ in pending)))
  for (_, want, where), crc in zip(pending, got):
    if crc != want:
      raise IndexFileError(f"{path}: checksum mismatch in {where}: the file is "
                           "corrupted")


def _map(path, offset: int, nbytes: int) -> np.ndarray:
  if nbytes == 0:
    return np.zeros(0, np.uint8)
  return np.memmap(path, np.uint8, "r", offset=offset, shape=(nbytes,))


def _read(f, offset: int, nbytes: int) -> np.ndarray:
  out = np.empty(nbytes, np.uint8)
  f.seek(offset)
  if nbytes and f.readinto(memoryview(out)) != nbytes:
    raise IndexFileError(f"{f.name}: truncated while reading")
  return out


def _import_faiss():
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("faiss interop needs faiss: pip install "
                      "'medhash_jax[faiss]' (faiss-cpu)") from e
  return faiss
