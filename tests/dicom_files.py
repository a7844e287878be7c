"""Writes test DICOM files with pydicom (CR/DX, MONOCHROME1/2, 12/16-bit).

Shared by tests/test_dicom.py, tests/test_serve.py and benchmarks/serve.py;
the pixel data comes from the staged PNG chest X-rays.
"""

import io
import os

import numpy as np
from PIL import Image

COVID_DIR = os.path.join("covid19_radiography", "COVID-19_Radiography_Dataset")


def staged_xray(data_dir: str, cls: str = "COVID", number: int = 1) -> str:
  """The staged `{cls}-{number}.png`, else the number-th file of the class
  folder (the Normal images are a sample: not every number exists)."""
  d = os.path.join(data_dir, COVID_DIR, cls)
  p = os.path.join(d, f"{cls}-{number}.png")
  if os.path.exists(p) or not os.path.isdir(d):
    return p
  files = sorted(os.listdir(d), key=lambda f: (len(f), f))
  return os.path.join(d, files[number % len(files)])


def read_png(path: str) -> np.ndarray:
  with Image.open(path) as img:
    return np.asarray(img.convert("L"), np.uint8)


def dicom_bytes(stored: np.ndarray, *, photometric: str = "MONOCHROME2",
                bits_stored: int = 16, modality: str = "CR",
                slope=None, intercept=None, center=None, width=None,
                voi_function=None, voi_lut=None,
                transfer_syntax: str = "1.2.840.10008.1.2.1",
                pixel_bytes: bytes = None) -> bytes:
  """A DICOM Part 10 file holding `stored` (uint16 (H, W)) as its pixels.

  Args:
    voi_lut: optional (first_mapped, uint16 table, bits) for a VOI LUT
      sequence.
    transfer_syntax: explicit VR little endian by default; another UID with
      `pixel_bytes` makes a file whose pixel data needs that syntax's decoder.
  """
  from pydicom.dataset import Dataset, FileDataset, FileMetaDataset  # pylint: disable=g-import-not-at-top
  from pydicom.sequence import Sequence  # pylint: disable=g-import-not-at-top
  from pydicom.uid import UID, generate_uid  # pylint: disable=g-import-not-at-top
  stored = np.asarray(stored, np.uint16)
  meta = FileMetaDataset()
  sop = ("1.2.840.10008.5.1.4.1.1.1" if modality == "CR"
         else "1.2.840.10008.5.1.4.1.1.1.1")   # CR / DX for presentation
  meta.MediaStorageSOPClassUID = sop
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = UID(transfer_syntax)
  ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
  ds.SOPClassUID = sop
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = modality
  ds.PatientID = "TEST"
  ds.Rows, ds.Columns = stored.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = 16
  ds.BitsStored = bits_stored
  ds.HighBit = bits_stored - 1
  ds.PixelRepresentation = 0
  if slope is not None:
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept or 0
    ds.RescaleType = "US"
  if center is not None:
    ds.WindowCenter = center
    ds.WindowWidth = width
  if voi_function:
    ds.VOILUTFunction = voi_function
  if voi_lut is not None:
    first, table, bits = voi_lut
    item = Dataset()
    item.LUTDescriptor = [len(table), first, bits]
    item.LUTData = np.asarray(table, "<u2").tobytes()
    ds.VOILUTSequence = Sequence([item])
  if pixel_bytes is not None:
    from pydicom.encaps import encapsulate  # pylint: disable=g-import-not-at-top
    ds.PixelData = encapsulate([pixel_bytes])
    ds["PixelData"].VR = "OB"
  else:
    ds.PixelData = stored.astype("<u2").tobytes()
  out = io.BytesIO()
  ds.save_as(out, enforce_file_format=True)
  return out.getvalue()
