"""Render one frame of a stored DICOM image as a PNG preview.

The frame is decoded straight from the Part 10 file with :func:`pydicom.pixels.pixel_array`
(``index=frame``), so of a long multi-frame (cine) object only that one frame is decoded and held
in memory.

Colour handling follows the Photometric Interpretation (PS3.3 C.7.6.3.1.2):

* ``RGB``: used as decoded.
* ``YBR_FULL`` / ``YBR_FULL_422`` (native, or JPEG Baseline as written by ultrasound
  machines): pydicom decodes the YCbCr samples, removes the 4:2:2 sub-sampling and converts
  them to RGB (``raw=False``, its default); its pylibjpeg and Pillow JPEG plugins both hand it
  the YCbCr samples unconverted.
* ``YBR_ICT`` / ``YBR_RCT`` (JPEG 2000 only): the JPEG 2000 decoder itself undoes the
  multiple-component transform, so the decoded samples are already RGB.
* ``PALETTE COLOR``: the Red/Green/Blue Palette Color LUTs (PS3.3 C.7.6.3.1.5/.6) are applied.
* ``MONOCHROME1`` / ``MONOCHROME2``: Modality LUT, then VOI LUT or windowing (PS3.3 C.11.1,
  C.11.2), then scaled to 8 bits; MONOCHROME1 is shown inverted (minimum = white).

Anything else (``YBR_PARTIAL_420`` video, retired interpretations) is refused.
"""

from __future__ import annotations

import io
import operator
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import UID, JPEG2000TransferSyntaxes

__all__ = ["PreviewError", "render_preview"]

# Photometric interpretations whose decoded (raw=False) samples are RGB, see module docstring.
_RGB_OUTPUT = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
# PS3.3 C.7.6.3.1.2: YBR_ICT / YBR_RCT are only allowed with JPEG 2000 (and HTJ2K) syntaxes.
_J2K_ONLY = frozenset({"YBR_ICT", "YBR_RCT"})
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
# Image Pixel module attributes (PS3.3 C.7.6.3) needed to interpret a frame.
_REQUIRED = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation")


class PreviewError(ValueError):
    """A frame cannot be rendered.

    ``reason`` is a short fixed text (never patient data), safe to return to a client.
    """

    NOT_DICOM = "not a readable DICOM Part 10 file"
    NO_PIXEL_DATA = "no pixel data"
    BAD_FRAME = "frame index out of range"
    UNSUPPORTED_SYNTAX = "transfer syntax not supported"
    NO_DECODER = "no decoder installed for the transfer syntax"
    UNSUPPORTED_PHOTOMETRIC = "photometric interpretation not supported"
    CORRUPT = "pixel data could not be decoded"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def render_preview(path: Path, frame: int = 0, max_size: int | None = None) -> bytes:
    """Return PNG bytes of frame ``frame`` (0-based) of the Part 10 file at ``path``.

    Colour images come out as an RGB PNG, monochrome ones as an 8-bit greyscale (``L``) PNG.
    If ``max_size`` is given the image is shrunk, keeping its aspect ratio, so that its longer
    side is at most ``max_size`` pixels (never enlarged).

    Raises :class:`PreviewError` when the file has no pixel data, ``frame`` is out of range,
    the transfer syntax cannot be decoded or the data is corrupt. ``OSError`` (e.g. a missing
    file) is not wrapped.
    """
    frame = operator.index(frame)
    if max_size is not None and max_size < 1:
        raise ValueError("max_size must be a positive number of pixels")
    path = Path(path)

    header, native_length = _read_header(path)
    pi = _check_header(header, frame)
    overrides = _check_native_length(header, pi, native_length)
    arr = _decode_frame(path, header, frame, overrides)

    if pi in _MONOCHROME:
        pixels = _monochrome_to_uint8(arr, header, invert=pi == "MONOCHROME1")  # -> mode "L"
    elif pi == "PALETTE COLOR":
        pixels = _palette_to_rgb(arr, header)  # -> mode "RGB"
    else:
        pixels = _samples_to_uint8(arr, header)  # -> mode "RGB"
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))

    if max_size is not None and max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _read_header(path: Path) -> tuple[Dataset, int | None]:
    """Read everything before the pixel data (which includes any palette LUTs).

    Also returns the value length of native (uncompressed) Pixel Data, or None if unknown.
    """
    with path.open("rb") as f:
        try:
            header = dcmread(f, stop_before_pixels=True)
        except OSError:
            raise
        except Exception as exc:  # InvalidDicomError, truncated or malformed elements...
            raise PreviewError(PreviewError.NOT_DICOM) from exc
        return header, _native_pixel_data_length(f, header)


