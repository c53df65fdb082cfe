"""service.worklist.matching: C-FIND key matching and responses for the Modality Worklist (PS3.4 §C.2.2.2)."""

from __future__ import annotations

import pytest
from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from service.worklist.matching import match, response

UID_DOE = "1.2.826.0.1.3680043.8.498.1"
UID_ROE = "1.2.826.0.1.3680043.8.498.2"
UID_POE = "1.2.826.0.1.3680043.8.498.3"
UID_MOE = "1.2.826.0.1.3680043.8.498.4"


def _sps(**keys: object) -> Dataset:
    sps = Dataset()
    for keyword, value in keys.items():
        setattr(sps, keyword, value)
    return sps


def _item(name: str, pid: str, accession: str, uid: str, sps: list[Dataset], **extra: object) -> Dataset:
    ds = Dataset()
    ds.PatientName = name
    ds.PatientID = pid
    ds.AccessionNumber = accession
    ds.RequestedProcedureID = f"RP-{accession}"
    ds.RequestedProcedureDescription = "US-guided injection"
    ds.StudyInstanceUID = uid
    ds.ScheduledProcedureStepSequence = Sequence(sps)
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


ITEMS = {
    "doe": _item(
        "Doe^Jane",
        "P001",
        "A001",
        UID_DOE,
        [
            _sps(
                Modality="US",
                ScheduledStationAETitle="US_ROOM1",
                ScheduledProcedureStepStartDate="20240115",
                ScheduledProcedureStepStartTime="0930",
                ScheduledProcedureStepDescription="Knee injection",
                ScheduledProcedureStepID="SPS1",
            )
        ],
        PatientBirthDate="19800101",
        PatientSex="F",
        SpecificCharacterSet="ISO_IR 100",
    ),
    "roe": _item(
        "ROE^JOHN",
        "P002",
        "A002",
        UID_ROE,
        [
            _sps(
                Modality="US",
                ScheduledStationAETitle="US_ROOM2",
                ScheduledProcedureStepStartDate="20240131",
                ScheduledProcedureStepStartTime="143000",
                ScheduledProcedureStepDescription="Shoulder injection",
                ScheduledProcedureStepID="SPS2",
            )
        ],
        PatientBirthDate="19751231",
        PatientSex="M",
    ),
    "poe": _item(  # birth date and sex unknown
        "Poe^Jane^^^",
        "P003",
        "A003",
        UID_POE,
        [
            _sps(
                Modality="MR",
                ScheduledStationAETitle="MR_1",
                ScheduledProcedureStepStartDate="20240201",
                ScheduledProcedureStepStartTime="080000",
                ScheduledProcedureStepDescription="MR arthrography",
                ScheduledProcedureStepID="SPS3",
            ),
            _sps(
                Modality="US",
                ScheduledStationAETitle="US_ROOM1",
                ScheduledProcedureStepStartDate="20240201",
                ScheduledProcedureStepStartTime="100000",
                ScheduledProcedureStepDescription="Hip injection",
                ScheduledProcedureStepID="SPS4",
            ),
        ],
    ),
    "moe": _item(  # an empty sex, a step without time
        "Moe^Jim",
        "P004",
        "A004",
        UID_MOE,
        [_sps(Modality="US", ScheduledStationAETitle="US_ROOM2", ScheduledProcedureStepStartDate="20240301")],
        PatientBirthDate="20000229",
        PatientSex="",
    ),
}


def _query(sps: dict[str, object] | None = None, **keys: object) -> Dataset:
    """Query values such as ``f`` or ``U?`` are not valid CS values: built without pydicom's validation."""
    with disable_value_validation():
        return _build_query(sps, keys)


def _build_query(sps: dict[str, object] | None, keys: dict[str, object]) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    if sps is not None:
        ds.ScheduledProcedureStepSequence = Sequence([_sps(**sps)] if sps else [])
    return ds


def _matching(query: Dataset) -> set[str]:
    return {name for name, item in ITEMS.items() if match(query, item)}


