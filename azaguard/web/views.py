"""Server-rendered pages: login, worklist, patient page and forms, patient view, guide, admin pages.

No front-end build step: Jinja2 templates and one stylesheet, charts drawn server-side as SVG.
Every POST carries the session's CSRF token; a bad form comes back with the field marked and
explained, and its part of the unit of work is rolled back, so nothing is saved half-way.
Each route calls use cases in azaguard.service and renders the view models they return.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path as FilePath
from typing import IO, Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from azaguard import service
from azaguard.deps import COOKIE, OneHopRoute, SessionDep, WebUser, database, knowledge, web_identity
from azaguard.knowledge import Knowledge
from azaguard.plain import day_month_year, long_date
from azaguard.service_models import (
    ClinicContact,
    FollowUpDismissalOut,
    MedicineOut,
    ObservationOut,
    PanelOut,
    Principal,
    SymptomOut,
    VaccineOut,
    WebIdentity,
    WorklistQuery,
)
from azaguard.web import patient_view

TEMPLATES = Jinja2Templates(directory=str(FilePath(__file__).resolve().parent / "templates"))
TEMPLATES.env.filters["long_date"] = long_date  # "Tuesday 22 December": dates patients read
# The templates are part of the installed package: checking each one's file for changes on every
# render (a stat per template and include, fifteen on a patient page) buys nothing in service.
TEMPLATES.env.auto_reload = False
LOGIN_CSRF = "azaguard_login_csrf"
router = APIRouter(include_in_schema=False, route_class=OneHopRoute)
__all__ = ["COOKIE", "FORMS", "LOGIN_CSRF", "TEMPLATES", "error_page", "router"]

# Row ids are 32-bit INTEGER columns: a larger id is a 422, never a database overflow (a 500).
PatientId = Annotated[int, Path(ge=1, le=2**31 - 1)]
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _base(request: Request, user: Principal | None, csrf: str, **ctx: Any) -> dict[str, Any]:
    return {
        "request": request,
        "user": user,
        "csrf": csrf,
        "settings": request.app.state.settings,
        "knowledge_version": knowledge(request).version,
        "today": date.today(),
        **ctx,
    }


def render(request: Request, name: str, who: WebIdentity | None, status: int = 200, **ctx: Any) -> HTMLResponse:
    user, csrf = (who.principal, who.csrf) if who else (None, "")
    return TEMPLATES.TemplateResponse(request, name, _base(request, user, csrf, **ctx), status_code=status)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request, "error.html", _base(request, None, "", status=status, message=message), status_code=status
    )


async def form_data(request: Request) -> dict[str, str]:
    form = await request.form()
    data = {k: v if isinstance(v, str) else "" for k, v in form.items()}
    if any("\x00" in v for v in data.values()):
        raise HTTPException(400, "form fields must not contain NUL characters")
    return data


FormDep = Annotated[dict[str, str], Depends(form_data)]


def check_csrf(
    who: WebIdentity,
    form: dict[str, str],
    s: Session | None = None,
    resource: str = "web form",
    patient_id: int | None = None,
) -> None:
    """The form must carry its session's CSRF token, else 403. With the request's unit of work `s`
    the refusal is audited (`resource`: what the form does; `patient_id`: the record it aims at)."""
    if s is not None:
        service.check_form_token(s, who, form.get("csrf"), resource, patient_id)
    elif not secrets.compare_digest(form.get("csrf", "").encode(), who.csrf.encode()):
        raise service.Denied(service.CSRF_REFUSAL)


# ---------------------------------------------------------------- login
@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    resp = render(request, "login.html", None, login_csrf=token, error=None)
    resp.set_cookie(
        LOGIN_CSRF, token, httponly=True, samesite="strict", secure=request.app.state.settings.secure_cookies
    )
    return resp


@router.post("/login")
def login(request: Request, s: SessionDep, form: FormDep) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF, "")
    if not cookie or not secrets.compare_digest(cookie.encode(), form.get("login_csrf", "").encode()):
        service.record_login_form_refusal(s)
        return render(
            request, "login.html", None, 400, login_csrf=cookie, error="Please reload the page and try again."
        )
    try:
        client = request.client.host if request.client else None
        done = service.open_web_session(s, form.get("username", ""), form.get("password", ""), client)
    except service.LoginLocked:
        return _login_refused(request, cookie, 429, "Too many failed logins. Try again in 15 minutes.", 900)
    except service.LoginRefused as exc:  # the limit was reached meanwhile (429), or no password check free (503)
        retry = int((exc.headers or {}).get("Retry-After", "1"))
        if exc.status_code == 429:
            minutes = max(1, (retry + 59) // 60)
            message = f"Too many failed logins. Try again in {minutes} minute{'s' if minutes != 1 else ''}."
        else:
            message = "Too many people are logging in at this moment. Try again in a few seconds."
        return _login_refused(request, cookie, exc.status_code, message, retry)
    except service.LoginFailed:
        return render(request, "login.html", None, 401, login_csrf=cookie, error="Wrong username or password.")
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(
        COOKIE,
        done.token,
        httponly=True,
        samesite="lax",
        secure=request.app.state.settings.secure_cookies,
        max_age=service.SESSION_HOURS * 3600,
    )
    resp.delete_cookie(LOGIN_CSRF)
    return resp


def _login_refused(request: Request, login_csrf: str, status: int, message: str, retry_after: int) -> HTMLResponse:
    """The login page again, saying why and when to try again (429 or 503, with Retry-After)."""
    resp = render(request, "login.html", None, status, login_csrf=login_csrf, error=message)
    resp.headers["Retry-After"] = str(max(1, retry_after))
    return resp


@router.post("/logout")
def logout(request: Request, s: SessionDep, who: WebUser, form: FormDep) -> Response:
    check_csrf(who, form, s, "logout")
    service.close_web_session(s, who.principal, request.cookies.get(COOKIE))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE)
    return resp


@router.get("/")
def home(who: WebUser) -> Response:
    return RedirectResponse("/me" if who.principal.role == "patient" else "/worklist", status_code=303)


# ---------------------------------------------------------------- clinic
WORKLIST_PAGE = 50  # rows per worklist page: a 10,000-patient clinic's list is never one page


def _page_number(raw: str | None) -> int:
    """A 1-based page number from the URL; anything else is page 1 (bounded: no huge offsets)."""
    try:
        return min(max(int(raw or 1), 1), 100_000)
    except ValueError:
        return 1


# The counts at the top of the worklist (each a link to its `needs=` filter) and the orders it offers
NEEDS = {"critical": "critical", "warning": "warning", "overdue": "overdue", "awaiting": "awaiting a result"}
SORTS = {"urgency": "most urgent", "due": "next blood test", "name": "name", "owner": "owner"}


@router.get("/worklist")
def worklist_page(request: Request, s: SessionDep, who: WebUser) -> HTMLResponse:
    q = request.query_params
    if any("\x00" in v for v in q.values()):
        raise HTTPException(400, "search fields must not contain NUL characters")
    needs, sort = q.get("needs") or "", q.get("sort") or ""
    flt = WorklistQuery(
        severity=q.get("severity") or None,
        category=q.get("category") or None,
        indication=q.get("indication") or None,
        team=q.get("team") or None,
        search=q.get("q") or None,
        limit=WORKLIST_PAGE,
        needs=needs if needs in NEEDS else None,  # anything else: no such filter, the whole list
        mine=q.get("mine") == "1",
        sort=sort if sort in SORTS else "urgency",
    )
    number = _page_number(q.get("page"))
    flt = replace(flt, offset=(number - 1) * WORKLIST_PAGE)
    page = service.worklist(s, who.principal, flt, "web")
    last = max(1, -(-page.total // WORKLIST_PAGE))
    if number > last:  # a page past the end (the list shrank meanwhile): show the last one
        number = last
        flt = replace(flt, offset=(number - 1) * WORKLIST_PAGE)
        page = service.worklist(s, who.principal, flt, "web")
    kb = knowledge(request)
    kept = {k: v for k, v in q.items() if k != "page" and v}  # the filters stay in the page links

    def link(**change: str | None) -> str:
        """This list with some filters changed (None: dropped), from its first page."""
        params = {k: v for k, v in {**kept, **change}.items() if v}
        return "/worklist" + ("?" + urlencode(params) if params else "")

    here = "/worklist?" + urlencode({**kept, "page": number})  # where a claim on this page comes back to
    return render(
        request,
        "worklist.html",
        who,
        entries=page.entries,
        total=page.total,
        counts=page.counts.model_dump(),
        flt=flt,
        page=number,
        pages=last,
        first_row=flt.offset + 1 if page.entries else 0,
        last_row=flt.offset + len(page.entries),
        page_link=lambda n: "/worklist?" + urlencode({**kept, "page": n}),
        link=link,
        here=here,
        needs_labels=NEEDS,
        sorts=SORTS,
        team=service.team_members(s, who.principal, "web"),
        categories=sorted({f.category for f in kb.findings.values()} | {"lab", "trend", "interaction"}),
        indications=kb.indications,
        display_units=kb.display_units,  # "10*9/L" as screens write it (x10^9/L); the API keeps UCUM
    )


def _patient_context(
    request: Request, s: Session, who: Principal, patient_id: int, grid_dates: int | None = service.GRID_DATES
) -> dict[str, Any]:
    kb = knowledge(request)
    view = service.patient_page(s, kb, who, patient_id, "web", grid_dates)
    a = view.assessment
    interaction_by_med: dict[str, list[dict[str, Any]]] = {}
    for f in a["findings"]:
        for ev in f["evidence"]:
            if ev.get("type") == "medication" and f["category"] == "interaction":
                interaction_by_med.setdefault(str(ev.get("id")), []).append(f)
    age = None
    if view.patient.birth_date:
        b, t = view.patient.birth_date, date.today()
        age = t.year - b.year - ((t.month, t.day) < (b.month, b.day))
    monitoring = a["monitoring"]
    follow_ups = monitoring.get("follow_ups", [])
    open_follow_ups = sorted((u for u in follow_ups if u["state"] in ("open", "overdue")), key=lambda u: u["due"])
    # The follow-up that sets each group's next due date ("repeat asked for by <finding>")
    asked_by: dict[str, dict[str, Any]] = {}
    for u in open_follow_ups:
        asked_by.setdefault(u["group"], u)
    aza = [x for x in view.medicines if x.drug == "azathioprine" and x.end is None]
    return {
        "view": view,
        "p": view.patient,
        "a": a,
        "treatment": a.get("treatment") or {"state": "", "since": None, "reason": None, "held_dose_mg_per_day": None},
        "restart_criteria": a["dose"].get("restart_criteria", []),
        "open_follow_ups": open_follow_ups,
        "dismissed_follow_ups": [u for u in follow_ups if u["state"] == "dismissed"],
        "asked_by": asked_by,
        "finding_dates": {(f["code"], f["message"]): f.get("date") for f in a["findings"]},
        # From the record, not the assessment: whether the hold form applies (an active row to withhold)
        "aza_active": any(x.status == "active" for x in aza),
        "aza_on_hold": any(x.status == "on-hold" for x in aza),
        "age": age,
        "indication": kb.indications[view.indication].label if view.indication else None,
        "interactions": interaction_by_med,
        "analytes": {
            k: v for k, v in kb.analytes.items() if v.group in ("FBC", "LFT", "renal", "vitals", "metabolites")
        },
        "summary": view.summary,
        "grid": view.results,
        "panels": _panel_forms(kb),
        "group_label": lambda g: service.group_label(kb, g),
        "cap": lambda text: text[:1].upper() + text[1:],
        "display_unit": kb.display_unit,
        "flash": None,
        "every_date": False,
        "grid_limit": service.GRID_DATES,
        "outcomes": service.REVIEW_OUTCOMES,
        "symptoms": kb.symptoms.items,
        "errors": {},
        "values": {},
        "sources_of": {f["code"]: f["sources"] for f in a["findings"]},
        "reminders": service.patient_reminders(s, who, patient_id, "web", record=False),
        # The page's read of the record is audited above: listing its documents is part of it
        "documents": service.list_documents(s, who, patient_id, "web", record=False).documents,
        "cds_alerts": service.cds_alerts(s, who, patient_id, "web", record=False),
    }


def _panel_forms(kb: Knowledge) -> list[dict[str, Any]]:
    """One entry form per panel of the knowledge (`schedule.panels`): every test of its group, with
    the unit pre-filled (the display unit when the converter accepts that spelling) and what makes
    the panel complete."""
    forms = []
    for group, panel in kb.schedule.panels.items():
        needed = {a for alt in panel.require for a in alt}
        rows = []
        for key in service.panel_analytes(kb, group):
            a = kb.analytes[key]
            shown = kb.display_unit(a.canonical)
            rows.append(
                {
                    "key": key,
                    "label": a.label,
                    "unit": shown,
                    "unit_value": shown if kb.convert(key, 1.0, shown) is not None else a.canonical,
                    "needed": key in needed,
                }
            )
        parts = [" or ".join(kb.analytes[a].label for a in alt) for alt in panel.require]
        needs = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        forms.append({"key": group, "label": service.group_label(kb, group), "rows": rows, "needs": needs})
    return forms


# A one-time confirmation ("Saved full blood count for 3 March: 5 results") for the page a save
# redirects to (POST-redirect-GET): a cookie scoped to that patient's page, signed with the session's
# CSRF secret so no other site or session can plant a message, read and cleared by the next page view.
FLASH = "azaguard_flash"


def _flash_mac(who: WebIdentity, payload: str) -> str:
    return hmac.new(who.csrf.encode(), payload.encode(), hashlib.sha256).hexdigest()[:32]


def _redirect(request: Request, who: WebIdentity, patient_id: int, anchor: str, message: str) -> Response:
    resp = RedirectResponse(f"/patients/{patient_id}#{anchor}", status_code=303)
    payload = base64.urlsafe_b64encode(message.encode()).decode()
    resp.set_cookie(
        FLASH,
        f"{_flash_mac(who, payload)}.{payload}",
        max_age=120,
        path=f"/patients/{patient_id}",
        httponly=True,
        samesite="lax",
        secure=request.app.state.settings.secure_cookies,
    )
    return resp


def _take_flash(request: Request, who: WebIdentity) -> str | None:
    mac, _, payload = request.cookies.get(FLASH, "").partition(".")
    if not payload or not secrets.compare_digest(mac.encode(), _flash_mac(who, payload).encode()):
        return None
    try:
        return base64.urlsafe_b64decode(payload.encode()).decode()[:300]
    except ValueError:
        return None


def _day(day: date) -> str:
    """3 March (3 March 2025 when it is not this year)."""
    text = f"{day.day} {day.strftime('%B')}"
    return text if day.year == date.today().year else f"{text} {day.year}"


def _saved(kb: Knowledge, form_name: str, done: object) -> str:
    """What a form saved, in one sentence, for the page it lands on."""
    if isinstance(done, PanelOut):
        n = len(done.observations)
        return f"Saved {done.label} for {_day(done.date)}: {n} result{'s' if n != 1 else ''}."
    if isinstance(done, ObservationOut):
        label = kb.analytes[done.analyte].label if done.analyte in kb.analytes else "the result"
        return f"Saved {label} for {_day(done.date)}: 1 result."
    if isinstance(done, MedicineOut) and form_name == "hold":
        return f"Azathioprine withheld from {_day(done.start or date.today())}."
    if isinstance(done, MedicineOut) and form_name == "dose":
        return f"Saved the azathioprine dose from {_day(done.start or date.today())}."
    if isinstance(done, MedicineOut):
        return "Saved the medicine and checked it against azathioprine."
    if isinstance(done, VaccineOut):
        return "Saved the vaccine and checked it against azathioprine."
    if isinstance(done, SymptomOut):
        return f"Saved the symptom from {_day(done.date)}."
    if isinstance(done, FollowUpDismissalOut):
        return "Dropped the follow-up; the reason is kept."
    return "Saved."


@router.get("/patients/{patient_id}")
def patient_page(patient_id: PatientId, request: Request, s: SessionDep, who: WebUser) -> Response:
    if who.principal.role == "patient" and who.principal.patient_id == patient_id:
        return RedirectResponse("/me", 303)
    # patient_page authorises: another patient's page is refused and audited
    every_date = request.query_params.get("dates") == "all"
    ctx = _patient_context(request, s, who.principal, patient_id, None if every_date else service.GRID_DATES)
    ctx["flash"] = _take_flash(request, who)
    ctx["every_date"] = every_date
    resp = render(request, "patient.html", who, **ctx)
    if FLASH in request.cookies:
        resp.delete_cookie(FLASH, path=f"/patients/{patient_id}")
    return resp


@router.get("/patients/{patient_id}/charts.svg")
def patient_charts(patient_id: PatientId, request: Request, s: SessionDep, who: WebUser) -> Response:
    from azaguard.web.charts import patient_chart_svg

    data = service.chart_data(s, who.principal, patient_id, "web")
    svg = patient_chart_svg(knowledge(request), data.labs, data.doses)
    return Response(svg, media_type="image/svg+xml")


@router.post("/patients/{patient_id}/owner")
def owner_form(patient_id: PatientId, request: Request, s: SessionDep, who: WebUser, form: FormDep) -> Response:
    """Claim (the user's own username), assign (another's) or unassign (empty) a patient; back to
    `next` (the worklist page the form was on) or the patient's summary."""
    check_csrf(who, form, s, "form owner", patient_id)
    try:
        with service.attempt(s):
            service.set_owner(s, who.principal, patient_id, form.get("username", ""), "web")
    except service.FormError as exc:  # not a clinician or admin: only a hand-made request sends one
        return error_page(request, 400, f"{exc.field}: {exc.message}")
    back = form.get("next", "")
    local = back.startswith("/") and not back.startswith("//") and "\\" not in back
    return RedirectResponse(back if local else f"/patients/{patient_id}#summary", status_code=303)


