"""Server-rendered pages: login, worklist, patient page and forms, patient view, guide, admin pages.

No front-end build step: Jinja2 templates and one stylesheet, charts drawn server-side as SVG.
Every POST carries the session's CSRF token; a bad form comes back with the field marked and
explained, and the transaction is rolled back, so nothing is saved half-way.
"""

from __future__ import annotations

import secrets
from datetime import date, datetime, timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

from azaguard import auth, service
from azaguard import worklist as wl
from azaguard.app import session_dep
from azaguard.audit import audit
from azaguard.knowledge import Knowledge
from azaguard.store import models as m
from azaguard.store.writes import FormError

TEMPLATES = Jinja2Templates(directory=str(FilePath(__file__).resolve().parent / "templates"))
COOKIE = "azaguard_session"
LOGIN_CSRF = "azaguard_login_csrf"
router = APIRouter(include_in_schema=False)


class LoginRequired(Exception):
    pass


# scope="function": commit before the response is sent, so the page a redirect leads to sees the write
# (FastAPI's default "request" scope commits after the response: a POST-redirect-GET could read stale data).
SessionDep = Annotated[Session, Depends(session_dep, scope="function")]
# Row ids are 32-bit INTEGER columns: a larger id is a 422, never a database overflow (a 500).
PatientId = Annotated[int, Path(ge=1, le=2**31 - 1)]
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _kb(request: Request) -> Knowledge:
    return request.app.state.kb


def _base(request: Request, user: m.User | None, ws: m.WebSession | None, **ctx: Any) -> dict[str, Any]:
    return {
        "request": request,
        "user": user,
        "csrf": ws.csrf_token if ws else "",
        "settings": request.app.state.settings,
        "knowledge_version": _kb(request).version,
        "today": date.today(),
        **ctx,
    }


def render(
    request: Request, name: str, user: m.User | None, ws: m.WebSession | None, status: int = 200, **ctx: Any
) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, name, _base(request, user, ws, **ctx), status_code=status)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request, "error.html", _base(request, None, None, status=status, message=message), status_code=status
    )


def current(request: Request, s: Session) -> tuple[m.User, m.WebSession]:
    found = auth.session_user(s, request.cookies.get(COOKIE))
    if found is None:
        raise LoginRequired()
    return found


async def form_data(request: Request) -> dict[str, str]:
    form = await request.form()
    data = {k: v if isinstance(v, str) else "" for k, v in form.items()}
    if any("\x00" in v for v in data.values()):
        raise HTTPException(400, "form fields must not contain NUL characters")
    return data


FormDep = Annotated[dict[str, str], Depends(form_data)]


def check_csrf(ws: m.WebSession, form: dict[str, str]) -> None:
    if not secrets.compare_digest(form.get("csrf", ""), ws.csrf_token):
        raise service.Denied("the form has expired or did not come from this site; reload the page and try again")


# ---------------------------------------------------------------- login
@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    resp = render(request, "login.html", None, None, login_csrf=token, error=None)
    resp.set_cookie(
        LOGIN_CSRF, token, httponly=True, samesite="strict", secure=request.app.state.settings.secure_cookies
    )
    return resp


@router.post("/login")
def login(request: Request, s: SessionDep, form: FormDep) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF, "")
    if not cookie or not secrets.compare_digest(cookie, form.get("login_csrf", "")):
        return render(
            request, "login.html", None, None, 400, login_csrf=cookie, error="Please reload the page and try again."
        )
    username = form.get("username", "").strip()
    if auth.login_locked(s, username):
        audit(s, None, "login-locked", "web-login", detail=f"username {username[:40]}")
        message = "Too many failed logins. Try again in 15 minutes."
        return render(request, "login.html", None, None, 429, login_csrf=cookie, error=message)
    user = auth.authenticate(s, username, form.get("password", ""))
    if user is None:
        audit(s, None, "login-failed", "web-login", detail=f"username {username[:40]}")
        return render(request, "login.html", None, None, 401, login_csrf=cookie, error="Wrong username or password.")
    token, _ = auth.create_session(s, user)
    audit(s, user, "login", "web-login")
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=request.app.state.settings.secure_cookies,
        max_age=auth.SESSION_HOURS * 3600,
    )
    resp.delete_cookie(LOGIN_CSRF)
    return resp


@router.post("/logout")
def logout(request: Request, s: SessionDep, form: FormDep) -> Response:
    user, ws = current(request, s)
    check_csrf(ws, form)
    auth.end_session(s, request.cookies.get(COOKIE))
    audit(s, user, "logout", "web-login")
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE)
    return resp


