"""The audit log pages (admins): filtered, paged, and exported as CSV.

Filters are ordinary query parameters (user, patient identifier, action, from, to), so a filtered
view can be bookmarked and the CSV link carries the same filters. Patients appear by their clinic
identifier. The CSV is written with the csv module, and a cell that a spreadsheet would read as a
formula (starting with = + - @, a tab or a carriage return) gets a leading quote.
"""

from __future__ import annotations

import csv
import io
from datetime import date
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from azaguard import service
from azaguard.deps import SessionDep, WebUser
from azaguard.service_models import AuditQuery, AuditRow
from azaguard.web.views import render

router = APIRouter(include_in_schema=False)
AUDIT_PAGE = 50  # events per page
FILTERS = ("user", "patient", "action", "from", "to")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = ("when", "user", "action", "what", "patient", "channel", "detail")


class BadFilter(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _date(raw: str | None, field: str) -> date | None:
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise BadFilter(field, "a date in YYYY-MM-DD") from None


def _filters(request: Request) -> dict[str, str]:
    """The filters as given (trimmed, empty ones dropped), for the form and the links."""
    q = request.query_params
    return {k: q[k].strip()[:80] for k in FILTERS if q.get(k, "").strip() and "\x00" not in q[k]}


def _query(given: dict[str, str], limit: int, offset: int) -> AuditQuery:
    since, until = _date(given.get("from"), "from"), _date(given.get("to"), "to")
    if since and until and until < since:
        raise BadFilter("to", "on or after the From date")
    return AuditQuery(
        user=given.get("user"),
        patient=given.get("patient"),
        action=given.get("action"),
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )


def _page_number(raw: str | None) -> int:
    try:
        return min(max(int(raw or 1), 1), 100_000)
    except ValueError:
        return 1


@router.get("/audit")
def audit_page(request: Request, s: SessionDep, who: WebUser) -> HTMLResponse:
    given = _filters(request)
    number = _page_number(request.query_params.get("page"))
    ctx: dict[str, Any] = {
        "given": given,
        "actions": service.AUDIT_ACTIONS,
        "export_limit": service.AUDIT_EXPORT_LIMIT,
        "csv_link": "/audit.csv" + ("?" + urlencode(given) if given else ""),
        "page_link": lambda n: "/audit?" + urlencode({**given, "page": n}),
        "error": None,
    }
    try:
        query = _query(given, AUDIT_PAGE, (number - 1) * AUDIT_PAGE)
    except BadFilter as exc:
        service.require_role(s, who.principal, ("admin",), "audit-log", "web")
        ctx.update(error={exc.field: str(exc)}, rows=[], total=0, page=1, pages=1, first_row=0, last_row=0)
        return render(request, "audit.html", who, 400, **ctx)
    found = service.audit_search(s, who.principal, query, "web")
    pages = max(1, -(-found.total // AUDIT_PAGE))
    if number > pages:  # past the end (a bookmarked page of a shorter list): the last page
        number = pages
        query = _query(given, AUDIT_PAGE, (number - 1) * AUDIT_PAGE)
        found = service.audit_search(s, who.principal, query, "web")
    ctx.update(
        rows=found.rows,
        total=found.total,
        page=number,
        pages=pages,
        first_row=query.offset + 1 if found.rows else 0,
        last_row=query.offset + len(found.rows),
    )
    return render(request, "audit.html", who, **ctx)


def csv_cell(value: object) -> str:
    """A cell a spreadsheet shows as text: a leading = + - @ (or tab, CR) is neutralised with a quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def audit_csv_text(rows: list[AuditRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        cells = (r.at.strftime("%Y-%m-%d %H:%M:%S"), r.user, r.action, r.resource, r.patient, r.channel, r.detail)
        writer.writerow([csv_cell(c) for c in cells])
    return out.getvalue()


@router.get("/audit.csv")
def audit_csv(request: Request, s: SessionDep, who: WebUser) -> Response:
    try:
        query = _query(_filters(request), service.AUDIT_EXPORT_LIMIT, 0)
    except BadFilter as exc:
        service.require_role(s, who.principal, ("admin",), "audit-log export", "web")
        return Response(f"{exc.field}: {exc}\n", status_code=400, media_type="text/plain")
    rows = service.audit_export(s, who.principal, query, "web")
    return Response(
        audit_csv_text(rows),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="audit-{date.today().isoformat()}.csv"'},
    )


# ---------------------------------------------------------------- CDS Hooks report
@router.get("/reports/cds")
def cds_report_page(request: Request, s: SessionDep, who: WebUser) -> HTMLResponse:
    """Cards shown in the EHR per finding code, and how clinicians answered them (staff)."""
    today = date.today()
    given = {k: request.query_params.get(k, "").strip()[:10] for k in ("from", "to")}
    try:
        since = _date(given["from"], "from") or today.replace(day=1)
        until = _date(given["to"], "to") or today
    except BadFilter as exc:
        return render(request, "cds_report.html", who, status=400, report=None, error=str(exc), given=given)
    report = service.cds_report(s, who.principal, since, until, "web")
    return render(request, "cds_report.html", who, report=report, error=None, given=given)