ALL = set(ITEMS)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        # Single Value Matching (§C.2.2.2.1): exact, case-sensitive outside PN.
        ({"PatientID": "P002"}, {"roe"}),
        ({"PatientID": "p002"}, set()),
        ({"AccessionNumber": "A003"}, {"poe"}),
        ({"AccessionNumber": "A00"}, set()),
        ({"PatientSex": "F"}, {"doe"}),
        ({"PatientSex": "f"}, set()),
        ({"PatientBirthDate": "19800101"}, {"doe"}),
        ({"PatientBirthDate": "19800102"}, set()),
        ({"RequestedProcedureID": "RP-A004"}, {"moe"}),
        # PN: case-insensitive, trailing empty components insignificant.
        ({"PatientName": "DOE^JANE"}, {"doe"}),
        ({"PatientName": "doe^jane"}, {"doe"}),
        ({"PatientName": "Poe^Jane"}, {"poe"}),
        ({"PatientName": "Poe^Jane^^"}, {"poe"}),
        ({"PatientName": "DOE"}, set()),
        ({"PatientName": "DOE^JOHN"}, set()),
        # Wildcard Matching (§C.2.2.2.4).
        ({"PatientName": "DOE^*"}, {"doe"}),
        ({"PatientName": "?OE^JANE"}, {"doe", "poe"}),
        ({"PatientName": "?OE^J*"}, ALL),
        ({"PatientName": "??OE^JANE"}, set()),
        ({"PatientName": "*^JIM"}, {"moe"}),
        ({"PatientID": "P00?"}, ALL),
        ({"PatientID": "Q*"}, set()),
        ({"AccessionNumber": "*3"}, {"poe"}),
        ({"RequestedProcedureDescription": "US-guided*"}, ALL),
        ({"RequestedProcedureDescription": "us-guided*"}, set()),  # LO stays case-sensitive
        # Universal Matching (§C.2.2.2.3).
        ({"PatientName": ""}, ALL),
        ({"PatientName": "*"}, ALL),
        ({"PatientID": "", "AccessionNumber": "", "StudyInstanceUID": ""}, ALL),
        ({"PatientBirthDate": "", "PatientSex": ""}, ALL),
        # Attribute absent (poe) or zero-length (moe) in the item: only universal matching.
        ({"PatientSex": "*"}, ALL),
        ({"PatientSex": "?"}, {"doe", "roe"}),
        ({"PatientBirthDate": "-20301231"}, {"doe", "roe", "moe"}),
        ({"IssuerOfPatientID": "HOSP"}, set()),
        ({"IssuerOfPatientID": ""}, ALL),
        # Range Matching on DA (§C.2.2.2.5), open on either side.
        ({"PatientBirthDate": "19750101-19801231"}, {"doe", "roe"}),
        ({"PatientBirthDate": "19751231-19800101"}, {"doe", "roe"}),  # inclusive bounds
        ({"PatientBirthDate": "-19791231"}, {"roe"}),
        ({"PatientBirthDate": "19800101-"}, {"doe", "moe"}),
        ({"PatientBirthDate": "19900101-19991231"}, set()),
        # List of UID Matching (§C.2.2.2.2).
        ({"StudyInstanceUID": UID_DOE}, {"doe"}),
        ({"StudyInstanceUID": f"{UID_DOE}\\{UID_POE}"}, {"doe", "poe"}),
        ({"StudyInstanceUID": ["1.2.3", UID_MOE]}, {"moe"}),
        ({"StudyInstanceUID": "1.2.3\\1.2.4"}, set()),
        ({"StudyInstanceUID": UID_DOE[:-1]}, set()),
        # Several keys: all must match.
        ({"PatientName": "?OE^JANE", "PatientSex": "F"}, {"doe"}),
        ({"PatientName": "DOE^JANE", "PatientID": "P002"}, set()),
    ],
)
def test_top_level_keys(keys: dict[str, object], expected: set[str]) -> None:
    assert _matching(_query(**keys)) == expected


