"""The fast lane's own reading and writing of DIMSE must agree with pynetdicom's, and refuse what it does not know."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import P_DATA_TF

from service.dicom.storelane import StoreCommand, encode_store_rsp, p_data_tf, parse_store_rq
from tests.dicomutil import c_store_rq

US = "1.2.840.10008.5.1.4.1.1.6.1"
INSTANCE = "1.2.826.0.1.3680043.8.498.12345"


def _store_rq(**fields: object) -> bytes:
    return c_store_rq(US, INSTANCE, **fields)


def _elements(command: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(command):
        _, element, length = struct.unpack_from("<HHI", command, pos)
        out.append((element, command[pos + 8 : pos + 8 + length]))
        pos += 8 + length
    return out


def _assemble(elements: list[tuple[int, bytes]], fix_length: bool = True) -> bytes:
    body = b"".join(struct.pack("<HHI", 0, e, len(v)) + v for e, v in elements if e != 0x0000)
    length = len(body) if fix_length else dict(elements)[0x0000]
    group = struct.pack("<HHI", 0, 0, 4) + (struct.pack("<I", length) if fix_length else length)
    return group + body


def _replace(command: bytes, element: int, value: bytes | None) -> bytes:
    elements = [(e, v) for e, v in _elements(command) if e != element]
    if value is not None:
        elements.append((element, value))
        elements.sort()
    return _assemble(elements)


def test_a_c_store_rq_encoded_by_pynetdicom_is_read():
    assert parse_store_rq(_store_rq()) == StoreCommand(7, US, INSTANCE)


def test_move_originator_fields_are_allowed():
    command = _store_rq(MoveOriginatorApplicationEntityTitle="PACS", MoveOriginatorMessageID=3)
    assert parse_store_rq(command) == StoreCommand(7, US, INSTANCE)


def test_uid_padding_is_removed():
    command = _replace(_store_rq(), 0x1000, b"1.2.3\x00")
    assert parse_store_rq(command) == StoreCommand(7, US, "1.2.3")


def _echo_rq() -> bytes:
    req = C_ECHO()
    req.MessageID = 1
    req.AffectedSOPClassUID = "1.2.840.10008.1.1"
    msg = C_ECHO_RQ()
    msg.primitive_to_message(req)
    return bytes(encode(msg.command_set, True, True))


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(_echo_rq(), id="c-echo"),
        pytest.param(_replace(_store_rq(), 0x0800, struct.pack("<H", 0x0101)), id="no-data-set"),
        pytest.param(_replace(_store_rq(), 0x0901, struct.pack("<H", 1)), id="unknown-element"),
        pytest.param(_replace(_store_rq(), 0x0700, None), id="no-priority"),
        pytest.param(_replace(_store_rq(), 0x0700, struct.pack("<H", 3)), id="bad-priority"),
        pytest.param(_replace(_store_rq(), 0x1000, b"1.2.abc"), id="bad-uid"),
        pytest.param(_replace(_store_rq(), 0x1000, b""), id="empty-uid"),
        pytest.param(_replace(_store_rq(), 0x1000, b"1." * 40), id="long-uid"),
        pytest.param(_replace(_store_rq(), 0x0110, b"\x07"), id="short-message-id"),
        pytest.param(_store_rq()[:-3], id="truncated"),
        pytest.param(_store_rq() + b"\x00\x00", id="trailing-bytes"),
        pytest.param(_assemble(_elements(_store_rq()) + [(0x1000, b"1.2.3")]), id="repeated-element"),
        pytest.param(
            _assemble([(0, struct.pack("<I", 1))] + _elements(_store_rq())[1:], fix_length=False), id="bad-group-length"
        ),
        pytest.param(b"", id="empty"),
    ],
)
def test_anything_else_is_left_to_pynetdicom(command):
    assert parse_store_rq(command) is None


@pytest.mark.parametrize(("status", "comment"), [(0x0000, ""), (0xA900, "SOP Instance UID differs"), (0xC000, "odd")])
def test_the_response_pdu_decodes_in_pynetdicom_as_the_answer(status, comment):
    command = StoreCommand(9, US, INSTANCE)
    pdu = P_DATA_TF()
    pdu.decode(p_data_tf(5, encode_store_rsp(command, status, comment)))
    [(context_id, pdv)] = pdu.to_primitive().presentation_data_value_list
    assert context_id == 5
    assert pdv[0] == 0x03  # command, last fragment
    ds = decode(BytesIO(pdv[1:]), True, True)
    msg = C_STORE_RSP()
    msg.command_set = ds
    rsp = msg.message_to_primitive()
    assert rsp.MessageIDBeingRespondedTo == 9
    assert rsp.AffectedSOPClassUID == US
    assert rsp.AffectedSOPInstanceUID == INSTANCE
    assert rsp.Status == status
    assert (rsp.ErrorComment or "") == comment