@router.get("/")
def home(request: Request, s: SessionDep) -> Response:
    user, _ = current(request, s)
    return RedirectResponse("/me" if user.role == "patient" else "/worklist", status_code=303)


# ---------------------------------------------------------------- clinic
@router.get("/worklist")
def worklist_page(request: Request, s: SessionDep) -> HTMLResponse:
    user, ws = current(request, s)
    service.require_role(s, user, ("clinician", "admin"), "worklist", "web")
    q = request.query_params
    if any("\x00" in v for v in q.values()):
        raise HTTPException(400, "search fields must not contain NUL characters")
    flt = wl.WorklistFilter(
        severity=q.get("severity") or None,
        category=q.get("category") or None,
        indication=q.get("indication") or None,
        team=q.get("team") or None,
        search=q.get("q") or None,
        limit=200,
    )
    entries, total = wl.worklist(s, flt)
    audit(s, user, "read", f"worklist ({len(entries)})")
    kb = _kb(request)
    return render(
        request,
        "worklist.html",
        user,
        ws,
        entries=entries,
        total=total,
        flt=flt,
        categories=sorted({f.category for f in kb.findings.values()} | {"lab", "trend", "interaction"}),
        indications=kb.indications,
    )


def _patient_context(request: Request, s: Session, user: m.User, patient_id: int) -> dict[str, Any]:
    kb = _kb(request)
    view = service.patient_view(s, kb, user, patient_id, "web")
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
    indication = next(
        (
            c
            for c in s.scalars(select(m.Condition).where(m.Condition.patient_id == patient_id))
            if c.key in kb.indications
        ),
        None,
    )
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
        # From the store, not the assessment: whether the hold form applies (an active row to withhold)
        "aza_active": any(x.status == "active" for x in aza),
        "aza_on_hold": any(x.status == "on-hold" for x in aza),
        "age": age,
        "indication": kb.indications[indication.key].label if indication and indication.key else None,
        "interactions": interaction_by_med,
        "analytes": {
            k: v for k, v in kb.analytes.items() if v.group in ("FBC", "LFT", "renal", "vitals", "metabolites")
        },
        "outcomes": wl.REVIEW_OUTCOMES,
        "symptoms": kb.symptoms.items,
        "errors": {},
        "values": {},
        "sources_of": {f["code"]: f["sources"] for f in a["findings"]},
    }


@router.get("/patients/{patient_id}")
def patient_page(patient_id: PatientId, request: Request, s: SessionDep) -> HTMLResponse:
    user, ws = current(request, s)
    if user.role == "patient" and user.patient_id == patient_id:
        return RedirectResponse("/me", 303)  # type: ignore[return-value]
    ctx = _patient_context(request, s, user, patient_id)  # authorises: another patient's page is refused and audited
    return render(request, "patient.html", user, ws, **ctx)


@router.get("/patients/{patient_id}/charts.svg")
def patient_charts(patient_id: PatientId, request: Request, s: SessionDep) -> Response:
    from azaguard.web.charts import patient_chart_svg

    user, _ = current(request, s)
    service.authorise_patient(s, user, patient_id, "view-charts", "web")
    labs = list(
        s.scalars(
            select(m.Observation).where(
                m.Observation.patient_id == patient_id, m.Observation.current.is_(True), m.Observation.kind == "lab"
            )
        )
    )
    meds = list(
        s.scalars(
            select(m.Medication).where(m.Medication.patient_id == patient_id, m.Medication.drug == "azathioprine")
        )
    )
    svg = patient_chart_svg(_kb(request), labs, meds)
    return Response(svg, media_type="image/svg+xml")


def _lab(s: Session, kb: Knowledge, u: m.User, pid: int, f: dict[str, str]) -> Any:
    return service.add_lab(s, kb, u, pid, f.get("analyte", ""), f.get("value"), f.get("unit", ""), f.get("date"), "web")


def _dose(s: Session, kb: Knowledge, u: m.User, pid: int, f: dict[str, str]) -> Any:
    return service.change_dose(s, kb, u, pid, f.get("mg_per_day"), f.get("start"), "web")


def _medicine(s: Session, kb: Knowledge, u: m.User, pid: int, f: dict[str, str]) -> Any:
    name, status = f.get("name", ""), f.get("status", "active")
    return service.add_medicine(s, kb, u, pid, name, status, f.get("start"), f.get("mg_per_day"), "web")


def _vaccine(s: Session, kb: Knowledge, u: m.User, pid: int, f: dict[str, str]) -> Any:
    return service.add_vaccine(s, kb, u, pid, f.get("name", ""), f.get("status", ""), f.get("date"), "web")


