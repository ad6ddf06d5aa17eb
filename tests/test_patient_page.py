"""The clinician's patient page (issue 8 items 2 and 3), on SQLite through the real app.

- Summary strip: the latest FBC, LFT and renal values with their dates, the weight, allergies, and a
  pregnancy banner when the record says so.
- Results grid: tests x dates, the latest date on the left; a cell is flagged exactly when the
  engine's lab checks flag that result as of its date; display names and units from the knowledge;
  "reported as" only when the number shown is not the number that arrived.
- Panel entry: one save stores a whole panel and re-assesses once; one bad field saves nothing and
  comes back on its field with everything typed kept.
- POST-redirect-GET: every save and review ends in a 303 to the patient page, which confirms what
  was saved once; a review error sits on the field it is about and keeps the choice.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from azaguard import auth, results_view, service
from azaguard import worklist as wl
from azaguard.app import create_app
from azaguard.fhirbuild import BundleBuilder
from azaguard.ingest import parse_text
from azaguard.knowledge import Knowledge
from azaguard.service_models import ObservationOut, Principal
from azaguard.store import models as m
from azaguard.store import writes
from azaguard.store.db import Database
from azaguard.web.views import COOKIE, FLASH

TODAY = date.today()
SERIAL = iter(range(1, 1000))


def ago(days: int) -> date:
    return TODAY - timedelta(days=days)


def day_text(day: date) -> str:
    """How a confirmation writes a date: 3 March (with the year when it is not this year)."""
    text = f"{day.day} {day.strftime('%B')}"
    return text if day.year == TODAY.year else f"{text} {day.year}"


@dataclass
class Clinic:
    db: Database
    kb: Knowledge
    web: TestClient
    csrf: str
    nurse: Principal

    def patient(self, name: str = "Pat Pagetest") -> int:
        with self.db.session() as s:
            p = writes.add_patient(s, f"PP-{next(SERIAL):04d}", name, "1965-04-03", "female")
            return p.id

    def labs(self, pid: int, when: date, **values: float | tuple[float, str]) -> None:
        """Results entered one by one (value in the canonical unit, or (value, unit)), then assessed."""
        with self.db.session() as s:
            for analyte, v in values.items():
                value, unit = v if isinstance(v, tuple) else (v, "")
                writes.add_lab(s, self.kb, pid, analyte, value, unit, when)
            wl.refresh_patient(s, self.kb, pid)

    def page(self, pid: int, query: str = "") -> str:
        r = self.web.get(f"/patients/{pid}{query}")
        assert r.status_code == 200, r.text[:300]
        return r.text

    def post(self, path: str, **data: str) -> Any:
        return self.web.post(path, data={"csrf": self.csrf, **data})

    def count(self, pid: int) -> int:
        with self.db.session() as s:
            q = select(func.count()).select_from(m.Observation).where(m.Observation.patient_id == pid)
            return int(s.scalar(q) or 0)


@pytest.fixture(scope="module")
def clinic(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory, kb: Knowledge) -> Iterator[Clinic]:
    path = tmp_path_factory.mktemp("patient-page") / "clinic.db"
    shutil.copy(sqlite_template, path)
    db = Database(f"sqlite:///{path}", create=False)
    with db.session() as s:
        user = auth.create_user(s, "pagenurse", "page-nurse-password", "clinician", display_name="Page Nurse")
        cookie, csrf = auth.create_session(s, user)
        nurse = service.principal_of(user)
    web = TestClient(create_app(db, kb), follow_redirects=False, cookies={COOKIE: cookie})
    yield Clinic(db, kb, web, csrf, nurse)
    db.engine.dispose()


def threshold(kb: Knowledge, analyte: str) -> Any:
    """The knowledge's threshold rule for a test (the test data follow it; none is invented here)."""
    (rule,) = [t for t in kb.thresholds if t.analyte == analyte]
    return rule