# ---------------------------------------------------------------- letters and documents (shared care)
def _contact(request: Request) -> ClinicContact:
    """Whom a letter says to call: the clinic's settings."""
    settings = request.app.state.settings
    return ClinicContact(settings.clinic_name, settings.clinic_phone, settings.out_of_hours)


@router.post("/patients/{patient_id}/letters")
def letter_form(patient_id: PatientId, request: Request, s: SessionDep, who: WebUser, form: FormDep) -> Response:
    """Write a letter to the GP (or the specialist team) from the assessment, store it as a PDF, and
    go back to the patient's documents, where it is listed with its download link."""
    check_csrf(who, form, s, "form letters", patient_id)
    recipient = form.get("recipient") or "gp"
    try:
        doc = service.make_letter(s, knowledge(request), who.principal, patient_id, _contact(request), recipient, "web")
    except service.FormError as exc:  # only a hand-made request names another recipient
        return error_page(request, 400, f"{exc.field}: {exc.message}")
    return RedirectResponse(f"/patients/{patient_id}?letter={doc.id}#documents", status_code=303)


@router.get("/patients/{patient_id}/documents/{document_id}.pdf")
def patient_document(patient_id: PatientId, document_id: RowId, s: SessionDep, who: WebUser) -> Response:
    found = service.patient_document(s, who.principal, patient_id, document_id, "web")
    disposition = f'attachment; filename="{found.filename}"'
    return Response(found.content, media_type=found.media_type, headers={"Content-Disposition": disposition})


