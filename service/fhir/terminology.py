"""Codes the mapping emits: SNOMED CT (DOMAIN.md §6.1 verified concepts only), UCUM, and our local CodeSystems.

Left out on purpose (DOMAIN.md §6.2 / §11 UNVERIFIED): SNOMED concepts for bursae, tendon sheaths, nerves and the
other sites without a catalog ``snomed`` (they get text only), "injection of steroid into knee/hip joint",
arthrocentesis, the "ultrasound-guided" procedure, the intralesional/perineural/intratendinous routes (text only),
pre-coordinated sided joints (we post-coordinate laterality with a qualifier) and v3 role codes for consent actors.
The SNOMED procedure concept 231274008 "Injection of steroid into joint" (§6.1, H) is used only when a
corticosteroid is injected into a joint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.coding.catalog import Site
from service.fhir.record import SNOMED, ProcedureRecord, coding, concept

# DOMAIN.md §6.1 (all H).
LATERALITY: Mapping[str, tuple[str, str]] = {
    "left": ("7771000", "Left"),
    "right": ("24028007", "Right"),
    "bilateral": ("51440002", "Right and left"),
}
STEROID_INTO_JOINT = ("231274008", "Injection of steroid into joint")
INTRA_ARTICULAR = ("12130007", "Intra-articular route")
INTRABURSAL = ("372459003", "Intrabursal route")

# UCUM codes for the report's dose units (schemas.procedures.DoseUnit).
UCUM_UNITS: Mapping[str, str] = {"mg": "mg", "mL": "mL"}

APPROACH: Mapping[str, str] = {
    "in_plane": "In-plane (needle in the transducer's imaging plane, shaft and tip seen)",
    "out_of_plane": "Out-of-plane (needle crosses the imaging plane; seen as a dot)",
    "other": "Other approach",
}
IMAGE_ROLE: Mapping[str, str] = {
    "pre": "Pre-injection image (target localised before the needle is placed)",
    "post": "Post-injection image (needle in target or injectate spread)",
    "other": "Other image of the procedure (e.g. a cine of the needle pass)",
}
CLAIM_INFO: Mapping[str, str] = {
    "pre-image-retained": "A pre-injection ultrasound image is permanently recorded",
    "post-image-retained": "A post-injection ultrasound image is permanently recorded",
    "guidance-necessity": "Why image guidance was needed (DOMAIN.md DOC-02)",
}
OFF_LABEL_EXT = "off-label-disclosure"
GUIDANCE_EXT = "us-guidance"
LATERALITY_EXT = "laterality"
IMAGE_ROLE_EXT = "image-role"
CONSENT_METHOD_EXT = "consent-method"


def is_joint(site: Site | None) -> bool:
    return site is not None and site.family == "arthrocentesis" and "joint" in site.label.lower()


def laterality_coding(laterality: str | None) -> dict[str, Any] | None:
    found = LATERALITY.get(laterality or "")
    return coding(SNOMED, found[0], found[1]) if found else None


def body_site(record: ProcedureRecord) -> dict[str, Any] | None:
    """The site as SNOMED (when the catalog has a verified concept) and text, laterality as a qualifier extension."""
    site = record.catalog.sites.get(record.report.get("site") or "")
    if site is None:
        return None
    laterality = record.report.get("laterality")
    text = site.label if laterality not in LATERALITY else f"{site.label}, {laterality}"
    if record.report.get("digit"):
        text += f", digit {record.report['digit']}"
    out = concept(coding(SNOMED, site.snomed, site.label) if site.snomed else None, text=text)
    side = laterality_coding(laterality)
    if side:
        # No R4 element for a qualifier on a CodeableConcept: our extension (DOMAIN.md §8.2 post-coordination).
        out["extension"] = [
            {"url": record.canonical("StructureDefinition", LATERALITY_EXT), "valueCodeableConcept": concept(side)}
        ]
    return out


def route(record: ProcedureRecord) -> dict[str, Any] | None:
    """Intra-articular into a joint, intrabursal into a bursa (§6.1); other routes are unverified: text only."""
    site = record.catalog.sites.get(record.report.get("site") or "")
    if site is None:
        return None
    if is_joint(site):
        return concept(coding(SNOMED, *INTRA_ARTICULAR), text="Intra-articular")
    if "bursa" in site.key:
        return concept(coding(SNOMED, *INTRABURSAL), text="Intrabursal")
    return concept(text=f"Injection into {site.label[0].lower()}{site.label[1:]}")


def code_system(record: ProcedureRecord, name: str, title: str, codes: Mapping[str, str]) -> dict[str, Any]:
    """One of our local CodeSystems (shared by all procedures: a fixed id, not per procedure)."""
    return {
        "resourceType": "CodeSystem",
        "id": f"usgi-{name}",
        "url": record.canonical("CodeSystem", name),
        "version": "1",
        "name": "".join(w.capitalize() for w in name.split("-")),
        "title": title,
        "status": "active",
        "experimental": False,
        "publisher": "usgi-docs",
        "description": f"{title}: a local code system of usgi-docs (no standard concept exists, DOMAIN.md §6.2).",
        "caseSensitive": True,
        "content": "complete",
        "count": len(codes),
        "concept": [{"code": code.replace("_", "-"), "display": display} for code, display in codes.items()],
    }


def local_coding(record: ProcedureRecord, name: str, code: str, codes: Mapping[str, str]) -> dict[str, Any]:
    return coding(record.canonical("CodeSystem", name), code.replace("_", "-"), codes.get(code))


def code_systems(record: ProcedureRecord) -> list[dict[str, Any]]:
    return [
        code_system(record, "needle-approach", "Ultrasound-guided needle approach", APPROACH),
        code_system(record, "image-role", "Role of an image in a guided procedure", IMAGE_ROLE),
        code_system(record, "claim-information", "Claim supporting information codes of usgi-docs", CLAIM_INFO),
    ]