def beyond(rule: Any) -> float:
    """A value that crosses the rule's limit, and one well inside it."""
    return float(rule.value * 0.5 if rule.comparator == "<" else rule.value * 1.5)


def inside(rule: Any) -> float:
    return float(rule.value * 1.5 if rule.comparator == "<" else rule.value * 0.5)


def section(html: str, ident: str) -> str:
    start = html.index(f'id="{ident}"')
    end = html.find("</section>", start)
    return html[start:end]


def row(html: str, analyte: str) -> str:
    found = re.search(rf'<tr data-analyte="{analyte}"><th scope="row">.*?</tr>', section(html, "results"), re.S)
    assert found, f"no grid row for {analyte}"
    return found.group(0)


def cell(html: str, analyte: str, day: date) -> str:
    found = re.search(rf'<td data-date="{day.isoformat()}">(.*?)</td>', row(html, analyte), re.S)
    assert found, f"no {day} column in the {analyte} row"
    return found.group(1)


def strip_value(html: str, analyte: str) -> dict[str, str]:
    found = re.search(
        rf'<div class="value[^"]*" data-analyte="{analyte}" data-date="([^"]+)" data-flag="([^"]*)">.*?'
        r'<span class="num">([^<]+)</span> <span class="unit">([^<]+)</span>',
        section(html, "summary"),
        re.S,
    )
    assert found, f"{analyte} is not in the summary strip"
    day, flag, value, unit = found.groups()
    return {"date": day, "flag": flag, "value": value, "unit": unit}


# ---------------------------------------------------------------- summary strip
def test_summary_strip_shows_the_latest_value_and_date_of_every_test(clinic: Clinic, kb: Knowledge) -> None:
    pid = clinic.patient()
    old, new = ago(40), ago(5)
    clinic.labs(pid, old, wbc=5.0, neutrophils=3.0, platelets=250, haemoglobin=130, alt=20, albumin=40, creatinine=70)
    clinic.labs(pid, new, wbc=6.2, neutrophils=3.4, platelets=260, egfr=88, weight=72.5)
    html = clinic.page(pid)

    with clinic.db.session() as s:
        view = service.patient_page(s, kb, clinic.nurse, pid, "web")
    assert view.summary is not None
    latest = results_view.latest_results(view.labs)
    shown = {r.analyte: r for g in view.summary.groups for r in g.results}
    assert set(shown) == {k for k in latest if kb.analytes[k].group in kb.schedule.groups}
    for analyte, result in shown.items():
        assert (result.date, result.value) == (latest[analyte].date, results_view.num(latest[analyte].value or 0))
        in_page = strip_value(html, analyte)
        assert in_page["date"] == latest[analyte].date.isoformat()
        assert in_page["value"] == result.value
        assert in_page["unit"] == kb.display_unit(kb.analytes[analyte].canonical)
    assert strip_value(html, "wbc")["value"] == "6.2" and strip_value(html, "wbc")["date"] == new.isoformat()
    assert strip_value(html, "haemoglobin")["date"] == old.isoformat()  # older than its group's latest: own date
    groups = {g.key: g for g in view.summary.groups}
    assert [g.key for g in view.summary.groups] == kb.schedule.groups
    assert groups["FBC"].date == new and groups["LFT"].date == old and groups["renal"].date == new
    assert view.summary.weight is not None and view.summary.weight.value == "72.5"
    weight = section(html, "summary")
    assert "72.5" in weight[weight.index('id="latest-weight"') :]
    assert 'id="pregnancy-banner"' not in html
    assert "none recorded" in weight[weight.index('id="allergies"') :]