@router.get("/letters")
def letters_page(request: Request, s: SessionDep, who: WebUser) -> HTMLResponse:
    """Patients moved to GP care this month, with their GP letters, and the button that writes the
    missing ones (clinicians and admins)."""
    moves = service.gp_moves(s, who.principal, "web")
    q = request.query_params
    return render(
        request, "letters.html", who, moves=moves, month=date.today(), made=q.get("made"), already=q.get("already")
    )


@router.post("/letters/batch")
def letters_batch(request: Request, s: SessionDep, who: WebUser, form: FormDep) -> Response:
    check_csrf(who, form, s, "gp-letters-batch")
    done = service.gp_letters_batch(s, knowledge(request), who.principal, _contact(request), "web")
    counts = urlencode({"made": len(done.made), "already": len(done.already_written)})
    return RedirectResponse(f"/letters?{counts}", status_code=303)


FormAction = Callable[[Session, Knowledge, Principal, int, dict[str, str]], object]


def _lab(s: Session, kb: Knowledge, u: Principal, pid: int, f: dict[str, str]) -> object:
    return service.add_lab(s, kb, u, pid, f.get("analyte", ""), f.get("value"), f.get("unit", ""), f.get("date"), "web")


def _dose(s: Session, kb: Knowledge, u: Principal, pid: int, f: dict[str, str]) -> object:
    return service.change_dose(s, kb, u, pid, f.get("mg_per_day"), f.get("start"), "web")


