"""Sweeps in one program: V variants of one architecture trained under vmap.

  run_sweep(config, {"seed": [0, 1, 2], "loss.kwargs.alpha": [0.05, 0.1]}, W)

trains the product of the listed values (here 6 variants) with `jax.vmap`
over parameters, optimizer states, BatchNorm statistics, root keys and the
swept scalars: one compiled step updates every variant. What may be swept
(`SWEEPABLE`): `seed` (initialisation, data order, augmentation and step
keys, one input pipeline per distinct seed), numeric `loss.kwargs.<name>`,
`loss.terms.<label>.weight` / `loss.terms.<label>.<kwarg>` of a
composition, and `optim.learning_rate` (every schedule here is linear in
it and the optimizer states are lr-free, so a variant's updates are the base
updates times lr_v / lr). Keys that change shapes, the architecture or the
program (num_bits, model.*, data.*, train.batch_size, optim.name, ...) are
refused, naming them.

Each variant is a run of its own, `W/variants/<name>/`: its config, its
metrics.jsonl, selection on val every `train.eval_every_steps` (best/ and
best.json), results.json, index and run files, so `open_run`, search and
the server work on it as on any run. `W/sweep.json` and `W/sweep.md` rank
the variants by the val selection metric (tie-aware by default) and show
their tie-aware test metrics.

Memory: the V-variant step is compiled once; when XLA's memory analysis of
it exceeds the device's budget, the variants run in groups that fit (or set
`group_size`). Single process only (a multi-host sweep would need a 2-D
mesh).
"""

import ast
import copy
import itertools
import json
import math
import os
import re
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from medhash_jax import data as data_lib
from medhash_jax.train import checkpoint as ckpt_lib
from medhash_jax.train import defaults
from medhash_jax.train import fit as fit_lib
from medhash_jax.train import loop
from medhash_jax.train import mesh as mesh_lib
from medhash_jax.train import state as state_lib
from medhash_jax.train import step as step_lib
from medhash_jax.train import validation
from medhash_jax.train import writers as writers_lib

SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"
VARIANTS_DIR = "variants"
SWEEPABLE = ("seed", "loss.kwargs.<name>", "loss.terms.<label>.weight",
             "loss.terms.<label>.<kwarg>", "optim.learning_rate")
_HYPER = "_sweep/"   # batch keys that carry swept loss hyper-parameters
_LR = "_sweep_lr_ratio"


class SweepError(validation.ConfigError):
  """A sweep that cannot run as one vmapped program."""


# -- the sweep specification ---------------------------------------------------


def parse_sweep(args: Sequence[str]) -> Dict[str, List[Any]]:
  """["seed=0,1", "loss.kwargs.alpha=0.05,0.1"] -> {key: [values]}."""
  out = {}
  for arg in args:
    key, sep, values = arg.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
      raise SweepError(f"--sweep={arg!r}: write key=v1,v2,...")
    if key in out:
      raise SweepError(f"--sweep key {key!r} is given twice")
    parsed = []
    for v in values.split(","):
      try:
        parsed.append(ast.literal_eval(v.strip()))
      except (ValueError, SyntaxError) as e:
        raise SweepError(f"--sweep {key}: {v!r} is not a number") from e
    out[key] = parsed
  return out