def test_pregnancy_banner_and_allergies_come_from_the_record(clinic: Clinic, kb: Knowledge) -> None:
    ident = f"PP-PREG-{next(SERIAL)}"
    b = BundleBuilder(ident, "1990-05-01", "female", "Petra Pregnant")
    b.pregnant(ago(20).isoformat())
    b.allergy("Penicillin")
    b.lab("751-8", 3.1, "10*9/L", ago(10).isoformat())
    with clinic.db.session() as s:
        text = json.dumps(b.bundle())
        service.import_parsed(s, kb, None, parse_text(text, kb, "fhir", "p.json"), "p.json", "cli")
        pid = s.scalar(select(m.Patient.id).where(m.Patient.identifier == ident))
    assert pid is not None
    html = clinic.page(pid)
    banner = re.search(r'<p id="pregnancy-banner".*?</p>', html, re.S)
    assert banner and "Pregnant" in banner.group(0) and ago(20).isoformat() in banner.group(0)
    allergies = section(html, "summary")
    assert "Penicillin" in allergies[allergies.index('id="allergies"') :]


# ---------------------------------------------------------------- results grid
def test_grid_has_dates_latest_first_and_rows_by_test_group(clinic: Clinic, kb: Knowledge) -> None:
    pid = clinic.patient()
    days = [ago(60), ago(30), ago(2)]
    for i, day in enumerate(days):
        clinic.labs(pid, day, wbc=5.0 + i, neutrophils=3.0 + i, platelets=200 + i, creatinine=70 + i)
    clinic.labs(pid, ago(30), alt=25)
    html = clinic.page(pid)
    grid = section(html, "results")
    heads = re.findall(r'<th scope="col" data-date="([^"]+)">', grid)
    assert heads == [d.isoformat() for d in sorted(days, reverse=True)]
    order = re.findall(r'<tr data-analyte="([^"]+)">', grid)
    assert order == ["wbc", "neutrophils", "platelets", "alt", "creatinine"]  # FBC, LFT, renal; knowledge order
    groups = re.findall(r'<tbody data-group="([^"]+)">', grid)
    assert groups == ["FBC", "LFT", "renal"]
    assert 'data-id="' in cell(html, "wbc", ago(2)) and ">7<" in cell(html, "wbc", ago(2))
    assert cell(html, "alt", ago(2)) == "" and ">25<" in cell(html, "alt", ago(30))
    assert ">Full blood count</th>" in grid and ">White cell count <span" in grid
    assert ">wbc<" not in grid  # names, never keys


def test_grid_shows_a_limited_number_of_dates_with_a_link_to_all(clinic: Clinic, kb: Knowledge) -> None:
    pid = clinic.patient()
    n = results_view.GRID_DATES + 2
    for i in range(n):
        clinic.labs(pid, ago(10 + i * 7), wbc=5.0)
    html = clinic.page(pid)
    assert len(re.findall(r'<th scope="col" data-date=', section(html, "results"))) == results_view.GRID_DATES
    assert f'href="/patients/{pid}?dates=all#results"' in html
    every = clinic.page(pid, "?dates=all")
    assert len(re.findall(r'<th scope="col" data-date=', section(every, "results"))) == n


def test_grid_flags_are_the_engines_on_each_date(clinic: Clinic, kb: Knowledge) -> None:
    neut, plt = threshold(kb, "neutrophils"), threshold(kb, "platelets")
    pid = clinic.patient()
    clinic.labs(pid, ago(50), neutrophils=beyond(neut), platelets=inside(plt))  # abnormal then
    clinic.labs(pid, ago(20), neutrophils=inside(neut), platelets=inside(plt))
    clinic.labs(pid, ago(3), neutrophils=beyond(neut), platelets=inside(plt))  # abnormal now
    html = clinic.page(pid)

    for day in (ago(50), ago(3)):
        flagged = cell(html, "neutrophils", day)
        assert f'data-flag="{neut.severity}"' in flagged and f"lab-{neut.id}" in flagged
    assert 'data-flag=""' in cell(html, "neutrophils", ago(20))
    for day in (ago(50), ago(20), ago(3)):
        assert 'data-flag=""' in cell(html, "platelets", day)
    assert strip_value(html, "neutrophils")["flag"] == neut.severity

    with clinic.db.session() as s:  # the latest flag is the finding the engine raised today, on that result
        view = service.patient_page(s, kb, clinic.nurse, pid, "web")
    (finding,) = [f for f in view.assessment["findings"] if f["code"] == f"lab-{neut.id}"]
    (cited,) = [int(e["id"]) for e in finding["evidence"] if e.get("type") == "lab"]
    assert f'data-id="{cited}" data-flag="{neut.severity}"' in cell(html, "neutrophils", ago(3))


