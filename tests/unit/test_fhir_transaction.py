"""The EHR's transaction Bundle (service/fhir/transaction.py): conditional entries by business identifier,
``urn:uuid`` references, and the split into stages a capped server accepts, with the ids it answered."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import pytest

from service.fhir import map_json
from service.fhir.transaction import (
    PushError,
    ehr_transaction,
    full_url,
    locations,
    match_key,
    plan,
    references,
    rewrite_references,
    stage_bundle,
)
from tests.unit.test_fhir_mapping import CASES, ID_SYSTEM, PID

URN = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def example() -> list[dict[str, Any]]:
    return map_json(CASES["example"]())


def test_every_entry_is_conditional_on_a_business_identifier(example):
    bundle = ehr_transaction(example, ID_SYSTEM)
    assert bundle["type"] == "transaction"
    requests = {e["resource"]["resourceType"]: e["request"] for e in bundle["entry"]}
    # The EHR's own: created only when missing, matched by the MRN / NPI.
    assert requests["Patient"] == {
        "method": "POST",
        "url": "Patient",
        "ifNoneExist": "identifier=https://hospital.example.org/fhir/sid/mrn|MRN-0042917",
    }
    assert requests["Practitioner"]["ifNoneExist"] == "identifier=http://hl7.org/fhir/sid/us-npi|1234567893"
    assert requests["Organization"]["ifNoneExist"] == "identifier=http://hl7.org/fhir/sid/us-npi|1987654328"
    # Ours: conditional updates on our own identifiers.
    assert requests["Procedure"] == {"method": "PUT", "url": f"Procedure?identifier={ID_SYSTEM}/procedure|{PID}"}
    assert requests["Claim"]["url"] == f"Claim?identifier={ID_SYSTEM}/claim|{PID}"
    assert requests["DocumentReference"]["url"] == f"DocumentReference?identifier={ID_SYSTEM}/report-series|{PID}"
    assert requests["ImagingStudy"]["url"] == f"ImagingStudy?identifier={ID_SYSTEM}/imaging-study|{PID}-imagingstudy"
    assert requests["Coverage"]["url"] == f"Coverage?identifier={ID_SYSTEM}/coverage|{PID}-coverage"
    assert "CodeSystem" not in requests  # published at their canonical URLs, not pushed
    assert len(bundle["entry"]) == len([r for r in example if r["resourceType"] != "CodeSystem"])


def test_no_id_of_ours_reaches_the_ehr_and_references_use_the_entries_urn_uuids(example):
    bundle = ehr_transaction(example, ID_SYSTEM)
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert all(URN.match(u) for u in urls) and len(urls) == len(bundle["entry"])
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert "id" not in resource and "versionId" not in resource.get("meta", {})
        for ref in references(resource):
            assert ref in urls or ref.startswith("#"), ref  # contained resources stay local
    procedure = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Procedure")
    assert procedure["resource"]["subject"]["reference"] == full_url("Patient", f"{PID}-patient")
    assert procedure["resource"]["meta"]["profile"]  # the profile claim travels


def test_the_same_procedure_gives_the_same_bundle(example):
    assert ehr_transaction(example, ID_SYSTEM) == ehr_transaction(map_json(CASES["example"]()), ID_SYSTEM)


def test_identifier_values_are_escaped_in_the_search():
    patient = {
        "resourceType": "Patient",
        "id": "x-patient",
        "identifier": [{"system": "urn:oid:1.2.3", "value": "A|B,C&D"}],
    }
    [entry] = ehr_transaction([patient], ID_SYSTEM)["entry"]
    # FHIR's search escapes (\\| \\,), then URL encoding (& would end the parameter).
    assert entry["request"]["ifNoneExist"] == "identifier=urn:oid:1.2.3|A\\%7CB\\%2CC%26D"
    assert unquote(entry["request"]["ifNoneExist"]) == "identifier=urn:oid:1.2.3|A\\|B\\,C&D"


def test_a_resource_without_a_matching_identifier_cannot_be_pushed():
    with pytest.raises(PushError, match="Procedure/p1 has no identifier"):
        match_key(
            {"resourceType": "Procedure", "id": "p1", "identifier": [{"system": "urn:x", "value": "1"}]}, ID_SYSTEM
        )
    with pytest.raises(PushError, match="Patient/p has no identifier"):
        match_key({"resourceType": "Patient", "id": "p", "identifier": [{"value": "no system"}]}, ID_SYSTEM)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("cap", [0, 1, 2, 3, 8, 100])
def test_stages_fit_the_cap_keep_cycles_together_and_put_referenced_resources_first(case, cap):
    bundle = ehr_transaction(map_json(CASES[case]()), ID_SYSTEM)
    entries = bundle["entry"]
    stages = plan(bundle, cap)
    assert sorted(n for stage in stages for n in stage) == list(range(len(entries)))  # each entry once
    if cap == 0 or len(entries) <= cap:
        assert stages == [list(range(len(entries)))]
        return
    stage_of = {entries[n]["fullUrl"]: k for k, stage in enumerate(stages) for n in stage}
    for k, stage in enumerate(stages):
        for n in stage:
            for ref in references(entries[n]["resource"]):
                if ref in stage_of:
                    assert stage_of[ref] <= k, (case, entries[n]["request"]["url"], ref)  # never a later stage
    # Only a reference cycle may exceed the cap: the procedure and its report refer to each other.
    for stage in stages:
        if len(stage) > cap:
            kinds = {entries[n]["resource"]["resourceType"] for n in stage}
            assert kinds <= {"Procedure", "DocumentReference", "ImagingStudy"}, kinds
    assert all(len(stage) <= max(cap, 4) for stage in stages)


def test_a_stage_points_at_the_ids_the_ehr_answered_for_earlier_stages(example):
    bundle = ehr_transaction(example, ID_SYSTEM)
    first, second, *_ = plan(bundle, 8)
    sent = stage_bundle(bundle, first, {})
    answer = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "response": {
                    "status": "201 Created",
                    "location": f"https://ehr/fhir/R4/{e['resource']['resourceType']}/e{n}/_history/1",
                }
            }
            for n, e in enumerate(sent["entry"])
        ],
    }
    resolved = locations(sent, answer)
    assert resolved == {e["fullUrl"]: f"{e['resource']['resourceType']}/e{n}" for n, e in enumerate(sent["entry"])}
    later = stage_bundle(bundle, second, resolved)
    refs = [r for e in later["entry"] for r in references(e["resource"])]
    assert any(r.startswith("Patient/e") for r in refs)
    assert not [r for r in refs if r.startswith("urn:uuid:") and r in resolved]  # no earlier urn:uuid left
    same_stage = {e["fullUrl"] for e in later["entry"]}
    assert all(r in same_stage or r.startswith(("#", "Patient/", "Practitioner/", "Organization/", "Coverage/",
                                                  "RelatedPerson/", "Procedure/", "DocumentReference/",
                                                  "ImagingStudy/")) for r in refs)  # fmt: skip


def test_locations_read_relative_locations_and_returned_resources_and_refuse_neither():
    sent = {
        "entry": [
            {"fullUrl": "urn:uuid:a", "request": {"url": "Patient"}},
            {"fullUrl": "urn:uuid:b", "request": {"url": "Claim"}},
        ]
    }
    answer = {
        "entry": [
            {"response": {"status": "200 OK", "location": "Patient/123"}},
            {"response": {"status": "201 Created"}, "resource": {"resourceType": "Claim", "id": "c-9"}},
        ]
    }
    assert locations(sent, answer) == {"urn:uuid:a": "Patient/123", "urn:uuid:b": "Claim/c-9"}
    with pytest.raises(PushError, match="no location for Claim"):
        locations(sent, {"entry": [answer["entry"][0], {"response": {"status": "200 OK"}}]})


def test_rewrite_references_leaves_other_strings_alone():
    node = {
        "reference": "Patient/1",
        "display": "Patient/1",
        "list": [{"reference": "#med"}, {"reference": "Patient/1"}],
    }
    assert rewrite_references(node, {"Patient/1": "urn:uuid:x"}) == {
        "reference": "urn:uuid:x",
        "display": "Patient/1",
        "list": [{"reference": "#med"}, {"reference": "urn:uuid:x"}],
    }