def _numeric(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _term_labels(config) -> List[str]:
  from medhash_jax.losses import resolve  # pylint: disable=g-import-not-at-top
  return [resolve.term_label(str(dict(t)["name"])) for t in config.loss.terms]


def check_sweep(config, sweep: Mapping[str, Sequence[Any]]) -> None:
  """Refuses keys that cannot be vmapped, naming every one and why."""
  if not sweep:
    raise SweepError("no --sweep key given")
  shape_keys, other, bad_values = [], [], []
  labels = _term_labels(config)
  for key, values in sweep.items():
    if not values:
      bad_values.append(f"{key}: no values")
      continue
    if key == "seed":
      if not all(isinstance(v, int) and not isinstance(v, bool)
                 for v in values):
        bad_values.append(f"seed: integers, got {list(values)}")
    elif key.startswith("loss.kwargs.") or key == "optim.learning_rate" or (
        key.startswith("loss.terms.") and key.split(".")[2:3] and
        key.split(".")[2] in labels and len(key.split(".")) == 4):
      if not all(_numeric(v) for v in values):
        bad_values.append(f"{key}: numbers only (a string or bool changes "
                          f"the program), got {list(values)}")
      if key == "optim.learning_rate" and not all(
          _numeric(v) and v > 0 for v in values):
        bad_values.append(f"{key}: must be > 0, got {list(values)}")
    elif key.startswith("loss.terms."):
      other.append(f"{key} (terms are {labels}: write "
                   "loss.terms.<label>.weight or .<kwarg>)")
    elif (defaults.key_class(key) == defaults.MODEL or key in (
        "train.batch_size", "train.num_steps", "data.sampling") or
          key.startswith("data.")):
      shape_keys.append(key)
    else:
      other.append(key)
  msgs = []
  if shape_keys:
    msgs.append(f"{shape_keys} change shapes or the architecture (one "
                "compiled program trains every variant); run one sweep per "
                "value")
  if other:
    msgs.append(f"{other} cannot be vmapped; sweepable: {list(SWEEPABLE)}")
  if bad_values:
    msgs.append("; ".join(bad_values))
  if msgs:
    raise SweepError("sweep refused: " + ". ".join(msgs))


def expand(sweep: Mapping[str, Sequence[Any]]) -> List[Dict[str, Any]]:
  """The product of the listed values, in the order given (last key fastest)."""
  keys = list(sweep)
  return [dict(zip(keys, combo))
          for combo in itertools.product(*(sweep[k] for k in keys))]


def variant_name(i: int, assign: Mapping[str, Any]) -> str:
  """'v03-seed=1-alpha=0.1': index first (sorts), then the swept values."""
  parts = [f"{k.rsplit('.', 1)[-1] if not k.startswith('loss.terms.') else '.'.join(k.split('.')[2:])}={v}"
           for k, v in assign.items()]
  name = "-".join([f"v{i:02d}"] + parts)
  return re.sub(r"[^A-Za-z0-9_.=+-]", "_", name)


def variant_config(config, assign: Mapping[str, Any]):
  """A copy of `config` with the swept values set (a run config of its own)."""
  c = copy.deepcopy(config)
  with c.unlocked():
    for key, v in assign.items():
      if key.startswith("loss.kwargs."):
        kw = c.loss.kwargs.to_dict()
        kw[key[len("loss.kwargs."):]] = v
        c.loss.kwargs = ml_collections.ConfigDict(kw)
      elif key.startswith("loss.terms."):
        _, _, label, field = key.split(".")
        terms = [dict(t) for t in c.loss.terms]
        for t in terms:
          if _term_label(t) == label:
            if field == "weight":
              t["weight"] = v
            else:
              t["kwargs"] = {**dict(t.get("kwargs", {}) or {}), field: v}
        c.loss.terms = tuple(terms)
      elif key == "optim.learning_rate":
        c.optim.learning_rate = float(v)
      else:
        c[key] = v
  return c


def _term_label(t) -> str:
  from medhash_jax.losses import resolve  # pylint: disable=g-import-not-at-top
  return resolve.term_label(str(t["name"]))


def _loss_overrides(assign: Mapping[str, Any]) -> Dict[str, float]:
  """The swept loss hyper-parameters, as the loss function's kwarg names."""
  out = {}
  for key, v in assign.items():
    if key.startswith("loss.kwargs."):
      out[key[len("loss.kwargs."):]] = v
    elif key.startswith("loss.terms."):
      out[".".join(key.split(".")[2:])] = v
  return out


# -- the vmapped step ----------------------------------------------------------


def _scaled(tx: optax.GradientTransformation, ratio):
  """`tx` with its updates times `ratio` (same state: lr-free states)."""

  def update(grads, state, params=None):
    updates, state = tx.update(grads, state, params)
    return jax.tree.map(lambda u: u * ratio.astype(u.dtype), updates), state

  return optax.GradientTransformation(tx.init, update)


STRATEGIES = ("auto", "vmap", "unroll")


def resolve_strategy(strategy: str) -> str:
  """"auto" -> "unroll" on CPU, "vmap" elsewhere (see `make_sweep_step`)."""
  if strategy not in STRATEGIES:
    raise SweepError(f"sweep strategy must be one of {STRATEGIES}, got "
                     f"{strategy!r}")
  if strategy == "auto":
    return "unroll" if jax.default_backend() == "cpu" else "vmap"
  return strategy


def make_sweep_step(task, schedule, strategy: str = "vmap"):
  """step(states, batches, roots, hyper) over a leading variant axis.

  `hyper`: {loss kwarg: (V,) float32} (+ the lr ratio). The objective is the
  task's own, with the swept loss kwargs bound per variant: a shallow copy
  of the task per trace, so task.py needs no sweep-specific argument.

  strategy "vmap" batches the variants: a convolution whose weights differ
  per variant becomes one grouped convolution (feature_group_count = V),
  native on GPUs but several times slower than V plain convolutions on
  XLA:CPU (6.7x in benchmarks/grouped_conv.py).
  "unroll" traces the V steps side by side into one program: plain
  convolutions, one dispatch and one input transfer per step for all V, a
  compile about V times as long. On the 2-core CPU (benchmarks/README.md)
  unroll runs at ~0.9x of V sequential steps, vmap at ~0.25x; a lax.map
  over the variants was slower still (0.13x).
  """

  def objective(params, batch_stats, batch, rng, step):
    batch = dict(batch)
    hyper = {k[len(_HYPER):]: batch.pop(k) for k in list(batch)
             if k.startswith(_HYPER)}
    t = copy.copy(task)
    t.loss_kwargs = {**task.loss_kwargs, **hyper}
    return t.objective(params, batch_stats, batch, rng, step)

  raw = step_lib.make_train_step(objective, schedule, jit=False)

  def one(state, batch, root, hyper):
    hyper = dict(hyper)
    ratio = hyper.pop(_LR, None)
    tx = state.tx
    if ratio is not None:
      state = state.replace(tx=_scaled(tx, ratio))
    batch = {**batch, **{_HYPER + k: v for k, v in hyper.items()}}
    new, metrics = raw(state, batch, root)
    if ratio is not None:
      new = new.replace(tx=tx)
      metrics["lr"] = metrics["lr"] * ratio
    return new, metrics

  if resolve_strategy(strategy) == "unroll":
    def over_variants(states, batches, roots, hyper):
      outs = [one(*unstack((states, batches, roots, hyper), i))
              for i in range(jax.tree.leaves(roots)[0].shape[0])]
      return stack([o[0] for o in outs]), stack([o[1] for o in outs])
  else:
    over_variants = jax.vmap(one)
  return jax.jit(over_variants, donate_argnums=0)


def stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *x: jnp.stack(x), *trees)


