"""The guidance report as a PDF (pure): what a payer's reviewer asks for when 76942 or a guided joint code is
billed: who, what, where, the needle guidance in words, the injectates, and the pre- and post-injection images
side by side (DOMAIN.md §1.3, §2.1, DOC-04). The FHIR DocumentReference of the report points at it.

Rendered with reportlab in invariant mode, so the same report version gives the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

_ROLE_TITLE = {"pre": "Before the injection (target)", "post": "After: needle in target / injectate spread"}


@dataclass(frozen=True)
class KeyImage:
    role: str  # pre | post
    png: bytes
    caption: str


def _text(value: Any) -> str:
    return escape(str(value)) if value not in (None, "") else "—"


def _name(person: Mapping[str, Any] | None) -> str:
    if not person:
        return "—"
    credentials = f", {person['credentials']}" if person.get("credentials") else ""
    return f"{person.get('name', '')}{credentials}"


def _patient(report: Mapping[str, Any]) -> str:
    patient = report.get("patient") or {}
    name = patient.get("name") or {}
    full = " ".join([*(name.get("given") or []), name.get("family", "")]).strip() or "—"
    ident = (patient.get("identifier") or {}).get("value", "—")
    return f"{full} (MRN {ident}), born {patient.get('birth_date', '—')}, {patient.get('sex', '—')}"


def render_report(
    report: Mapping[str, Any],
    *,
    procedure_id: str,
    version: int,
    status: str,
    site_label: str,
    signatures: Sequence[Mapping[str, Any]],
    images: Sequence[KeyImage],
) -> bytes:
    """The PDF bytes of one version of a procedure report."""
    styles = getSampleStyleSheet()
    body, small = styles["BodyText"], styles["Italic"]
    guidance = report.get("guidance") or {}
    times = report.get("times") or {}
    side = report.get("laterality")
    where = f"{site_label}, {side}" if side and side != "not_applicable" else site_label
    kind = str(report.get("kind") or "procedure").replace("_", " ")
    story: list[Any] = [
        Paragraph(f"Ultrasound-guided {escape(kind)}: {escape(where)}", styles["Title"]),
        Paragraph(f"Procedure {escape(procedure_id)}, version {version} ({escape(status)})", small),
        Spacer(1, 4 * mm),
    ]
    facts = [
        ("Patient", _patient(report)),
        ("Accession / visit", f"{report.get('accession_number', '—')} / "
         f"{(report.get('encounter_identifier') or {}).get('value', '—')}"),
        ("Performed", f"{times.get('started_at', '—')} to {times.get('ended_at', '—')}; "
         f"injection {times.get('injected_at', '—')}"),
        ("Performer", _name(report.get("performer"))),
        ("Supervisor", _name(report.get("supervisor"))),
        ("Guidance", f"{guidance.get('modality', '—')}, {str(guidance.get('approach', '—')).replace('_', ' ')}, "
         f"{guidance.get('probe_type', '—')} probe {guidance.get('probe_frequency_mhz', '—')} MHz, "
         f"{guidance.get('needle_gauge', '—')} G needle"),
        ("Real-time guidance / tip seen", f"{guidance.get('realtime_needle_guidance', '—')} / "
         f"{guidance.get('needle_tip_visualised', '—')}"),
        ("Indications", ", ".join(i.get("code", "") for i in report.get("indications") or []) or "—"),
    ]  # fmt: skip
    table = Table([[Paragraph(f"<b>{k}</b>", body), Paragraph(_text(v), body)] for k, v in facts], [45 * mm, 125 * mm])
    table.setStyle(
        TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.grey)])
    )
    story += [table, Spacer(1, 4 * mm), Paragraph("<b>Needle guidance</b>", body)]
    story.append(Paragraph(_text(guidance.get("description")), body))
    for injectate in report.get("injectates") or []:
        story.append(
            Paragraph(
                f"Injected: {_text(injectate.get('drug'))} {_text(injectate.get('dose'))} "
                f"{_text(injectate.get('dose_unit'))} in {_text(injectate.get('volume_ml'))} mL, "
                f"lot {_text(injectate.get('lot_number'))}, expiry {_text(injectate.get('expiry_date'))}",
                body,
            )
        )
    story += [Spacer(1, 4 * mm), Paragraph("<b>Permanently recorded images</b>", body)]
    story.append(
        _images_row(images, body, small) if images else Paragraph("No images are linked to this report.", body)
    )
    story += [Spacer(1, 4 * mm), Paragraph("<b>Signatures</b>", body)]
    for sig in signatures:
        story.append(
            Paragraph(
                f"{_text(sig.get('capacity'))}: {_text(sig.get('signer'))} at {_text(sig.get('signed_at'))}", body
            )
        )
    if not signatures:
        story.append(Paragraph("Not signed.", body))
    out = io.BytesIO()
    title = f"Guidance report {procedure_id} v{version}"
    SimpleDocTemplate(out, pagesize=A4, title=title, author="usgi-docs", invariant=1).build(story)
    return out.getvalue()


def _images_row(images: Sequence[KeyImage], body: Any, small: Any) -> Table:
    cells = []
    for image in images:
        picture = Image(io.BytesIO(image.png))
        scale = min(80 * mm / picture.imageWidth, 70 * mm / picture.imageHeight)
        picture.drawWidth, picture.drawHeight = picture.imageWidth * scale, picture.imageHeight * scale
        title = _ROLE_TITLE.get(image.role, image.role)
        cells.append([Paragraph(f"<b>{escape(title)}</b>", body), picture, Paragraph(escape(image.caption), small)])
    table = Table([list(col) for col in zip(*cells, strict=True)], [85 * mm] * len(cells))
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    return table
