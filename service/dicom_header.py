"""A minimal reader of the top-level header elements the index needs, for the ingest hot path.

pydicom's general reader costs ~3 ms per object on the ingest path (bench profile); the index needs about
thirty top-level elements, all before group 0x0040. This walks the encoded data set (PS3.5 §7) from the file
meta on, skips everything else by its length, and stops after (0038,0010). Whatever it does not handle
exactly as pydicom would — big endian, deflate, character sets other than the default and UTF-8, malformed
lengths — raises :class:`Unsupported` and the caller falls back to pydicom. tests/unit/test_dicom_header.py
compares both readers over every file pydicom ships.
"""

from __future__ import annotations

import struct
from typing import Any

# tag -> (keyword, kind): "text" values are decoded strings, "us" unsigned shorts.
WANTED: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "text"),
    0x00080016: ("SOPClassUID", "text"),
    0x00080018: ("SOPInstanceUID", "text"),
    0x00080020: ("StudyDate", "text"),
    0x00080021: ("SeriesDate", "text"),
    0x00080022: ("AcquisitionDate", "text"),
    0x00080023: ("ContentDate", "text"),
    0x0008002A: ("AcquisitionDateTime", "text"),
    0x00080030: ("StudyTime", "text"),
    0x00080031: ("SeriesTime", "text"),
    0x00080032: ("AcquisitionTime", "text"),
    0x00080033: ("ContentTime", "text"),
    0x00080050: ("AccessionNumber", "text"),
    0x00080060: ("Modality", "text"),
    0x0008103E: ("SeriesDescription", "text"),
    0x00100010: ("PatientName", "text"),
    0x00100020: ("PatientID", "text"),
    0x00100021: ("IssuerOfPatientID", "text"),
    0x00180015: ("BodyPartExamined", "text"),
    0x00181030: ("ProtocolName", "text"),
    0x0020000D: ("StudyInstanceUID", "text"),
    0x0020000E: ("SeriesInstanceUID", "text"),
    0x00200060: ("Laterality", "text"),
    0x00200062: ("ImageLaterality", "text"),
    0x00204000: ("ImageComments", "text"),
    0x00280004: ("PhotometricInterpretation", "text"),
    0x00280008: ("NumberOfFrames", "text"),
    0x00280010: ("Rows", "us"),
    0x00280011: ("Columns", "us"),
    0x00380010: ("AdmissionID", "text"),
}
LAST_WANTED = max(WANTED)

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_IMPLICIT = "1.2.840.10008.1.2"
_PIXEL_ELEMENTS = (0x0008, 0x0009, 0x0010)  # (7FE0,xxxx) Float, Double Float and Pixel Data
_NOT_HANDLED_SYNTAXES = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # big endian, deflate
_CHARSETS = {"": "latin-1", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


class Unsupported(ValueError):
    """Not something this reader handles exactly; use pydicom."""


class Header(dict[str, Any]):
    """Keyword -> value, answering ``get`` like a pydicom Dataset does for the keywords it holds."""

    file_meta_transfer_syntax: str = ""


def _skip_undefined(buf: bytes, pos: int, implicit: bool, end_tag: int) -> int:
    """Position after the delimiter ``end_tag`` of an undefined-length sequence or item starting at ``pos``."""
    n = len(buf)
    while pos + 8 <= n:
        group, elem = struct.unpack_from("<HH", buf, pos)
        tag = (group << 16) | elem
        if tag in (_ITEM, _ITEM_END, _SEQ_END):
            (length,) = struct.unpack_from("<I", buf, pos + 4)
            pos += 8
            if tag == end_tag:
                return pos
            if tag == _ITEM:
                pos = _skip_undefined(buf, pos, implicit, _ITEM_END) if length == _UNDEFINED else pos + length
            continue
        pos, _vr, _value_pos, _length = _element(buf, pos, implicit)
    raise Unsupported("unterminated sequence")


def _element(buf: bytes, pos: int, implicit: bool) -> tuple[int, bytes, int, int]:
    """Parse one element header at ``pos``; return (next position, VR, value position, value length)."""
    if implicit:
        (length,) = struct.unpack_from("<I", buf, pos + 4)
        vr, value_pos = b"", pos + 8
    else:
        vr = buf[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", buf, pos + 8)
            value_pos = pos + 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            value_pos = pos + 8
    if length == _UNDEFINED:
        # A sequence (or UN sequence, whose content is implicit VR, PS3.5 §6.2.2) up to its delimiter.
        inner_implicit = implicit or vr == b"UN"
        return _skip_undefined(buf, value_pos, inner_implicit, _SEQ_END), vr, value_pos, -1
    end = value_pos + length
    if end > len(buf):
        raise Unsupported("element runs past the end of the data")
    return end, vr, value_pos, length


def read_header(buf: bytes, complete: bool = True) -> Header:
    """The wanted top-level elements of a Part 10 file given as its bytes, or its first bytes (``complete=False``)."""
    try:
        return _read_header(buf, complete)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise Unsupported(f"malformed header: {type(exc).__name__}") from exc


def _read_header(buf: bytes, complete: bool) -> Header:
    if len(buf) < 144 or buf[128:132] != b"DICM" or buf[132:136] != b"\x02\x00\x00\x00":
        raise Unsupported("not a Part 10 file with a file meta group length")
    (meta_length,) = struct.unpack_from("<I", buf, 140)
    pos, meta_end = 144, 144 + meta_length
    syntax = ""
    while pos < meta_end:
        group, elem = struct.unpack_from("<HH", buf, pos)
        nxt, _vr, value_pos, length = _element(buf, pos, implicit=False)
        if (group, elem) == (0x0002, 0x0010):
            syntax = buf[value_pos : value_pos + length].decode("ascii").strip("\x00 ")
        pos = nxt
    if pos != meta_end:
        raise Unsupported("file meta group length does not match its elements")
    if not syntax or syntax in _NOT_HANDLED_SYNTAXES:
        raise Unsupported("transfer syntax not handled here")
    implicit = syntax == _IMPLICIT
    raw: dict[int, tuple[bytes, bytes]] = {}
    n = len(buf)
    while pos + 8 <= n:
        group, elem = struct.unpack_from("<HH", buf, pos)
        tag = (group << 16) | elem
        if tag > LAST_WANTED:
            break
        nxt, vr, value_pos, length = _element(buf, pos, implicit)
        if tag in WANTED:
            if length < 0:
                raise Unsupported("a wanted element with undefined length")
            raw[tag] = (vr, buf[value_pos : value_pos + length])
        pos = nxt
    else:
        if pos != n or not complete:
            raise Unsupported("the data ends before the wanted elements do")
    charset_raw = raw.get(0x00080005, (b"", b""))[1].decode("ascii", "replace").strip("\x00 ")
    encoding = _CHARSETS.get(charset_raw)
    if encoding is None:
        raise Unsupported("specific character set not handled here")
    out = Header()
    out.file_meta_transfer_syntax = syntax
    for tag, (vr, value) in raw.items():
        keyword, kind = WANTED[tag]
        if kind == "us":
            if len(value) != 2 or (vr and vr != b"US"):
                raise Unsupported("unexpected US value")
            out[keyword] = struct.unpack("<H", value)[0]
        else:
            if vr in (b"SQ", b"OB", b"OW", b"UN"):
                raise Unsupported("unexpected VR for a text element")
            try:
                out[keyword] = value.decode(encoding)
            except UnicodeDecodeError as exc:
                raise Unsupported("text not in its declared character set") from exc
    return out


def walk_complete(buf: bytes, start: int, implicit: bool) -> bool:
    """Walk every element from ``start`` to the end of ``buf``; raise :class:`Unsupported` unless each fits.

    The in-memory twin of ``service.ingest.check_complete`` for objects read whole (little endian only).
    Returns whether the data set has (float) pixel data at its top level.
    """
    pixels = False
    try:
        pos, n = start, len(buf)
        if start > n:
            raise Unsupported("the data ends inside the file meta information")
        while pos < n:
            if pos + 8 > n:
                raise Unsupported("truncated element header")
            group, elem = struct.unpack_from("<HH", buf, pos)
            pixels = pixels or (group == 0x7FE0 and elem in _PIXEL_ELEMENTS)
            pos, _vr, _value_pos, _length = _element(buf, pos, implicit)
    except (struct.error, IndexError) as exc:
        raise Unsupported(f"malformed data set: {type(exc).__name__}") from exc
    return pixels
