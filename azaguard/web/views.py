"""Server-rendered pages: login, worklist, patient page and forms, patient view, guide, admin pages.

No front-end build step: Jinja2 templates and one stylesheet, charts drawn server-side as SVG.
Every POST carries the session's CSRF token; a bad form comes back with the field marked and
explained, and its part of the unit of work is rolled back, so nothing is saved half-way.
Each route calls use cases in azaguard.service and renders the view models they return.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from azaguard import service
from azaguard.deps import COOKIE, LoginRequired, SessionDep, WebUser, database, knowledge
from azaguard.knowledge import Knowledge
from azaguard.service_models import ObservationOut, PatientPage, Principal, WebIdentity, WorklistQuery

TEMPLATES = Jinja2Templates(directory=str(FilePath(__file__).resolve().parent / "templates"))
LOGIN_CSRF = "azaguard_login_csrf"
router = APIRouter(include_in_schema=False)
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


def check_csrf(who: WebIdentity, form: dict[str, str]) -> None:
    if not secrets.compare_digest(form.get("csrf", ""), who.csrf):
        raise service.Denied("the form has expired or did not come from this site; reload the page and try again")


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
    if not cookie or not secrets.compare_digest(cookie, form.get("login_csrf", "")):
        return render(
            request, "login.html", None, 400, login_csrf=cookie, error="Please reload the page and try again."
        )
    try:
        client = request.client.host if request.client else None
        done = service.open_web_session(s, form.get("username", ""), form.get("password", ""), client)
    except service.LoginLocked:
        message = "Too many failed logins. Try again in 15 minutes."
        return render(request, "login.html", None, 429, login_csrf=cookie, error=message)
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


@router.post("/logout")
def logout(request: Request, s: SessionDep, who: WebUser, form: FormDep) -> Response:
    check_csrf(who, form)
    service.close_web_session(s, who.principal, request.cookies.get(COOKIE))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE)
    return resp


@router.get("/")
def home(who: WebUser) -> Response:
    return RedirectResponse("/me" if who.principal.role == "patient" else "/worklist", status_code=303)


# ---------------------------------------------------------------- clinic
@router.get("/worklist")
def worklist_page(request: Request, s: SessionDep, who: WebUser) -> HTMLResponse:
    q = request.query_params
    if any("\x00" in v for v in q.values()):
        raise HTTPException(400, "search fields must not contain NUL characters")
    flt = WorklistQuery(
        severity=q.get("severity") or None,
        category=q.get("category") or None,
        indication=q.get("indication") or None,
        team=q.get("team") or None,
        search=q.get("q") or None,
        limit=200,
    )
    page = service.worklist(s, who.principal, flt, "web")
    kb = knowledge(request)
    return render(
        request,
        "worklist.html",
        who,
        entries=page.entries,
        total=page.total,
        flt=flt,
        categories=sorted({f.category for f in kb.findings.values()} | {"lab", "trend", "interaction"}),
        indications=kb.indications,
    )


def _patient_context(request: Request, s: Session, who: Principal, patient_id: int) -> dict[str, Any]:
    kb = knowledge(request)
    view = service.patient_page(s, kb, who, patient_id, "web")
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
        "outcomes": service.REVIEW_OUTCOMES,
        "symptoms": kb.symptoms.items,
        "errors": {},
        "values": {},
        "sources_of": {f["code"]: f["sources"] for f in a["findings"]},
    }


@router.get("/patients/{patient_id}")
def patient_page(patient_id: PatientId, request: Request, s: SessionDep, who: WebUser) -> Response:
    if who.principal.role == "patient" and who.principal.patient_id == patient_id:
        return RedirectResponse("/me", 303)
    # patient_page authorises: another patient's page is refused and audited
    ctx = _patient_context(request, s, who.principal, patient_id)
    return render(request, "patient.html", who, **ctx)


@router.get("/patients/{patient_id}/charts.svg")
def patient_charts(patient_id: PatientId, request: Request, s: SessionDep, who: WebUser) -> Response:
    from azaguard.web.charts import patient_chart_svg

    data = service.chart_data(s, who.principal, patient_id, "web")
    svg = patient_chart_svg(knowledge(request), data.labs, data.doses)
    return Response(svg, media_type="image/svg+xml")


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


FORMS: dict[str, FormAction] = {
    "lab": _lab,
    "dose": _dose,
    "medicine": _medicine,
    "vaccine": _vaccine,
    "symptom": _symptom,
    "hold": _hold,
    "follow-up": _follow_up,
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
    check_csrf(who, form)
    if form_name == "team":
        try:
            with service.attempt(s):
                service.set_team(s, who.principal, patient_id, form.get("team", ""), "web")
        except service.FormError as exc:  # only a hand-made request can send another value: a 400, not a 500
            return error_page(request, 400, f"{exc.field}: {exc.message}")
        return RedirectResponse(f"/patients/{patient_id}#summary", status_code=303)
    if form_name not in FORMS:
        return error_page(request, 404, "No such form.")
    action = FORMS[form_name]
    try:
        with service.attempt(s):  # a bad form rolls back to here: nothing is saved half-way
            action(s, knowledge(request), who.principal, patient_id, form)
    except service.FormError as exc:
        ctx = _patient_context(request, s, who.principal, patient_id)
        ctx["errors"] = {form_name: {exc.field: exc.message}}
        ctx["values"] = {form_name: form}
        return render(request, "patient.html", who, 400, **ctx)
    return RedirectResponse(f"/patients/{patient_id}#{AFTER.get(form_name, 'findings')}", status_code=303)


@router.post("/findings/{finding_id}/review")
def review_form(finding_id: RowId, request: Request, s: SessionDep, who: WebUser, form: FormDep) -> Response:
    check_csrf(who, form)
    f = service.finding(s, finding_id)
    if f is None:
        return error_page(request, 404, "No such finding.")
    try:
        with service.attempt(s):
            outcome, note = form.get("outcome", ""), form.get("note", "")
            service.review(s, knowledge(request), who.principal, finding_id, outcome, note, "web")
    except ValueError as exc:  # ReviewError, or a hold the review could not record
        if f.state not in ("open", "info"):  # already reviewed (double submit, two clinicians): no form to mark
            return error_page(request, 400, str(exc))
        ctx = _patient_context(request, s, who.principal, f.patient_id)
        ctx["errors"] = {f"review-{finding_id}": {"outcome": str(exc)}}
        return render(request, "patient.html", who, 400, **ctx)
    back = form.get("next") or f"/patients/{f.patient_id}#findings"
    return RedirectResponse(
        back if back.startswith("/") and not back.startswith("//") else "/worklist", status_code=303
    )


# ---------------------------------------------------------------- patient's own view
def _plain_result(kb: Knowledge, analyte: str, value: float) -> str:
    for t in kb.thresholds:
        if t.analyte == analyte and (
            (t.comparator == "<" and value < t.value) or (t.comparator == ">" and value > t.value)
        ):
            return t.patient_text
    return "Within the range that is safe on azathioprine."


def _my_results(kb: Knowledge, view: PatientPage) -> list[dict[str, Any]]:
    """The latest FBC, liver and kidney results, each with what it means, in plain language."""
    latest: dict[str, ObservationOut] = {}
    for o in view.labs:
        latest[o.analyte or ""] = o
    return [
        {
            "label": kb.analytes[k].label,
            "value": o.value,
            "unit": o.unit,
            "date": o.date,
            "meaning": _plain_result(kb, k, o.value or 0.0),
        }
        for k, o in latest.items()
        if k in kb.analytes and kb.analytes[k].group in ("FBC", "LFT", "renal") and o.value is not None
    ]


@router.get("/me")
def my_record(request: Request, s: SessionDep, who: WebUser) -> Response:
    user = who.principal
    if user.role != "patient" or user.patient_id is None:
        return RedirectResponse("/worklist", status_code=303)
    kb = knowledge(request)
    view = service.patient_page(s, kb, user, user.patient_id, "web")
    a = view.assessment
    groups = [g for g in a["monitoring"]["groups"] if g["next_due"]]
    next_due = min((g["next_due"] for g in groups), default=None)
    # The next test may be a repeat a finding asked for, earlier than the schedule alone
    next_is_repeat = any(g.get("due_reason") == "follow-up" for g in groups if g["next_due"] == next_due)
    medicine_notes = [f for f in a["findings"] if f["category"] in ("interaction", "dosing", "vaccine", "reproduction")]
    return render(
        request,
        "me.html",
        who,
        p=view.patient,
        a=a,
        next_due=next_due,
        next_is_repeat=next_is_repeat,
        next_overdue=next_due is not None and next_due < date.today().isoformat(),
        treatment=a.get("treatment") or {"state": ""},
        results=_my_results(kb, view),
        medicines=[x for x in view.medicines if x.status in ("active", "draft")],
        notes=medicine_notes,
        symptoms=kb.symptoms.items,
        my_reports=view.symptoms,
        reported=request.query_params.get("reported") == "1",
        errors={},
    )


@router.post("/me/symptom")
def my_symptom(request: Request, s: SessionDep, who: WebUser, form: FormDep) -> Response:
    check_csrf(who, form)
    pid = service.own_record(s, who.principal, "report-symptom (patient view)", "only patients report symptoms here")
    try:
        with service.attempt(s):
            symptom, when = form.get("symptom", ""), form.get("date") or date.today()
            service.report_symptom(s, knowledge(request), who.principal, pid, symptom, when, "web")
    except service.FormError as exc:
        return error_page(request, 400, f"{exc.field}: {exc.message}")
    return RedirectResponse("/me?reported=1", status_code=303)


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
    return render(request, "guide.html", who, sections=kb.guide, cite=kb.cite)


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
    item_id: int,
    verb: str,
    request: Request,
    s: SessionDep,
    who: WebUser,
    form: FormDep,
) -> Response:
    check_csrf(who, form)
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


@router.get("/audit")
def audit_page(request: Request, s: SessionDep, who: WebUser) -> HTMLResponse:
    found = service.audit_log(s, who.principal, None, 500, "web")
    return render(request, "audit.html", who, events=found.events)


@router.get("/import")
def import_page(request: Request, s: SessionDep, who: WebUser) -> HTMLResponse:
    service.require_role(s, who.principal, ("clinician", "admin"), "import", "web")
    return render(request, "import.html", who, summary=None, error=None)


@router.post("/import")
async def import_upload(request: Request) -> Response:
    form = await request.form()
    upload = form.get("file")
    data = await upload.read() if isinstance(upload, UploadFile) else b""
    name = (upload.filename if isinstance(upload, UploadFile) else None) or "upload"
    csrf = str(form.get("csrf", ""))
    # The database work runs on a worker thread, like every other route: never on the event loop.
    return await run_in_threadpool(_import_upload, request, csrf, name, data)


def _import_upload(request: Request, csrf: str, name: str, data: bytes) -> Response:
    with database(request).session() as s:
        who = service.web_identity(s, request.cookies.get(COOKIE))
        if who is None:
            raise LoginRequired()
        check_csrf(who, {"csrf": csrf})
        service.require_role(s, who.principal, ("clinician", "admin"), "import", "web")
        try:
            text = data.decode("utf-8")
            summary = service.import_text(s, knowledge(request), who.principal, text, None, name, "web")
        except ValueError as exc:  # not UTF-8, empty, an unknown format
            return render(request, "import.html", who, 400, summary=None, error=str(exc))
        return render(request, "import.html", who, summary=summary.model_dump(), error=None)
