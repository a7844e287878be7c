"""Leakage-free retrieval splits: train / val / query / database.

Protocols (``config.data.split``):

* ``"official"``: the dataset's own split. train = official train, query =
  official test, database = train; val = official val when the dataset has
  one, else carved from train. A published retrieval protocol names query
  and database itself (ChestX-ray14's ``data.split_lists``).
* ``"seed"``: the seed papers' protocol (ATH): a seeded random partition
  query : train : database = ``split_ratios`` (1 : 3 : 3), all disjoint; val
  carved from train.
* ``"deephash"``: the DeepHash protocol: ``num_query`` (or ``query_fraction``)
  queries, the rest is the database; train is drawn from the database
  (``train_in_database=True``, the usual setting) or from the rest disjoint
  from the database, ``num_train`` images (or ``train_fraction`` of the pool);
  val carved from train.

Validation retrieval is val (queries) against train (gallery), so model
selection never touches the query split.

Grouping (``grouped=True``, the default; effective when the source has
groups): whole patients / lesions are assigned to a split, so a group never
appears both among queries and in train / database / val, nor both in val and
train. Sizes are then approximate. Every split is checked after it is made and
after it is reloaded.

The split is saved in ``<workdir>/splits/<name>-<protocol>-seed<seed>.npz``
(indices into the source) with a fingerprint of the source's ids and the
split parameters, plus a readable ``.json`` with sizes and per-label counts;
later runs reload it, and a changed dataset or parameters raise rather than
silently re-split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Sequence

from absl import logging
import numpy as np

from medhash_jax.data.records import DataError, ImageSource

PROTOCOLS = ("official", "seed", "deephash")
SPLIT_NAMES = ("train", "val", "query", "database")


@dataclasses.dataclass
class Splits:
  """Sorted int64 source indices of each split."""
  train: np.ndarray
  val: np.ndarray
  query: np.ndarray
  database: np.ndarray
  protocol: str = "seed"
  grouped: bool = False
  params: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in SPLIT_NAMES:
      raise KeyError(f"unknown split {name!r}; splits are {SPLIT_NAMES}")
    return getattr(self, name)

  def sizes(self) -> dict[str, int]:
    return {k: int(self[k].size) for k in SPLIT_NAMES}


def _partition(n_items: int, groups: np.ndarray | None, fractions: Sequence[float],
               rng: np.random.Generator) -> list[np.ndarray]:
  """Random partition of range(n_items) by whole groups; sizes ~ fractions."""
  fr = np.asarray(fractions, np.float64)
  fr = fr / fr.sum()
  if groups is None:
    inverse = np.arange(n_items)
    counts = np.ones(n_items, np.int64)
  else:
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
  perm = rng.permutation(counts.size)
  cum = np.cumsum(counts[perm])
  centers = cum - counts[perm] / 2.0
  bounds = np.cumsum(fr)[:-1] * n_items
  part_of_group = np.empty(counts.size, np.int64)
  if groups is None:
    # Exact sizes without groups: cut the permutation at rounded bounds.
    cuts = np.round(bounds).astype(np.int64)
    part_of_group[perm] = np.searchsorted(cuts, np.arange(n_items), side="right")
  else:
    # Whole groups: a group goes where the middle of its run falls.
    part_of_group[perm] = np.searchsorted(bounds, centers, side="right")
  part = part_of_group[inverse]
  return [np.sort(np.nonzero(part == k)[0]).astype(np.int64)
          for k in range(fr.size)]


def _subset_partition(idx: np.ndarray, groups, fractions, rng):
  sub_groups = None if groups is None else groups[idx]
  return [idx[p] for p in _partition(idx.size, sub_groups, fractions, rng)]


def make_splits(source: ImageSource, *, protocol: str = "seed", seed: int = 0,
                grouped: bool = True, split_ratios: Sequence[float] = (1, 3, 3),
                val_fraction: float = 0.1, num_query: int = 0,
                query_fraction: float = 0.1, num_train: int = 0,
                train_fraction: float = 0.5, train_in_database: bool = True
                ) -> Splits:
  """Makes the splits of ``source`` (see the module docstring)."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"data.split must be one of {PROTOCOLS}, got {protocol!r}")
  n = len(source)
  groups = source.groups if (grouped and source.groups is not None) else None
  if grouped and source.groups is None:
    logging.info("%s: no patient/lesion ids; splitting per image.", source.name)
  rng = np.random.default_rng(seed)

  if protocol == "official":
    if source.official_split is None:
      raise DataError(
          f"{source.name} has no official split; use data.split='seed' or "
          "'deephash'.")
    off = source.official_split
    train = np.nonzero(off == "train")[0]
    # Published retrieval lists name query and database; a classification
    # split names test (the queries) and searches train.
    query = np.nonzero((off == "test") | (off == "query"))[0]
    val = np.nonzero(off == "val")[0]
    if val.size == 0:
      val, train = _subset_partition(train, groups, (val_fraction, 1 - val_fraction), rng)
    database = np.nonzero(off == "database")[0]
    if database.size == 0:
      database = train
  elif protocol == "seed":
    if len(split_ratios) != 3:
      raise ValueError("data.split_ratios must be (query, train, database), "
                       f"got {tuple(split_ratios)}")
    query, train, database = _partition(n, groups, split_ratios, rng)
    val, train = _subset_partition(train, groups, (val_fraction, 1 - val_fraction), rng)
  else:  # deephash
    q_frac = num_query / n if num_query else query_fraction
    if not 0 < q_frac < 1:
      raise ValueError(f"deephash: query share {q_frac} must be in (0, 1)")
    query, rest = _partition(n, groups, (q_frac, 1 - q_frac), rng)
    t_frac = num_train / rest.size if num_train else train_fraction
    if not 0 < t_frac <= 1:
      raise ValueError(f"deephash: train share {t_frac} of the pool must be in (0, 1]")
    if train_in_database:
      database = rest
      train, _ = (_subset_partition(rest, groups, (t_frac, 1 - t_frac), rng)
                  if t_frac < 1 else (rest, None))
    else:
      train, database = _subset_partition(rest, groups, (t_frac, 1 - t_frac), rng)
    val, train = _subset_partition(train, groups, (val_fraction, 1 - val_fraction), rng)

  for name, arr in (("train", train), ("query", query), ("database", database)):
    if arr.size == 0:
      raise DataError(f"{source.name}: the {name} split is empty "
                      f"(protocol {protocol!r}, {n} images).")
  params = dict(protocol=protocol, seed=int(seed), grouped=groups is not None,
                split_ratios=[float(r) for r in split_ratios],
                val_fraction=float(val_fraction), num_query=int(num_query),
                query_fraction=float(query_fraction), num_train=int(num_train),
                train_fraction=float(train_fraction),
                train_in_database=bool(train_in_database))
  splits = Splits(*(np.sort(np.asarray(a, np.int64))
                    for a in (train, val, query, database)),
                  protocol=protocol, grouped=groups is not None, params=params)
  check_no_leakage(splits, source)
  return splits


