"""Hand-written encoders for the two things pynetdicom encodes once per received object.

Profiling (bench/RESULTS.md) shows that on a single-frame C-STORE pynetdicom spends about half of its
per-object time encoding the C-STORE response through pydicom's generic dataset writer and building the
file meta group. Both are small fixed layouts (PS3.7 §9.3.1.2 C-STORE-RSP command set, implicit VR little
endian; PS3.10 §7.1 file meta information, explicit VR little endian), so we encode them directly. Anything
outside the layout falls back to pynetdicom's own path; tests compare both encodings byte for byte.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any, BinaryIO, NamedTuple

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

IMPLEMENTATION_CLASS_UID = "2.25.302624441356123954394546245418133935651"
IMPLEMENTATION_VERSION_NAME = "USGI_DOCS_1"

# C-STORE-RSP parameters we encode; any other one set on the primitive means "use pynetdicom's encoder".
_OPTIONAL_STATUS_FIELDS = ("OffendingElement", "ErrorID", "AttributeIdentifierList", "EventTypeID")


def _pad_uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _pad_text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def _implicit(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value


def encode_c_store_rsp(rsp: C_STORE) -> bytes | None:
    """The C-STORE-RSP command set (implicit VR LE), or None when it has parameters we do not encode."""
    if any(getattr(rsp, name, None) is not None for name in _OPTIONAL_STATUS_FIELDS):
        return None
    if rsp.AffectedSOPClassUID is None or rsp.AffectedSOPInstanceUID is None or rsp.Status is None:
        return None
    return c_store_rsp(
        str(rsp.AffectedSOPClassUID),
        str(rsp.AffectedSOPInstanceUID),
        int(rsp.MessageIDBeingRespondedTo),
        int(rsp.Status),
        str(rsp.ErrorComment or ""),
    )


def c_store_rsp(sop_class_uid: str, sop_instance_uid: str, message_id: int, status: int, comment: str = "") -> bytes:
    """A C-STORE-RSP command set with no data set, and an Error Comment (LO, 64 characters) if given."""
    body = b"".join(
        (
            _implicit(0x0000, 0x0002, _pad_uid(sop_class_uid)),
            _implicit(0x0000, 0x0100, struct.pack("<H", 0x8001)),
            _implicit(0x0000, 0x0120, struct.pack("<H", message_id)),
            _implicit(0x0000, 0x0800, struct.pack("<H", 0x0101)),
            _implicit(0x0000, 0x0900, struct.pack("<H", status)),
            _implicit(0x0000, 0x0902, _pad_text(comment[:64])) if comment else b"",
            _implicit(0x0000, 0x1000, _pad_uid(sop_instance_uid)),
        )
    )
    return _implicit(0x0000, 0x0000, struct.pack("<I", len(body))) + body


class FileMeta(NamedTuple):
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH", group, element) + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def encode_file_meta(meta: FileMeta) -> bytes:
    """The file meta information group (PS3.10 §7.1), from its group length on (no preamble)."""
    before, after = _meta_parts(meta.sop_class_uid, meta.transfer_syntax_uid)
    instance = _explicit(0x0002, 0x0003, b"UI", _pad_uid(meta.sop_instance_uid))
    length = len(before) + len(instance) + len(after)
    return _explicit(0x0002, 0x0000, b"UL", struct.pack("<I", length)) + before + instance + after


@functools.lru_cache(maxsize=256)
def _meta_parts(sop_class_uid: str, transfer_syntax_uid: str) -> tuple[bytes, bytes]:
    # Everything but the instance UID repeats from object to object: encoded once per class and syntax.
    before = _explicit(0x0002, 0x0001, b"OB", b"\x00\x01") + _explicit(0x0002, 0x0002, b"UI", _pad_uid(sop_class_uid))
    after = b"".join(
        (
            _explicit(0x0002, 0x0010, b"UI", _pad_uid(transfer_syntax_uid)),
            _explicit(0x0002, 0x0012, b"UI", _pad_uid(IMPLEMENTATION_CLASS_UID)),
            _explicit(0x0002, 0x0013, b"SH", _pad_text(IMPLEMENTATION_VERSION_NAME)),
        )
    )
    return before, after


def create_file_meta(*, sop_class_uid: Any, sop_instance_uid: Any, transfer_syntax: Any, **_: Any) -> FileMeta:
    """Drop-in for pynetdicom.dsutils.create_file_meta at the chunked-receive call site."""
    return FileMeta(str(sop_class_uid), str(sop_instance_uid), str(transfer_syntax))


def write_file_meta_info(fp: BinaryIO, meta: FileMeta, *_: Any, **__: Any) -> None:
    """Drop-in for pydicom's write_file_meta_info at the chunked-receive call site."""
    fp.write(encode_file_meta(meta))


def fits_one_pdv(command: bytes, max_pdu: int) -> bool:
    """Whether a command set fits one PDV under the peer's maximum PDU length (0: no limit)."""
    return not max_pdu or len(command) + 6 <= max_pdu


def whole_command(context_id: int, command: bytes) -> P_DATA:
    """A P-DATA primitive carrying a whole command set as one fragment."""
    pdata = P_DATA()
    # 0x03: a command fragment that is the last one (PS3.8 E.2).
    pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
    return pdata


def fast_send_msg(original: Callable[..., None]) -> Callable[..., None]:
    """Wrap DIMSEServiceProvider.send_msg: C-STORE responses go out as one hand-encoded P-DATA PDV."""

    def send_msg(self: Any, primitive: Any, context_id: int) -> None:
        if isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None:
            encoded = encode_c_store_rsp(primitive)
            if encoded is not None and fits_one_pdv(encoded, self.maximum_pdu_size):
                self.dul.send_pdu(whole_command(context_id, encoded))
                return
        original(self, primitive, context_id)

    send_msg.__wrapped__ = original  # type: ignore[attr-defined]
    return send_msg