def _medicine(s: Session, kb: Knowledge, u: Principal, pid: int, f: dict[str, str]) -> object:
    name, status = f.get("name", ""), f.get("status", "active")
    return service.add_medicine(s, kb, u, pid, name, status, f.get("start"), f.get("mg_per_day"), "web")


def _vaccine(s: Session, kb: Knowledge, u: Principal, pid: int, f: dict[str, str]) -> object:
    return service.add_vaccine(s, kb, u, pid, f.get("name", ""), f.get("status", ""), f.get("date"), "web")


def _symptom(s: Session, kb: Knowledge, u: Principal, pid: int, f: dict[str, str]) -> object:
    return service.report_symptom(s, kb, u, pid, f.get("symptom", ""), f.get("date"), "web")


def _hold(s: Session, kb: Knowledge, u: Principal, pid: int, f: dict[str, str]) -> object:
    return service.hold_azathioprine(s, kb, u, pid, f.get("reason", ""), f.get("start") or None, "web")


def _follow_up(s: Session, kb: Knowledge, u: Principal, pid: int, f: dict[str, str]) -> object:
    return service.dismiss_follow_up(s, kb, u, pid, f.get("key", ""), f.get("reason", ""), "web")


def _panel(s: Session, kb: Knowledge, u: Principal, pid: int, f: dict[str, str]) -> object:
    values = {k.removeprefix("value-"): v for k, v in f.items() if k.startswith("value-")}
    units = {k.removeprefix("unit-"): v for k, v in f.items() if k.startswith("unit-")}
    return service.add_panel(s, kb, u, pid, f.get("panel", ""), f.get("date"), values, units, "web")