def unstack(tree: Any, i: int) -> Any:
  return jax.tree.map(lambda x: x[i], tree)


def _memory_budget() -> Optional[int]:
  """Bytes a group may use: 80% of an accelerator's limit, 50% of free RAM."""
  dev = jax.devices()[0]
  try:
    stats = dev.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  if stats.get("bytes_limit"):
    return int(0.8 * stats["bytes_limit"])
  try:
    return int(0.5 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError, AttributeError):
    return None


def compiled_bytes(compiled) -> Optional[int]:
  """Arguments + outputs + temporaries of a compiled program (XLA's count)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes +
             m.temp_size_in_bytes - m.alias_size_in_bytes)


# -- the sweep -----------------------------------------------------------------


class _Variant:
  """One variant's run directory, writer, selection and final state."""

  def __init__(self, i, assign, config, workdir):
    self.i, self.assign, self.config, self.workdir = i, assign, config, workdir
    self.name = os.path.basename(workdir)
    self.best = None
    self.final_loss = self.last_loss = float("nan")


def run_sweep(config: ml_collections.ConfigDict,
              sweep: Mapping[str, Sequence[Any]], workdir: str, *,
              group_size: int = 0, strategy: str = "auto") -> Dict[str, Any]:
  """Trains every variant, selects each on val, evaluates it on test and
  writes W/sweep.json + W/sweep.md. Returns the sweep.json dict.

  Args:
    config: the base run config (`configs/<method>.py`).
    sweep: {key: values}; see `SWEEPABLE`.
    workdir: W; variant runs go to W/variants/<name>.
    group_size: at most this many variants per compiled program (0 = as many
      as XLA's memory analysis says fit).
    strategy: "vmap", "unroll" or "auto" (unroll on CPU); see
      `make_sweep_step`.
  """
  t_begin = time.time()
  check_sweep(config, sweep)
  if jax.process_count() > 1:
    raise SweepError("sweeps run in one process (use one process per sweep)")
  assigns = expand(sweep)
  vdir = os.path.join(workdir, VARIANTS_DIR)
  variants = []
  for i, a in enumerate(assigns):
    c = variant_config(config, a)
    # Every variant's loss, kwargs and inputs: checked before data is read.
    validation.validate_config(c)
    variants.append(_Variant(i, a, c, os.path.join(vdir, variant_name(i, a))))
  for v in variants:
    ck = os.path.join(v.workdir, "checkpoints")
    if ckpt_lib.read_saved_config(ck) is not None:
      raise SweepError(f"{v.workdir} already holds a run; sweeps do not "
                       "resume: use a fresh --workdir")
  os.makedirs(vdir, exist_ok=True)
  run = loop.Run(variants[0].config, None)
  # The compiled optimizer is variant 0's; others scale its updates.
  base_lr = float(run.config.optim.learning_rate)
  sweep_lr = "optim.learning_rate" in sweep
  strategy = resolve_strategy(strategy)
  step_fn = make_sweep_step(run.task, run.schedule, strategy)
  # One input pipeline per distinct seed (variants of one seed see the same
  # batches, as their sequential runs would).
  iters = {}
  for v in variants:
    s = int(v.config.seed)
    if s not in iters:
      iters[s] = run.ds.train_iter if s == int(run.config.seed) else \
          data_lib.build_datasets(
              v.config.data, workdir=None,
              global_batch_size=v.config.train.batch_size, seed=s,
              image_size=v.config.data.image_size,
              eval_batch_size=run.eval_batch_size,
              source=run.ds.source).train_iter
  init = {v.i: _initial(run, v, base_lr, sweep_lr) for v in variants}
  size = int(group_size) or len(variants)
  groups = [variants[j:j + size] for j in range(0, len(variants), size)]
  if not group_size:
    groups = _fit_groups(run, step_fn, variants,
                         [init[v.i] for v in variants])
  seconds = 0.0
  for g, group in enumerate(groups):
    logging.info("sweep group %d/%d: %s", g + 1, len(groups),
                 [v.name for v in group])
    seconds += _train_group(run, step_fn, group, iters,
                            [init.pop(v.i) for v in group])
  for v in variants:
    _finish_variant(run, v, seconds / len(variants))
  out = _write_tables(config, sweep, variants, workdir, groups,
                      time.time() - t_begin, seconds, strategy)
  return out


