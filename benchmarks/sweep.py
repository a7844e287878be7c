r"""A V-variant sweep step (each of --strategies: unroll, vmap) vs V
sequential runs of the same model.

Peer: the ordinary jitted, donated train step (train/step.py) of each of the
V variants in turn, which is what V separate runs execute. Both sides train
the smoke DPSH model (configs/dpsh.py:smoke: width-8 ResNet-18, 28 px, batch
32, 16 bits) on the same pre-drawn real BreastMNIST batches (one per variant
seed, on the device), so the ratio is that of the training computation; the
input pipeline, evaluation and compilation (one warm-up call each) are
excluded. Rounds are interleaved (sweep, sequential, sweep, ...); medians
and min-max spreads are printed.

  PYTHONPATH=. MEDHASH_DATA_DIR=... python benchmarks/sweep.py --variants=8
"""

import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import dpsh as dpsh_config  # pylint: disable=wrong-import-position
from medhash_jax.train import loop  # pylint: disable=wrong-import-position
from medhash_jax.train import mesh as mesh_lib  # pylint: disable=wrong-import-position
from medhash_jax.train import step as step_lib  # pylint: disable=wrong-import-position
from medhash_jax.train import sweep  # pylint: disable=wrong-import-position
from benchmarks import timing  # pylint: disable=wrong-import-position

flags.DEFINE_integer("variants", 8, "V: variants (seeds 0..V-1, alpha swept).")
flags.DEFINE_integer("steps", 10, "Timed steps per round and side.")
flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
flags.DEFINE_integer("num_devices", 1, "Devices in the mesh.")
flags.DEFINE_list("strategies", ["unroll", "vmap"],
                  "Sweep step strategies to time (train/sweep.py).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  c = dpsh_config.get_config("smoke")
  with c.unlocked():
    c.num_devices = FLAGS.num_devices
    if os.environ.get("MEDHASH_DATA_DIR"):
      c.data.root = os.environ["MEDHASH_DATA_DIR"]
  run = loop.Run(c, None)
  v = FLAGS.variants
  assigns = [{"seed": i, "loss.kwargs.alpha": 0.5 + 0.05 * i} for i in range(v)]
  variants = [sweep._Variant(i, a, sweep.variant_config(c, a), "")  # pylint: disable=protected-access
              for i, a in enumerate(assigns)]
  init = [sweep._initial(run, x, float(c.optim.learning_rate), False)  # pylint: disable=protected-access
          for x in variants]
  batches = {x.config.seed: run.task.train_inputs(next(run.ds.train_iter))
             for x in variants}
  sbatch = sweep._group_inputs(run, variants, None, batches)  # pylint: disable=protected-access
  # One compiled V-variant step per strategy, each with its own states.
  sides = {}
  for strategy in FLAGS.strategies:
    sides[strategy] = [sweep.make_sweep_step(run.task, run.schedule, strategy),
                       sweep.stack([s for s, _, _ in init])]
  roots = sweep.stack([r for _, r, _ in init])
  hyper = sweep.stack([h for _, _, h in init])
  # Sequential peer: one plain step per variant (its own alpha, its state).
  import copy  # pylint: disable=g-import-not-at-top
  seq = []
  for x, (s, r, h) in zip(variants, init):
    task = copy.copy(run.task)
    task.loss_kwargs = {"alpha": float(h["alpha"])}
    fn = step_lib.make_train_step(task.objective, run.schedule, mesh=run.mesh,
                                  state_example=s)
    seq.append([fn, jax.tree.map(jnp.array, s), r,
                mesh_lib.shard_batch(batches[x.config.seed], run.mesh)])

  def sweep_side(strategy):
    def go(_):
      side = sides[strategy]
      for _ in range(FLAGS.steps):
        side[1], m = side[0](side[1], sbatch, roots, hyper)
      jax.block_until_ready(m["loss"])
    return go

  def seq_side(_):
    for item in seq:
      fn, s, r, b = item
      for _ in range(FLAGS.steps):
        s, m = fn(s, b, r)
      item[1] = s
      jax.block_until_ready(m["loss"])

  # Interleaved: sweep (each strategy), sequential, sweep, ...
  contenders = {f"sweep {k}": sweep_side(k) for k in FLAGS.strategies}
  contenders[f"{v} sequential"] = seq_side
  times, _ = timing.interleaved_rounds(contenders, FLAGS.rounds)
  imgs = v * FLAGS.steps * c.train.batch_size
  dev = jax.devices()[0]
  print(f"device: {dev.platform} {dev.device_kind} x{run.mesh.size}; "
        f"V={v}, {FLAGS.steps} steps x {FLAGS.rounds} interleaved rounds, "
        f"batch {c.train.batch_size}, threads: XLA default")
  for name, ts in times.items():
    print(f"{name:>14}: {timing.fmt(timing.median_spread([imgs / t for t in ts]), '.0f')} images/s")
  for k in FLAGS.strategies:
    print(f"ratio sweep {k} / sequential: "
          f"{timing.fmt(timing.ratio_spread(times[f'sweep {k}'], times[f'{v} sequential']))}x")


if __name__ == "__main__":
  app.run(main)