FORMS: dict[str, FormAction] = {
    "lab": _lab,
    "dose": _dose,
    "medicine": _medicine,
    "vaccine": _vaccine,
    "symptom": _symptom,
    "hold": _hold,
    "follow-up": _follow_up,
    "panel": _panel,
}
# Where the browser lands after a form is saved (default: the findings, to see the effect at once)
AFTER = {"hold": "summary", "follow-up": "follow-ups"}


@router.post("/patients/{patient_id}/{form_name}")
def patient_form(
    patient_id: PatientId,
    form_name: str,
    request: Request,
    s: SessionDep,
    who: WebUser,
    form: FormDep,
) -> Response:
    check_csrf(who, form, s, f"form {form_name if form_name in FORMS or form_name == 'team' else '?'}", patient_id)
    if form_name == "team":
        try:
            with service.attempt(s):
                service.set_team(s, who.principal, patient_id, form.get("team", ""), "web")
        except service.FormError as exc:  # only a hand-made request can send another value: a 400, not a 500
            return error_page(request, 400, f"{exc.field}: {exc.message}")
        team = "GP (shared care)" if form.get("team") == "gp" else "the specialist team"
        return _redirect(request, who, patient_id, "summary", f"Saved: monitored by {team}.")
    if form_name not in FORMS:
        return error_page(request, 404, "No such form.")
    action = FORMS[form_name]
    kb = knowledge(request)
    try:
        with service.attempt(s):  # a bad form rolls back to here: nothing is saved half-way
            done = action(s, kb, who.principal, patient_id, form)
    except service.FormError as exc:  # a panel names every wrong field at once
        ctx = _patient_context(request, s, who.principal, patient_id)
        ctx["errors"] = {form_name: exc.errors if isinstance(exc, service.PanelError) else {exc.field: exc.message}}
        ctx["values"] = {form_name: form}
        return render(request, "patient.html", who, 400, **ctx)
    return _redirect(request, who, patient_id, AFTER.get(form_name, "findings"), _saved(kb, form_name, done))


