"""Source registry: ``get_source(name, **kwargs)``; unknown names fail loudly.

Names: every MedMNIST 2D flag ("breastmnist", "pneumoniamnist", "chestmnist",
...), "chestxray14" (alias "chestxray8"), "chexpert", "ham10000",
"covid19_radiography", "folder". Keyword arguments are the source options
(``root``, ``path``, ``skip_bad``, ``verify``, ...); options another source
understands are ignored, so one data config serves every source.
"""

from __future__ import annotations

from typing import Any, Callable

from medhash_jax.data import medmnist
from medhash_jax.data.chestxray14 import ChestXray14Source
from medhash_jax.data.chexpert import CheXpertSource
from medhash_jax.data.folders import FolderSource, covid19_radiography
from medhash_jax.data.ham10000 import HAM10000Source
from medhash_jax.data.records import ImageSource

_REGISTRY: dict[str, Callable[..., ImageSource]] = {}


def register(name: str, factory: Callable[..., ImageSource]) -> None:
  if name in _REGISTRY:
    raise ValueError(f"data source {name!r} is already registered")
  _REGISTRY[name] = factory


def _medmnist_factory(flag: str):
  def make(*, medmnist_size: int = 28, size: int | None = None, **kwargs):
    return medmnist.MedMNISTSource(flag, size=size or medmnist_size, **kwargs)
  make.__name__ = f"medmnist_{flag}"
  return make


for _flag in medmnist.MEDMNIST_2D:
  register(_flag, _medmnist_factory(_flag))
register("chestxray14", ChestXray14Source)
register("chestxray8", ChestXray14Source)
register("chexpert", CheXpertSource)
register("ham10000", HAM10000Source)
register("covid19_radiography", covid19_radiography)
register("folder", FolderSource)


def source_names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def get_source(name: str, **kwargs: Any) -> ImageSource:
  """Builds the source registered as ``name``.

  Raises:
    ValueError: ``name`` is not registered (the message lists the names).
  """
  key = name.lower()
  if key not in _REGISTRY:
    raise ValueError(f"unknown data source {name!r}; registered sources: "
                     f"{', '.join(source_names())}")
  return _REGISTRY[key](**kwargs)
