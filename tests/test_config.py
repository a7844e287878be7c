"""Config plumbing: configs import only the package (no sys.path anywhere),
`key=value` settings are typed exactly as `--config.key=value`, the kwargs
checks live in validate_config, and train/task.py and train/validation.py do
not import each other."""

import ast
import glob
import json
import os
import subprocess
import sys

from absl import flags
import ml_collections
from ml_collections import config_flags
import pytest

from medhash_jax.config import base as config_base
from medhash_jax.config import files as config_files
from medhash_jax.config import overrides
from medhash_jax.config.errors import ConfigError
from medhash_jax.train import defaults
from medhash_jax.train import validation

ROOT = config_files.REPO_ROOT


def _sources(*patterns):
  for pattern in patterns:
    yield from sorted(glob.glob(os.path.join(ROOT, pattern), recursive=True))


# -- no sys.path ------------------------------------------------------------


def _sys_path_uses(path):
  """Lines of `sys.path` (or `from sys import path`) in code, docstrings and
  comments aside."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and node.attr == "path" and
        isinstance(node.value, ast.Name) and node.value.id == "sys"):
      yield node.lineno
    if isinstance(node, ast.ImportFrom) and node.module == "sys" and any(
        a.name == "path" for a in node.names):
      yield node.lineno


def test_no_sys_path_in_configs_or_package():
  """Catches: a config (or the suites) putting the repo root on sys.path to
  import a sibling config again."""
  files = list(_sources("configs/*.py", "medhash_jax/**/*.py"))
  assert len(files) > 50 and any(f.endswith("configs/ath.py") for f in files)
  found = [f"{os.path.relpath(f, ROOT)}:{line}" for f in files
           for line in _sys_path_uses(f)]
  assert not found, f"sys.path used in {found}"


def test_the_sys_path_scan_sees_code_not_prose(tmp_path):
  p = tmp_path / "x.py"
  p.write_text('"""sys.path in a docstring is fine."""\nimport sys\n'
               "# sys.path.insert in a comment too\n"
               "sys.path.insert(0, '.')\nfrom sys import path\n")
  assert sorted(_sys_path_uses(str(p))) == [4, 5]


def test_configs_import_only_the_package():
  """No config imports another config (`configs.*`, relative) or sys."""
  for path in _sources("configs/*.py"):
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        assert node.level == 0, (path, node.lineno)
        names = [node.module]
      else:
        continue
      for name in names:
        assert name.split(".")[0] not in ("configs", "sys"), (path, name)


def test_cli_loads_a_config_without_the_repo_on_sys_path(tmp_path):
  """`--config=configs/x.py:variant` as main.py's flag loads it, in a fresh
  interpreter that can import medhash_jax (a link to this checkout's) but
  not the `configs` folder as a package: a config importing a sibling (the
  old `from configs import common`) fails here."""
  site = tmp_path / "site"
  site.mkdir()
  os.symlink(os.path.join(ROOT, "medhash_jax"), site / "medhash_jax")
  script = (
      "import sys\n"
      "import medhash_jax\n"
      f"assert medhash_jax.__file__.startswith({str(site)!r})\n"
      "try:\n"
      "  import configs\n"
      "  raise SystemExit('configs is importable: the test proves nothing')\n"
      "except ImportError:\n"
      "  pass\n"
      "from absl import flags\n"
      "from ml_collections import config_flags\n"
      f"argv = ['x', '--config={ROOT}/configs/ath.py:se,smoke',"
      " '--config.train.num_steps=7']\n"
      "f = config_flags.DEFINE_config_file('config', sys_argv=argv)\n"
      "flags.FLAGS(argv)\n"
      "c = f.value\n"
      "assert c.method == 'ath-se' and c.model.kwargs.attention == 'se'\n"
      "assert c.train.num_steps == 7 and c.num_bits == 16 and c.is_locked\n"
      "print('ok')\n")
  env = dict(os.environ, PYTHONPATH=str(site))
  out = subprocess.run([sys.executable, "-P", "-c", script], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_files_load_by_path_and_name_unknown_configs():
  c = config_files.get_config("dpsh:smoke")
  assert c.method == "dpsh" and c.num_bits == 16 and c.is_locked
  assert config_files.get_config("ath:cbam").model.kwargs.attention == "cbam"
  with pytest.raises(FileNotFoundError, match="dpshh.*known.*'dpsh'"):
    config_files.get_config("dpshh")
  with pytest.raises(ValueError, match="unknown config variant.*smok"):
    config_files.get_config("mth:smok")


def test_staged_data_root_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("MEDHASH_DATA_DIR", str(tmp_path))
  assert config_base.staged_data_root() == ""
  monkeypatch.delenv("MEDHASH_DATA_DIR")
  staged = os.path.join(os.path.dirname(ROOT), "shared", "data")
  assert config_base.staged_data_root() == (
      staged if os.path.isdir(staged) else "")
  assert config_base.base_config(True).data.root == (
      staged if os.path.isdir(staged) else "")


# -- key=value typed as --config.key=value ------------------------------------


def _by_config_flag(config, settings):
  """The reference: ml_collections' own --config.key=value on `config`."""
  argv = ["ref"] + [f"--cfg.{k}={v}" for k, v in settings]
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_dict("cfg", config, flag_values=fv,
                                           lock_config=False, sys_argv=argv)
  fv(argv)
  return holder.value


TEXT_SETTINGS = [
    ("data.image_size", "32", 32),          # int field
    ("optim.learning_rate", "3", 3.0),       # float field: 3.0, not int 3
    ("optim.learning_rate", "1e-3", 1e-3),
    ("data.augment.hflip", "false", False),  # bool: true/false/1/0
    ("data.augment.vflip", "1", True),
    ("model.dtype", "bfloat16", "bfloat16"),
    ("data.labels_csv", "123", "123"),      # str field: stays text
    ("eval.ks", "(10, None)", (10, None)),   # tuple
    ("eval.ks", "10,50", (10, 50)),
]


@pytest.mark.parametrize("key, text, expected", TEXT_SETTINGS)
def test_text_is_typed_by_the_field_as_config_flags_does(key, text, expected):
  """Catches: literal_eval typing (the old `--set`: "123" became an int on a
  str field, "false" stayed a string on a bool field, "3" an int)."""
  ours = overrides.apply(defaults.default_config(), [(key, text)])
  ref = _by_config_flag(defaults.default_config(), [(key, text)])
  node, ref_node = ours, ref
  for part in key.split("."):
    node, ref_node = node[part], ref_node[part]
  assert node == expected and type(node) is type(expected), (node, expected)
  assert ref_node == node and type(ref_node) is type(node)


def test_several_settings_and_new_kwargs_entries():
  c = defaults.default_config()
  c.model.kwargs = ml_collections.ConfigDict(dict(width=8))
  overrides.apply(c, [("model.kwargs.width", "16"),
                           ("model.kwargs.attention", "se"),
                           ("loss.kwargs.alpha", "0.5"),
                           ("train.num_steps", "9")])
  assert c.model.kwargs.width == 16 and c.model.kwargs.attention == "se"
  assert c.loss.kwargs.alpha == 0.5 and c.train.num_steps == 9


@pytest.mark.parametrize("key, message", [
    ("data.image_sise", "data.image_sise: the config has no 'image_sise'"),
    ("dat.image_size", "dat.image_size: the config has no 'dat'"),
    ("train.num_steps.x", "train.num_steps.x: the config has no 'x'"),
    ("num_bits.kwargs.x", "num_bits.kwargs.x: the config has no 'kwargs'"),
])
def test_unknown_keys_are_refused_naming_them(key, message):
  """Catches: a typo silently added as a new key (only kwargs take new
  entries)."""
  with pytest.raises(KeyError, match=message):
    overrides.apply(defaults.default_config(), [(key, "1")])


def test_a_value_the_field_cannot_hold_names_the_setting():
  with pytest.raises(ValueError, match=r"--set data\.image_size=abc: .*int"):
    overrides.apply(defaults.default_config(),
                         [("data.image_size", "abc")])
  with pytest.raises(ValueError, match=r"--set data\.augment\.hflip=maybe"):
    overrides.apply(defaults.default_config(),
                         [("data.augment.hflip", "maybe")])

def test_python_values_are_set_as_they_are():
  """A library caller's values are not parsed ("16" stays text on a str
  field, 7 on an int field), but still type-checked by the ConfigDict."""
  c = overrides.apply(defaults.default_config(),
                      [("data.image_size", 7), ("data.labels_csv", "16"),
                       ("eval.ks", (10, None)), ("data.image_size", "9")])
  assert c.data.image_size == 9 and c.data.labels_csv == "16"
  assert c.eval.ks == (10, None)
  with pytest.raises(TypeError, match="--set data.image_size=1.5"):
    overrides.apply(c, [("data.image_size", 1.5)])


def test_a_saved_config_from_json_takes_tuple_settings():
  """A run's saved config has lists for tuples (JSON); eval.ks=... still
  parses (ml_collections parses tuples only)."""
  c = ml_collections.ConfigDict(json.loads(json.dumps(
      defaults.default_config().to_dict())))
  assert isinstance(c.eval.ks, list)
  overrides.apply(c, [("eval.ks", "(5, None)")])
  assert c.eval.ks == (5, None)


def test_split_setting():
  split = overrides.split_setting
  assert split("data.image_size=32") == ("data.image_size", "32")
  assert split(" data.root = /a=b ") == ("data.root", "/a=b")
  assert split("model.dtype=") == ("model.dtype", "")
  for bad in ("data.image_size", "=3", "data image_size=3"):
    with pytest.raises(ValueError, match=f"{bad!r}: expected key=value"):
      split(bad)


def test_set_value_keeps_the_config_dict_type_check():
  c = defaults.default_config()
  overrides.set_value(c, "data.image_size", 48)
  assert c.data.image_size == 48
  with pytest.raises(TypeError, match="suite x: data.image_size='big'"):
    overrides.set_value(c, "data.image_size", "big", "suite x:")
  with pytest.raises(KeyError, match="data.image_sise"):
    overrides.set_value(c, "data.image_sise", 48)


# -- kwargs checked once, in validate_config ---------------------------------


def _dpsh(**kwargs):
  c = ml_collections.ConfigDict(
      config_files.get_config("dpsh:smoke").to_dict())
  for k, v in kwargs.items():
    overrides.set_value(c, k, v)
  return c


@pytest.mark.parametrize("setting, message", [
    ({"model.kwargs.depth": 3},
     r"model.kwargs \['depth'\] are not arguments of model 'resnet18'"),
    ({"model.kwargs.num_bits": 8}, r"model.kwargs \['num_bits'\] are set by"),
    ({"loss.kwargs.gamma": 1.0},
     r"loss.kwargs \['gamma'\] are not hyper-parameters of loss 'dpsh'"),
])
def test_validate_config_checks_model_and_loss_kwargs(setting, message):
  with pytest.raises(ConfigError, match=message):
    validation.validate_config(_dpsh(**setting))


def test_validate_config_accepts_real_kwargs():
  validation.validate_config(_dpsh(**{"model.kwargs.attention": "se",
                                      "model.kwargs.class_head": True,
                                      "loss.kwargs.alpha": 0.5}))


def test_config_error_is_one_class_everywhere():
  from medhash_jax import train  # pylint: disable=g-import-not-at-top
  from medhash_jax.train import task  # pylint: disable=g-import-not-at-top
  assert validation.ConfigError is ConfigError is train.ConfigError
  assert task.ConfigError is ConfigError and issubclass(ConfigError, ValueError)


# -- no import cycle between task and validation ------------------------------


def _module_imports(module: str):
  """medhash_jax modules `module`'s own source imports (top-level or inside
  functions); `from P import N` counts as P.N when that is a module. Parent
  packages' __init__ files are not followed (they re-export, they are not
  what a module depends on)."""
  rel = module.replace(".", os.sep)
  path = os.path.join(ROOT, rel + ".py")
  if not os.path.exists(path):
    path = os.path.join(ROOT, rel, "__init__.py")
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)

  def is_module(name):
    p = os.path.join(ROOT, name.replace(".", os.sep))
    return os.path.exists(p + ".py") or os.path.exists(
        os.path.join(p, "__init__.py"))

  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("medhash_jax")}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
        "medhash_jax"):
      for a in node.names:
        full = f"{node.module}.{a.name}"
        out.add(full if is_module(full) else node.module)
  return out


def _reaches(start: str, target: str):
  seen, todo = {start: None}, [start]
  while todo:
    m = todo.pop()
    for n in _module_imports(m):
      if n not in seen:
        seen[n] = m
        todo.append(n)
  if target not in seen:
    return None
  path, m = [], target
  while m is not None:
    path.append(m)
    m = seen[m]
  return path[::-1]


def test_task_and_validation_do_not_import_each_other():
  """Catches: task.py taking ConfigError (or anything) from validation.py
  while validation.py imports task.py for the kwargs checks (the old
  cycle), directly or through another module."""
  task, valid = "medhash_jax.train.task", "medhash_jax.train.validation"
  assert valid not in _module_imports(task)
  assert task not in _module_imports(valid)
  assert "medhash_jax.config.errors" in _module_imports(task)
  there, back = _reaches(task, valid), _reaches(valid, task)
  assert there is None or back is None, (there, back)
  assert back is None, f"validation reaches task: {back}"
