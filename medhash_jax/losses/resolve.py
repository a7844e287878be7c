"""Losses from outside the package: `loss.name` specs, `register`, `loss.terms`.

A `loss.name` is one of
  dpsh                      a registered name (`LOSSES`, or `register(name)`)
  my_pkg.my_losses:my_loss  a function of an importable module
  path/to/my_loss.py:fn     a function of a Python file, loaded by path
                            (importlib, never through sys.path)

and the function follows the package's calling convention (__init__.py):
keyword-only inputs (codes, labels, features, logits, triplets, label_mask,
code_logits) it declares, then its own hyper-parameters, returning
(scalar loss, {term: scalar}). `resolve_loss(spec)` returns it wrapped like a
registered loss (unknown hyper-parameter -> TypeError, missing input ->
ValueError) with a source record: for a module or a file, its path and the
sha256 of its bytes, which the trainer writes into `config.loss.source` (so
config.json and results.json name the exact code that trained the run; the
loss is needed only to train, never to encode, search or serve).

`loss.terms` composes losses: a list of {name, weight, kwargs} summed into
one objective, each term's value reported under its label (the registered
name, or the function's name for a spec), see `compose`.
"""

import hashlib
import importlib
import importlib.util
import inspect
import os
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

from medhash_jax.losses import registry

# `loss.name` when the objective is `loss.terms`.
TERMS = "terms"
TERM_KEYS = ("name", "weight", "kwargs")

_BUILTIN = frozenset(registry.LOSSES)
_USER_SOURCES: Dict[str, Dict[str, Any]] = {}   # register()ed name -> source
_FILE_MODULES: Dict[Tuple[str, str], Any] = {}  # (path, sha256) -> module


class LossSpecError(ValueError):
  """A `loss.name` / `loss.terms` entry that does not name a usable loss."""


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _source_of(fn: Callable) -> Dict[str, Any]:
  try:
    path = inspect.getsourcefile(fn)
  except TypeError:
    path = None
  out = {"module": getattr(fn, "__module__", None),
         "function": getattr(fn, "__qualname__", repr(fn))}
  if path and os.path.isfile(path):
    out.update(path=os.path.abspath(path), sha256=_sha256(path))
  return out


def register(name: str, *, overwrite: bool = False):
  """Decorator: `@register("my_loss")` makes `loss.name="my_loss"` work.

  The module defining the function must be imported before the config is
  validated (import it from your config file). Built-in names cannot be
  replaced; a second function under the same user name raises unless
  `overwrite` (re-running the same definition, e.g. a notebook cell or a
  re-imported module, replaces it).
  """
  if not isinstance(name, str) or not name or ":" in name:
    raise LossSpecError(f"register: a loss name is a non-empty string "
                        f"without ':', got {name!r}")
  if name in _BUILTIN:
    raise LossSpecError(f"register: {name!r} is a built-in loss; choose "
                        "another name")

  def deco(fn):
    _check_convention(fn, f"register({name!r})")
    old = registry.LOSSES.get(name)
    if old is not None and not overwrite:
      same = (getattr(old, "__qualname__", None) == fn.__qualname__ and
              getattr(old, "__module__", None) == fn.__module__)
      if not same:
        raise LossSpecError(
            f"register: {name!r} is already registered by "
            f"{old.__module__}.{old.__qualname__}; pass overwrite=True")
    registry.LOSSES[name] = registry.uniform(fn, name)
    _USER_SOURCES[name] = _source_of(fn)
    return fn

  return deco


def _check_convention(obj, where: str):
  """Callable, every parameter passable by keyword, takes a loss input."""
  if not callable(obj):
    raise LossSpecError(f"{where} is a {type(obj).__name__}, not a function")
  try:
    sig = inspect.signature(obj)
  except (TypeError, ValueError) as e:
    raise LossSpecError(f"{where}: no inspectable signature ({e})") from e
  bad = [n for n, p in sig.parameters.items()
         if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL, p.VAR_KEYWORD)]
  if bad:
    raise LossSpecError(
        f"{where}: parameters {bad} cannot be passed by keyword (or are "
        "*args/**kwargs); a loss takes keyword-only inputs and hyper-"
        f"parameters: def fn(*, codes, labels, ..., my_weight=1.0)")
  if not any(n in sig.parameters for n in registry.INPUTS):
    raise LossSpecError(f"{where}: takes none of the loss inputs "
                        f"{list(registry.INPUTS)}; parameters are "
                        f"{list(sig.parameters)}")


