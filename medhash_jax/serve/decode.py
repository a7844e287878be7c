"""Uploaded bytes -> uint8 (H, W, C) image; the type is sniffed from the bytes.

PNG and JPEG through Pillow, DICOM through `medhash_jax.data.dicom`. The
file name and the multipart Content-Type are never trusted. Failures are
`UploadError`s carrying the HTTP status and a message naming the problem:

  415  not PNG, JPEG or DICOM (the sniffed signature is named)
  422  a PNG/JPEG/DICOM that cannot be decoded (truncated, corrupt, a
       compressed DICOM transfer syntax without a decoder, too many pixels)
"""

import io
import warnings

import numpy as np
from PIL import Image

from medhash_jax.data import dicom
from medhash_jax.data import transforms

# Decompression bombs: a 20 MB PNG can hold gigapixels. 64 Mpx is far above
# any radiograph (a 43 x 43 cm detector at 0.1 mm is 18.5 Mpx).
MAX_PIXELS = 64 * 1024 * 1024


class UploadError(ValueError):

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


def _pil(data: bytes, kind: str) -> np.ndarray:
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data), formats=[kind.upper()]) as img:
        if img.width * img.height > MAX_PIXELS:
          raise UploadError(422, f"{kind.upper()} image of {img.width}x"
                            f"{img.height} pixels is over the limit of "
                            f"{MAX_PIXELS} pixels")
        img.load()   # raises OSError on truncated data
        return transforms._pil_to_array(img)  # pylint: disable=protected-access
  except UploadError:
    raise
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
          Image.DecompressionBombWarning) as e:
    raise UploadError(422, f"cannot decode the {kind.upper()} image ({e})") from e


def decode_upload(data: bytes) -> tuple:
  """(image uint8 (H, W, C), kind) of uploaded bytes; UploadError on failure."""
  if not data:
    raise UploadError(400, "the uploaded file is empty")
  kind = dicom.sniff(data[:132])
  if kind == "unknown":
    head = data[:8]
    raise UploadError(415, "unsupported image type: the bytes are not PNG, "
                      f"JPEG or DICOM (they begin with {head!r})")
  if kind == "dicom":
    try:
      img = dicom.decode_dicom(data)
    except dicom.DicomError as e:
      raise UploadError(422, f"cannot decode the DICOM image ({e})") from e
    except ImportError as e:
      raise UploadError(415, str(e)) from e
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
      raise UploadError(422, "DICOM image over the pixel limit")
    return img, kind
  return _pil(data, kind), kind