@router.post("/findings/{finding_id}/review")
def review_form(finding_id: RowId, request: Request, s: SessionDep, who: WebUser, form: FormDep) -> Response:
    check_csrf(who, form, s, "review")
    f = service.finding(s, who.principal, finding_id, "web")  # NotFound (404) for another patient's finding too
    outcome, note = form.get("outcome", ""), form.get("note", "")
    try:
        with service.attempt(s):
            service.review(s, knowledge(request), who.principal, finding_id, outcome, note, "web")
    except ValueError as exc:  # ReviewError, or a hold the review could not record
        if f.state not in ("open", "info"):  # already reviewed (double submit, two clinicians): no form to mark
            return error_page(request, 400, str(exc))
        ctx = _patient_context(request, s, who.principal, f.patient_id)
        # The error sits on the field it is about (no outcome, or "not relevant" without a reason),
        # and the form keeps what was chosen and typed.
        if not outcome:
            field, message = "outcome", "Choose what was done."
        elif outcome == "not-relevant" and not note.strip():
            field, message = "note", "A reason is needed when a finding is not relevant."
        else:
            field, message = "outcome", str(exc)
        ctx["errors"] = {f"review-{finding_id}": {field: message}}
        ctx["values"] = {f"review-{finding_id}": form}
        return render(request, "patient.html", who, 400, **ctx)
    back = form.get("next") or f"/patients/{f.patient_id}#findings"
    if not back.startswith("/") or back.startswith("//"):
        back = "/worklist"
    if back == f"/patients/{f.patient_id}#findings":
        done = service.REVIEW_OUTCOMES.get(outcome, outcome)
        return _redirect(request, who, f.patient_id, "findings", f"Recorded the review: {done}.")
    return RedirectResponse(back, status_code=303)


