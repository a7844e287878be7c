"""Results tables: Markdown and CSV from a list of result dicts.

One dict per (method, bits) row. Keys (case and punctuation are ignored, and
the aliases below are accepted, so ``"mAP@10"``, ``"map@10"`` and ``"map_10"``
are the same column):

====================  =======================  ==============================
key                   header                   format
====================  =======================  ==============================
method                Method                   text
bits                  Bits                     integer
map@10                mAP@10                   4 decimals
map@all               mAP@all                  4 decimals
ndcg@100              nDCG@100                 4 decimals
ndcg@all              nDCG@all                 4 decimals
p@r2                  P@r≤2                    4 decimals (aliases p@radius2)
map@10_tie            mAP@10 tie-aware         4 decimals
map@all_tie           mAP@all tie-aware        4 decimals
chance                Chance mAP@10            4 decimals
chance_map@all        Chance mAP@all           4 decimals
train_time_s          Train (s)                1 decimal
encode_ms_per_image   Encode (ms/img)          3 decimals
query_ms              Query (ms)               3 decimals
index_bytes           Index (bytes)            integer, thousands separated
====================  =======================  ==============================

A value is a number; a sequence of numbers (one per seed), shown as
``mean ± std`` (sample std, ddof=1; the CSV gets ``<key>`` = mean and
``<key>_std`` columns); or a dict ``{"mean": m, "std": s}``. A missing key,
None or NaN is shown as ``—`` in Markdown and left empty in the CSV (so
pandas reads NaN). Rows keep the given order.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

MISSING = "—"

# (key, header, format kind)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("method", "Method", "text"),
    ("bits", "Bits", "int"),
    ("map@10", "mAP@10", "metric"),
    ("map@all", "mAP@all", "metric"),
    ("ndcg@100", "nDCG@100", "metric"),
    ("ndcg@all", "nDCG@all", "metric"),
    ("p@r2", "P@r≤2", "metric"),
    ("map@10_tie", "mAP@10 tie-aware", "metric"),
    ("map@all_tie", "mAP@all tie-aware", "metric"),
    ("chance", "Chance mAP@10", "metric"),
    ("chance_map@all", "Chance mAP@all", "metric"),
    ("train_time_s", "Train (s)", "seconds"),
    ("encode_ms_per_image", "Encode (ms/img)", "ms"),
    ("query_ms", "Query (ms)", "ms"),
    ("index_bytes", "Index (bytes)", "bytes"),
)

ALIASES = {
    "p@r2": ("p@radius2", "p@r<=2", "precision@radius2", "p_r2"),
    "map@10_tie": ("map@10_tie_aware", "tie_aware_map@10", "map@10_tieaware"),
    "map@all_tie": ("map@all_tie_aware", "tie_aware_map@all"),
    "chance": ("chance_map", "chance_level"),
    "train_time_s": ("train_time", "training_time", "training_time_s"),
    "encode_ms_per_image": ("encode_ms", "encode_ms_image"),
    "query_ms": ("query_time_ms",),
    "index_bytes": ("index_size_bytes", "index_size"),
}


def _norm(key: str) -> str:
  return re.sub(r"[^a-z0-9]", "", str(key).lower())


def _lookup_table() -> dict[str, str]:
  table = {}
  for key, _, _ in COLUMNS:
    for name in (key,) + ALIASES.get(key, ()):
      table[_norm(name)] = key
  return table


_LOOKUP = _lookup_table()


def canonical(row: Mapping[str, Any]) -> dict[str, Any]:
  """The row with known keys renamed to their canonical names."""
  out = {}
  for k, v in row.items():
    out[_LOOKUP.get(_norm(k), k)] = v
  return out


def _is_missing(v) -> bool:
  if v is None:
    return True
  try:
    return bool(np.all(np.isnan(np.asarray(v, np.float64))))
  except (TypeError, ValueError):
    return False


def _stats(v) -> tuple[float, float | None]:
  """(mean, std or None) of a number, per-seed sequence or {mean, std}."""
  if isinstance(v, Mapping):
    std = v.get("std")
    return float(v["mean"]), (None if std is None else float(std))
  a = np.asarray(v, np.float64)
  if a.ndim == 0:
    return float(a), None
  a = a[~np.isnan(a)]
  return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else None)


def _fmt_number(x: float, kind: str) -> str:
  if kind == "int":
    return str(int(round(x)))
  if kind == "bytes":
    return f"{int(round(x)):,}"
  digits = {"metric": 4, "seconds": 1, "ms": 3}.get(kind, 4)
  return f"{x:.{digits}f}"


def format_cell(v, kind: str) -> str:
  """Markdown text of one value."""
  if _is_missing(v):
    return MISSING
  if kind == "text":
    return str(v).replace("|", "\\|")
  mean, std = _stats(v)
  if math.isnan(mean):
    return MISSING
  s = _fmt_number(mean, kind)
  return s if std is None else f"{s} ± {_fmt_number(std, kind)}"


def _columns(keys: Sequence[str] | None):
  if keys is None:
    return list(COLUMNS)
  by_key = {k: (k, h, f) for k, h, f in COLUMNS}
  cols = []
  for k in keys:
    c = _LOOKUP.get(_norm(k), k)
    cols.append(by_key.get(c, (c, str(k), "metric")))
  return cols


def format_markdown(results: Iterable[Mapping[str, Any]], *,
                    columns: Sequence[str] | None = None) -> str:
  """A GitHub Markdown table; text left-aligned, numbers right-aligned."""
  cols = _columns(columns)
  rows = [canonical(r) for r in results]
  lines = ["| " + " | ".join(h for _, h, _ in cols) + " |",
           "|" + "|".join(":---" if f == "text" else "---:" for _, _, f in cols) + "|"]
  for r in rows:
    lines.append("| " + " | ".join(format_cell(r.get(k), f) for k, _, f in cols)
                 + " |")
  return "\n".join(lines) + "\n"


def format_pivot(results: Iterable[Mapping[str, Any]], key: str) -> str:
  """One metric by code length, the papers' layout: a row per method (in
  first-seen order), a column per code length (ascending); a (method, bits)
  pair the results lack is shown as missing."""
  (key, header, kind), = _columns([key])
  rows = [canonical(r) for r in results]
  methods, bits, cell = [], set(), {}
  for r in rows:
    if r["method"] not in methods:
      methods.append(r["method"])
    bits.add(int(r["bits"]))
    cell[(r["method"], int(r["bits"]))] = r.get(key)
  bits = sorted(bits)
  lines = [f"| Method | " + " | ".join(f"{header}, {b} bits" for b in bits)
           + " |", "|:---|" + "---:|" * len(bits)]
  for m in methods:
    lines.append(f"| {format_cell(m, 'text')} | " + " | ".join(
        format_cell(cell.get((m, b)), kind) for b in bits) + " |")
  return "\n".join(lines) + "\n"


def _csv_number(x: float, kind: str) -> str:
  if kind in ("int", "bytes") and float(x).is_integer():
    return str(int(x))
  return f"{x:.10g}"


def format_csv(results: Iterable[Mapping[str, Any]], *,
               columns: Sequence[str] | None = None) -> str:
  """CSV with canonical keys as the header; ``<key>_std`` after any column
  that has per-seed values; missing values empty."""
  cols = _columns(columns)
  rows = [canonical(r) for r in results]
  header, getters = [], []
  for k, _, f in cols:
    header.append(k)
    if f == "text":
      getters.append(lambda r, k=k: "" if _is_missing(r.get(k)) else str(r[k]))
      continue
    getters.append(lambda r, k=k, f=f: "" if _is_missing(r.get(k))
                   else _csv_number(_stats(r[k])[0], f))
    if any(not _is_missing(r.get(k)) and _stats(r[k])[1] is not None for r in rows):
      header.append(k + "_std")
      getters.append(lambda r, k=k: (
          "" if _is_missing(r.get(k)) or _stats(r[k])[1] is None
          else _csv_number(_stats(r[k])[1], "metric")))
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(header)
  for r in rows:
    w.writerow([g(r) for g in getters])
  return buf.getvalue()


def write_tables(results: Sequence[Mapping[str, Any]], path_prefix: str, *,
                 columns: Sequence[str] | None = None,
                 preamble: str | None = None) -> tuple[str, str]:
  """Writes ``{path_prefix}.md`` (with an optional preamble: command, commit,
  machine, seeds) and ``{path_prefix}.csv``; returns both paths."""
  d = os.path.dirname(path_prefix)
  if d:
    os.makedirs(d, exist_ok=True)
  md = format_markdown(results, columns=columns)
  if preamble:
    md = preamble.rstrip("\n") + "\n\n" + md
  paths = (path_prefix + ".md", path_prefix + ".csv")
  for p, text in zip(paths, (md, format_csv(results, columns=columns))):
    tmp = p + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      f.write(text)
    os.replace(tmp, p)
  return paths
