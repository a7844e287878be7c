"""One process of the multi-process sharded-search test (run by launch/local.py).

Every process builds the same random database, keeps only its own part
(uneven sizes, one process may hold nothing) and searches the assembled
global database. Writes OUT_DIR/process_<i>.npz with the answers and the
addresses this process listens on (the test checks they are all loopback).

  python tests/mp_search_worker.py OUT_DIR
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medhash_jax import distributed  # pylint: disable=wrong-import-position

# (sizes per process, bits, distinct codes): few distinct codes make long
# ties that straddle shard and process borders.
CASES = (((203, 198), 32, 5), ((0, 57), 64, 3), ((61, 0), 16, 2),
         ((1000, 1), 64, 4))
NUM_QUERIES = 9


def case_data(sizes, bits, distinct, seed):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  table = rng.integers(0, 2, (distinct, bits)) * 2 - 1
  db = table[rng.integers(0, distinct, sum(sizes))].astype(np.float32)
  q = table[rng.integers(0, distinct, NUM_QUERIES)].astype(np.float32)
  q[0] = -q[0]  # one query far from everything
  return q, db


def listening_addresses():
  """Local addresses of this process's listening TCP sockets (Linux /proc)."""
  inodes = set()
  for fd in os.listdir("/proc/self/fd"):
    try:
      link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
      continue
    if link.startswith("socket:["):
      inodes.add(link[8:-1])
  out = []
  for table, v6 in (("/proc/self/net/tcp", False), ("/proc/self/net/tcp6", True)):
    if not os.path.exists(table):
      continue
    with open(table, encoding="ascii") as f:
      next(f)
      for line in f:
        parts = line.split()
        local, state, inode = parts[1], parts[3], parts[9]
        if state != "0A" or inode not in inodes:  # 0A = LISTEN
          continue
        addr_hex, port_hex = local.split(":")
        raw = bytes.fromhex(addr_hex)
        if v6:
          words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
          raw = b"".join(words)
          import ipaddress  # pylint: disable=g-import-not-at-top
          addr = str(ipaddress.IPv6Address(raw))
        else:
          addr = ".".join(str(b) for b in raw[::-1])
        out.append(f"{addr}:{int(port_hex, 16)}")
  return out


def main(out_dir):
  assert distributed.initialize(), "expected a multi-process launch"
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from medhash_jax import retrieval  # pylint: disable=g-import-not-at-top
  me, n = jax.process_index(), jax.process_count()
  results = {"process_count": n, "device_count": jax.device_count()}
  for c, (sizes, bits, distinct) in enumerate(CASES):
    assert len(sizes) == n
    q, db = case_data(sizes, bits, distinct, seed=c)
    lo = sum(sizes[:me])
    mine = db[lo:lo + sizes[me]]
    packed_local = np.asarray(retrieval.pack_codes(mine)) if len(mine) else \
        np.zeros((0, -(-bits // 32)), np.uint32)
    sdb = retrieval.assemble_database(packed_local)
    total = sum(sizes)
    qp = np.asarray(retrieval.pack_codes(q))
    for k in sorted({1, 7, total}):
      d, i = retrieval.sharded_topk(qp, sdb, k)
      results[f"c{c}_k{k}_dist"] = np.asarray(d)
      results[f"c{c}_k{k}_idx"] = np.asarray(i)
    results[f"c{c}_bytes_per_device"] = sdb.bytes_per_device
    # Explicit ids on one process only; the other contributes positions.
    index = retrieval.HammingIndex(bits)
    if len(mine):
      index.add(mine, ids=(np.arange(len(mine)) + lo) * 10 + 3 if me == 0
                else None)
    sidx = retrieval.ShardedHammingIndex.from_index(index)
    d, ids = sidx.search(q, min(7, total))
    results[f"c{c}_ids_dist"] = d
    results[f"c{c}_ids"] = ids
  results["listening"] = np.array(listening_addresses(), dtype=str)
  np.savez(os.path.join(out_dir, f"process_{me}.npz"), **results)


if __name__ == "__main__":
  main(sys.argv[1])