def _native_pixel_data_length(f: BinaryIO, header: Dataset) -> int | None:
    """Value length of a native (7FE0,0010) Pixel Data element starting at ``f``'s position.

    PS3.5 7.1.2: tag, then a 32-bit length (implicit VR) or VR, 2 reserved bytes and a 32-bit
    length (explicit VR OB/OW). None when compressed, undefined length or not found.
    """
    tsyntax = UID(header.file_meta.get("TransferSyntaxUID") or "")
    if not tsyntax.is_transfer_syntax or tsyntax.is_encapsulated or tsyntax.is_deflated:
        return None
    data = f.read(12)
    endian = "<" if tsyntax.is_little_endian else ">"
    if len(data) < 12 or struct.unpack(f"{endian}HH", data[:4]) != (0x7FE0, 0x0010):
        return None
    (length,) = struct.unpack(f"{endian}L", data[4:8] if tsyntax.is_implicit_VR else data[8:12])
    return None if length == 0xFFFFFFFF else length


def _check_header(header: Dataset, frame: int) -> str:
    """Validate what can be checked before decoding; return the Photometric Interpretation."""
    if any(header.get(keyword) is None for keyword in _REQUIRED):
        raise PreviewError(PreviewError.NO_PIXEL_DATA)

    tsyntax = header.file_meta.get("TransferSyntaxUID")
    if not tsyntax:
        raise PreviewError(PreviewError.NOT_DICOM)
    tsyntax = UID(tsyntax)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:  # e.g. MPEG-2 / H.264 video, unknown UIDs
        raise PreviewError(PreviewError.UNSUPPORTED_SYNTAX) from exc
    if not decoder.is_available:
        raise PreviewError(PreviewError.NO_DECODER)

    # PS3.3 C.7.6.6: Number of Frames is absent for single-frame objects.
    try:
        n_frames = int(header.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise PreviewError(PreviewError.NO_PIXEL_DATA) from exc
    if not 0 <= frame < n_frames:
        raise PreviewError(PreviewError.BAD_FRAME)

    pi = str(header.PhotometricInterpretation).strip().upper()
    samples = int(header.SamplesPerPixel)
    if pi in _MONOCHROME or pi == "PALETTE COLOR":
        expected_samples = 1
    elif pi in _RGB_OUTPUT:
        expected_samples = 3
        if pi in _J2K_ONLY and tsyntax not in JPEG2000TransferSyntaxes:
            raise PreviewError(PreviewError.UNSUPPORTED_PHOTOMETRIC)
    else:
        raise PreviewError(PreviewError.UNSUPPORTED_PHOTOMETRIC)
    if samples != expected_samples:
        raise PreviewError(PreviewError.UNSUPPORTED_PHOTOMETRIC)
    return pi


def _check_native_length(header: Dataset, pi: str, length: int | None) -> dict[str, str]:
    """Check native Pixel Data holds every frame; return decoding overrides (if any).

    pydicom does not check the length when decoding from a file, so truncated data or a wrong
    Photometric Interpretation would otherwise render as garbage. Native ``YBR_FULL_422`` has
    2 samples per pixel (Y1 Y2 Cb Cr for each pixel pair, PS3.3 C.7.6.3.1.2); data as long as
    3 samples per pixel is really ``YBR_FULL`` (pydicom 3.0's ``decompress(as_rgb=False)`` of
    JPEG writes such files), so it is decoded as that.
    """
    if length is None:
        return {}
    n_frames = int(header.get("NumberOfFrames") or 1)
    samples = int(header.SamplesPerPixel)
    bits = int(header.Rows) * int(header.Columns) * n_frames * samples * int(header.BitsAllocated)
    full_length = (bits + 7) // 8
    if pi == "YBR_FULL_422":
        if length >= full_length:
            return {"photometric_interpretation": "YBR_FULL"}
        full_length = full_length // 3 * 2
    if length < full_length:
        raise PreviewError(PreviewError.CORRUPT)
    return {}


def _decode_frame(path: Path, header: Dataset, frame: int, overrides: dict[str, str]) -> np.ndarray:
    """Decode only frame ``frame``; YBR_FULL(_422) comes back as RGB (``raw=False``)."""
    src: Path | Dataset = path
    if UID(header.file_meta.get("TransferSyntaxUID") or "").is_deflated:
        # pixel_array(path) parses the file as stored: it cannot see through a deflated data set.
        try:
            src = dcmread(path)
        except OSError:
            raise
        except Exception as exc:
            raise PreviewError(PreviewError.NOT_DICOM) from exc
    try:
        arr: np.ndarray = pixel_array(src, index=frame, **overrides)
    except OSError:
        raise
    except AttributeError as exc:  # pydicom: the dataset has no (Float) Pixel Data element
        raise PreviewError(PreviewError.NO_PIXEL_DATA) from exc
    except NotImplementedError as exc:
        raise PreviewError(PreviewError.UNSUPPORTED_SYNTAX) from exc
    except Exception as exc:  # RuntimeError from every plugin failing, ValueError on bad lengths...
        raise PreviewError(PreviewError.CORRUPT) from exc

    expected: tuple[int, ...] = (int(header.Rows), int(header.Columns))
    if int(header.SamplesPerPixel) > 1:
        expected += (int(header.SamplesPerPixel),)
    if arr.shape != expected:
        raise PreviewError(PreviewError.CORRUPT)
    return arr


def _samples_to_uint8(arr: np.ndarray, header: Dataset) -> np.ndarray:
    """Scale RGB samples with more than 8 Bits Stored down to 8 bits (keep the top bits)."""
    bits_stored = int(header.get("BitsStored") or header.BitsAllocated)
    shift = max(bits_stored - 8, 0)
    if arr.dtype == np.uint8 and shift == 0:
        return arr
    if arr.dtype.kind == "f":
        return _scale(arr, 0.0, float(2**bits_stored - 1))
    if shift:
        arr = np.right_shift(arr, shift)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _palette_to_rgb(arr: np.ndarray, header: Dataset) -> np.ndarray:
    """Apply the Palette Color LUTs (PS3.3 C.7.6.3.1.5/.6) held in the header.

    The LUT entries are 8 or 16 bits (third value of the descriptor); 16-bit output keeps its
    high byte.
    """
    try:
        rgb = apply_color_lut(arr, header)
    except Exception as exc:  # missing or malformed LUT elements
        raise PreviewError(PreviewError.CORRUPT) from exc
    rgb = rgb[..., :3]
    if rgb.dtype == np.uint16:
        rgb = np.right_shift(rgb, 8)
    return rgb.astype(np.uint8)


def _monochrome_to_uint8(arr: np.ndarray, header: Dataset, *, invert: bool) -> np.ndarray:
    """Modality LUT, VOI LUT/windowing, scale to 0..255; invert for MONOCHROME1 (C.7.6.3.1.2)."""
    try:
        values = apply_modality_lut(arr, header)
        voi_range = _voi_output_range(header)
        if voi_range is not None:
            values = apply_voi_lut(values, header)
            low, high = voi_range
        else:
            low, high = _unwindowed_range(values, header)
    except PreviewError:
        raise
    except Exception as exc:  # malformed LUT / window elements
        raise PreviewError(PreviewError.CORRUPT) from exc

    out = _scale(values, low, high)
    if invert:
        out = 255 - out
    return out


def _voi_output_range(header: Dataset) -> tuple[float, float] | None:
    """Output range of the VOI transform pydicom's ``apply_voi_lut`` will apply, or None.

    Mirrors its choice (a VOI LUT Sequence is preferred over windowing): a VOI LUT maps to
    0..2**n-1 with n the third LUT Descriptor value (C.11.2.1.1); windowing maps to the range
    of the stored values after the Modality LUT (C.11.2.1.2).
    """
    voi_seq = header.get("VOILUTSequence")
    if voi_seq:
        item = voi_seq[0]
        descriptor = item.get("LUTDescriptor")
        if descriptor is not None and item.get("LUTData") is not None:
            return 0.0, float(2 ** int(descriptor[2]) - 1)
    if header.get("WindowCenter") is None or header.get("WindowWidth") is None:
        return None
    return _modality_output_range(header)


def _modality_output_range(header: Dataset) -> tuple[float, float]:
    """Range of values after the Modality LUT / rescale (as pydicom's windowing uses it)."""
    modality_seq = header.get("ModalityLUTSequence")
    if modality_seq:
        return 0.0, float(2 ** int(modality_seq[0].LUTDescriptor[2]) - 1)
    bits = int(header.get("BitsStored") or header.BitsAllocated)
    if int(header.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope = header.get("RescaleSlope")
    intercept = header.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = sorted((low * float(slope) + float(intercept), high * float(slope) + float(intercept)))
    return low, high


def _unwindowed_range(values: np.ndarray, header: Dataset) -> tuple[float, float]:
    """No VOI: plain unsigned <= 8-bit data is shown as is, anything else min..max of the frame."""
    bits = int(header.get("BitsStored") or header.BitsAllocated)
    identity_modality = (
        not header.get("ModalityLUTSequence")
        and _number(header.get("RescaleSlope"), 1.0) == 1.0
        and _number(header.get("RescaleIntercept"), 0.0) == 0.0
    )
    if identity_modality and bits <= 8 and int(header.get("PixelRepresentation", 0)) == 0:
        return 0.0, float(2**bits - 1)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return 0.0, 1.0
    return float(finite.min()), float(finite.max())


def _number(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linearly map ``low..high`` to ``0..255`` (clipped, rounded) as uint8."""
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (np.asarray(values, dtype=np.float64) - low) * (255.0 / (high - low))
    np.clip(out, 0.0, 255.0, out=out)
    return np.rint(out, out=out).astype(np.uint8)
