"""`key=value` settings on a config, typed as `--config.key=value` types them.

`--config.key=value` only exists where there is a config file flag; the
evaluate/encode/search modes (a saved run, no config file) and the experiment
suites (`--set`, applied to every method's config) take `key=value` text
instead. That text is parsed here by ml_collections' own machinery: the
config is bound to a private absl flag set with
`config_flags.DEFINE_config_dict` and the settings are parsed as
`--config.key=value`, so the field's current type picks the parser (int,
float, bool as true/false/1/0, tuple as "(10, None)" or "10,20", str as-is)
exactly as on the training command line; a value the type cannot hold fails
naming the key.

`apply` takes (key, value) pairs: text is parsed so; a Python value (a
library caller's) is set as it is, under the ConfigDict's own type check.
Keys must exist, except new entries of the free-form `model.kwargs` /
`loss.kwargs` (they are checked against the model's and loss's signatures by
`validate_config`); those are parsed as Python literals, else strings
(ml_collections' rule for new attributes).
"""

from typing import Any, Iterable, Tuple

from absl import flags
import ml_collections
from ml_collections import config_flags

_FLAG = "config"


def split_setting(text: str, source: str = "--set") -> Tuple[str, str]:
  """'data.image_size=32' -> ("data.image_size", "32") (the value as text)."""
  key, sep, value = text.partition("=")
  key = key.strip()
  if not sep or not key or " " in key:
    raise ValueError(f"{source} {text!r}: expected key=value, e.g. "
                     "data.image_size=32")
  return key, value.strip()


def check_key(config: ml_collections.ConfigDict, key: str,
              source: str = "--set") -> Tuple[ml_collections.ConfigDict, str]:
  """(the dict holding `key`, its last part); KeyError naming `key` unless
  the config has it (or it is a new entry directly under a `kwargs` dict)."""
  node = config
  *path, last = key.split(".")
  for p in path:
    if not isinstance(node, ml_collections.ConfigDict) or p not in node:
      raise KeyError(f"{source} {key}: the config has no {p!r}")
    node = node[p]
  if not isinstance(node, ml_collections.ConfigDict) or (
      last not in node and not (path and path[-1] == "kwargs")):
    raise KeyError(f"{source} {key}: the config has no {last!r}")
  return node, last


def set_value(config: ml_collections.ConfigDict, key: str, value: Any,
              source: str = "override") -> None:
  """A Python value, not parsed (a suite's own overrides); the ConfigDict's
  type check applies (an int field refuses a string)."""
  node, last = check_key(config, key, source)
  try:
    node[last] = value
  except TypeError as e:
    raise TypeError(f"{source} {key}={value!r}: {e}") from e


def apply(config: ml_collections.ConfigDict,
          settings: Iterable[Tuple[str, Any]],
          source: str = "--set") -> ml_collections.ConfigDict:
  """Sets each (key, value) on `config` (unlocked; changed in place and
  returned), in order. Text is parsed by the field's type as
  `--config.key=text` would be; any other value (a caller's Python value) is
  set as it is, under the ConfigDict's type check (`set_value`)."""
  for key, value in settings:
    if isinstance(value, str):
      _parse_text(config, key, value, source)
    else:
      set_value(config, key, value, source)
  return config


def _parse_text(config, key: str, text: str, source: str) -> None:
  _list_to_tuple(*check_key(config, key, source))
  argv = ["overrides", f"--{_FLAG}.{key}={text}"]
  flag_values = flags.FlagValues()
  try:
    # accept_new_attributes only reaches the kwargs entries check_key let
    # through; existing fields keep their own type's parser.
    config_flags.DEFINE_config_dict(
        _FLAG, config, flag_values=flag_values, lock_config=False,
        accept_new_attributes=True, sys_argv=argv)
    flag_values(argv)
  except (flags.Error, TypeError, ValueError) as e:
    raise ValueError(f"{source} {_name_the_setting(e, key)}") from e


def _list_to_tuple(node: ml_collections.ConfigDict, last: str) -> None:
  """A run's saved config comes back from JSON with lists where the schema
  has tuples (eval.ks); ml_collections parses only tuples, so the field is
  made a tuple again (the ConfigDict keeps a field's first type)."""
  if last in node and isinstance(node[last], list):
    value = tuple(node[last])
    del node[last]
    node[last] = value


def _name_the_setting(error: Exception, key: str) -> str:
  """absl says `flag --config.KEY=VALUE: why`; say `KEY=VALUE: why`."""
  text = str(error)
  for prefix in (f"flag --{_FLAG}.", f"--{_FLAG}.", f"{_FLAG}."):
    text = text.replace(prefix, "")
  return text if key in text else f"{key}: {text}"
