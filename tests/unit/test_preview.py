"""Tests for service.imaging.preview against the real ultrasound files shipped with pydicom."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_color_lut, convert_color_space, pixel_array
from pydicom.uid import (
    MPEG2MPML,
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from service.imaging.preview import PreviewError, render_preview

JPEG2K = "examples_jpeg2k.dcm"  # GE, JPEG 2000 lossless, YBR_RCT, 640x480
RGB = "examples_rgb_color.dcm"  # GE, native RGB, 320x240
PALETTE = "examples_palette.dcm"  # Philips, native PALETTE COLOR with 16-bit LUTs, 800x350
YBR_CINE = "examples_ybr_color.dcm"  # SonoSite, JPEG baseline YBR_FULL_422, 30 frames of 320x240


def _path(name: str) -> Path:
    return Path(get_testdata_file(name, download=False))


def _decode_png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.format == "PNG"
        return im.copy()


def _render(path: Path, **kwargs: int) -> np.ndarray:
    return np.asarray(_decode_png(render_preview(path, **kwargs)))


def _absdiff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape
    return np.abs(a.astype(np.int32) - b.astype(np.int32))


def _grey_fraction(rgb: np.ndarray) -> float:
    """Share of pixels with R == G == B (B-mode ultrasound is mostly grey)."""
    return float(np.mean((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])))


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


# --- colour -------------------------------------------------------------------------------------------


def test_rgb_is_rendered_as_stored() -> None:
    path = _path(RGB)
    image = _decode_png(render_preview(path))

    assert (image.mode, image.size) == ("RGB", (320, 240))
    assert not image.info  # no text chunks: nothing from the DICOM header ends up in the PNG
    expected = dcmread(path).pixel_array
    np.testing.assert_array_equal(np.asarray(image), expected)
    assert _grey_fraction(expected) < 0.99  # the file really has colour (power Doppler)


def test_jpeg2000_ybr_rct_comes_out_rgb() -> None:
    path = _path(JPEG2K)
    ds = dcmread(path)
    assert ds.PhotometricInterpretation == "YBR_RCT"

    rendered = _render(path)

    assert rendered.shape == (480, 640, 3)
    # Independent decoder: Pillow on the bare codestream, which applies the inverse RCT itself.
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    with Image.open(io.BytesIO(codestream)) as im:
        reference = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(rendered, reference)  # lossless
    # Unconverted Y/Cb/Cr would make the grey B-mode background red (Cb = Cr = 0 for grey).
    assert _grey_fraction(rendered) > 0.8
    assert _grey_fraction(rendered) < 0.99


def test_palette_color_lut_is_applied_and_scaled_to_8_bits() -> None:
    path = _path(PALETTE)
    ds = dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    assert ds.RedPaletteColorLookupTableDescriptor[2] == 16

    rendered = _render(path)

    assert rendered.shape == (350, 800, 3)
    expected = (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8)
    np.testing.assert_array_equal(rendered, expected)
    # A few absolute values: the blue Philips banner at the top, black background below it.
    banner = rendered[5, 400]
    assert banner[2] > banner[0] + 30, banner
    np.testing.assert_array_equal(rendered[300, 200], [0, 0, 0])
    # The red LUT maps index 1 to 0x0100 -> 1 after scaling, not 0 or 256.
    index_one = ds.pixel_array == 1
    assert index_one.any()
    assert set(rendered[index_one][:, 0].tolist()) == {1}


@pytest.mark.parametrize("frame", [0, 13, 29])
def test_ybr_full_422_jpeg_cine_frame_comes_out_rgb(frame: int) -> None:
    path = _path(YBR_CINE)
    header = dcmread(path, stop_before_pixels=True)
    assert (header.PhotometricInterpretation, int(header.NumberOfFrames)) == ("YBR_FULL_422", 30)

    rendered = _render(path, frame=frame)

    assert rendered.shape == (240, 320, 3)
    raw = pixel_array(path, index=frame, raw=True)  # decoded Y/Cb/Cr samples
    converted = convert_color_space(raw, "YBR_FULL", "RGB")
    assert _absdiff(rendered, converted).max() <= 1
    assert _absdiff(rendered, raw).mean() > 20  # i.e. the conversion did happen
    # Independent decoder and colour conversion: Pillow/libjpeg-turbo on the JPEG frame itself.
    jpeg = list(generate_frames(dcmread(path).PixelData, number_of_frames=30))[frame]
    with Image.open(io.BytesIO(jpeg)) as im:
        reference = np.asarray(im.convert("RGB"))
    diff = _absdiff(rendered, reference)
    assert diff.max() <= 4
    assert diff.mean() < 0.2


def test_cine_first_and_last_frames_differ() -> None:
    path = _path(YBR_CINE)
    assert not np.array_equal(pixel_array(path, index=0), pixel_array(path, index=29))

    first, last = _render(path, frame=0), _render(path, frame=29)

    assert _absdiff(first, last).mean() > 1


@pytest.mark.parametrize(
    ("as_rgb", "photometric"),
    [(True, "RGB"), (False, "YBR_FULL"), (False, "YBR_FULL_422")],
    ids=["native-RGB", "native-YBR_FULL", "mislabelled-YBR_FULL_422"],
)
def test_native_copy_of_cine_renders_like_the_jpeg(tmp_path: Path, as_rgb: bool, photometric: str) -> None:
    source = _path(YBR_CINE)
    ds = dcmread(source)
    ds.decompress(as_rgb=as_rgb)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert len(ds.PixelData) == 30 * 240 * 320 * 3  # 3 samples per pixel, no sub-sampling
    # pydicom 3.0.2's decompress(as_rgb=False) keeps "YBR_FULL_422" for this full YBR data;
    # the last case keeps that mislabel on purpose, the preview must still decode it as YBR_FULL.
    ds.PhotometricInterpretation = photometric
    native = _save(ds, tmp_path / "native.dcm")

    for frame in (0, 29):
        diff = _absdiff(_render(native, frame=frame), _render(source, frame=frame))
        assert diff.max() <= 2, frame


def test_native_ybr_full_422_is_upsampled_and_converted(tmp_path: Path) -> None:
    source = _path(YBR_CINE)
    ybr = pixel_array(source, index=7, raw=True).astype(np.int32)
    rows, cols, _ = ybr.shape
    # PS3.3 C.7.6.3.1.2: YBR_FULL_422 stores Y1 Y2 Cb Cr for each horizontal pair of pixels.
    pairs = ybr.reshape(rows, cols // 2, 2, 3)
    chroma = np.rint(pairs[..., 1:].mean(axis=2))
    packed = np.concatenate([pairs[..., 0], chroma], axis=-1).astype(np.uint8)
    ds = dcmread(source, stop_before_pixels=True)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.NumberOfFrames = 1
    ds.PlanarConfiguration = 0
    ds.PixelData = packed.tobytes()
    ds["PixelData"].VR = "OB"
    native = _save(ds, tmp_path / "ybr422.dcm")

    rendered = _render(native)

    assert rendered.shape == (240, 320, 3)
    diff = _absdiff(rendered, _render(source, frame=7))
    assert diff.mean() < 1.0
    assert np.percentile(diff, 99) <= 8


# --- monochrome ---------------------------------------------------------------------------------------


def test_monochrome2_without_window_is_stretched_to_8_bits() -> None:
    path = _path("CT_small.dcm")
    ds = dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert "WindowCenter" not in ds

    image = _decode_png(render_preview(path))

    assert (image.mode, image.size) == ("L", (128, 128))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.rint((hu - hu.min()) / (hu.max() - hu.min()) * 255)
    assert _absdiff(np.asarray(image), expected).max() <= 1


def test_monochrome2_window_is_applied() -> None:
    path = _path("MR_small.dcm")
    ds = dcmread(path)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)

    image = _decode_png(render_preview(path))

    assert (image.mode, image.size) == ("L", (64, 64))
    # PS3.3 C.11.2.1.2.1 linear window, written out independently.
    x = ds.pixel_array.astype(np.float64)
    expected = np.clip(((x - (center - 0.5)) / (width - 1) + 0.5) * 255, 0, 255)
    assert _absdiff(np.asarray(image), np.rint(expected)).max() <= 1
    assert np.asarray(image).max() == 255  # MR_small has values above the window


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    source = _path("MR_small.dcm")
    ds = dcmread(source)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = _save(ds, tmp_path / "mono1.dcm")

    image = _decode_png(render_preview(inverted))

    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), 255 - _render(source))


# --- max_size -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "max_size", "expected_size"),
    [
        (PALETTE, 200, (200, 88)),  # 800x350 -> 200x87.5
        (YBR_CINE, 100, (100, 75)),
        (JPEG2K, 480, (480, 360)),
        ("CT_small.dcm", 64, (64, 64)),
        (RGB, 320, (320, 240)),  # already small enough: unchanged
        (RGB, 1000, (320, 240)),  # never enlarged
    ],
)
def test_max_size_downscales_keeping_aspect_ratio(name: str, max_size: int, expected_size: tuple[int, int]) -> None:
    path = _path(name)
    full = _decode_png(render_preview(path))
    small = _decode_png(render_preview(path, max_size=max_size))

    assert small.size == expected_size
    assert small.mode == full.mode
    # Same picture: mean intensity per channel barely moves with resampling.
    full_mean = np.asarray(full, dtype=np.float64).reshape(-1, len(full.getbands())).mean(axis=0)
    small_mean = np.asarray(small, dtype=np.float64).reshape(-1, len(small.getbands())).mean(axis=0)
    assert np.abs(full_mean - small_mean).max() < 2


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_size"):
        render_preview(_path(RGB), max_size=0)


# --- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "frame"), [(YBR_CINE, 30), (YBR_CINE, -1), (YBR_CINE, 1000), (RGB, 1)])
def test_frame_out_of_range(name: str, frame: int) -> None:
    with pytest.raises(PreviewError) as info:
        render_preview(_path(name), frame=frame)

    assert info.value.reason == "frame index out of range"
    assert isinstance(info.value, ValueError)


def test_structured_report_has_no_pixel_data(tmp_path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    path = _save(ds, tmp_path / "sr.dcm")

    with pytest.raises(PreviewError) as info:
        render_preview(path)

    assert info.value.reason == "no pixel data"
    assert "Doe" not in str(info.value)


def test_image_header_without_pixel_data(tmp_path: Path) -> None:
    ds = dcmread(_path(RGB))
    del ds.PixelData
    path = _save(ds, tmp_path / "no-pixels.dcm")

    with pytest.raises(PreviewError) as info:
        render_preview(path)

    assert info.value.reason == "no pixel data"


def test_unsupported_transfer_syntax(tmp_path: Path) -> None:
    ds = dcmread(_path(RGB))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path = _save(ds, tmp_path / "mpeg2.dcm")

    with pytest.raises(PreviewError) as info:
        render_preview(path)

    assert info.value.reason == "transfer syntax not supported"


def test_corrupt_jpeg2000_codestream(tmp_path: Path) -> None:
    ds = dcmread(_path(JPEG2K))
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([codestream[:300]])  # header survives, tile data is cut off
    path = _save(ds, tmp_path / "corrupt-j2k.dcm")

    with pytest.raises(PreviewError) as info:
        render_preview(path)

    assert info.value.reason == "pixel data could not be decoded"


def test_truncated_native_pixel_data(tmp_path: Path) -> None:
    ds = dcmread(_path(RGB))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    path = _save(ds, tmp_path / "truncated.dcm")

    with pytest.raises(PreviewError) as info:
        render_preview(path)

    assert info.value.reason == "pixel data could not be decoded"


def test_not_a_dicom_file(tmp_path: Path) -> None:
    path = tmp_path / "note.txt"
    path.write_bytes(b"Patient: Doe^Jane\n" * 20)

    with pytest.raises(PreviewError) as info:
        render_preview(path)

    assert info.value.reason == "not a readable DICOM Part 10 file"
    assert "Doe" not in str(info.value)
