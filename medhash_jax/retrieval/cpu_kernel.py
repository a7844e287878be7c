"""The C++ Hamming top-k / histogram kernels as XLA FFI targets on the CPU.

The kernels live in `csrc/` (see `csrc/hamming.h` for the algorithm and the
files). setup.py compiles them into the extension
`medhash_jax.retrieval._hamming_cpu`; it is loaded with ctypes (it is a plain
shared library, not a Python module) and its handlers are registered with
`jax.ffi.register_ffi_target`. When the extension is missing (an install
without a compiler, or running from a source checkout that was never built),
the source is compiled on the fly with the system C++ compiler into
`~/.cache/medhash_jax/` (or `$MEDHASH_CACHE_DIR`), keyed by a hash of the
sources, the jaxlib version and the flags, and written atomically. When that
fails too, `available()` is False and one warning is logged; the dispatcher
then falls back to the reference backend.

Two ways in:
  * FFI targets over packed uint32 rows (`hamming_topk_cpu`, jit-compatible):
    the kernel builds its block layout per call, a copy of the database;
  * plain C functions over a prebuilt layout (`layout_topk`,
    `layout_histogram`, called through ctypes, which releases the GIL): the
    database is read in place, in memory or memory-mapped. HammingIndex uses
    these (see layout.py for the layout).

Run-time knobs (environment, read on every call): MEDHASH_NUM_THREADS
(default: CPUs this process may use), MEDHASH_ISA=scalar|avx2|avx512 (lower
the SIMD level, for tests), MEDHASH_TOPK_METHOD=buffer|twopass,
MEDHASH_DB_PARTS=n (split the database into n parts whatever Q, for tests;
by default only a few queries split it).
"""

import ctypes
import glob
import hashlib
import importlib.machinery
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_CSRC = os.path.join(_HERE, "csrc")
_EXT_NAME = "_hamming_cpu"
_TOPK_TARGET = "medhash_hamming_topk"
_HISTOGRAM_TARGET = "medhash_hamming_histogram"
_TOPK_LAYOUT_TARGET = "medhash_hamming_topk_layout"
# Same flags as setup.py (no -march: the kernel dispatches on CPU features).
_CXX_FLAGS = ("-O3", "-std=c++17", "-fvisibility=hidden", "-shared", "-fPIC")
_ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512"}

_lock = threading.Lock()


def _built_extension():
  """Path of the setup.py-built extension next to this module, if any."""
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    path = os.path.join(_HERE, _EXT_NAME + suffix)
    if os.path.isfile(path):
      return path
  found = sorted(glob.glob(os.path.join(_HERE, _EXT_NAME + "*.so")))
  return found[0] if found else None


def _cache_dir() -> str:
  if os.environ.get("MEDHASH_CACHE_DIR"):
    return os.environ["MEDHASH_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "medhash_jax")


def _compiler():
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _compile_on_the_fly() -> str:
  """Compiles the kernel into the user cache; returns the library path."""
  sources = sorted(glob.glob(os.path.join(_CSRC, "*.cc")))
  if not sources:
    raise RuntimeError(f"kernel sources {_CSRC}/*.cc are missing")
  cxx = _compiler()
  if cxx is None:
    raise RuntimeError("no C++ compiler found (tried $CXX, c++, g++, clang++)")
  include = jax.ffi.include_dir()
  parts = []
  for path in sources + sorted(glob.glob(os.path.join(_CSRC, "*.h"))):
    with open(path, "rb") as f:
      parts += [os.path.basename(path).encode(), f.read()]
  key = hashlib.sha256(b"\0".join([
      *parts, jaxlib.__version__.encode(), " ".join(_CXX_FLAGS).encode(),
      cxx.encode()
  ])).hexdigest()[:16]
  out_dir = _cache_dir()
  target = os.path.join(out_dir, f"{_EXT_NAME}-{key}.so")
  if os.path.isfile(target):
    return target
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{_EXT_NAME}-", suffix=".so",
                             dir=out_dir)
  os.close(fd)
  cmd = [cxx, *_CXX_FLAGS, "-I", include, *sources, "-o", tmp, "-lpthread"]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)  # atomic: concurrent builders never see half
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  logging.info("medhash_jax: compiled the C++ Hamming kernel into %s", target)
  return target