def _symptom(s: Session, kb: Knowledge, u: m.User, pid: int, f: dict[str, str]) -> Any:
    return service.report_symptom(s, kb, u, pid, f.get("symptom", ""), f.get("date"), "web")


def _hold(s: Session, kb: Knowledge, u: m.User, pid: int, f: dict[str, str]) -> Any:
    return service.hold_azathioprine(s, kb, u, pid, f.get("reason", ""), f.get("start") or None, "web")


def _follow_up(s: Session, kb: Knowledge, u: m.User, pid: int, f: dict[str, str]) -> Any:
    return service.dismiss_follow_up(s, kb, u, pid, f.get("key", ""), f.get("reason", ""), "web")


FORMS = {
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
    form: FormDep,
) -> Response:
    user, ws = current(request, s)
    check_csrf(ws, form)
    if form_name == "team":
        service.require_role(s, user, ("clinician", "admin"), "set-team", "web", patient_id)
        service.authorise_patient(s, user, patient_id, "set-team", "web", write=True)
        from azaguard.store.writes import set_team

        try:
            with s.begin_nested():
                set_team(s, patient_id, form.get("team", ""))
        except FormError as exc:  # only a hand-made request can send another value: a 400, not a 500
            return error_page(request, 400, f"{exc.field}: {exc.message}")
        return RedirectResponse(f"/patients/{patient_id}#summary", status_code=303)
    if form_name not in FORMS:
        return error_page(request, 404, "No such form.")
    action = FORMS[form_name]
    try:
        with s.begin_nested():  # a bad form rolls back to here: nothing is saved half-way
            action(s, _kb(request), user, patient_id, form)
    except FormError as exc:
        ctx = _patient_context(request, s, user, patient_id)
        ctx["errors"] = {form_name: {exc.field: exc.message}}
        ctx["values"] = {form_name: form}
        return render(request, "patient.html", user, ws, 400, **ctx)
    return RedirectResponse(f"/patients/{patient_id}#{AFTER.get(form_name, 'findings')}", status_code=303)


@router.post("/findings/{finding_id}/review")
def review_form(finding_id: RowId, request: Request, s: SessionDep, form: FormDep) -> Response:
    user, ws = current(request, s)
    check_csrf(ws, form)
    f = s.get(m.FindingRow, finding_id)
    if f is None:
        return error_page(request, 404, "No such finding.")
    try:
        with s.begin_nested():
            service.review(s, _kb(request), user, finding_id, form.get("outcome", ""), form.get("note", ""), "web")
    except (wl.ReviewError, ValueError) as exc:
        if f.state not in ("open", "info"):  # already reviewed (double submit, two clinicians): no form to mark
            return error_page(request, 400, str(exc))
        ctx = _patient_context(request, s, user, f.patient_id)
        ctx["errors"] = {f"review-{finding_id}": {"outcome": str(exc)}}
        return render(request, "patient.html", user, ws, 400, **ctx)
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


@router.get("/me")
def my_record(request: Request, s: SessionDep) -> Response:
    user, ws = current(request, s)
    if user.role != "patient" or user.patient_id is None:
        return RedirectResponse("/worklist", status_code=303)
    kb = _kb(request)
    view = service.patient_view(s, kb, user, user.patient_id, "web")
    a = view.assessment
    latest: dict[str, m.Observation] = {}
    for o in view.labs:
        latest[o.analyte or ""] = o
    results = [
        {
            "label": kb.analytes[k].label,
            "value": o.value,
            "unit": o.unit,
            "date": o.effective,
            "meaning": _plain_result(kb, k, o.value or 0.0),
        }
        for k, o in latest.items()
        if k in kb.analytes and kb.analytes[k].group in ("FBC", "LFT", "renal") and o.value is not None
    ]
    groups = [g for g in a["monitoring"]["groups"] if g["next_due"]]
    next_due = min((g["next_due"] for g in groups), default=None)
    # The next test may be a repeat a finding asked for, earlier than the schedule alone
    next_is_repeat = any(g.get("due_reason") == "follow-up" for g in groups if g["next_due"] == next_due)
    medicine_notes = [f for f in a["findings"] if f["category"] in ("interaction", "dosing", "vaccine", "reproduction")]
    return render(
        request,
        "me.html",
        user,
        ws,
        p=view.patient,
        a=a,
        next_due=next_due,
        next_is_repeat=next_is_repeat,
        next_overdue=next_due is not None and next_due < date.today().isoformat(),
        treatment=a.get("treatment") or {"state": ""},
        results=results,
        medicines=[x for x in view.medicines if x.status in ("active", "draft")],
        notes=medicine_notes,
        symptoms=kb.symptoms.items,
        my_reports=view.symptoms,
        reported=request.query_params.get("reported") == "1",
        errors={},
    )


