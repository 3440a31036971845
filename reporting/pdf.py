"""The report as a PDF: letterhead, patient and exam, the text, status and signature.

No Django here: `reporting.distribution` turns the rows into a `ReportContent`. The
fonts are TrueType and embedded, so any name (Müller, Łukasz, 山田) prints, and the
text can be read back out of the file (search, copy, the EMR's indexer).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import reportlab
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

# DejaVu (Debian's fonts-dejavu-core) covers far more scripts than the Vera that ships
# with reportlab; Vera is the fallback so the PDF renders on any machine.
_SYSTEM_FONTS = Path("/usr/share/fonts/truetype/dejavu")
_BUNDLED_FONTS = Path(reportlab.__file__).parent / "fonts"
_FONT_FILES = (
    (_SYSTEM_FONTS / "DejaVuSans.ttf", _SYSTEM_FONTS / "DejaVuSans-Bold.ttf"),
    (_BUNDLED_FONTS / "Vera.ttf", _BUNDLED_FONTS / "VeraBd.ttf"),
)
FONT = "ReportSans"
FONT_BOLD = "ReportSans-Bold"

MARGIN = 18 * mm
# A section title in capitals; an addendum's carries its signer and time in brackets.
_HEADING = re.compile(r"^[A-Z][A-Z ]*[A-Z](?: \([^()]*\))?:$")
PRELIMINARY_NOTICE = "PRELIMINARY REPORT - not yet verified by the signing radiologist"


@dataclass(frozen=True)
class ReportContent:
    """What the PDF shows, as plain values."""

    institution_name: str
    institution_address: str
    patient_name: str
    patient_id: str
    birth_date: dt.date | None
    sex: str
    procedure: str
    accession_number: str
    study_date: dt.date | None
    referring_physician: str
    text: str
    status: str  # "preliminary", "final", "amended"
    status_label: str
    signed_by: str
    signed_at: dt.datetime | None  # in the department's time zone
    title: str = "Radiology report"
    extra_rows: Sequence[tuple[str, str]] = field(default_factory=tuple)


def _register_fonts() -> None:
    if FONT in pdfmetrics.getRegisteredFontNames():
        return
    for regular, bold in _FONT_FILES:
        if regular.exists() and bold.exists():
            pdfmetrics.registerFont(TTFont(FONT, str(regular)))
            pdfmetrics.registerFont(TTFont(FONT_BOLD, str(bold)))
            return
    raise RuntimeError("no TrueType font found for the report PDF")


def _styles() -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("body", fontName=FONT, fontSize=10, leading=13.5)
    return {
        "body": base,
        "institution": ParagraphStyle(
            "institution", parent=base, fontName=FONT_BOLD, fontSize=15, leading=19
        ),
        "address": ParagraphStyle("address", parent=base, fontSize=9, textColor=colors.grey),
        "title": ParagraphStyle(
            "title", parent=base, fontName=FONT_BOLD, fontSize=13, leading=17, spaceBefore=6
        ),
        "heading": ParagraphStyle(
            "heading", parent=base, fontName=FONT_BOLD, spaceBefore=8, spaceAfter=2
        ),
        "label": ParagraphStyle("label", parent=base, fontSize=8.5, textColor=colors.grey),
        "notice": ParagraphStyle(
            "notice", parent=base, fontName=FONT_BOLD, textColor=colors.HexColor("#a33")
        ),
        "signature": ParagraphStyle("signature", parent=base, spaceBefore=14),
    }


def _html(text: str) -> str:
    return escape(text).replace("\n", "<br/>")


def _date(value: dt.date | None) -> str:
    return value.isoformat() if value else ""


def _is_heading(line: str) -> bool:
    """Tell whether LINE is a heading of Report.text ("IMPRESSION:", "ADDENDUM (...):")."""
    return _HEADING.match(line.strip()) is not None


def _text_flowables(text: str, styles: dict[str, ParagraphStyle]) -> list[Any]:
    flowables: list[Any] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            flowables.append(Paragraph(_html("\n".join(paragraph)), styles["body"]))
            paragraph.clear()

    for line in text.replace("\r\n", "\n").split("\n"):
        if _is_heading(line):
            flush()
            flowables.append(Paragraph(_html(line.strip()), styles["heading"]))
        elif not line.strip():
            flush()
            flowables.append(Spacer(1, 4))
        else:
            paragraph.append(line)
    flush()
    return flowables


def _facts_table(content: ReportContent, styles: dict[str, ParagraphStyle]) -> Table:
    rows = [
        ("Patient", content.patient_name, "Patient ID", content.patient_id),
        ("Birth date", _date(content.birth_date), "Sex", content.sex),
        ("Procedure", content.procedure, "Accession", content.accession_number),
        ("Study date", _date(content.study_date), "Referring", content.referring_physician),
        ("Status", content.status_label, "", ""),
    ]
    cells = [
        [
            Paragraph(_html(a), styles["label"]),
            Paragraph(_html(b), styles["body"]),
            Paragraph(_html(c), styles["label"]),
            Paragraph(_html(d), styles["body"]),
        ]
        for a, b, c, d in [*rows, *((k, v, "", "") for k, v in content.extra_rows)]
    ]
    width = A4[0] - 2 * MARGIN
    table = Table(cells, colWidths=[0.15 * width, 0.38 * width, 0.15 * width, 0.32 * width])
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEABOVE", (0, 0), (-1, 0), 0.6, colors.black),
                ("LINEBELOW", (0, -1), (-1, -1), 0.6, colors.black),
                ("TOPPADDING", (0, 0), (-1, -1), 1.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
            ]
        )
    )
    return table


def render_report_pdf(content: ReportContent) -> bytes:
    """Return CONTENT as a PDF document; the same content gives the same bytes."""
    _register_fonts()
    styles = _styles()
    story: list[Any] = [Paragraph(_html(content.institution_name), styles["institution"])]
    if content.institution_address:
        story.append(Paragraph(_html(content.institution_address), styles["address"]))
    story += [Paragraph(_html(content.title), styles["title"]), Spacer(1, 4)]
    story.append(_facts_table(content, styles))
    if content.status == "preliminary":
        story += [Spacer(1, 6), Paragraph(_html(PRELIMINARY_NOTICE), styles["notice"])]
    story.append(Spacer(1, 6))
    story += _text_flowables(content.text, styles)
    signed_at = content.signed_at.strftime("%Y-%m-%d %H:%M %Z").strip() if content.signed_at else ""
    signature = f"Signed ({content.status_label.lower()}) by {content.signed_by or 'unknown'}"
    story.append(Paragraph(_html(f"{signature}, {signed_at}".rstrip(", ")), styles["signature"]))

    footer = f"{content.patient_name} - {content.patient_id} - {content.accession_number}"

    def decorate(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(FONT, 7.5)
        canvas.setFillColor(colors.grey)
        canvas.drawString(MARGIN, 10 * mm, footer)
        canvas.drawRightString(A4[0] - MARGIN, 10 * mm, f"page {doc.page}")
        canvas.restoreState()

    buffer = BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN,
        title=f"{content.title} {content.accession_number}",
        author=content.signed_by,
        subject=content.procedure,
        creator=content.institution_name,
        invariant=True,  # no creation time or random id: a retry writes the same bytes
    )
    document.build(story, onFirstPage=decorate, onLaterPages=decorate)
    return buffer.getvalue()
