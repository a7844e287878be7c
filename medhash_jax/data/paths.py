"""Where data lives, and fetching MedMNIST files.

Root resolution, first that is set wins:
  1. ``config.data.root``;
  2. the environment variable ``$MEDHASH_DATA_DIR``;
  3. ``~/.cache/medhash_jax``.

A dataset lives in a sub-folder of the root named after it (several spellings
are accepted per dataset, see each source), or ``config.data.path`` names the
dataset folder directly. MedMNIST files missing under the root are downloaded
from the official Zenodo record with an md5 check when ``data.download`` is on
and the network allows; otherwise the error says which file to put where.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from typing import Iterable, Sequence

from absl import logging

from medhash_jax.data.records import DataNotFoundError

ENV_VAR = "MEDHASH_DATA_DIR"
DEFAULT_ROOT = os.path.join("~", ".cache", "medhash_jax")


def resolve_root(root: str | os.PathLike | None = None) -> str:
  """The data root: ``root`` if given, else $MEDHASH_DATA_DIR, else the cache."""
  if root:
    return os.path.abspath(os.path.expanduser(os.fspath(root)))
  env = os.environ.get(ENV_VAR)
  if env:
    return os.path.abspath(os.path.expanduser(env))
  return os.path.abspath(os.path.expanduser(DEFAULT_ROOT))


def find_dataset_dir(name: str, *, root: str | None = None,
                     path: str | None = None,
                     candidates: Sequence[str] = (),
                     markers: Iterable[str] = ()) -> str:
  """Finds a dataset's folder.

  Args:
    name: dataset name, for messages.
    root: the data root (resolved with :func:`resolve_root`).
    path: explicit dataset folder (``config.data.path``); wins when set.
    candidates: sub-folder names of the root to try, in order.
    markers: file names; the root itself is accepted as the dataset folder
      when one of them is directly inside it.

  Raises:
    DataNotFoundError: listing every place that was tried.
  """
  if path:
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isdir(path):
      raise DataNotFoundError(f"{name}: data.path={path} is not a folder.")
    return path
  root = resolve_root(root)
  tried = []
  for cand in candidates or (name,):
    d = os.path.join(root, cand)
    tried.append(d)
    if os.path.isdir(d):
      return d
  for m in markers:
    if os.path.exists(os.path.join(root, m)):
      return root
  raise DataNotFoundError(
      f"{name}: dataset folder not found; looked for {tried}"
      + (f" and for {list(markers)} directly in {root}" if markers else "")
      + f". Put the data there, or set config.data.root / ${ENV_VAR} to the "
      "folder that holds it, or config.data.path to the dataset folder itself.")


def md5_of(path: str, chunk: int = 1 << 22) -> str:
  h = hashlib.md5()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      h.update(block)
  return h.hexdigest()


def download(url: str, dest: str, *, md5: str | None, timeout: float = 30.0) -> str:
  """Downloads ``url`` to ``dest`` atomically, checking the md5 when given."""
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
      shutil.copyfileobj(r, out, length=1 << 22)
    if md5 is not None:
      got = md5_of(tmp)
      if got != md5:
        raise OSError(f"md5 mismatch for {url}: got {got}, expected {md5}")
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return dest


def ensure_file(name: str, *, filename: str, search_dirs: Sequence[str],
                download_dir: str, url: str | None, md5: str | None,
                allow_download: bool) -> str:
  """Returns the path of ``filename`` in the first of ``search_dirs`` holding it.

  Downloads it into ``download_dir`` when absent and allowed.

  Raises:
    DataNotFoundError: naming the file, the folder to put it in, and why the
      download did not happen.
  """
  for d in search_dirs:
    p = os.path.join(d, filename)
    if os.path.isfile(p):
      return p
  why = "downloads are off (config.data.download=False)"
  if allow_download and url:
    dest = os.path.join(download_dir, filename)
    logging.info("%s: downloading %s to %s", name, url, dest)
    try:
      return download(url, dest, md5=md5)
    except Exception as e:  # pylint: disable=broad-except
      why = f"the download from {url} failed ({type(e).__name__}: {e})"
  raise DataNotFoundError(
      f"{name}: file {filename} not found in {list(search_dirs)} and {why}. "
      f"Put {filename} into {download_dir}"
      + (f" (official copy: {url}, md5 {md5})" if url else "") + ".")