def _load():
  """Loads the kernel library and registers its FFI targets.

  Returns the ctypes library, or None (with a logged warning) when neither
  the built extension nor an on-the-fly compile is usable.
  """
  errors = []
  for find in (_built_extension, _compile_on_the_fly):
    try:
      path = find()
      if path is None:
        continue
      lib = ctypes.CDLL(path)
      for symbol in ("MedhashHammingTopk", "MedhashHammingHistogram",
                     "MedhashHammingTopkLayout", "MedhashLayoutTopk",
                     "MedhashLayoutHistogram", "MedhashStreamRead",
                     "MedhashHammingIsa", "MedhashHammingNumThreads"):
        getattr(lib, symbol)
      break
    except Exception as e:  # pylint: disable=broad-except
      errors.append(f"{find.__name__}: {e}")
  else:
    logging.warning(
        "medhash_jax: the C++ Hamming kernel is unavailable (%s); the "
        "reference backend will be used", "; ".join(errors) or "not built")
    return None
  jax.ffi.register_ffi_target(
      _TOPK_TARGET, jax.ffi.pycapsule(lib.MedhashHammingTopk), platform="cpu")
  jax.ffi.register_ffi_target(
      _HISTOGRAM_TARGET, jax.ffi.pycapsule(lib.MedhashHammingHistogram),
      platform="cpu")
  jax.ffi.register_ffi_target(
      _TOPK_LAYOUT_TARGET, jax.ffi.pycapsule(lib.MedhashHammingTopkLayout),
      platform="cpu")
  ptr, i64 = ctypes.c_void_p, ctypes.c_int64
  lib.MedhashLayoutTopk.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, ptr,
                                    ctypes.c_char_p, i64]
  lib.MedhashLayoutTopk.restype = ctypes.c_int
  lib.MedhashLayoutHistogram.argtypes = [ptr, i64, i64, ptr, i64, ptr,
                                         ctypes.c_char_p, i64]
  lib.MedhashLayoutHistogram.restype = ctypes.c_int
  lib.MedhashStreamRead.argtypes = [ptr, i64, ctypes.c_int]
  lib.MedhashStreamRead.restype = ctypes.c_uint64
  lib.MedhashHammingIsa.restype = ctypes.c_int
  lib.MedhashHammingNumThreads.restype = ctypes.c_int
  return lib


_state = {}  # "lib": the loaded library or None once a load was attempted


def _library():
  """The library, loaded (or found unusable, warning once) on first use."""
  with _lock:
    if "lib" not in _state:
      _state["lib"] = _load()
    return _state["lib"]


def available() -> bool:
  """True when the kernel library is loaded and its FFI targets registered."""
  return _library() is not None


def _require():
  lib = _library()
  if lib is None:
    raise RuntimeError("the C++ Hamming kernel is not available; see the "
                       "warning logged by medhash_jax.retrieval.cpu_kernel")
  return lib


def isa() -> str:
  """SIMD level a call would use now: "scalar", "avx2" or "avx512"."""
  return _ISA_NAMES[_require().MedhashHammingIsa()]


def cpu_model() -> str:
  """The host CPU's model name (speed, and on CPU the exact floating-point
  results of a training run, depend on it)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def num_threads() -> int:
  """Threads a call would use now (MEDHASH_NUM_THREADS or CPUs available)."""
  return int(_require().MedhashHammingNumThreads())


def _as_u32(x, name):
  x = jnp.asarray(x)
  if x.dtype != jnp.uint32 or x.ndim != 2:
    raise ValueError(f"{name} must be a uint32 (n, W) array, got {x.dtype} "
                     f"{tuple(x.shape)}")
  return x


def hamming_topk_cpu(query_packed, db_packed, k: int):
  """Exact top-k by (Hamming distance, database index); jit-compatible.

  Args:
    query_packed: uint32 (Q, W) packed codes.
    db_packed: uint32 (N, W) packed codes, same W.
    k: static int, 1 <= k <= N (checked by the caller; the kernel errors too).

  Returns:
    (distances int32 (Q, k), indices int32 (Q, k)), rows sorted ascending by
    (distance, index).
  """
  _require()
  q = _as_u32(query_packed, "query_packed")
  db = _as_u32(db_packed, "db_packed")
  k = int(k)
  if not 1 <= k <= db.shape[0]:  # shapes are static, even under jit
    raise ValueError(f"k={k} is out of range: need 1 <= k <= N = "
                     f"{db.shape[0]} (db_packed shape {tuple(db.shape)})")
  if q.shape[1] != db.shape[1]:
    raise ValueError(f"query_packed {tuple(q.shape)} and db_packed "
                     f"{tuple(db.shape)} have different numbers of words")
  out = jax.ShapeDtypeStruct((q.shape[0], k), jnp.int32)
  call = jax.ffi.ffi_call(_TOPK_TARGET, (out, out), vmap_method="sequential")
  return call(q, db, k=np.int64(k))


def hamming_histogram_cpu(query_packed, db_packed):
  """int32 (Q, 32 W + 1): entry [q, d] = #{database rows at distance d}."""
  _require()
  q = _as_u32(query_packed, "query_packed")
  db = _as_u32(db_packed, "db_packed")
  if q.shape[1] != db.shape[1]:
    raise ValueError(f"query_packed {tuple(q.shape)} and db_packed "
                     f"{tuple(db.shape)} have different numbers of words")
  out = jax.ShapeDtypeStruct((q.shape[0], 32 * q.shape[1] + 1), jnp.int32)
  call = jax.ffi.ffi_call(_HISTOGRAM_TARGET, out, vmap_method="sequential")
  return call(q, db)


