"""data.dicom: DICOM files written here with pydicom from a staged chest X-ray.

Each test names the one-line bug it catches.
"""

import os

import numpy as np
import pytest

pytest.importorskip("pydicom", reason="pydicom (the `serve` extra) is needed")

from medhash_jax import data as data_lib  # noqa: E402
from medhash_jax.data import dicom  # noqa: E402
from medhash_jax.data.records import BadRecordError  # noqa: E402
from tests import dicom_files  # noqa: E402


@pytest.fixture(scope="module")
def xray(data_dir):
  path = dicom_files.staged_xray(data_dir)
  if not os.path.exists(path):
    pytest.skip(f"staged X-ray {path} missing")
  return dicom_files.read_png(path)


def _minmax(x):
  x = np.asarray(x, np.float64)
  return np.clip((x - x.min()) / (x.max() - x.min()) * 255 + 0.5, 0,
                 255).astype(np.uint8)


def test_sniff():
  """Catches: sniffing by the file name or a wrong DICM offset."""
  assert dicom.sniff(dicom.PNG_MAGIC + b"\0" * 200) == "png"
  assert dicom.sniff(b"\xff\xd8\xff\xe0" + b"\0" * 200) == "jpeg"
  assert dicom.sniff(b"\0" * 128 + b"DICM" + b"\0" * 10) == "dicom"
  assert dicom.sniff(b"DICM" + b"\0" * 200) == "unknown"
  assert dicom.sniff(b"GIF89a" + b"\0" * 200) == "unknown"


def test_monochrome2_16bit_is_the_image(xray):
  """16-bit MONOCHROME2 CR, no window: the image's own range.
  Catches: 16-bit values truncated to 8 bits (astype(uint8) before scaling)."""
  raw = dicom_files.dicom_bytes(xray.astype(np.uint16) * 257, bits_stored=16)
  out = dicom.decode_dicom(raw)
  assert out.shape == xray.shape + (1,) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], _minmax(xray))


def test_monochrome1_is_inverted(xray):
  """12-bit MONOCHROME1 DX holding the inverted image decodes to the image.
  Catches: MONOCHROME1 not inverted."""
  stored = (4095 - xray.astype(np.uint16) * 16)
  raw = dicom_files.dicom_bytes(stored, photometric="MONOCHROME1",
                                bits_stored=12, modality="DX")
  out = dicom.decode_dicom(raw)[..., 0].astype(int)
  assert np.abs(out - _minmax(xray).astype(int)).max() <= 1
  # and a MONOCHROME2 file of the same values is the negative
  raw2 = dicom_files.dicom_bytes(stored, bits_stored=12, modality="DX")
  np.testing.assert_array_equal(dicom.decode_dicom(raw2)[..., 0],
                                255 - dicom.decode_dicom(raw)[..., 0])


def test_rescale_then_window(xray):
  """Slope/intercept applied before the window (the window is in modality
  units). Catches: RescaleSlope ignored, intercept ignored, window ignored."""
  stored = xray.astype(np.uint16) * 10              # 0..2150
  slope, intercept, center, width = 0.5, -100.0, 300.0, 601.0
  raw = dicom_files.dicom_bytes(stored, bits_stored=12, slope=slope,
                                intercept=intercept, center=center,
                                width=width)
  out = dicom.decode_dicom(raw)[..., 0].astype(int)
  hu = stored * slope + intercept
  want = np.clip(((hu - (center - 0.5)) / (width - 1) + 0.5) * 255 + 0.5,
                 0, 255).astype(int)
  np.testing.assert_array_equal(out, want)
  # The window clips: values below / above it saturate.
  assert (out == 0).any() and (out == 255).any()


def test_window_functions():
  """Catches: LINEAR_EXACT or SIGMOID treated as LINEAR."""
  x = np.array([0.0, 50.0, 100.0])
  np.testing.assert_array_equal(dicom.window(x, 50, 100, "LINEAR_EXACT"),
                                [0, 128, 255])
  np.testing.assert_array_equal(dicom.window(x, 50, 100, "SIGMOID"),
                                [30, 128, 225])  # 255 / (1 + e^-+2)
  with pytest.raises(dicom.DicomError, match="VOILUTFunction"):
    dicom.window(x, 50, 100, "CUBIC")


def test_voi_lut_sequence(xray):
  """A VOI LUT sequence wins over min-max. Catches: VOI LUT ignored."""
  stored = xray.astype(np.uint16) * 16               # 12-bit
  table = np.zeros(4096, np.uint16)
  table[2048:] = 255                                  # a hard threshold
  raw = dicom_files.dicom_bytes(stored, bits_stored=12,
                                voi_lut=(0, table, 8))
  out = dicom.decode_dicom(raw)[..., 0]
  np.testing.assert_array_equal(out, np.where(stored >= 2048, 255, 0))


def test_compressed_without_decoder_is_named(xray):
  """Catches: the generic pydicom error (or a crash) instead of the syntax."""
  raw = dicom_files.dicom_bytes(xray, transfer_syntax="1.2.840.10008.1.2.4.80",
                                pixel_bytes=b"\xff\xd8" + b"\0" * 64)
  with pytest.raises(dicom.DicomError, match=r"JPEG-LS Lossless.*"
                     r"1\.2\.840\.10008\.1\.2\.4\.80.*no installed decoder"):
    dicom.decode_dicom(raw)


def test_truncated_and_garbage(xray):
  """Catches: a truncated file decoded as a partial image (or IndexError)."""
  raw = dicom_files.dicom_bytes(xray.astype(np.uint16))
  with pytest.raises(dicom.DicomError, match="pixel data"):
    dicom.decode_dicom(raw[:len(raw) // 2])
  with pytest.raises(dicom.DicomError, match="not a readable DICOM|no pixel data"):
    dicom.decode_dicom(b"\0" * 128 + b"DICM" + b"\x02\x00")


def test_data_layer_reads_through_it(xray, tmp_path):
  """decode_image on .dcm and on extension-less DICOM files goes through
  data.dicom. Catches: transforms keeping its own reader (no VOI window) or
  extension-only detection."""
  stored = xray.astype(np.uint16) * 10
  raw = dicom_files.dicom_bytes(stored, bits_stored=12, center=1000.0,
                                width=1001.0, photometric="MONOCHROME1")
  want = dicom.decode_dicom(raw)
  for name in ("a.dcm", "IM000001"):
    p = tmp_path / name
    p.write_bytes(raw)
    np.testing.assert_array_equal(data_lib.decode_image(str(p)), want)
  bad = tmp_path / "bad.dcm"
  bad.write_bytes(raw[:1000])
  with pytest.raises(BadRecordError, match="bad.dcm"):
    data_lib.decode_image(str(bad))
