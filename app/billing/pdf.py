"""An invoice as a one-page PDF (fpdf2)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from fpdf import FPDF

from app.billing.invoices import rate, status_of
from app.core.config import Settings
from app.models import Billing, Customer

# Core PDF fonts cover Latin-1 only; a TrueType font covers a customer named in any script.
_FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
    Path("/Library/Fonts/Arial Unicode.ttf"),
)


def _font(settings: Settings) -> Path | None:
    if settings.INVOICE_FONT_PATH is not None:
        return settings.INVOICE_FONT_PATH
    return next((path for path in _FONT_CANDIDATES if path.is_file()), None)


def render_invoice(settings: Settings, invoice: Billing, customer: Customer) -> bytes:
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_title(f"Invoice {invoice.invoice_number}")
    pdf.set_author(settings.PLATFORM_NAME)
    pdf.add_page()
    font_file = _font(settings)
    if font_file is not None:
        pdf.add_font("body", fname=str(font_file))
        family, encodable = "body", _as_is
    else:
        family, encodable = "helvetica", _latin1
    margin = 20

    def text(size: float, value: str, *, height: float = 7, bold: bool = False) -> None:
        pdf.set_font(family, "B" if bold and family == "helvetica" else "", size)
        pdf.set_x(margin)
        pdf.multi_cell(0, height, encodable(value), align="L")

    pdf.set_y(margin)
    text(20, settings.PLATFORM_NAME, height=10, bold=True)
    text(16, f"Invoice {invoice.invoice_number}", height=9, bold=True)
    pdf.ln(4)
    text(11, "Bill to:", bold=True)
    text(11, customer.name)
    text(11, customer.contact_email)
    pdf.ln(4)
    text(11, f"Issued: {_day(invoice.issued_at)}")
    text(11, f"Due: {_day(invoice.due_date)}")
    text(11, f"Status: {status_of(invoice).upper()}" + _when(invoice))
    pdf.ln(6)

    widths = (100, 35, 35)
    pdf.set_font(family, "B" if family == "helvetica" else "", 11)
    pdf.set_x(margin)
    for width, title in zip(widths, ("Description", "Unit price", "Amount"), strict=True):
        pdf.cell(width, 8, title, border="B", align="L" if width == 100 else "R")
    pdf.ln(8)
    pdf.set_font(family, "", 11)
    pdf.set_x(margin)
    unit = f"{rate(invoice.unit_price)} / 1K"
    money = f"{invoice.amount:.2f} {invoice.currency}"
    line = f"Token pack: {invoice.tokens:,} tokens"
    for width, value in zip(widths, (line, unit, money), strict=True):
        pdf.cell(width, 8, encodable(value), align="L" if width == 100 else "R")
    pdf.ln(10)
    pdf.set_x(margin)
    pdf.set_font(family, "B" if family == "helvetica" else "", 12)
    pdf.cell(135, 9, "Total", align="R")
    pdf.cell(35, 9, money, align="R")
    pdf.ln(14)
    text(
        9,
        f"Pay by {_day(invoice.due_date)} quoting {invoice.invoice_number}. The tokens are "
        "added to your balance when the payment arrives.",
    )
    return bytes(pdf.output())


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _when(invoice: Billing) -> str:
    if invoice.paid_at is not None:
        return f" ({_day(invoice.paid_at)})"
    if invoice.voided_at is not None:
        return f" ({_day(invoice.voided_at)})"
    return ""


def _as_is(value: str) -> str:
    return value


def _latin1(value: str) -> str:
    return value.encode("latin-1", "replace").decode("latin-1")