# ---------------------------------------------------------------- patient's own view
@router.get("/me")
def my_record(request: Request, s: SessionDep, who: WebUser) -> Response:
    """The patient's page in plain language (web/patient_view.py): the engine's dates and words."""
    user = who.principal
    if user.role != "patient" or user.patient_id is None:
        return RedirectResponse("/worklist", status_code=303)
    kb = knowledge(request)
    view = service.patient_page(s, kb, user, user.patient_id, "web")
    a = view.assessment
    today = date.today()
    medicine_notes = [f for f in a["findings"] if f["category"] in ("interaction", "dosing", "vaccine", "reproduction")]
    reported = request.query_params.get("reported") == "1"
    report_form = getattr(request.state, "report_form", None) or {"errors": {}, "values": {}}
    return render(
        request,
        "me.html",
        who,
        p=view.patient,
        a=a,
        next_test=patient_view.next_test(kb, a, today),
        treatment=a.get("treatment") or {"state": ""},
        results=patient_view.results(kb, view),
        medicines=[x for x in view.medicines if x.status in ("active", "draft")],
        notes=medicine_notes,
        red_flags=[label for key, label in patient_view.symptom_choices(kb) if key in kb.symptoms.items],
        symptom_choices=patient_view.symptom_choices(kb),
        how_bad=patient_view.HOW_BAD,
        emergency=kb.symptoms.emergency,
        my_reports=view.symptoms,
        reported=reported,
        report_advice=patient_view.report_advice(a, today) if reported else [],
        report_errors=report_form["errors"],
        report_values=report_form["values"],
        errors={},
        reminder_prefs=service.reminder_prefs(s, user, request.app.state.settings.reminders, "web"),
        # the letters written about them (the page's read of the record is audited once, above)
        letters=service.list_documents(s, user, user.patient_id, "web", record=False).documents,
    )


@router.post("/me/symptom")
def my_symptom(request: Request, s: SessionDep, who: WebUser, form: FormDep) -> Response:
    """The patient's symptom report: what, how bad, since when, in their words. A mistake brings the
    page back (400) with the message at the field and everything typed kept; nothing is saved."""
    check_csrf(who, form, s, "report-symptom (patient view)", who.principal.patient_id)
    try:
        with service.attempt(s):
            service.report_my_symptom(
                s, knowledge(request), who.principal, form.get("symptom", ""), form.get("how_bad", ""),
                form.get("since"), form.get("details", ""), "web",
            )  # fmt: skip
    except service.FormError as exc:
        request.state.report_form = {"errors": {exc.field: exc.message}, "values": form}
        page = my_record(request, s, who)
        page.status_code = 400
        return page
    return RedirectResponse("/me?reported=1", status_code=303)


@router.post("/me/reminders")
def my_reminders(request: Request, s: SessionDep, who: WebUser, form: FormDep) -> Response:
    """The patient chooses how to be reminded of blood tests, or opts out (_reminder_prefs.html)."""
    check_csrf(who, form, s, "reminder-prefs (patient view)", who.principal.patient_id)
    config = request.app.state.settings.reminders
    try:
        with service.attempt(s):
            service.set_reminder_prefs(s, who.principal, config, form.get("channel", ""), form.get("email", ""), "web")
    except service.FormError as exc:  # the page again, the error on its field, the choice kept
        request.state.reminder_form = {"errors": {exc.field: exc.message}, "values": form}
        page = my_record(request, s, who)
        page.status_code = 400
        return page
    return RedirectResponse("/me?reminders=saved#reminders", status_code=303)


@router.get("/me/next-test.ics")
def my_ics(request: Request, s: SessionDep, who: WebUser) -> Response:
    pid = service.own_record(
        s, who.principal, "calendar file (patient view)", "only patients have a personal calendar file"
    )
    view = service.patient_page(s, knowledge(request), who.principal, pid, "web")
    dues = [g["next_due"] for g in view.assessment["monitoring"]["groups"] if g["next_due"]]
    if not dues:
        return error_page(request, 404, "No blood test is scheduled.")
    due = date.fromisoformat(min(dues))
    settings = request.app.state.settings
    stamp = datetime.utcnow().strftime("%Y%m%dT%H%M%SZ")
    body = "\r\n".join(
        [
            "BEGIN:VCALENDAR",
            "VERSION:2.0",
            "PRODID:-//azaguard//next blood test//EN",
            "BEGIN:VEVENT",
            f"UID:azaguard-{pid}-{due.isoformat()}@azaguard",
            f"DTSTAMP:{stamp}",
            f"DTSTART;VALUE=DATE:{due.strftime('%Y%m%d')}",
            f"DTEND;VALUE=DATE:{(due + timedelta(days=1)).strftime('%Y%m%d')}",
            "SUMMARY:Azathioprine blood test due",
            f"DESCRIPTION:Blood test for azathioprine monitoring. Questions: {settings.clinic_phone}",
            "END:VEVENT",
            "END:VCALENDAR",
            "",
        ]
    )
    return Response(
        body, media_type="text/calendar", headers={"Content-Disposition": 'attachment; filename="next-blood-test.ics"'}
    )


