"""Metric writers: absl log lines, JSONL and TensorBoard event files.

clu.metric_writers would pull in TensorFlow, so the TensorBoard writer here is
self-contained: an event file is a TFRecord stream of `Event` protobufs, and
the two messages needed for scalars (Event, Summary.Value.simple_value) are
encoded by hand below (about 40 lines). tensorboardX is used instead when it is
installed. Only process 0 writes files; other processes get a no-op writer.
"""

import json
import math
import os
import socket
import struct
import time
from typing import Any, Dict, Mapping, Optional, Sequence

from absl import logging
import jax
import numpy as np

Scalars = Mapping[str, Any]


class MetricWriter:
  """Interface: scalars per step, a one-off hparams dict, flush, close."""

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    pass

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    pass

  def flush(self) -> None:
    pass

  def close(self) -> None:
    self.flush()


def _to_float(v) -> float:
  return float(np.asarray(v))


class LoggingWriter(MetricWriter):
  """One absl INFO line per call: `[step] name=value ...`."""

  def __init__(self, prefix: str = ""):
    self._prefix = prefix

  def write_scalars(self, step, scalars):
    parts = []
    for k in sorted(scalars):
      v = _to_float(scalars[k])
      parts.append(f"{k}={v:.4g}" if abs(v) < 1e5 else f"{k}={v:.6g}")
    logging.info("%s[%d] %s", self._prefix, step, ", ".join(parts))


class JsonlWriter(MetricWriter):
  """Appends `{"step": s, "time": t, name: value, ...}` lines to a file."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Line-buffered: a row is on disk as soon as it is written, so a killed
    # run keeps its curve and tests can follow a live run.
    self._f = open(path, "a", encoding="utf-8", buffering=1)

  def write_scalars(self, step, scalars):
    row = {"step": int(step), "time": time.time()}
    for k, v in scalars.items():
      v = _to_float(v)
      row[k] = v if math.isfinite(v) else str(v)  # JSON has no NaN
    self._f.write(json.dumps(row) + "\n")

  def write_hparams(self, hparams):
    self._f.write(json.dumps({"hparams": hparams}, default=str) + "\n")

  def flush(self):
    self._f.flush()

  def close(self):
    if not self._f.closed:
      self._f.close()


# -- TensorBoard event files without TensorFlow -------------------------------

def _crc32c_table():
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  c = 0xFFFFFFFF
  for b in data:
    c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0,
                 file_version: Optional[str] = None,
                 scalars: Optional[Scalars] = None) -> bytes:
  """tensorflow.Event protobuf bytes (wall_time=1, step=2, file_version=3,
  summary=5; Summary.value=1; Value.tag=1, Value.simple_value=2)."""
  msg = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
  if file_version is not None:
    msg += _len_field(3, file_version.encode())
  if scalars:
    summary = b"".join(
        _len_field(1, _len_field(1, k.encode()) + b"\x15" +
                   struct.pack("<f", _to_float(v)))
        for k, v in scalars.items())
    msg += _len_field(5, summary)
  return msg


def tfrecord(data: bytes) -> bytes:
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", _masked_crc(header)) + data +
          struct.pack("<I", _masked_crc(data)))


def read_tfrecords(path: str) -> list:
  """Record payloads of a TFRecord file, checking both CRCs (for tests)."""
  out = []
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (hcrc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    payload = data[pos + 12:pos + 12 + length]
    (dcrc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
    if hcrc != _masked_crc(header) or dcrc != _masked_crc(payload):
      raise ValueError(f"{path}: CRC mismatch in the record at byte {pos}")
    out.append(payload)
    pos += 16 + length
  return out


class TensorBoardWriter(MetricWriter):
  """Scalars to `{logdir}/events.out.tfevents.*`, readable by TensorBoard."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = (f"events.out.tfevents.{int(time.time())}."
            f"{socket.gethostname()}.{os.getpid()}")
    self.path = os.path.join(logdir, name)
    self._f = open(self.path, "ab")
    self._f.write(tfrecord(encode_event(time.time(),
                                        file_version="brain.Event:2")))

  def write_scalars(self, step, scalars):
    if scalars:
      self._f.write(tfrecord(encode_event(time.time(), int(step),
                                          scalars=scalars)))

  def flush(self):
    self._f.flush()

  def close(self):
    if not self._f.closed:
      self._f.close()


class _TensorBoardXWriter(MetricWriter):

  def __init__(self, logdir: str):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._w = tensorboardX.SummaryWriter(logdir)

  def write_scalars(self, step, scalars):
    for k, v in scalars.items():
      self._w.add_scalar(k, _to_float(v), int(step))

  def flush(self):
    self._w.flush()

  def close(self):
    self._w.close()


class MultiWriter(MetricWriter):

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = list(writers)

  def write_scalars(self, step, scalars):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_hparams(self, hparams):
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


def tensorboard_writer(logdir: str) -> MetricWriter:
  try:
    return _TensorBoardXWriter(logdir)
  except ImportError:
    return TensorBoardWriter(logdir)


def create_default_writer(workdir: Optional[str], *, tensorboard: bool = True,
                          log: bool = False, prefix: str = "") -> MetricWriter:
  """`{workdir}/metrics.jsonl` + `{workdir}/tensorboard/` on process 0 (and
  an absl line per call with `log`; the train loop writes its own lines).
  Other processes, and workdir=None, write no files."""
  writers = [LoggingWriter(prefix)] if log else []
  if workdir and jax.process_index() == 0:
    writers.append(JsonlWriter(os.path.join(workdir, "metrics.jsonl")))
    if tensorboard:
      writers.append(tensorboard_writer(os.path.join(workdir, "tensorboard")))
  return MultiWriter(writers)


def flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  """{'a': {'b': 1}} -> {'a/b': 1}."""
  out = {}
  for k, v in d.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, name + "/"))
    else:
      out[name] = v
  return out