def test_a_rise_flags_the_new_value_not_its_baseline(clinic: Clinic, kb: Knowledge) -> None:
    (rise,) = [r for r in kb.rises if r.analyte == "creatinine"]
    pid = clinic.patient()
    base = 70.0
    clinic.labs(pid, ago(10), creatinine=base)
    clinic.labs(pid, ago(2), creatinine=base * (1 + rise.rise_fraction * 2))
    html = clinic.page(pid)
    assert f'data-flag="{rise.severity}"' in cell(html, "creatinine", ago(2))
    assert f"lab-{rise.id}" in cell(html, "creatinine", ago(2))
    assert 'data-flag=""' in cell(html, "creatinine", ago(10))


def test_display_units_and_names_come_from_the_knowledge(clinic: Clinic, kb: Knowledge) -> None:
    for spec in kb.analytes.values():  # every test has a display unit the converter also accepts
        shown = kb.display_unit(spec.canonical)
        assert shown in kb.units[spec.canonical], spec.canonical
    assert kb.display_unit("10*9/L") == "x10^9/L"
    assert kb.display_unit("umol/L") == "umol/L"
    assert kb.display_unit("mL/min/{1.73_m2}") == "mL/min/1.73 m2"
    pid = clinic.patient()
    clinic.labs(pid, ago(4), wbc=5.5, creatinine=80, egfr=85)
    html = clinic.page(pid)
    grid = section(html, "results")
    assert 'White cell count <span class="unit">x10^9/L</span>' in grid
    assert 'Creatinine <span class="unit">umol/L</span>' in grid
    assert 'eGFR <span class="unit">mL/min/1.73 m2</span>' in grid
    for ucum in ("10*9/L", "{1.73_m2}"):
        assert ucum not in grid and ucum not in section(html, "summary")
    assert strip_value(html, "egfr")["unit"] == "mL/min/1.73 m2"
    forms = section(html, "forms")
    assert "White cell count (x10^9/L)" in forms  # the single-result form names units the same way


def test_reported_as_is_shown_only_when_it_differs(clinic: Clinic, kb: Knowledge) -> None:
    pid = clinic.patient()
    # haemoglobin in g/dL (converted: another number), white cells in another spelling of the same unit
    clinic.labs(pid, ago(6), haemoglobin=(12.5, "g/dL"), wbc=(5.5, "10^9/L"), platelets=(250, ""))
    html = clinic.page(pid)
    hb = cell(html, "haemoglobin", ago(6))
    assert ">125<" in hb and '<span class="reported">reported as 12.5 g/dL</span>' in hb
    for analyte in ("wbc", "platelets"):
        assert "reported as" not in cell(html, analyte, ago(6)), analyte

    def obs(value: float, reported: str | None) -> ObservationOut:
        return ObservationOut(
            id=1, kind="lab", analyte="wbc", code="6690-2", value=value, unit="10*9/L", reported=reported,
            date=TODAY, status="final", review_state="pending",
        )  # fmt: skip

    assert results_view.reported_if_different(obs(5.5, "5.5 10^9/L")) is None
    assert results_view.reported_if_different(obs(5.5, None)) is None
    assert results_view.reported_if_different(obs(5.5, "5500 /uL")) == "5500 /uL"
    assert results_view.reported_if_different(obs(5.5, "<0.1 10*9/L")) == "<0.1 10*9/L"