def _load_file(path: str, spec: str):
  if not os.path.isfile(path):
    raise LossSpecError(f"loss {spec!r}: file {path} does not exist")
  sha = _sha256(path)
  key = (path, sha)
  if key not in _FILE_MODULES:
    # A private module name per (file, content): two files named my_loss.py
    # never collide, and an edited file is loaded again.
    name = f"medhash_user_loss_{sha[:16]}"
    mspec = importlib.util.spec_from_file_location(name, path)
    if mspec is None or mspec.loader is None:
      raise LossSpecError(f"loss {spec!r}: {path} cannot be loaded as Python")
    module = importlib.util.module_from_spec(mspec)
    try:
      mspec.loader.exec_module(module)
    except Exception as e:  # pylint: disable=broad-except
      raise LossSpecError(f"loss {spec!r}: importing {path} failed: "
                          f"{type(e).__name__}: {e}") from e
    _FILE_MODULES[key] = module
  return _FILE_MODULES[key], {"path": path, "sha256": sha}


def _load_module(target: str, spec: str):
  try:
    module = importlib.import_module(target)
  except ImportError as e:
    raise LossSpecError(f"loss {spec!r}: cannot import module {target!r} "
                        f"({e}); for a file write path/to/file.py:function")
  path = getattr(module, "__file__", None)
  src = {"module": target}
  if path and os.path.isfile(path):
    src.update(path=os.path.abspath(path), sha256=_sha256(path))
  return module, src


def is_file_spec(target: str) -> bool:
  return target.endswith(".py") or "/" in target or os.sep in target


def resolve_loss(spec: str) -> Tuple[registry.LossFn, Dict[str, Any]]:
  """(loss function with the uniform convention, source record) of a spec.

  Raises:
    LossSpecError naming the spec, the file and the function when the spec
    names no loss: an unknown name, a missing file or module, a missing or
    non-callable attribute, a signature outside the convention.
  """
  if not isinstance(spec, str) or not spec:
    raise LossSpecError(f"loss.name must be a non-empty string, got {spec!r}")
  if spec in registry.LOSSES:
    src = {"name": spec, "kind": "registered"}
    if spec in _USER_SOURCES:
      src.update(_USER_SOURCES[spec])
    return registry.LOSSES[spec], src
  if ":" not in spec:
    raise LossSpecError(
        f"unknown loss {spec!r}; a loss.name is a registered name (one of "
        f"{', '.join(sorted(registry.LOSSES))}), package.module:function or "
        "path/to/file.py:function")
  target, func = spec.rsplit(":", 1)
  if is_file_spec(target):
    path = os.path.abspath(os.path.expanduser(target))
    module, src = _load_file(path, spec)
    kind, where = "file", f"{path}:{func}"
  else:
    module, src = _load_module(target, spec)
    kind, where = "module", f"module {target}:{func}"
  if not func.isidentifier():
    raise LossSpecError(f"loss {spec!r}: {func!r} is not a function name")
  if not hasattr(module, func):
    defined = sorted(n for n, v in vars(module).items()
                     if callable(v) and not n.startswith("_") and
                     getattr(v, "__module__", None) == module.__name__)
    raise LossSpecError(f"loss {spec!r}: {where} -- there is no {func!r} "
                        f"there; functions defined: {defined}")
  obj = getattr(module, func)
  _check_convention(obj, f"loss {spec!r} ({where})")
  fn = registry.uniform(_checked_result(obj, spec), spec)
  return fn, {"name": spec, "kind": kind, "function": func, **src}


def _checked_result(fn: Callable, spec: str) -> Callable:
  """The user function, whose result must be (scalar, dict) or a scalar."""
  import functools  # pylint: disable=g-import-not-at-top

  @functools.wraps(fn)
  def call(**kwargs):
    res = fn(**kwargs)
    loss, terms = res if isinstance(res, tuple) and len(res) == 2 else (res, {})
    if not isinstance(terms, Mapping) or getattr(loss, "shape", None) != ():
      raise TypeError(
          f"loss {spec!r} must return (scalar loss, dict of scalar terms); "
          f"got {type(res).__name__} with loss shape "
          f"{getattr(loss, 'shape', None)}")
    return loss, dict(terms)

  return call


def resolve_objective(loss_config) -> Tuple[registry.LossFn, List[Dict]]:
  """The loss a config trains and its source records.

  `loss_config` is `config.loss`: either `name` (+ `kwargs`) or, with
  `name="terms"`, the list `terms` of {name, weight, kwargs}.
  """
  terms = tuple(loss_config.get("terms", ()) or ())
  name = loss_config.get("name")
  if not terms:
    if name == TERMS:
      raise LossSpecError("loss.name='terms' but loss.terms is empty")
    fn, src = resolve_loss(name)
    return fn, [src]
  if name != TERMS:
    raise LossSpecError(
        f"loss.terms is set, so loss.name must be {TERMS!r} (it is "
        f"{name!r}); put {name!r} in the list as one of the terms")
  kwargs = loss_config.get("kwargs", {}) or {}
  if len(kwargs):
    raise LossSpecError(
        f"loss.kwargs {sorted(kwargs)} with loss.terms: give each term its "
        "own kwargs, {name, weight, kwargs}")
  return compose(terms)