@pytest.mark.parametrize(
    ("sps", "expected"),
    [
        # Sequence Matching (§C.2.2.2.6): an item of the step sequence must match all the query item's keys.
        ({}, ALL),  # zero-length query sequence
        ({"Modality": "", "ScheduledStationAETitle": "", "ScheduledProcedureStepStartDate": ""}, ALL),
        ({"Modality": "US"}, ALL),
        ({"Modality": "MR"}, {"poe"}),
        ({"Modality": "CT"}, set()),
        ({"Modality": "us"}, set()),  # CS is case-sensitive
        ({"ScheduledStationAETitle": "US_ROOM1"}, {"doe", "poe"}),
        ({"ScheduledStationAETitle": "US_ROOM*"}, ALL),
        ({"ScheduledStationAETitle": "MR_?"}, {"poe"}),
        ({"ScheduledStationAETitle": "US_ROOM3"}, set()),
        # Both keys in the same step: poe's MR step is on MR_1, its US step on US_ROOM1.
        ({"Modality": "MR", "ScheduledStationAETitle": "US_ROOM1"}, set()),
        ({"Modality": "US", "ScheduledStationAETitle": "US_ROOM1"}, {"doe", "poe"}),
        # Date ranges inside the sequence, open on either side.
        ({"ScheduledProcedureStepStartDate": "20240115"}, {"doe"}),
        ({"ScheduledProcedureStepStartDate": "20240101-20240131"}, {"doe", "roe"}),
        ({"ScheduledProcedureStepStartDate": "20240201-"}, {"poe", "moe"}),
        ({"ScheduledProcedureStepStartDate": "-20240131"}, {"doe", "roe"}),
        ({"ScheduledProcedureStepStartDate": "20250101-"}, set()),
        # Time alone (moe's step has no time: only universal matching).
        ({"ScheduledProcedureStepStartTime": "0900-1200"}, {"doe", "poe"}),
        ({"ScheduledProcedureStepStartTime": "14-"}, {"roe"}),
        ({"ScheduledProcedureStepStartTime": "-0930"}, {"doe", "poe"}),  # upper bound covers 09:30:xx
        ({"ScheduledProcedureStepStartTime": "-0929"}, {"poe"}),
        ({"ScheduledProcedureStepStartTime": "1430"}, {"roe"}),  # single value: any time in that minute
        ({"ScheduledProcedureStepStartTime": ""}, ALL),
        # Combined date-time range (§C.2.2.2.5.1): one continuous range, not a daily window.
        (
            # doe's 09:30 on the 15th is outside a 10:00-15:00 daily window, but inside 14 Jan 10:00-31 Jan 15:00.
            {"ScheduledProcedureStepStartDate": "20240114-20240131", "ScheduledProcedureStepStartTime": "1000-1500"},
            {"doe", "roe"},
        ),
        (
            {"ScheduledProcedureStepStartDate": "20240115-20240131", "ScheduledProcedureStepStartTime": "1000-1200"},
            set(),
        ),
        (
            {"ScheduledProcedureStepStartDate": "20240115-20240131", "ScheduledProcedureStepStartTime": "0900-1400"},
            {"doe"},
        ),
        (
            {"ScheduledProcedureStepStartDate": "20240131-", "ScheduledProcedureStepStartTime": "1500-"},
            {"poe"},  # moe's step has no time
        ),
        (
            {"ScheduledProcedureStepStartDate": "-20240201", "ScheduledProcedureStepStartTime": "-0800"},
            {"doe", "roe", "poe"},  # poe's MR step at 08:00 on the upper bound
        ),
        ({"ScheduledProcedureStepStartDate": "20240201", "ScheduledProcedureStepStartTime": "0900-1100"}, {"poe"}),
        ({"ScheduledProcedureStepStartDate": "20240201", "ScheduledProcedureStepStartTime": "1100-"}, set()),
        # Modality plus date: the same step must satisfy both.
        ({"Modality": "MR", "ScheduledProcedureStepStartDate": "20240201"}, {"poe"}),
        (
            {"Modality": "MR", "ScheduledProcedureStepStartDate": "20240201", "ScheduledProcedureStepStartTime": "09-"},
            set(),
        ),
        ({"ScheduledProcedureStepID": "SPS4", "ScheduledProcedureStepDescription": "Hip*"}, {"poe"}),
        ({"ScheduledProcedureStepID": "SPS4", "ScheduledProcedureStepDescription": "Knee*"}, set()),
    ],
)
def test_sequence_keys(sps: dict[str, object], expected: set[str]) -> None:
    assert _matching(_query(sps)) == expected


def test_an_item_without_the_queried_sequence_matches_only_universal() -> None:
    item = Dataset()
    item.PatientID = "P009"
    assert match(_query({}), item)
    assert match(_query({"Modality": ""}), item)
    assert not match(_query({"Modality": "US"}), item)
    item.ScheduledProcedureStepSequence = Sequence()
    assert not match(_query({"Modality": "US"}), item)