def check_no_leakage(splits: Splits, source: ImageSource) -> None:
  """Raises DataError when an image, or a group when grouped, crosses sides.

  Queries must be disjoint from train, val and database; val from train.
  """
  def _check(a_name, b_names):
    a = splits[a_name]
    b = np.concatenate([splits[x] for x in b_names])
    both = np.intersect1d(a, b)
    if both.size:
      raise DataError(f"{source.name}: {both.size} image(s) are in both "
                      f"{a_name} and {'/'.join(b_names)}, e.g. "
                      f"{source.ids[both[0]]}.")
    if splits.grouped and source.groups is not None:
      g = np.intersect1d(source.groups[a], source.groups[b])
      if g.size:
        raise DataError(f"{source.name}: {g.size} patient/lesion group(s) are in "
                        f"both {a_name} and {'/'.join(b_names)}, e.g. {g[0]!r}; "
                        "use data.grouped=False only if that is intended.")
  _check("query", ("train", "val", "database"))
  _check("val", ("train",))


def _fingerprint(source: ImageSource, params: dict) -> str:
  h = hashlib.sha256()
  h.update("\n".join(source.ids.tolist()).encode())
  h.update(json.dumps(list(source.class_names)).encode())
  h.update(json.dumps(params, sort_keys=True).encode())
  return h.hexdigest()


