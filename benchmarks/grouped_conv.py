r"""Why a vmapped sweep is slow on XLA:CPU: V convolutions with per-variant
weights, three ways, forward + backward.

  python benchmarks/grouped_conv.py --variants=8

Contenders (each a jitted gradient of a two-layer 3x3 conv + ReLU net, batch
32, 28 x 28, 16 channels, with respect to weights and input):
  sequential  V calls of the plain convolution (what V separate runs do);
  vmap        jax.vmap over the V weight sets: XLA turns it into one grouped
              convolution (feature_group_count = V);
  im2col      jax.vmap of an im2col + matmul form of the same convolution
              (the batching rule then makes a batched matmul).
Rounds are interleaved (benchmarks/timing.py); medians and min-max spreads,
XLA default threads. The im2col result is checked against vmap first.
"""

import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # pylint: disable=wrong-import-position

flags.DEFINE_integer("variants", 8, "V: weight sets.")
flags.DEFINE_integer("batch", 32, "Images per variant.")
flags.DEFINE_integer("size", 28, "Image side.")
flags.DEFINE_integer("channels", 16, "Input = output channels.")
flags.DEFINE_integer("rounds", 7, "Interleaved rounds.")
flags.DEFINE_integer("calls", 3, "Calls per round and contender.")
FLAGS = flags.FLAGS

_DN = ("NHWC", "HWIO", "NHWC")


def conv_plain(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN)


def conv_im2col(x, w):
  kh, kw, ci, co = w.shape
  h, wd = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  cols = jnp.concatenate([xp[:, i:i + h, j:j + wd, :]
                          for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.einsum("bhwk,ko->bhwo", cols, w.reshape(kh * kw * ci, co))


def two_layer_loss(conv):
  def loss(w, x):
    y = conv(jax.nn.relu(conv(x, w)), w)
    return jnp.sum(y * y)
  return jax.grad(loss, argnums=(0, 1))


def main(argv):
  del argv
  v, c = FLAGS.variants, FLAGS.channels
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(v, FLAGS.batch, FLAGS.size, FLAGS.size, c)),
                  jnp.float32)
  w = jnp.asarray(rng.normal(size=(v, 3, 3, c, c)) * 0.1, jnp.float32)
  plain = jax.jit(two_layer_loss(conv_plain))
  vmapped = jax.jit(jax.vmap(two_layer_loss(conv_plain)))
  im2col = jax.jit(jax.vmap(two_layer_loss(conv_im2col)))
  a, b = vmapped(w, x), im2col(w, x)
  scale = float(jnp.max(jnp.abs(a[0])))
  err = float(jnp.max(jnp.abs(a[0] - b[0]))) / scale
  assert err < 1e-4, f"im2col disagrees with the plain convolution: {err}"

  def repeat(fn):
    def go(_):
      for _ in range(FLAGS.calls):
        jax.block_until_ready(fn())
    return go

  contenders = {
      "sequential": repeat(lambda: [plain(w[i], x[i]) for i in range(v)]),
      "vmap": repeat(lambda: vmapped(w, x)),
      "im2col": repeat(lambda: im2col(w, x)),
  }
  times, _ = timing.interleaved_rounds(contenders, FLAGS.rounds)
  print(f"device: {jax.devices()[0].device_kind}; V={v}, batch {FLAGS.batch}, "
        f"{FLAGS.size} px, {c} channels, {FLAGS.rounds} interleaved rounds, "
        f"threads: XLA default; im2col vs vmap max rel. diff {err:.1e}")
  for name, ts in times.items():
    ms = [1e3 * t / FLAGS.calls for t in ts]
    print(f"{name:>10}: {timing.fmt(timing.median_spread(ms), '.0f')} ms per call")
  for name in ("vmap", "im2col"):
    print(f"sequential speed over {name}: "
          f"{timing.fmt(timing.ratio_spread(times['sequential'], times[name]))}x")


if __name__ == "__main__":
  app.run(main)