def test_a_query_sequence_with_two_items_is_refused() -> None:
    query = Dataset()
    query.ScheduledProcedureStepSequence = Sequence([_sps(Modality="US"), _sps(Modality="MR")])
    with pytest.raises(ValueError, match="single Item"):
        match(query, ITEMS["doe"])


def test_date_time_ranges_on_dt() -> None:
    item = Dataset()
    item.AcquisitionDateTime = "20240115093000.5+0100"
    for value, expected in [
        ("20240115", True),
        ("2024", True),
        ("20240101-20240131", True),
        ("20240115093001-", False),
        ("-202401150930", True),
        ("20240116-", False),
        ("20240101000000+0100-20240131000000+0100", True),
    ]:
        query = Dataset()
        query.AcquisitionDateTime = value
        assert match(query, item) is expected, value


MWL_QUERY_KEYS = {
    "SpecificCharacterSet": "",
    "PatientName": "",
    "PatientID": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "AccessionNumber": "",
    "RequestedProcedureID": "",
    "StudyInstanceUID": "",
    "IssuerOfPatientID": "",
}
SPS_KEYS = {
    "Modality": "US",
    "ScheduledStationAETitle": "",
    "ScheduledProcedureStepStartDate": "",
    "ScheduledProcedureStepStartTime": "",
    "ScheduledProcedureStepID": "",
}


@pytest.mark.parametrize("name", sorted(ITEMS))
def test_response_has_exactly_the_query_keys(name: str) -> None:
    query = _query(SPS_KEYS, **MWL_QUERY_KEYS)
    item = ITEMS[name]
    assert match(query, item)
    ident = response(query, item)

    assert [e.keyword for e in ident] == [e.keyword for e in query]
    assert "RequestedProcedureDescription" not in ident  # in the item, not asked for
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "RequestedProcedureID", "StudyInstanceUID"):
        assert str(ident[keyword].value) == str(item[keyword].value)
    assert ident["IssuerOfPatientID"].is_empty  # not in any item
    for keyword in ("PatientBirthDate", "PatientSex"):
        assert ident[keyword].value == item.get(keyword, "") or ident[keyword].is_empty
    if "SpecificCharacterSet" in item:
        assert ident.SpecificCharacterSet == item.SpecificCharacterSet
    else:
        assert ident["SpecificCharacterSet"].is_empty  # asked for, the item is in the default repertoire

    (step,) = ident.ScheduledProcedureStepSequence  # only the matching (US) step of poe
    assert [e.keyword for e in step] == [e.keyword for e in query.ScheduledProcedureStepSequence[0]]
    source = next(s for s in item.ScheduledProcedureStepSequence if s.Modality == "US")
    for keyword in SPS_KEYS:
        if keyword in source:
            assert step[keyword].value == source[keyword].value
        else:
            assert step[keyword].is_empty  # moe's step has neither time nor ID
    assert name != "moe" or step["ScheduledProcedureStepStartTime"].is_empty


def test_response_values_are_the_items_not_the_querys() -> None:
    query = _query({"Modality": "U?", "ScheduledStationAETitle": "US_ROOM*"}, PatientName="doe^*", PatientID="")
    ident = response(query, ITEMS["doe"])
    assert str(ident.PatientName) == "Doe^Jane"
    assert ident.PatientID == "P001"
    assert ident.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "US_ROOM1"
    assert ident.ScheduledProcedureStepSequence[0].Modality == "US"
    assert "SpecificCharacterSet" in ident and ident.SpecificCharacterSet == "ISO_IR 100"
    assert "SpecificCharacterSet" not in response(query, ITEMS["roe"])


def test_response_with_an_absent_sequence_is_a_zero_length_sequence() -> None:
    item = Dataset()
    item.PatientID = "P009"
    ident = response(_query({"Modality": ""}, PatientID=""), item)
    assert ident.PatientID == "P009"
    assert len(ident.ScheduledProcedureStepSequence) == 0


def test_response_does_not_share_values_with_the_item() -> None:
    ident = response(_query({"ScheduledStationAETitle": ""}), ITEMS["doe"])
    ident.ScheduledProcedureStepSequence[0].ScheduledStationAETitle = "CHANGED"
    assert ITEMS["doe"].ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "US_ROOM1"