def _initial(run, v, base_lr, sweep_lr):
  """(state, root key, hyper) of one variant, exactly as its own Run's."""
  example = mesh_lib.shard_batch(
      {k: x for k, x in run.ds.example_batch().items()
       if k in run.task.input_keys}, run.mesh)
  variables = run.task.init(int(v.config.seed), example, run.mesh)
  state = state_lib.create_train_state(
      apply_fn=run.task.model.apply, variables=variables, tx=run.state.tx,
      rng=state_lib.root_key(v.config.seed), mesh=run.mesh)
  hyper = {k: np.float32(x) for k, x in _loss_overrides(v.assign).items()}
  if sweep_lr:
    hyper[_LR] = np.float32(float(v.config.optim.learning_rate) / base_lr)
  return state, jnp.array(state.rng), hyper


def _group_inputs(run, group, iters, batches=None):
  """The stacked (V, B, ...) batch of one step (one draw per seed)."""
  if batches is None:
    batches = {s: run.task.train_inputs(next(it)) for s, it in iters.items()
               if any(int(v.config.seed) == s for v in group)}
  per = [batches[int(v.config.seed)] for v in group]
  stacked = {k: np.stack([np.asarray(b[k]) for b in per]) for k in per[0]}
  sharding = jax.sharding.NamedSharding(
      run.mesh, jax.sharding.PartitionSpec(None, mesh_lib.DATA_AXIS))
  return jax.device_put(stacked, sharding)