# -- over a prebuilt layout (no copy of the database) -------------------------


def _check_layout_args(layout, n, bytes_per, queries):
  if not isinstance(layout, np.ndarray) or layout.dtype != np.uint8 or \
      layout.ndim != 1 or not layout.flags.c_contiguous:
    raise ValueError("layout must be a contiguous 1-D uint8 numpy array")
  need = -(-int(n) // 16) * 16 * int(bytes_per)
  if layout.shape[0] < need:
    raise ValueError(f"layout has {layout.shape[0]} bytes; {n} codes of "
                     f"{bytes_per} bytes need {need}")
  q = np.ascontiguousarray(queries, dtype=np.uint32)
  words = -(-int(bytes_per) // 4)
  if q.ndim != 2 or q.shape[1] != words:
    raise ValueError(f"queries must be uint32 (Q, {words}), got {q.shape}")
  return q


def _ptr(a: np.ndarray):
  return a.ctypes.data if a.size else None


def layout_topk(layout: np.ndarray, n: int, bytes_per: int, queries, k: int):
  """Exact top-k over a database in the kernel layout, read in place.

  Args:
    layout: uint8 numpy array (layout.py's format), e.g. `LayoutStore.layout`
      or a read-only memmap of an index file.
    n: number of codes in it.
    bytes_per: bytes per code, ceil(K / 8).
    queries: uint32 (Q, ceil(bytes_per / 4)) packed queries.
    k: 1 <= k <= n.

  Returns:
    numpy (distances int32 (Q, k), indices int32 (Q, k)), sorted by
    (distance, index).
  """
  lib = _require()
  q = _check_layout_args(layout, n, bytes_per, queries)
  d = np.empty((q.shape[0], int(k)), np.int32)
  i = np.empty_like(d)
  err = ctypes.create_string_buffer(512)
  if lib.MedhashLayoutTopk(_ptr(layout), int(n), int(bytes_per), _ptr(q),
                           q.shape[0], int(k), _ptr(d), _ptr(i), err, 512):
    raise ValueError(err.value.decode())
  return d, i


def layout_histogram(layout: np.ndarray, n: int, bytes_per: int, queries):
  """int32 (Q, 32 W + 1) distance counts over a layout (see layout_topk)."""
  lib = _require()
  q = _check_layout_args(layout, n, bytes_per, queries)
  out = np.empty((q.shape[0], 32 * q.shape[1] + 1), np.int32)
  err = ctypes.create_string_buffer(512)
  if lib.MedhashLayoutHistogram(_ptr(layout), int(n), int(bytes_per), _ptr(q),
                                q.shape[0], _ptr(out), err, 512):
    raise ValueError(err.value.decode())
  return out


def layout_topk_ffi(query_packed, layout, n: int, bytes_per: int, k: int):
  """`layout_topk` as an XLA FFI call (jit-compatible; the layout is a uint8
  jax array, e.g. one device's shard of a sharded database)."""
  _require()
  q = _as_u32(query_packed, "query_packed")
  k = int(k)
  if not 1 <= k <= n:
    raise ValueError(f"k={k} is out of range: need 1 <= k <= N = {n}")
  out = jax.ShapeDtypeStruct((q.shape[0], k), jnp.int32)
  call = jax.ffi.ffi_call(_TOPK_LAYOUT_TARGET, (out, out),
                          vmap_method="sequential")
  return call(q, layout, n=np.int64(n), bytes_per_code=np.int64(bytes_per),
              k=np.int64(k))


def stream_read(buf: np.ndarray, threads: int) -> int:
  """Reads every byte of a contiguous array once on `threads` threads (the
  memory-bandwidth probe of the serving benchmark); returns their XOR."""
  lib = _require()
  flat = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
  return int(lib.MedhashStreamRead(_ptr(flat), flat.shape[0], int(threads)))
