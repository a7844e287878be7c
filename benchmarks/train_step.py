r"""Train-step throughput: hashing methods vs a plain ResNet-50 classifier.

For every image size, times the jitted, donated train step of each method
(its config's model, loss and optimizer; synthetic images and multi-hot
labels) and, in the same process, a plain ResNet-50 softmax classification
step with the same optimizer. The ratio method / classifier is the overhead of
hashing (pairwise loss over the global batch, hash head, continuation).

  PYTHONPATH=. python benchmarks/train_step.py --sizes=28 --steps=5
  PYTHONPATH=. python benchmarks/train_step.py --sizes=28,224 --dtype=bfloat16

Compilation is excluded (one warm-up step per model); the models are measured
in --repeats interleaved rounds (benchmarks/timing.py), so a busy machine
does not favour whichever model ran in a quiet moment: rates are medians
(min-max), the ratio is the median of the per-round ratios (min-max). Prints a table and, with
--json, writes the rows.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # pylint: disable=wrong-import-position
from medhash_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from medhash_jax.train import mesh as mesh_lib  # pylint: disable=wrong-import-position
from medhash_jax.train import optim as optim_lib  # pylint: disable=wrong-import-position
from medhash_jax.train import state as state_lib  # pylint: disable=wrong-import-position
from medhash_jax.train import step as step_lib  # pylint: disable=wrong-import-position
from medhash_jax.train import task as task_lib  # pylint: disable=wrong-import-position

flags.DEFINE_list("methods", ["dpsh", "hashnet"], "configs/<method>.py to time.")
flags.DEFINE_list("sizes", ["28", "224"], "Image sizes (px); < 64 uses the "
                  "small-input stem.")
flags.DEFINE_integer("batch_size", 16, "Global batch size.")
flags.DEFINE_integer("steps", 5, "Timed steps per measurement (after 1 "
                     "warm-up step that compiles).")
flags.DEFINE_integer("repeats", 3, "Measurements per model, round-robin; the "
                     "the median (min-max) is reported.")
flags.DEFINE_integer("num_bits", 48, "Code length.")
flags.DEFINE_integer("num_classes", 14, "Label classes (multi-hot).")
flags.DEFINE_string("model", "resnet50", "Backbone for every method.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("num_devices", 0, "Devices in the mesh (0 = all).")
flags.DEFINE_string("json", "", "Write the rows here as JSON.")
FLAGS = flags.FLAGS


def _load_config(method: str):
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(f"configs.{method}")
  c = module.get_config()
  with c.unlocked():
    c.num_bits = FLAGS.num_bits
    c.model.name = FLAGS.model
    c.model.dtype = FLAGS.dtype
  return c


def _batch(size: int, rng: np.random.Generator, mesh):
  b = FLAGS.batch_size
  labels = (rng.random((b, FLAGS.num_classes)) < 0.2).astype(np.float32)
  labels[np.arange(b), rng.integers(0, FLAGS.num_classes, b)] = 1.0
  batch = {"image": rng.standard_normal((b, size, size, 3)).astype(np.float32),
           "labels": labels, "label_mask": np.ones_like(labels)}
  return mesh_lib.shard_batch(batch, mesh)


def _state(model, variables, optim_cfg, mesh):
  tx, sched = optim_lib.build_optimizer(optim_cfg, variables["params"], 1000)
  st = state_lib.create_train_state(apply_fn=model.apply, variables=variables,
                                    tx=tx, rng=state_lib.root_key(0), mesh=mesh)
  return st, sched


class Timed:
  """A compiled step with its own state; `measure(n)` times n steps."""

  def __init__(self, name, step, state, batch):
    self.name, self.step, self.state, self.batch = name, step, state, batch
    self.root = jnp.array(state.rng)
    t0 = time.perf_counter()
    self.loss = self._steps(1)
    self.compile_s = time.perf_counter() - t0
    self.seconds = []

  def _steps(self, n):
    m = None
    for _ in range(n):
      self.state, m = self.step(self.state, self.batch, self.root)
    return float(jax.block_until_ready(m)["loss"])

  def measure(self, n):
    t0 = time.perf_counter()
    self.loss = self._steps(n)
    self.seconds.append(time.perf_counter() - t0)


def build_method(method: str, size: int, mesh, batch) -> Timed:
  c = _load_config(method)
  with c.unlocked():
    c.model.kwargs.small_input = size < 64
    c.data.image_size = size
  task = task_lib.build_task(c, num_classes=FLAGS.num_classes, multi_label=True)
  variables = task.init(0, {"image": batch["image"]}, mesh)
  st, sched = _state(task.model, variables, c.optim, mesh)
  step = step_lib.make_train_step(task.objective, sched, mesh=mesh,
                                  state_example=st)
  return Timed(method, step, st, batch)


def build_classifier(size: int, mesh, batch, optim_cfg) -> Timed:
  """Plain ResNet-50 + softmax cross-entropy, same optimizer."""
  model = models.get_model(f"{FLAGS.model}_classifier",
                           num_classes=FLAGS.num_classes,
                           small_input=size < 64, dtype=FLAGS.dtype)
  init = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x),
                 out_shardings=mesh_lib.replicated(mesh))
  variables = dict(init(batch["image"]))
  optim_cfg = optim_cfg.copy_and_resolve_references()
  with optim_cfg.unlocked():
    optim_cfg.head_patterns = ("classifier",)  # the new layer learns 10x too
  st, sched = _state(model, variables, optim_cfg, mesh)

  def objective(params, batch_stats, b, rng, step):
    del rng, step
    out, upd = model.apply({"params": params, "batch_stats": batch_stats},
                           b["image"], train=True, mutable=["batch_stats"])
    loss = task_lib.classification_loss(out["logits"], b["labels"],
                                        b["label_mask"], multi_label=False)
    return loss, ({}, upd["batch_stats"])

  step = step_lib.make_train_step(objective, sched, mesh=mesh,
                                  state_example=st)
  return Timed(f"{FLAGS.model}_classifier", step, st, batch)


def main(argv):
  del argv
  mesh = mesh_lib.make_mesh(FLAGS.num_devices or None)
  mesh_lib.check_batch_size(FLAGS.batch_size, mesh, "--batch_size")
  dev = jax.devices()[0]
  print(f"device: {dev.platform} {dev.device_kind} x{mesh.size}, jax "
        f"{jax.__version__}, dtype {FLAGS.dtype}, batch {FLAGS.batch_size}, "
        f"medians of {FLAGS.repeats} interleaved rounds x {FLAGS.steps} "
        "steps", flush=True)
  rows = []
  optim_cfg = _load_config(FLAGS.methods[0]).optim
  for size in (int(s) for s in FLAGS.sizes):
    batch = _batch(size, np.random.default_rng(size), mesh)
    timed = [build_classifier(size, mesh, batch, optim_cfg)]
    timed += [build_method(m, size, mesh, batch) for m in FLAGS.methods]
    # Interleaved rounds: every model once per round.
    for _ in range(FLAGS.repeats):
      for t in timed:
        t.measure(FLAGS.steps)
    for t in timed:
      ips = timing.median_spread(
          [FLAGS.steps * FLAGS.batch_size / s for s in t.seconds])
      ratio = timing.ratio_spread(timed[0].seconds, t.seconds)
      row = {"method": t.name, "size": size, "images_per_sec": ips[0],
             "images_per_sec_min_max": ips[1:], "ratio": ratio[0],
             "ratio_min_max": ratio[1:], "compile_s": t.compile_s,
             "loss": t.loss}
      rows.append(row)
      print(f"{t.name:<22} {size:>4}px {timing.fmt(ips, '.1f')} img/s  "
            f"x{timing.fmt(ratio, '.3f')} of the classifier  (compile "
            f"{t.compile_s:.1f} s)", flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      json.dump({"device": f"{dev.platform} {dev.device_kind}",
                 "num_devices": mesh.size, "dtype": FLAGS.dtype,
                 "batch_size": FLAGS.batch_size, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
