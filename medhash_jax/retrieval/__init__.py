"""Binary-code retrieval: packing, exact Hamming top-k kernels, HammingIndex.

Public API (other tools call it; keep it stable):
  pack_codes(codes) -> uint32 (n, ceil(K/32))
  unpack_codes(packed, num_bits) -> int8 (n, K) in {-1, +1}
  hamming_topk(query_packed, db_packed, k, *, backend="auto")
      -> (distances int32 (Q, k), indices int32 (Q, k)), sorted by (d, index)
  hamming_histogram(query_packed, db_packed) -> int32 (Q, 32W + 1)
  hamming_distances(query_packed, db_packed) -> int32 (Q, N)
  HammingIndex(num_bits): add / search / range_search / save / load(path,
      mmap=False) / verify / to_faiss / from_faiss; codes kept in the
      kernel layout (layout.py), ceil(K/8) bytes a code, searched in place
  sharded_topk(query_packed, db_sharded, k, *, num_valid, mesh)
      -> the same answer as hamming_topk, database split over devices
  assemble_database(local_packed, mesh, layout_bits=None) -> ShardedDatabase
      from every process's part (multi-process; rows, or the kernel layout);
      ShardedHammingIndex wraps it
"""

from medhash_jax.retrieval.index import HammingIndex
from medhash_jax.retrieval.packing import pack_codes
from medhash_jax.retrieval.packing import unpack_codes
from medhash_jax.retrieval.sharded import ShardedDatabase
from medhash_jax.retrieval.sharded import ShardedHammingIndex
from medhash_jax.retrieval.sharded import assemble_database
from medhash_jax.retrieval.sharded import database_mesh
from medhash_jax.retrieval.sharded import shard_database
from medhash_jax.retrieval.sharded import sharded_topk
from medhash_jax.retrieval.topk import BACKENDS
from medhash_jax.retrieval.topk import cpu_kernel_available
from medhash_jax.retrieval.topk import hamming_distances
from medhash_jax.retrieval.topk import hamming_histogram
from medhash_jax.retrieval.topk import hamming_topk
from medhash_jax.retrieval.topk import merge_topk
from medhash_jax.retrieval.topk import resolve_backend

__all__ = [
    "BACKENDS", "HammingIndex", "ShardedDatabase", "ShardedHammingIndex",
    "assemble_database", "cpu_kernel_available", "database_mesh", "hamming_distances",
    "hamming_histogram", "hamming_topk", "merge_topk", "pack_codes",
    "resolve_backend", "shard_database", "sharded_topk", "unpack_codes",
]