def _fit_groups(run, step_fn, variants, init):
  """Splits the variants when XLA says the V-variant step would not fit.

  The estimate compiles the step on zeros shaped and placed like the real
  inputs, so the training call that follows finds it in jit's cache.
  """
  budget = _memory_budget()
  if budget is None or len(variants) == 1:
    return [variants]
  zeros = run.task.train_inputs(run.ds.example_batch())
  batch = _group_inputs(run, variants, None,
                        {int(v.config.seed): zeros for v in variants})
  try:
    compiled = step_fn.lower(stack([s for s, _, _ in init]), batch,
                             stack([r for _, r, _ in init]),
                             stack([h for _, _, h in init])).compile()
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("sweep: no memory estimate (%s); one group", e)
    return [variants]
  need = compiled_bytes(compiled)
  if need is None or need <= budget:
    logging.info("sweep: %d variants need %s MB (budget %d MB): one group",
                 len(variants), None if need is None else need >> 20,
                 budget >> 20)
    return [variants]
  size = max(1, len(variants) // math.ceil(need / budget))
  logging.warning("sweep: %d variants need %d MB > budget %d MB: groups of "
                  "<= %d", len(variants), need >> 20, budget >> 20, size)
  return [variants[j:j + size] for j in range(0, len(variants), size)]


def _train_group(run, step_fn, group, iters, init) -> float:
  """Trains one group to the end, selecting each variant on val."""
  cfg = group[0].config
  states = stack([s for s, _, _ in init])
  roots = stack([r for _, r, _ in init])
  hyper = stack([h for _, _, h in init])
  total = int(cfg.train.num_steps)
  log_every = max(1, int(cfg.train.log_every_steps))
  eval_every = int(cfg.train.eval_every_steps)
  select = cfg.eval.select_metric
  writers = []
  meters = [fit_lib.IntervalMeter() for _ in group]
  for v in group:
    ckpt_lib.Checkpointer(os.path.join(v.workdir, "checkpoints"),
                          async_save=False).check_or_write_config(
                              v.config.to_dict())
    w = writers_lib.create_default_writer(v.workdir)
    w.write_hparams(v.config.to_dict())
    writers.append(w)
  t0, pending = time.perf_counter(), None

  def flush():
    nonlocal pending
    if pending is None:
      return
    done, metrics = pending
    pending = None
    host = jax.device_get(metrics)
    for j, v in enumerate(group):
      row = {k: float(np.asarray(x)[j]) for k, x in host.items()}
      step_lib.check_finite(row, done, None)
      v.last_loss = row["loss"]
      meters[j].add(row)

  for step in range(total):
    sbatch = _group_inputs(run, group, iters)
    try:
      states, metrics = step_fn(states, sbatch, roots, hyper)
    except jax.errors.ConcretizationTypeError as e:
      raise SweepError(
          f"the loss uses a swept value in Python control flow (an `if` or a "
          f"shape), so {[k for k in group[0].assign if k != 'seed']} cannot "
          f"be vmapped; run one sweep per value ({e})") from e
    flush()
    done = step + 1
    pending = (done, metrics)
    if done % log_every == 0 or done == total or step == 0:
      flush()
      for j, v in enumerate(group):
        scalars = {f"train/{k}": x for k, x in meters[j].pop().items()}
        writers[j].write_scalars(done, scalars)
        v.final_loss = scalars["train/loss"]
    if (eval_every > 0 and done % eval_every == 0) or done == total:
      flush()
      for j, v in enumerate(group):
        _select(run, v, unstack(states, j), done, select, writers[j])
  flush()
  seconds = time.perf_counter() - t0
  for j, v in enumerate(group):
    v.state = unstack(states, j)
    ck = ckpt_lib.Checkpointer(os.path.join(v.workdir, "checkpoints"),
                               max_to_keep=1, async_save=False)
    ck.save(total, v.state.checkpoint_items(), force=True)
    ck.close()
    writers[j].close()
  return seconds


def _select(run, v, state, done, select, writer):
  """Val retrieval of one variant; keeps its best model (best/, best.json)."""
  val = run.evaluate_val(state.variables())
  writer.write_scalars(done, {f"val/{k}": x for k, x in val.items()})
  if select not in val:
    raise KeyError(f"eval.select_metric={select!r} is not in the report; "
                   f"available: {sorted(val)}")
  if v.best is None or val[select] > v.best["value"]:
    best = ckpt_lib.Checkpointer(os.path.join(v.workdir, "best"),
                                 max_to_keep=1, async_save=False)
    best.save(done, {"params": state.params,
                     "batch_stats": state.batch_stats}, force=True)
    best.close()
    v.best = {"step": done, "metric": select, "value": val[select],
              "val": val}
    fit_lib.write_json(os.path.join(v.workdir, loop.BEST_FILE), v.best)


def _finish_variant(run, v, seconds):
  """The loop's final evaluation, on the variant's own run directory."""
  view = copy.copy(run)
  view.config, view.workdir, view.state = v.config, v.workdir, v.state
  results = loop.final_evaluation(view, train_info={
      "steps": int(v.state.step), "final_loss": v.final_loss,
      "last_step_loss": v.last_loss, "seconds": seconds,
      "resumed_from": "scratch (vmapped sweep)"})
  results["sweep"] = {"variant": v.name, "values": dict(v.assign)}
  fit_lib.write_json(os.path.join(v.workdir, loop.RESULTS_FILE), results)
  v.results = results


def _rank(values: Sequence[float]) -> List[int]:
  """1 = best (highest); equal values share the better rank."""
  order = sorted(values, reverse=True)
  return [order.index(x) + 1 for x in values]


def _write_tables(config, sweep, variants, workdir, groups, wall, seconds,
                  strategy):
  select = config.eval.select_metric
  test_keys = [k for k in variants[0].results["metrics"]["test"]
               if k.endswith("/tie_aware") and k.startswith("map@")]
  rows = []
  for v in variants:
    r = v.results
    rows.append({"variant": v.name, "values": dict(v.assign),
                 "workdir": os.path.relpath(v.workdir, workdir),
                 "selected_step": r["selection"]["step"],
                 "val": {select: r["metrics"]["val"].get(select)},
                 "test": {k: r["metrics"]["test"][k] for k in test_keys}})
  val_rank = _rank([r["val"][select] for r in rows])
  test_key = select if select in test_keys else test_keys[-1]
  test_rank = _rank([r["test"].get(test_key, float("nan")) for r in rows])
  for r, a, b in zip(rows, val_rank, test_rank):
    r["rank_val"], r["rank_test"] = a, b
  rows.sort(key=lambda r: (r["rank_val"], r["variant"]))
  out = {"sweep": {k: list(v) for k, v in sweep.items()},
         "method": config.method, "select_metric": select,
         "test_rank_metric": test_key,
         "groups": [[v.name for v in g] for g in groups],
         "strategy": strategy,
         "train_seconds": seconds, "wall_seconds": wall,
         "loss_source": [dict(s) for s in variants[0].config.loss.source],
         "variants": rows}
  fit_lib.write_json(os.path.join(workdir, SWEEP_JSON), out)
  keys = list(sweep)
  head = (["rank (val)", "variant"] + keys + ["step", f"val {select}"] +
          [f"test {k}" for k in test_keys] + ["rank (test)"])
  lines = [f"# Sweep of {config.method}: {len(rows)} variants, ranked by val "
           f"{select}", "",
           "Selection on val; test metrics of each variant's selected model "
           f"(tie-aware). Test rank by {test_key}; equal values share a rank.",
           "", "| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for r in rows:
    cells = ([str(r["rank_val"]), r["variant"]] +
             [str(r["values"][k]) for k in keys] + [str(r["selected_step"]),
                                                    _fmt(r["val"][select])] +
             [_fmt(r["test"][k]) for k in test_keys] + [str(r["rank_test"])])
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", f"Training: {seconds:.1f} s for all variants "
            f"({len(groups)} group(s), {strategy}); wall {wall:.1f} s."]
  tmp = os.path.join(workdir, SWEEP_MD + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, os.path.join(workdir, SWEEP_MD))
  return out


def _fmt(x) -> str:
  return "n/a" if x is None or not np.isfinite(x) else f"{x:.4f}"