def label_counts(splits: Splits, source: ImageSource) -> dict[str, dict[str, int]]:
  out = {}
  for name in SPLIT_NAMES:
    lab = source.labels[splits[name]]
    counts = lab.sum(axis=0).astype(int).tolist() if lab.size else [0] * source.num_classes
    out[name] = dict(zip(source.class_names, counts))
    if source.multi_label:
      out[name]["<none>"] = int((lab.sum(axis=1) == 0).sum()) if lab.size else 0
  return out


def log_splits(splits: Splits, source: ImageSource) -> None:
  counts = label_counts(splits, source)
  for name in SPLIT_NAMES:
    logging.info("%s split %-8s n=%-7d %s", source.name, name, splits[name].size,
                 ", ".join(f"{k}: {v}" for k, v in counts[name].items()))


def split_path(workdir: str, name: str, protocol: str, seed: int) -> str:
  return os.path.join(workdir, "splits", f"{name}-{protocol}-seed{seed}.npz")


def load_or_make_splits(source: ImageSource, *, workdir: str | None,
                        process_index: int = 0, **kwargs) -> Splits:
  """Reloads the split saved in ``workdir``, or makes and saves it.

  Args:
    source: the data source.
    workdir: run directory; None keeps the split in memory only.
    process_index: only process 0 writes the files (atomically).
    **kwargs: the arguments of :func:`make_splits`.

  Raises:
    DataError: the saved split belongs to other data or parameters.
  """
  protocol = kwargs.get("protocol", "seed")
  seed = int(kwargs.get("seed", 0))
  probe = make_splits.__kwdefaults__ | kwargs
  params = dict(protocol=protocol, seed=seed, grouped=bool(
      probe["grouped"] and source.groups is not None),
                split_ratios=[float(r) for r in probe["split_ratios"]],
                val_fraction=float(probe["val_fraction"]),
                num_query=int(probe["num_query"]),
                query_fraction=float(probe["query_fraction"]),
                num_train=int(probe["num_train"]),
                train_fraction=float(probe["train_fraction"]),
                train_in_database=bool(probe["train_in_database"]))
  fp = _fingerprint(source, params)
  path = split_path(workdir, source.name, protocol, seed) if workdir else None
  if path and os.path.isfile(path):
    with np.load(path) as z:
      saved_fp = str(z["fingerprint"])
      if saved_fp != fp:
        raise DataError(
            f"split file {path} was made for different data or split "
            "parameters (fingerprint mismatch). Delete it to re-split, or use "
            "another workdir.")
      splits = Splits(*(z[k].astype(np.int64) for k in SPLIT_NAMES),
                      protocol=protocol, grouped=params["grouped"], params=params)
    check_no_leakage(splits, source)
    logging.info("%s: reloaded split from %s", source.name, path)
  else:
    splits = make_splits(source, **kwargs)
    if path and process_index == 0:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = path + f".tmp{os.getpid()}.npz"
      np.savez(tmp, fingerprint=np.array(fp),
               **{k: splits[k] for k in SPLIT_NAMES})
      os.replace(tmp, path)
      summary = dict(dataset=source.name, params=params, sizes=splits.sizes(),
                     label_counts=label_counts(splits, source),
                     fingerprint=fp, num_images=len(source))
      with open(path[:-4] + ".json", "w") as f:
        json.dump(summary, f, indent=2)
      logging.info("%s: saved split to %s", source.name, path)
  log_splits(splits, source)
  return splits
