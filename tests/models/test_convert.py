"""torchvision/timm -> Flax converter: random torch weights, equal outputs.

The torch modules below reproduce torchvision's ResNet-50 and DenseNet-121
layer for layer, with identical state-dict key names (torchvision itself is
not installable here); timm's resnet50 / densenet121 use the same keys.
"""

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medhash_jax import models
from medhash_jax.models import backbones
from medhash_jax.models import convert

torch = pytest.importorskip("torch", reason="torch (CPU) is not installed")
tnn = torch.nn
F = torch.nn.functional


# -- torchvision-equivalent modules -----------------------------------------


class _Bottleneck(tnn.Module):

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(planes * 4)
    self.relu = tnn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    idt = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    return self.relu(self.bn3(self.conv3(y)) + idt)


class TorchResNet50(tnn.Module):

  def __init__(self, layers=(3, 4, 6, 3), num_classes=1000):
    super().__init__()
    self.inplanes = 64
    self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = tnn.BatchNorm2d(64)
    self.relu = tnn.ReLU(inplace=True)
    self.maxpool = tnn.MaxPool2d(3, 2, 1)
    self.layer1 = self._make_layer(64, layers[0])
    self.layer2 = self._make_layer(128, layers[1], 2)
    self.layer3 = self._make_layer(256, layers[2], 2)
    self.layer4 = self._make_layer(512, layers[3], 2)
    self.avgpool = tnn.AdaptiveAvgPool2d(1)
    self.fc = tnn.Linear(2048, num_classes)

  def _make_layer(self, planes, blocks, stride=1):
    down = None
    if stride != 1 or self.inplanes != planes * 4:
      down = tnn.Sequential(
          tnn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
          tnn.BatchNorm2d(planes * 4))
    layers = [_Bottleneck(self.inplanes, planes, stride, down)]
    self.inplanes = planes * 4
    layers += [_Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
    return tnn.Sequential(*layers)

  def feature_map(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class _DenseLayer(tnn.Module):

  def __init__(self, cin, growth, bn_size):
    super().__init__()
    self.norm1 = tnn.BatchNorm2d(cin)
    self.relu1 = tnn.ReLU(inplace=True)
    self.conv1 = tnn.Conv2d(cin, bn_size * growth, 1, bias=False)
    self.norm2 = tnn.BatchNorm2d(bn_size * growth)
    self.relu2 = tnn.ReLU(inplace=True)
    self.conv2 = tnn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

  def forward(self, x):
    y = self.conv1(self.relu1(self.norm1(x)))
    return torch.cat([x, self.conv2(self.relu2(self.norm2(y)))], 1)


class _DenseBlock(tnn.ModuleDict):

  def __init__(self, n, cin, growth, bn_size):
    super().__init__()
    for i in range(n):
      self.add_module(f"denselayer{i + 1}",
                      _DenseLayer(cin + i * growth, growth, bn_size))

  def forward(self, x):
    for layer in self.values():
      x = layer(x)
    return x


class _Transition(tnn.Sequential):

  def __init__(self, cin, cout):
    super().__init__()
    self.add_module("norm", tnn.BatchNorm2d(cin))
    self.add_module("relu", tnn.ReLU(inplace=True))
    self.add_module("conv", tnn.Conv2d(cin, cout, 1, bias=False))
    self.add_module("pool", tnn.AvgPool2d(2, 2))


class TorchDenseNet121(tnn.Module):

  def __init__(self, growth=32, blocks=(6, 12, 24, 16), init=64, bn_size=4,
               num_classes=1000):
    super().__init__()
    feats = collections.OrderedDict([
        ("conv0", tnn.Conv2d(3, init, 7, 2, 3, bias=False)),
        ("norm0", tnn.BatchNorm2d(init)), ("relu0", tnn.ReLU(inplace=True)),
        ("pool0", tnn.MaxPool2d(3, 2, 1))])
    self.features = tnn.Sequential(feats)
    ch = init
    for i, n in enumerate(blocks):
      self.features.add_module(f"denseblock{i + 1}",
                               _DenseBlock(n, ch, growth, bn_size))
      ch += n * growth
      if i != len(blocks) - 1:
        self.features.add_module(f"transition{i + 1}", _Transition(ch, ch // 2))
        ch //= 2
    self.features.add_module("norm5", tnn.BatchNorm2d(ch))
    self.classifier = tnn.Linear(ch, num_classes)

  def feature_map(self, x):
    return F.relu(self.features(x))


def _randomise(module, seed):
  """Random BN affine parameters and running stats (torch inits them to 1/0)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, tnn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(torch.rand(c, generator=g) + 0.5)
        m.bias.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
  return module.eval()


def _compare(tmodel, name, size=32, seed=0, forward=True):
  torch.manual_seed(seed)
  tmodel = _randomise(tmodel, seed)
  x = np.random.RandomState(seed).randn(2, 3, size, size).astype(np.float32)
  with torch.no_grad():
    t_map = tmodel.feature_map(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  variables = convert.convert_state_dict(tmodel.state_dict())
  model = models.get_model(name, num_bits=16, num_classes=5)
  # The converted tree must fit the registered model path by path.
  want = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                           jnp.zeros((1, size, size, 3))))
  for coll in ("params", "batch_stats"):
    got = jax.tree_util.tree_leaves_with_path(variables[coll])
    have = {jax.tree_util.keystr(p): l.shape for p, l in
            jax.tree_util.tree_leaves_with_path(want[coll])}
    assert {jax.tree_util.keystr(p): l.shape for p, l in got} == {
        k: v for k, v in have.items() if k.startswith("['backbone']")}
  if not forward:
    return tmodel
  bb = convert.build_backbone(*convert.infer_architecture(tmodel.state_dict()))
  bb_vars = {c: variables[c]["backbone"] for c in ("params", "batch_stats")}
  out = jax.jit(bb.apply)(bb_vars, jnp.asarray(x.transpose(0, 2, 3, 1)))
  scale = float(np.abs(t_map).max())
  np.testing.assert_allclose(out["feature_map"], t_map, rtol=1e-4,
                             atol=1e-4 * scale)
  np.testing.assert_allclose(out["features"], t_map.mean(axis=(1, 2)),
                             rtol=1e-4, atol=1e-4 * scale)
  return tmodel


def test_resnet50_outputs_match_torch(tmp_path):
  tmodel = _compare(TorchResNet50(), "resnet50")
  assert convert.infer_architecture(tmodel.state_dict()) == (
      "resnet", dict(stage_sizes=(3, 4, 6, 3), block="bottleneck", width=64))
  # Through a .pth file, wrapped the way training scripts save checkpoints
  # and with DataParallel's "module." prefix.
  path = os.path.join(tmp_path, "r50.pth")
  torch.save({"state_dict": {f"module.{k}": v for k, v in
                             tmodel.state_dict().items()}, "epoch": 3}, path)
  loaded = convert.load_pretrained(path)
  np.testing.assert_array_equal(
      loaded["params"]["backbone"]["layer2_0"]["conv2"]["kernel"],
      tmodel.state_dict()["layer2.0.conv2.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      loaded["batch_stats"]["backbone"]["bn1"]["var"],
      tmodel.state_dict()["bn1.running_var"].numpy())


def test_densenet121_converts_and_outputs_match_torch():
  # Full DenseNet-121: every key lands on the registered model's variables.
  tmodel = _compare(TorchDenseNet121(), "densenet121", forward=False)
  kind, arch = convert.infer_architecture(tmodel.state_dict())
  assert kind == "densenet" and arch["block_config"] == (6, 12, 24, 16)
  assert arch["growth_rate"] == 32 and arch["bn_size"] == 4
  # Outputs on a shallower DenseNet-BC of the same layer types (compiling the
  # 121-layer graph costs ~20 s on a loaded CI CPU and tests nothing more).
  short = TorchDenseNet121(blocks=(2, 3, 4, 2))
  convert_sd = short.state_dict()
  assert convert.infer_architecture(convert_sd)[1]["block_config"] == (2, 3, 4, 2)
  torch.manual_seed(0)
  short = _randomise(short, 0)
  x = np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32)
  with torch.no_grad():
    t_map = short.feature_map(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  v = convert.convert_state_dict(short.state_dict(), prefix=None)
  bb = backbones.DenseNet(block_config=(2, 3, 4, 2))
  out = jax.jit(bb.apply)(v, jnp.asarray(x.transpose(0, 2, 3, 1)))
  scale = float(np.abs(t_map).max())
  np.testing.assert_allclose(out["feature_map"], t_map, rtol=1e-4,
                             atol=1e-4 * scale)


def test_legacy_densenet_keys_and_small_variants():
  """A small DenseNet saved with pre-0.4 torchvision keys (norm.1, conv.2)."""
  t = _randomise(TorchDenseNet121(growth=4, blocks=(1, 2), init=8), 1)
  sd = {}
  for k, v in t.state_dict().items():
    for a in ("norm1", "norm2", "conv1", "conv2"):
      k = k.replace(f".{a}.", f".{a[:-1]}.{a[-1]}.")
    sd[k] = v
  assert "features.denseblock1.denselayer1.norm.1.weight" in sd
  v = convert.convert_state_dict(sd, prefix=None)
  assert "denseblock2" in v["params"] and "backbone" not in v["params"]
  # Grey inputs: the stem sums over RGB; a nested prefix for two-branch models.
  g = convert.convert_state_dict(sd, prefix="global_net/backbone", in_channels=1)
  k1 = g["params"]["global_net"]["backbone"]["conv0"]["kernel"]
  assert k1.shape == (7, 7, 1, 8)
  np.testing.assert_allclose(k1[:, :, 0], v["params"]["conv0"]["kernel"].sum(2),
                             rtol=1e-6)
  k4 = convert.adapt_input_conv(v["params"]["conv0"]["kernel"], 4)
  assert k4.shape == (7, 7, 4, 8)


def test_safetensors_file(tmp_path):
  st = pytest.importorskip("safetensors.numpy")
  t = _randomise(TorchResNet50(layers=(1, 1, 1, 1)), 2)
  path = os.path.join(tmp_path, "r.safetensors")
  st.save_file({k: v.numpy() for k, v in t.state_dict().items()}, path)
  v = convert.load_pretrained(path)
  assert v["params"]["backbone"]["layer4_0"]["conv3"]["kernel"].shape == (
      1, 1, 512, 2048)


def test_mismatches_are_listed():
  sd = dict(_randomise(TorchResNet50(layers=(1, 1, 1, 1)), 3).state_dict())
  sd.pop("layer3.0.bn2.running_var")
  sd["layer1.0.attn.weight"] = torch.zeros(3)
  with pytest.raises(convert.ConversionError) as e:
    convert.convert_state_dict(sd)
  msg = str(e.value)
  assert "layer1.0.attn.weight" in msg
  assert "batch_stats/layer3_0/bn2/var" in msg
  sd = dict(_randomise(TorchResNet50(layers=(1, 1, 1, 1)), 3).state_dict())
  sd["layer1.0.conv2.weight"] = torch.zeros(64, 64, 5, 5)
  with pytest.raises(convert.ConversionError, match="shape mismatches"):
    convert.convert_state_dict(sd)
  with pytest.raises(convert.ConversionError, match="not a torchvision"):
    convert.convert_state_dict({"encoder.weight": np.zeros(3)})
  with pytest.raises(FileNotFoundError):
    convert.load_pretrained("/nonexistent/weights.pth")
  assert backbones.BACKBONES  # the converter's targets are registered models
