"""DICOM pixel data -> uint8 display image, and type sniffing from bytes.

One decoder for the data layer (`transforms.decode_image` on `.dcm` files)
and the server (uploads, whose type is sniffed from the bytes, never the
file name). pydicom is an optional dependency (the `serve` extra), imported
on first use.

What `decode_dicom` applies, in the order of the DICOM grayscale pipeline
(PS3.4 N.2):

  1. stored values -> modality values: RescaleSlope / RescaleIntercept (or a
     Modality LUT sequence), through pydicom's `apply_modality_lut`;
  2. VOI: the first VOI LUT of a VOI LUT sequence, else the first
     WindowCenter / WindowWidth (`window`: LINEAR, LINEAR_EXACT or SIGMOID,
     PS3.3 C.11.2.1.2); without either, the image's own min..max;
  3. MONOCHROME1 (low values shown bright) inverted, so every output is
     "high = bright" like MONOCHROME2 and PNG X-rays;
  4. scaled to uint8 (H, W, C).

BitsStored of 12 or 16 (and 8) work alike: the window / min-max step maps
whatever range the stored values have. A compressed transfer syntax whose
decoder plugin is not installed raises `DicomError` naming the syntax.
"""

from __future__ import annotations

import io
from typing import BinaryIO, Union

import numpy as np

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class DicomError(ValueError):
  """A DICOM file that cannot be turned into an image (message says why)."""


def sniff(head: bytes) -> str:
  """'png' | 'jpeg' | 'dicom' | 'unknown' from the first bytes (>= 132).

  DICOM Part 10 files have a 128-byte preamble then b"DICM". Files without
  the preamble (raw data sets) are not accepted: they carry no transfer
  syntax, so their decoding would be a guess.
  """
  if head.startswith(PNG_MAGIC):
    return "png"
  if head.startswith(JPEG_MAGIC):
    return "jpeg"
  if len(head) >= 132 and head[128:132] == b"DICM":
    return "dicom"
  return "unknown"


def _pydicom():
  try:
    import pydicom  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "Reading DICOM needs pydicom, which is not installed; install it with "
        "`pip install pydicom` (or the package's `serve` extra).") from e
  return pydicom


def _to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
  arr = (arr.astype(np.float64) - lo) / max(hi - lo, 1e-6) * 255.0
  return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def decode_dicom(source: Union[str, bytes, BinaryIO]) -> np.ndarray:
  """A DICOM file (path, bytes or file object) as uint8 (H, W, C), C = 1 or 3.

  Raises:
    DicomError: not DICOM, no pixel data, a truncated file, or a compressed
      transfer syntax with no installed decoder (named).
  """
  pydicom = _pydicom()
  from pydicom.pixels import apply_modality_lut  # pylint: disable=g-import-not-at-top
  if isinstance(source, (bytes, bytearray, memoryview)):
    source = io.BytesIO(bytes(source))
  try:
    ds = pydicom.dcmread(source)
  except Exception as e:  # pylint: disable=broad-except
    raise DicomError(f"not a readable DICOM file ({e})") from e
  if "PixelData" not in ds:
    raise DicomError("the DICOM file holds no pixel data")
  meta = getattr(ds, "file_meta", None)
  syntax = meta.get("TransferSyntaxUID") if meta is not None else None
  if syntax is not None and syntax.is_compressed:
    _check_decoder(syntax)
  try:
    arr = ds.pixel_array
  except Exception as e:  # pylint: disable=broad-except
    # Truncated or inconsistent pixel data (pydicom raises ValueError etc.).
    raise DicomError(f"cannot read the DICOM pixel data ({e})") from e
  photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
  frames = int(ds.get("NumberOfFrames", 1) or 1)
  samples = int(ds.get("SamplesPerPixel", 1) or 1)
  if frames > 1:
    arr = arr[0]  # multi-frame: the first frame
  if samples == 3:
    if photometric.startswith("YBR"):
      from pydicom.pixels import convert_color_space  # pylint: disable=g-import-not-at-top
      arr = convert_color_space(arr, photometric, "RGB")
    if arr.dtype == np.uint8:
      return np.ascontiguousarray(arr)
    return _to_uint8(arr, float(arr.min()), float(arr.max()))
  if photometric not in ("MONOCHROME1", "MONOCHROME2"):
    raise DicomError(f"photometric interpretation {photometric!r} is not "
                     "supported (MONOCHROME1, MONOCHROME2 or RGB/YBR)")
  values = apply_modality_lut(arr, ds).astype(np.float64)
  if "VOILUTSequence" in ds:
    out = _voi_lut(values, ds.VOILUTSequence[0])
  elif "WindowCenter" in ds and "WindowWidth" in ds:
    out = window(values, _first(ds.WindowCenter), _first(ds.WindowWidth),
                 str(ds.get("VOILUTFunction", "LINEAR")).upper())
  else:
    out = _to_uint8(values, float(values.min()), float(values.max()))
  if photometric == "MONOCHROME1":
    out = 255 - out  # low values are shown bright
  return out[..., None]