def _term_entries(terms: Sequence[Any]):
  out = []
  for i, t in enumerate(terms):
    where = f"loss.terms[{i}]"
    if hasattr(t, "to_dict"):
      t = t.to_dict()
    if not isinstance(t, Mapping):
      raise LossSpecError(f"{where} must be a dict {{name, weight, kwargs}}, "
                          f"got {t!r}")
    unknown = sorted(set(t) - set(TERM_KEYS))
    if unknown or "name" not in t:
      raise LossSpecError(f"{where}: keys are {list(TERM_KEYS)} (name "
                          f"required); got {sorted(t)}")
    weight = t.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
      raise LossSpecError(f"{where}.weight must be a number, got {weight!r}")
    kw = t.get("kwargs", {}) or {}
    if hasattr(kw, "to_dict"):
      kw = kw.to_dict()
    if not isinstance(kw, Mapping):
      raise LossSpecError(f"{where}.kwargs must be a dict, got {kw!r}")
    out.append((where, str(t["name"]), float(weight), dict(kw)))
  return out


def term_label(spec: str) -> str:
  """The name a term is logged under: `dpsh`, or `my_loss` for `f.py:my_loss`."""
  return spec.rsplit(":", 1)[-1]


def compose(terms: Sequence[Any]) -> Tuple[registry.LossFn, List[Dict]]:
  """sum_i weight_i * loss_i(inputs, **kwargs_i), with the uniform convention.

  Terms dict: `{label: unweighted loss_i}` plus `{label/term: value}` for the
  terms each loss reports. Hyper-parameters of the composition (what
  `loss.kwargs`-style overrides, e.g. a sweep, may set): `label.weight` and
  `label.<kwarg>` for each term's own hyper-parameters.
  """
  entries = _term_entries(terms)
  parts, sources, hyper = [], [], {}
  for where, spec, weight, kw in entries:
    try:
      fn, src = resolve_loss(spec)
    except LossSpecError as e:
      raise LossSpecError(f"{where}: {e}") from e
    label = term_label(spec)
    if any(p[0] == label for p in parts):
      raise LossSpecError(f"{where}: a second term logged as {label!r}; "
                          "each loss may appear once in loss.terms")
    own = getattr(fn, "hyperparameters", {})
    bad = sorted(set(kw) - set(own))
    if bad:
      raise LossSpecError(
          f"{where}.kwargs {bad} are not hyper-parameters of loss {spec!r}"
          f"{_where(src)}; valid: {sorted(own)}")
    parts.append((label, fn, weight, kw))
    sources.append({**src, "weight": weight})
    hyper[f"{label}.weight"] = weight
    hyper.update({f"{label}.{k}": kw.get(k, v) for k, v in own.items()})
  takes = tuple(n for n in registry.INPUTS
                if any(n in p[1].inputs for p in parts))
  required = tuple(n for n in registry.INPUTS
                   if any(n in p[1].required_inputs for p in parts))

  def composite(**kwargs):
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k not in
                 registry.INPUTS}
    unknown = sorted(set(overrides) - set(hyper))
    if unknown:
      raise TypeError(f"loss.terms got unknown hyper-parameters {unknown}; "
                      f"valid: {sorted(hyper)}")
    total, out = 0.0, {}
    for label, fn, weight, kw in parts:
      own = dict(kw)
      own.update({k[len(label) + 1:]: v for k, v in overrides.items()
                  if k.startswith(label + ".") and k != f"{label}.weight"})
      w = overrides.get(f"{label}.weight", weight)
      inputs = {k: v for k, v in kwargs.items() if k in fn.inputs}
      loss, sub = fn(**inputs, **own)
      total = total + w * loss
      out[label] = loss
      out.update({f"{label}/{k}": v for k, v in sub.items()})
    return total, out

  composite.loss_name = TERMS
  composite.inputs = takes
  composite.required_inputs = required
  composite.hyperparameters = hyper
  composite.terms = tuple((p[0], p[2]) for p in parts)
  return composite, sources


def _where(src: Mapping[str, Any]) -> str:
  return f" ({src['path']})" if src.get("path") else ""


def describe(src: Mapping[str, Any]) -> str:
  """'path/to/f.py:fn (sha256 1a2b3c...)' or the registered name."""
  if src.get("path"):
    return f"{src['path']}:{src.get('function', '')} (sha256 {src['sha256'][:12]})"
  return str(src.get("name"))