@router.get("/guide")
def guide(request: Request, who: WebUser) -> HTMLResponse:
    kb = knowledge(request)
    article = kb.guide_article
    published = day_month_year(article.published) if article else ""
    return render(
        request, "guide.html", who, sections=kb.guide, sources=kb.sources, article=article, published=published
    )


@router.get("/sources")
def sources_page(request: Request) -> HTMLResponse:
    """The knowledge's sources, one anchor per key: where a CDS card's source link leads. Public,
    like a guideline's reference list: knowledge, no patient data."""
    kb = knowledge(request)
    return render(request, "sources.html", None, sources=kb.sources, version=kb.version)


# ---------------------------------------------------------------- admin
@router.get("/quarantine")
def quarantine_page(request: Request, s: SessionDep, who: WebUser) -> HTMLResponse:
    state = request.query_params.get("state", "open")
    found = service.list_quarantine(s, who.principal, state, 300, "web")
    return render(
        request, "quarantine.html", who, items=found.items, state=state, message=request.query_params.get("msg")
    )


@router.post("/quarantine/{item_id}/{verb}")
def quarantine_action(
    item_id: RowId,
    verb: str,
    request: Request,
    s: SessionDep,
    who: WebUser,
    form: FormDep,
) -> Response:
    check_csrf(who, form, s, "quarantine action")
    try:
        with service.attempt(s):
            if verb == "reprocess":
                result = service.reprocess(s, knowledge(request), who.principal, item_id, "web")
                counts = result.model_dump(exclude={"state"})
                msg = f"Re-processed: {counts}"
            elif verb == "discard":
                service.discard_quarantine(s, who.principal, item_id, form.get("reason", ""), "web")
                msg = "Discarded."
            else:
                return error_page(request, 404, "No such action.")
    except (ValueError, service.NotFound) as exc:
        msg = str(exc)
    return RedirectResponse(f"/quarantine?msg={quote(msg)}", status_code=303)


# The audit log's pages (/audit, /audit.csv) are in azaguard.web.admin.


@router.get("/import")
def import_page(request: Request, s: SessionDep, who: WebUser) -> HTMLResponse:
    service.require_role(s, who.principal, ("clinician", "admin"), "import", "web")
    return render(request, "import.html", who, summary=None, error=None)


@router.post("/import")
async def import_upload(request: Request) -> Response:
    # The database work runs on a worker thread, like every other route: never on the event loop.
    # Who is asking is checked before the upload is read (no session: the login page; not a
    # clinician or admin: 403); starlette's multipart parser then spools the file to a temporary
    # file on disk (over 1 MB), which the import reads and which is deleted when the form closes.
    who = await run_in_threadpool(_import_identity, request)
    async with request.form() as form:
        upload = form.get("file")
        file = upload.file if isinstance(upload, UploadFile) else io.BytesIO()
        name = (upload.filename if isinstance(upload, UploadFile) else None) or "upload"
        csrf = str(form.get("csrf", ""))
        return await run_in_threadpool(_import_upload, request, who, csrf, name, file)


def _import_identity(request: Request) -> WebIdentity:
    with database(request).session() as s:
        who = web_identity(request, s)  # the dependency's check, called before the form is read
        service.may_import(s, who.principal, "web")
        return who


def _import_upload(request: Request, who: WebIdentity, csrf: str, name: str, file: IO[bytes]) -> Response:
    with database(request).session() as s:
        check_csrf(who, {"csrf": csrf}, s, "import")
        try:
            summary = service.import_upload(s, knowledge(request), who.principal, file, None, name, "web")
        except ValueError as exc:  # not UTF-8, empty, an unknown format
            return render(request, "import.html", who, 400, summary=None, error=str(exc))
        return render(request, "import.html", who, summary=summary.model_dump(), error=None)