def _voi_lut(values: np.ndarray, item) -> np.ndarray:
  """A VOI LUT item (PS3.3 C.11.2.1.1): values below the first mapped one
  take the first entry, above the last the last entry; the output range is
  0..2^bits-1 (LUTDescriptor = [entries (0 = 65536), first mapped, bits])."""
  n, first, bits = (int(v) for v in item.LUTDescriptor)
  n = n or 65536
  data = item.LUTData
  if isinstance(data, (bytes, bytearray)):
    table = np.frombuffer(data, "<u2" if bits > 8 or len(data) == 2 * n
                          else np.uint8)[:n]
  else:
    table = np.asarray(data, np.int64)[:n]
  idx = np.clip(np.rint(values).astype(np.int64) - first, 0, len(table) - 1)
  return _to_uint8(table[idx], 0.0, float(2 ** bits - 1))


def _first(value) -> float:
  """WindowCenter / WindowWidth may be multi-valued: the first view."""
  try:
    return float(value[0])
  except TypeError:
    return float(value)


def window(values: np.ndarray, center: float, width: float,
           function: str = "LINEAR") -> np.ndarray:
  """The VOI window of PS3.3 C.11.2.1.2 onto uint8 0..255.

  LINEAR: below c - 0.5 - (w - 1) / 2 -> 0, above c - 0.5 + (w - 1) / 2 ->
  255, linear between; LINEAR_EXACT: c -+ w / 2; SIGMOID: 255 / (1 +
  exp(-4 (x - c) / w)).
  """
  x = np.asarray(values, np.float64)
  if width <= 0 or (function == "LINEAR" and width < 1):
    raise DicomError(f"WindowWidth {width} is not valid for {function}")
  if function == "SIGMOID":
    y = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
  elif function == "LINEAR_EXACT":
    y = ((x - center) / width + 0.5) * 255.0
  elif function == "LINEAR":
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0 if width > 1 \
        else np.where(x > center - 0.5, 255.0, 0.0)
  else:
    raise DicomError(f"VOILUTFunction {function!r} is not one of LINEAR, "
                     "LINEAR_EXACT, SIGMOID")
  return np.clip(y + 0.5, 0, 255).astype(np.uint8)


def _check_decoder(syntax):
  """A compressed transfer syntax with no installed decoder plugin: say which
  syntax and what would decode it, before pydicom's generic failure."""
  try:
    from pydicom.pixels import get_decoder  # pylint: disable=g-import-not-at-top
    decoder = get_decoder(syntax)
  except (NotImplementedError, ValueError) as e:
    raise DicomError(f"the DICOM transfer syntax {syntax.name} ({syntax}) is "
                     f"not supported by pydicom ({e})") from e
  if not decoder.is_available:
    missing = "; ".join(decoder.missing_dependencies) or "a pixel-data plugin"
    raise DicomError(
        f"the DICOM transfer syntax {syntax.name} ({syntax}) is compressed "
        f"and no installed decoder reads it (install one of: {missing}), or "
        "send the image uncompressed")


def read_dicom_file(path: str) -> np.ndarray:
  """`decode_dicom` of a file path (the data layer's `.dcm` reader)."""
  with open(path, "rb") as f:
    return decode_dicom(f)