# ---------------------------------------------------------------- panel entry
def fbc_form(kb: Knowledge, day: date, **changes: str) -> dict[str, str]:
    """A full FBC as the form sends it: every test of the group, units as the form pre-fills them."""
    form = {"panel": "FBC", "date": day.isoformat()}
    values = {"wbc": "5.1", "neutrophils": "3.2", "lymphocytes": "1.4", "eosinophils": "0.2"}
    values |= {"platelets": "240", "haemoglobin": "132", "mcv": "90"}
    for analyte in service.panel_analytes(kb, "FBC"):
        form[f"value-{analyte}"] = values[analyte]
        form[f"unit-{analyte}"] = kb.display_unit(kb.analytes[analyte].canonical)
    return form | changes


def test_panel_form_offers_the_knowledges_panels_with_units_prefilled(clinic: Clinic, kb: Knowledge) -> None:
    html = clinic.page(clinic.patient())
    for group in kb.schedule.panels:
        found = re.search(rf'<form [^>]*id="form-panel-{group}".*?</form>', html, re.S)
        assert found, group
        form = found.group(0)
        assert f'name="panel" value="{group}"' in form
        names = re.findall(r'name="value-([a-z0-9]+)"', form)
        assert names == service.panel_analytes(kb, group)
        for analyte in names:
            unit = kb.display_unit(kb.analytes[analyte].canonical)
            assert f'name="unit-{analyte}" value="{unit}"' in form
            assert 'inputmode="decimal"' in form
        assert f"Save {kb.schedule.panels[group].label}" in form