@router.post("/me/symptom")
def my_symptom(request: Request, s: SessionDep, form: FormDep) -> Response:
    user, ws = current(request, s)
    check_csrf(ws, form)
    if user.role != "patient" or user.patient_id is None:
        audit(s, user, "denied", "report-symptom (patient view)")
        s.commit()
        raise service.Denied("only patients report symptoms here")
    try:
        with s.begin_nested():
            service.report_symptom(
                s, _kb(request), user, user.patient_id, form.get("symptom", ""), form.get("date") or date.today(), "web"
            )
    except FormError as exc:
        return error_page(request, 400, f"{exc.field}: {exc.message}")
    return RedirectResponse("/me?reported=1", status_code=303)


@router.get("/me/next-test.ics")
def my_ics(request: Request, s: SessionDep) -> Response:
    user, _ = current(request, s)
    if user.role != "patient" or user.patient_id is None:
        audit(s, user, "denied", "calendar file (patient view)")
        s.commit()
        raise service.Denied("only patients have a personal calendar file")
    view = service.patient_view(s, _kb(request), user, user.patient_id, "web")
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
            f"UID:azaguard-{user.patient_id}-{due.isoformat()}@azaguard",
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
def guide(request: Request, s: SessionDep) -> HTMLResponse:
    user, ws = current(request, s)
    kb = _kb(request)
    return render(request, "guide.html", user, ws, sections=kb.guide, cite=kb.cite)


# ---------------------------------------------------------------- admin
@router.get("/quarantine")
def quarantine_page(request: Request, s: SessionDep) -> HTMLResponse:
    user, ws = current(request, s)
    service.require_role(s, user, ("admin",), "quarantine", "web")
    state = request.query_params.get("state", "open")
    items = list(
        s.scalars(
            select(m.QuarantineItem)
            .where(m.QuarantineItem.state == state)
            .order_by(m.QuarantineItem.id.desc())
            .limit(300)
        )
    )
    audit(s, user, "read", "quarantine")
    return render(
        request, "quarantine.html", user, ws, items=items, state=state, message=request.query_params.get("msg")
    )


@router.post("/quarantine/{item_id}/{verb}")
def quarantine_action(
    item_id: int,
    verb: str,
    request: Request,
    s: SessionDep,
    form: FormDep,
) -> Response:
    user, ws = current(request, s)
    check_csrf(ws, form)
    try:
        with s.begin_nested():
            if verb == "reprocess":
                summary = service.reprocess_quarantine(s, _kb(request), user, item_id, "web")
                msg = f"Re-processed: {summary.as_dict()}"
            elif verb == "discard":
                service.discard_quarantine(s, user, item_id, form.get("reason", ""), "web")
                msg = "Discarded."
            else:
                return error_page(request, 404, "No such action.")
    except (ValueError, service.NotFound) as exc:
        msg = str(exc)
    from urllib.parse import quote

    return RedirectResponse(f"/quarantine?msg={quote(msg)}", status_code=303)


@router.get("/audit")
def audit_page(request: Request, s: SessionDep) -> HTMLResponse:
    user, ws = current(request, s)
    service.require_role(s, user, ("admin",), "audit-log", "web")
    events = list(s.scalars(select(m.AuditEvent).order_by(m.AuditEvent.id.desc()).limit(500)))
    return render(request, "audit.html", user, ws, events=events)


@router.get("/import")
def import_page(request: Request, s: SessionDep) -> HTMLResponse:
    user, ws = current(request, s)
    service.require_role(s, user, ("clinician", "admin"), "import", "web")
    return render(request, "import.html", user, ws, summary=None, error=None)


@router.post("/import")
async def import_upload(request: Request) -> Response:
    from azaguard.ingest import FormatError, parse_text

    form = await request.form()
    upload = form.get("file")
    data = await upload.read() if upload is not None and hasattr(upload, "read") else b""
    db = request.app.state.db
    with db.session() as s:
        user, ws = current(request, s)
        check_csrf(ws, {"csrf": str(form.get("csrf", ""))})
        service.require_role(s, user, ("clinician", "admin"), "import", "web")
        name = getattr(upload, "filename", "upload") or "upload"
        try:
            text = data.decode("utf-8")
            parsed = parse_text(text, _kb(request), None, name)
            summary = service.import_parsed(s, _kb(request), user, parsed, name, "web")
        except (UnicodeDecodeError, FormatError) as exc:
            return render(request, "import.html", user, ws, 400, summary=None, error=str(exc))
        return render(request, "import.html", user, ws, summary=summary.as_dict(), error=None)
