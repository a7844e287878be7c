"""Timing shared by the benchmarks: interleaved rounds, medians, spreads.

A ratio to a peer is only meaningful when both ran under the same load: each
round runs every contender once, in turn, so a noisy moment hits all of them
alike. Reported: the median over rounds and the spread (min-max), and for a
ratio the median of the per-round ratios with their min-max.
"""

import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np


def interleaved_rounds(contenders: Dict[str, Callable[[int], object]],
                       rounds: int, warmup: bool = True
                       ) -> Tuple[Dict[str, List[float]], Dict[str, object]]:
  """({name: seconds of each round}, {name: last result});
  contenders[name](r) runs round r's call."""
  last = {}
  if warmup:
    for name, fn in contenders.items():   # compilation, first touch
      last[name] = fn(0)
  times = {name: [] for name in contenders}
  for r in range(rounds):
    for name, fn in contenders.items():
      t0 = time.perf_counter()
      last[name] = fn(r)
      times[name].append(time.perf_counter() - t0)
  return times, last


def median_spread(values: Sequence[float]) -> Tuple[float, float, float]:
  """(median, min, max)."""
  v = np.asarray(values, np.float64)
  return float(np.median(v)), float(v.min()), float(v.max())


def ratio_spread(ours: Sequence[float], peer: Sequence[float]
                 ) -> Tuple[float, float, float]:
  """Speed of ours over the peer, round by round (peer seconds / our
  seconds): (median, min, max) over the rounds."""
  r = np.asarray(peer, np.float64) / np.asarray(ours, np.float64)
  return median_spread(r)


def fmt(stats: Tuple[float, float, float], spec: str = ".2f") -> str:
  """'6.20 (5.90-6.41)'."""
  m, lo, hi = stats
  return f"{m:{spec}} ({lo:{spec}}-{hi:{spec}})"