def test_a_panel_is_one_save_and_one_reassessment(
    clinic: Clinic, kb: Knowledge, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = clinic.patient()
    before = clinic.count(pid)
    calls: list[int] = []
    refresh = wl.refresh_patient

    def counted(s: Any, knowledge: Knowledge, patient_id: int, *args: Any, **kwargs: Any) -> Any:
        calls.append(patient_id)
        return refresh(s, knowledge, patient_id, *args, **kwargs)

    monkeypatch.setattr(wl, "refresh_patient", counted)
    form = fbc_form(kb, ago(1))
    with clinic.db.session() as s:
        values = {k.removeprefix("value-"): v for k, v in form.items() if k.startswith("value-")}
        units = {k.removeprefix("unit-"): v for k, v in form.items() if k.startswith("unit-")}
        saved = service.add_panel(s, kb, clinic.nurse, pid, "FBC", form["date"], values, units, "web")
    assert calls == [pid]
    n = len(service.panel_analytes(kb, "FBC"))
    assert len(saved.observations) == n and clinic.count(pid) == before + n
    assert (saved.group, saved.label, saved.date) == ("FBC", kb.schedule.panels["FBC"].label, ago(1))
    with clinic.db.session() as s:
        stored = s.get(m.AssessmentRow, pid)
        assert stored is not None
        (fbc,) = [g for g in stored.result["monitoring"]["groups"] if g["name"] == "FBC"]
        assert fbc["last"] == ago(1).isoformat()  # one assessment that saw the whole, complete panel
        events = s.scalars(select(m.AuditEvent).where(m.AuditEvent.patient_id == pid, m.AuditEvent.action == "write"))
        assert [e.resource for e in events] == ["add-panel"]


def test_one_bad_field_saves_nothing_and_every_field_keeps_what_was_typed(clinic: Clinic, kb: Knowledge) -> None:
    pid = clinic.patient()
    before = clinic.count(pid)
    form = fbc_form(kb, ago(1), **{"value-platelets": "2,40", "unit-haemoglobin": "mmHg"})
    r = clinic.post(f"/patients/{pid}/panel", **form)
    assert r.status_code == 400
    assert clinic.count(pid) == before
    found = re.search(r'<form [^>]*id="form-panel-FBC".*?</form>', r.text, re.S)
    assert found
    html = found.group(0)
    plt = re.search(r'<input id="panel-FBC-platelets"[^>]*>', html)
    assert plt and 'aria-invalid="true"' in plt.group(0) and 'value="2,40"' in plt.group(0)
    assert 'aria-describedby="err-panel-FBC-value-platelets"' in plt.group(0)
    assert re.search(r'id="err-panel-FBC-value-platelets">[^<]*not a number', html)
    assert re.search(r'id="err-panel-FBC-unit-haemoglobin">[^<]*not a known unit', html)
    assert '<details class="units" open>' in html  # the unit at fault is on screen
    assert 'value="mmHg"' in html
    wbc = re.search(r'<input id="panel-FBC-wbc"[^>]*>', html)
    assert wbc and 'value="5.1"' in wbc.group(0) and "aria-invalid" not in wbc.group(0)
    other = re.search(r'<form [^>]*id="form-panel-LFT".*?</form>', r.text, re.S)
    assert other and "field-error" not in other.group(0)  # the errors are on the form that was sent

    for bad in ({"date": (TODAY + timedelta(days=1)).isoformat()}, {"value-neutrophils": "-1"}):
        r = clinic.post(f"/patients/{pid}/panel", **fbc_form(kb, ago(1), **bad))
        assert r.status_code == 400 and "field-error" in r.text
        assert clinic.count(pid) == before
    empty = {k: "" for k in fbc_form(kb, ago(1)) if k.startswith("value-")}
    r = clinic.post(f"/patients/{pid}/panel", **fbc_form(kb, ago(1), **empty))
    assert r.status_code == 400 and "enter at least one result" in r.text
    with pytest.raises(service.PanelError) as caught, clinic.db.session() as s:
        writes.add_panel(s, kb, pid, "FBC", ago(1), {"wbc": "x", "platelets": "y"}, {})
    assert set(caught.value.errors) == {"value-wbc", "value-platelets"}
    assert clinic.count(pid) == before


def test_panel_save_redirects_and_confirms_once(clinic: Clinic, kb: Knowledge) -> None:
    pid = clinic.patient()
    r = clinic.post(f"/patients/{pid}/panel", **fbc_form(kb, ago(2), **{"value-eosinophils": "", "value-mcv": ""}))
    assert r.status_code == 303
    assert r.headers["location"] == f"/patients/{pid}#findings"  # a GET of the page: no POST URL is left
    html = clinic.page(pid)
    flash = re.search(r'<p class="flash" id="flash" role="status">([^<]+)</p>', html)
    assert flash and flash.group(1) == f"Saved full blood count for {day_text(ago(2))}: 5 results."
    assert "flash" not in clinic.page(pid).split('id="summary"')[0]  # shown once
    for analyte in ("wbc", "neutrophils", "platelets", "lymphocytes", "haemoglobin"):
        assert 'data-id="' in cell(html, analyte, ago(2))


def test_a_planted_confirmation_is_not_shown(clinic: Clinic) -> None:
    pid = clinic.patient()
    where = {"domain": "testserver.local", "path": f"/patients/{pid}"}
    clinic.web.cookies.set(FLASH, "0" * 32 + ".U2F2ZWQgZXZlcnl0aGluZw==", **where)
    assert 'id="flash"' not in clinic.page(pid)
    assert FLASH not in clinic.web.cookies  # it was sent, refused, and cleared


def test_every_form_ends_with_a_redirect_and_a_confirmation(clinic: Clinic, kb: Knowledge) -> None:
    pid = clinic.patient()
    r = clinic.post(f"/patients/{pid}/lab", analyte="neutrophils", value="3.3", unit="", date=ago(1).isoformat())
    assert r.status_code == 303 and r.headers["location"] == f"/patients/{pid}#findings"
    assert f"Saved Neutrophils for {day_text(ago(1))}: 1 result." in clinic.page(pid)
    r = clinic.post(f"/patients/{pid}/team", team="gp")
    assert r.status_code == 303 and r.headers["location"] == f"/patients/{pid}#summary"
    assert "Saved: monitored by GP (shared care)." in clinic.page(pid)


def test_review_errors_sit_on_their_field_and_keep_the_choice(clinic: Clinic, kb: Knowledge) -> None:
    neut = threshold(kb, "neutrophils")
    pid = clinic.patient()
    clinic.labs(pid, ago(1), neutrophils=beyond(neut))
    with clinic.db.session() as s:
        fid = next(f.id for f in wl.open_findings(s, pid) if f.code == f"lab-{neut.id}")

    r = clinic.post(f"/findings/{fid}/review", outcome="not-relevant", note="  ")
    assert r.status_code == 400
    form = re.search(rf'<form method="post" action="/findings/{fid}/review#finding-{fid}".*?</form>', r.text, re.S)
    assert form
    html = form.group(0)
    note = re.search(r'<input name="note"[^>]*>', html)
    assert note and 'aria-invalid="true"' in note.group(0)
    assert f'id="err-review-{fid}-note"' in html and "reason" in html
    assert '<option value="not-relevant" selected>' in html
    assert f'id="err-review-{fid}-outcome"' not in html

    r = clinic.post(f"/findings/{fid}/review", outcome="", note="phoned the patient")
    assert r.status_code == 400
    form = re.search(rf'<form method="post" action="/findings/{fid}/review#finding-{fid}".*?</form>', r.text, re.S)
    assert form and f'id="err-review-{fid}-outcome">Choose what was done.' in form.group(0)
    assert 'value="phoned the patient"' in form.group(0)

    r = clinic.post(f"/findings/{fid}/review", outcome="patient-contacted", note="phoned")
    assert r.status_code == 303 and r.headers["location"] == f"/patients/{pid}#findings"
    assert "Recorded the review: Patient contacted." in clinic.page(pid)


def test_findings_are_in_severity_order(clinic: Clinic, kb: Knowledge) -> None:
    crit = next(t for t in kb.thresholds if t.severity == "critical" and not t.grade_severity)
    warn = next(t for t in kb.thresholds if t.severity == "warning" and not t.grade_severity)
    pid = clinic.patient()
    clinic.labs(pid, ago(9), **{crit.analyte: beyond(crit)})
    clinic.labs(pid, ago(1), **{warn.analyte: beyond(warn)})  # newer, but less severe
    html = section(clinic.page(pid), "findings")
    order = re.findall(r'<article class="finding (critical|warning)" data-code="([^"]+)"', html)
    codes = [code for _, code in order]
    assert f"lab-{crit.id}" in codes and f"lab-{warn.id}" in codes
    assert codes.index(f"lab-{crit.id}") < codes.index(f"lab-{warn.id}")
    rank = {"critical": 0, "warning": 1}
    assert [rank[sev] for sev, _ in order] == sorted(rank[sev] for sev, _ in order)


def test_a_grid_flag_reads_the_whole_record_as_the_engine_does(kb: Knowledge) -> None:
    """A bilirubin above the laboratory's limit with jaundice reported is critical at any multiple
    (lab-bilirubin-jaundice): the grid flags that cell critical, as the engine's finding says, and
    leaves it unflagged without the jaundice report (a grade-1 rise alone gives no finding)."""
    from conftest import on_treatment

    from azaguard.readers.fhir import read_bundle
    from azaguard.results_view import engine_flags

    def flags_for(jaundice: bool) -> dict[int, tuple[str, tuple[str, ...]]]:
        b = on_treatment()
        b.lab("1975-2", 30, "umol/L", "2025-09-01", "Bilirubin", ref_high=21)
        if jaundice:
            b.symptom("18165001", "Jaundice", "2025-08-30")
        record = read_bundle(b.bundle(), kb)
        record = replace(record, labs=tuple(replace(r, source_id=str(i + 1)) for i, r in enumerate(record.labs)))
        (bili,) = [r for r in record.labs if r.analyte == "bilirubin"]
        flags = engine_flags(kb, record, {date(2025, 9, 1)})
        return {k: v for k, v in flags.items() if k == int(bili.source_id)}

    (flag,) = flags_for(jaundice=True).values()
    assert flag == ("critical", ("lab-bilirubin-jaundice",))
    assert flags_for(jaundice=False) == {}
