"""The monitoring loop (issue 6): treatment on hold, follow-ups that drive the schedule and stay
open until answered, complete panels, dose events that tighten monitoring without postponing an
overdue test, results that answer symptoms, bilirubin/ALP, and findings read right.

Every expectation is worked out here from the rule (dates with calendar arithmetic), on both
sides of each rule, through the real FHIR reader.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from conftest import codes, finding, on_treatment, run

from azaguard import domain as d
from azaguard.fhirbuild import BundleBuilder
from azaguard.knowledge import load_knowledge

KB = load_knowledge()
AS_OF = date(2025, 9, 10)
ONE = timedelta(days=1)
TWO_WEEKS = timedelta(weeks=2)
TWELVE_WEEKS = timedelta(weeks=12)


def groups(a: d.Assessment) -> dict[str, d.MonitoringGroup]:
    return {g.name: g for g in a.monitoring.groups}


def open_follow_ups(a: d.Assessment) -> list[d.FollowUp]:
    return [u for u in a.monitoring.follow_ups if u.state != "dismissed"]


def held(start: str = "2025-01-06", hold: str = "2025-09-01", reason: str = "neutrophils 1.2") -> BundleBuilder:
    """On 150 mg since January, withheld on `hold` (a clinic hold: its own on-hold entry)."""
    b = on_treatment(start=start)
    b.entries.pop()  # replace the open-ended statement with the course and the hold
    b.azathioprine(start, 150, end=date.fromisoformat(hold) - ONE)
    b.statement("Azathioprine 50 mg tablet", hold, 150, 1, "1256", "on-hold")
    b.entries[-1]["statusReason"] = [{"text": reason}]
    return b


# ---------------------------------------------------------------- 1. treatment on hold
def test_on_hold_is_not_stopped() -> None:
    b = held()
    b.fbc("2025-09-01", 3.0, 1.2, 200).lft("2025-09-01", 25, albumin=42).renal("2025-09-01", 75, egfr=90)
    a = run(b, AS_OF, KB)
    assert a.treatment.state == "on-hold" and a.monitoring.phase == "on-hold"
    assert a.treatment.since == date(2025, 9, 1) and a.treatment.held_dose_mg_per_day == 150
    assert "neutrophils 1.2" in a.treatment.reason
    assert finding(a, "treatment-on-hold").severity == "warning"
    # the count that caused the hold is due again within the interval its finding names (14 days)
    fbc = groups(a)["FBC"]
    assert fbc.next_due == date(2025, 9, 15) and fbc.due_reason == "follow-up"
    # red-flag guidance continues; the dose section shows restart criteria, not a titration plan
    assert "symptom-guidance" in codes(a)
    assert a.dose.plan == () and a.dose.restart_criteria
    assert any("dose change" in c for c in a.dose.restart_criteria)
    # stopped (the other side): no monitoring, no restart criteria
    s = on_treatment()
    s.entries.pop()
    s.azathioprine("2025-01-06", 150, end="2025-08-31")
    stopped = run(s, AS_OF, KB)
    assert stopped.treatment.state == "stopped" and stopped.dose.restart_criteria == ()
    assert "symptom-guidance" not in codes(stopped)


def test_allopurinol_ordered_during_a_hold_is_flagged() -> None:
    b = held()
    b.bloods("2025-09-05")
    b.request("Allopurinol 100 mg tablets", "2025-09-08", 100, rxnorm="519")
    a = run(b, AS_OF, KB)
    f = finding(a, "interaction-allopurinol")
    assert f.severity == "critical" and "at most" in f.action  # the held 150 mg is toxic on restart
    assert a.dose.recommended is not None and a.dose.recommended.high <= 150 * 0.25


def test_fhir_on_hold_and_suspended_statuses_are_holds() -> None:
    for status in ("on-hold", "suspended"):
        b = on_treatment()
        b.entries[-1]["status"] = status
        a = run(b, AS_OF, KB)
        assert a.treatment.state == "on-hold", status
        assert a.monitoring.phase == "on-hold"


def test_restart_after_a_hold_restarts_2_weekly_testing() -> None:
    b = held(hold="2025-06-02")
    b.entries[-1]["effectivePeriod"]["end"] = "2025-07-06"  # the hold ended the day before the restart
    b.statement("Azathioprine 50 mg tablet", "2025-07-07", 100, 1, "1256", "active")
    b.bloods("2025-07-21")
    a = run(b, date(2025, 7, 22), KB)
    assert a.treatment.state == "active" and a.monitoring.phase == "dose-change"
    assert groups(a)["FBC"].next_due == date(2025, 7, 21) + TWO_WEEKS
    # no automatic re-escalation after a restart: 100 mg is below the 150 mg target
    assert "dosing-no-escalation" in codes(a) and "dosing-below-target" not in codes(a)
    assert [s.mg_per_day for s in a.dose.plan] == [100]


# ---------------------------------------------------------------- 2. follow-ups drive the schedule
def critical_alt(extra: tuple[str, ...] = ()) -> BundleBuilder:
    b = on_treatment()
    b.bloods("2025-08-25")
    b.lab("1742-6", 168, "U/L", "2025-09-01", "ALT")
    b.lab("1751-7", 41, "g/L", "2025-09-01", "Albumin")
    for day in extra:
        b.lft(day, 40, albumin=41)
    return b


def test_critical_alt_pulls_the_next_lft_forward() -> None:
    a = run(critical_alt(), AS_OF, KB)
    f = finding(a, "lab-alt-high")
    assert f.follow_up is not None and f.follow_up.group == "LFT"
    lft = groups(a)["LFT"]
    due = date(2025, 9, 1) + timedelta(days=f.follow_up.days)
    assert lft.next_due == due and lft.due_reason == "follow-up"
    assert lft.next_due < date(2025, 9, 1) + TWELVE_WEEKS
    [u] = [u for u in open_follow_ups(a) if u.group == "LFT"]
    assert u.state == "open" and u.since == date(2025, 9, 1) and u.finding_code == "lab-alt-high"
    # overdue the day after it was due: a critical finding's repeat is critical when missed
    late = run(critical_alt(), due + ONE, KB)
    g = finding(late, "monitoring-follow-up-overdue")
    assert g.severity == "critical" and "LFT" in g.message
    assert "monitoring-follow-up-overdue" not in codes(run(critical_alt(), due, KB))


def test_follow_up_is_answered_only_by_a_complete_panel_dated_after_the_finding() -> None:
    # a normal LFT after the finding answers it (and the ALT finding itself clears)
    a = run(critical_alt(("2025-09-08",)), AS_OF, KB)
    assert not [u for u in open_follow_ups(a) if u.group == "LFT"]
    # ALT without albumin is not the LFT panel: still awaiting it
    b = critical_alt()
    b.lab("1742-6", 150, "U/L", "2025-09-08", "ALT")
    a = run(b, AS_OF, KB)
    assert [u for u in open_follow_ups(a) if u.group == "LFT"]


def test_dismissed_follow_up_is_listed_but_no_longer_drives_the_plan() -> None:
    import dataclasses

    from azaguard.engine import assess
    from azaguard.readers.fhir import read_bundle

    record = read_bundle(critical_alt().bundle(), KB)
    a = assess(record, KB, AS_OF)
    [u] = [u for u in open_follow_ups(a) if u.group == "LFT"]
    record = dataclasses.replace(record, dismissed_follow_ups=((u.key, "repeated at the GP, result faxed", AS_OF),))
    b = assess(record, KB, AS_OF)
    [v] = [v for v in b.monitoring.follow_ups if v.key == u.key]
    assert v.state == "dismissed" and v.dismissed_reason == "repeated at the GP, result faxed"
    assert groups(b)["LFT"].due_reason == "schedule"
    late = assess(record, KB, u.due + ONE)
    assert "monitoring-follow-up-overdue" not in codes(late)


def test_allopurinol_start_asks_for_an_fbc_within_two_weeks() -> None:
    b = on_treatment()
    b.bloods("2025-08-25")
    b.statement("Allopurinol 100 mg tablets", "2025-09-01", 100, rxnorm="519")
    a = run(b, AS_OF, KB)
    fbc = groups(a)["FBC"]
    assert fbc.next_due == date(2025, 9, 15) and fbc.due_reason == "follow-up"
    b.bloods("2025-09-09")
    assert groups(run(b, AS_OF, KB))["FBC"].due_reason == "schedule"


def test_co_trimoxazole_start_tightens_the_fbc() -> None:
    b = on_treatment()
    b.bloods("2025-08-25")
    b.statement("Co-trimoxazole 960 mg tablets", "2025-09-03", 1920, rxnorm="10831")
    assert groups(run(b, AS_OF, KB))["FBC"].next_due == date(2025, 9, 17)


def test_a_dose_increase_never_postpones_an_overdue_test() -> None:
    """Stable, 12-weekly; the count due on 2025-04-14 was missed; on 2025-05-05 the dose goes up.
    Due stays 2025-04-14 (not the increase + 2 weeks)."""
    b = BundleBuilder("p", "1970-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(70, "2024-12-20").genotype("TPMT", "*1/*1", "2024-01-01").genotype("NUDT15", "*1/*1", "2024-01-01")
    b.azathioprine("2024-01-08", 100, end="2025-05-04")
    b.azathioprine("2025-05-05", 150)
    b.bloods("2025-01-20")
    due = date(2025, 1, 20) + TWELVE_WEEKS
    a = run(b, date(2025, 5, 6), KB)
    assert groups(a)["FBC"].next_due == due and groups(a)["FBC"].overdue
    assert {"monitoring-overdue", "monitoring-non-attendance"} & codes(a)
    # an increase with the last test still recent: 2 weeks after the increase (other side)
    b2 = BundleBuilder("p", "1970-03-01", "male")
    b2.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b2.weight(70, "2024-12-20").genotype("TPMT", "*1/*1", "2024-01-01").genotype("NUDT15", "*1/*1", "2024-01-01")
    b2.azathioprine("2024-01-08", 100, end="2025-05-04")
    b2.azathioprine("2025-05-05", 150)
    b2.bloods("2025-04-28")
    assert groups(run(b2, date(2025, 5, 6), KB))["FBC"].next_due == date(2025, 5, 19)


# ---------------------------------------------------------------- 3. a panel is complete or it does not count
def test_one_analyte_is_not_a_full_blood_count() -> None:
    b = on_treatment()
    b.bloods("2025-08-04")
    b.lab("751-8", 3.4, "10*9/L", "2025-09-01", "Neutrophils")
    a = run(b, AS_OF, KB)
    assert groups(a)["FBC"].last == date(2025, 8, 4)
    f = finding(a, "data-incomplete-panel")
    assert "FBC" in f.message and "White cell count" in f.message and "Platelets" in f.message
    assert [x.code for x in a.findings].count("data-incomplete-panel") == 1
    b.fbc("2025-09-01", 6.0, 3.4, 250)
    a = run(b, AS_OF, KB)
    assert groups(a)["FBC"].last == date(2025, 9, 1) and "data-incomplete-panel" not in codes(a)


def test_a_partial_panel_still_feeds_the_threshold_rules() -> None:
    b = on_treatment()
    b.bloods("2025-08-04")
    b.lab("751-8", 1.2, "10*9/L", "2025-09-01", "Neutrophils")
    a = run(b, AS_OF, KB)
    assert finding(a, "lab-neutrophils-low").severity == "critical"
    assert "data-incomplete-panel" in codes(a)


def test_lft_panel_needs_alt_or_ast_and_albumin() -> None:
    assert KB.schedule.panels["LFT"].require == [["alt", "ast"], ["albumin"]]
    b = on_treatment()
    b.bloods("2025-08-04")
    b.lab("1920-8", 20, "U/L", "2025-09-01", "AST").lab("1751-7", 40, "g/L", "2025-09-01", "Albumin")
    assert groups(run(b, AS_OF, KB))["LFT"].last == date(2025, 9, 1)  # AST stands in for ALT


# ---------------------------------------------------------------- 4. dosing
def test_no_re_escalation_after_a_reduction_until_a_clinician_raises_the_dose() -> None:
    b = BundleBuilder("p", "1970-03-01", "male")
    b.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b.weight(70, "2024-12-20").genotype("TPMT", "*1/*1", "2024-01-01").genotype("NUDT15", "*1/*1", "2024-01-01")
    b.azathioprine("2024-06-03", 150, end="2025-08-03")
    b.azathioprine("2025-08-04", 100)  # cut for toxicity
    b.bloods("2025-09-01")
    a = run(b, AS_OF, KB)
    f = finding(a, "dosing-no-escalation")
    assert "reduced on 2025-08-04" in f.message and f.severity == "info"
    assert [s.mg_per_day for s in a.dose.plan] == [100]
    # a clinician's later increase is the decision: titration may continue from it
    b2 = BundleBuilder("p", "1970-03-01", "male")
    b2.condition("91637004", "Myasthenia gravis", "2024-06-01")
    b2.weight(70, "2024-12-20").genotype("TPMT", "*1/*1", "2024-01-01").genotype("NUDT15", "*1/*1", "2024-01-01")
    b2.azathioprine("2024-06-03", 150, end="2025-08-03")
    b2.azathioprine("2025-08-04", 50, end="2025-08-31")
    b2.azathioprine("2025-09-01", 100)
    b2.bloods("2025-09-08")
    a = run(b2, AS_OF, KB)
    assert "dosing-no-escalation" not in codes(a) and a.dose.plan[-1].mg_per_day == 150


def test_no_up_titration_while_a_critical_result_is_open() -> None:
    b = on_treatment(start="2025-08-04", dose=50)
    b.fbc("2025-09-01", 6.0, 1.2, 250)
    a = run(b, AS_OF, KB)
    assert "a critical result is open" in finding(a, "dosing-no-escalation").message
    assert [s.mg_per_day for s in a.dose.plan] == [50]


# ---------------------------------------------------------------- 5. results
def bilirubin(value: float, uln: float | None = 21, alp: float | None = None) -> BundleBuilder:
    b = on_treatment()
    b.bloods("2025-08-25")
    b.lab("1975-2", value, "umol/L", "2025-09-01", "Bilirubin", ref_high=uln)
    if alp is not None:
        b.lab("6768-6", alp, "U/L", "2025-09-01", "ALP", ref_high=130)
    return b


@pytest.mark.parametrize(
    ("value", "code", "severity", "grade"),
    [
        (63.0, None, None, 2),  # exactly 3 x ULN: grade 2, no finding
        (63.5, "lab-bilirubin-high", "warning", 3),  # above 3 x ULN: grade 3
        (210.0, "lab-bilirubin-high", "warning", 3),  # 10 x ULN: still grade 3
        (211.0, "lab-bilirubin-high", "critical", 4),
    ],
)
def test_bilirubin_ctcae_grades(value: float, code: str | None, severity: str | None, grade: int) -> None:
    a = run(bilirubin(value), AS_OF, KB)
    if code is None:
        assert "lab-bilirubin-high" not in codes(a)
        return
    f = finding(a, code)
    assert f.severity == severity and f.ctcae == {"version": "5.0", "term": "Blood bilirubin increased", "grade": grade}
    assert f.follow_up is not None and f.follow_up.group == "LFT"


def test_bilirubin_92_with_alp_410_is_not_silent() -> None:
    a = run(bilirubin(92, alp=410), AS_OF, KB)
    assert finding(a, "lab-bilirubin-high").severity == "warning"  # 4.4 x ULN
    assert "lab-alp-high" not in codes(a)  # 3.2 x ULN: grade 2
    assert finding(run(bilirubin(92, alp=651), AS_OF, KB), "lab-alp-high").severity == "warning"  # > 5 x
    # without the laboratory's upper limit it cannot be graded: said so, never silent
    f = finding(run(bilirubin(92, uln=None), AS_OF, KB), "data-missing-uln")
    assert f.severity == "warning" and "Bilirubin" in f.message


def test_jaundice_with_a_raised_bilirubin_is_critical() -> None:
    b = bilirubin(30)
    b.symptom("18165001", "Jaundice", "2025-08-30")
    f = finding(run(b, AS_OF, KB), "lab-bilirubin-jaundice")
    assert f.severity == "critical"
    b = bilirubin(15)  # within range: the jaundice report is answered by the bilirubin, no critical
    b.symptom("18165001", "Jaundice", "2025-08-30")
    assert "lab-bilirubin-jaundice" not in codes(run(b, AS_OF, KB))


@pytest.mark.parametrize(
    ("snomed", "name", "answer", "other"),
    [
        ("386661006", "Fever", ("751-8", 3.5, "10*9/L"), ("718-7", 130, "g/L")),
        ("302215000", "Bruising", ("777-3", 250, "10*9/L"), ("751-8", 3.5, "10*9/L")),
        ("18165001", "Jaundice", ("1975-2", 10, "umol/L"), ("777-3", 250, "10*9/L")),
    ],
)
def test_a_symptom_is_answered_only_by_the_result_that_answers_it(
    snomed: str, name: str, answer: tuple[str, float, str], other: tuple[str, float, str]
) -> None:
    b = on_treatment()
    b.bloods("2025-08-25")
    b.symptom(snomed, name, "2025-09-05")
    b.lab(other[0], other[1], other[2], "2025-09-06", "other")
    a = run(b, AS_OF, KB)
    assert any(f.category == "symptom" and f.code != "symptom-guidance" for f in a.findings), name
    b.lab(answer[0], answer[1], answer[2], "2025-09-06", "answer")
    a = run(b, AS_OF, KB)
    assert not [f for f in a.findings if f.category == "symptom" and f.code != "symptom-guidance"], name


def test_fever_asks_for_an_fbc_from_the_day_it_is_reported() -> None:
    b = on_treatment()
    b.bloods("2025-08-25")
    b.symptom("386661006", "Fever", "2025-09-09")
    fbc = groups(run(b, AS_OF, KB))["FBC"]
    assert fbc.next_due == date(2025, 9, 9) and fbc.due_reason == "follow-up"


# ---------------------------------------------------------------- 6. medicines and vaccines
def test_zoster_vaccine_of_unknown_formulation_asks_for_it() -> None:
    b = on_treatment()
    b.immunization("Zoster vaccine, unspecified formulation", "188", "2025-08-01")
    f = finding(run(b, AS_OF, KB), "vaccine-formulation-unknown")
    assert f.severity == "warning" and "live" in f.message
    b = on_treatment()
    b.immunization("Shingrix", "187", "2025-08-01")
    a = run(b, AS_OF, KB)
    assert "vaccine-formulation-unknown" not in codes(a) and "vaccine-shingrix" not in codes(a)


def test_mycophenolate_overlap_is_an_interaction_with_its_source() -> None:
    b = on_treatment()
    b.statement("Mycophenolate mofetil 500 mg tablets", "2025-09-01", 2000)
    f = finding(run(b, AS_OF, KB), "interaction-mycophenolate")
    assert f.severity == "warning" and any(s.startswith("MMF-SmPC") for s in f.sources)
    assert "interaction-mycophenolate" not in codes(run(on_treatment(), AS_OF, KB))


# ---------------------------------------------------------------- 7. findings read right
def test_findings_are_ordered_by_severity_then_newest_first() -> None:
    b = on_treatment(tpmt="*1/*3A")
    b.fbc("2025-08-01", 6.0, 1.4, 250).lft("2025-08-01", 25, albumin=42).renal("2025-08-01", 75, egfr=90)
    b.fbc("2025-09-01", 6.0, 1.3, 130).lft("2025-09-01", 25, albumin=42).renal("2025-09-01", 75, egfr=90)
    a = run(b, AS_OF, KB)
    ranks = [d.SEVERITY_RANK[f.severity] for f in a.findings]
    assert ranks == sorted(ranks)
    for sev in ("critical", "warning", "info"):
        dated = [f.date for f in a.findings if f.severity == sev and f.date is not None]
        assert dated == sorted(dated, reverse=True)
    assert a.findings[0].severity == "critical"


def test_lab_findings_state_the_result_date_and_its_age() -> None:
    b = on_treatment()
    b.bloods("2025-08-25")
    b.lab("1742-6", 168, "U/L", "2025-07-09", "ALT")
    b.lab("1742-6", 168, "U/L", "2025-09-01", "ALT")
    f = finding(run(b, date(2025, 9, 30), KB), "lab-alt-high")
    assert "on 1 Sep 2025 (29 days ago)" in f.message and f.date == date(2025, 9, 1)


def test_allopurinol_with_too_much_azathioprine_is_one_finding() -> None:
    b = on_treatment()
    b.bloods("2025-08-25")
    b.statement("Allopurinol 100 mg tablets", "2025-09-01", 100, rxnorm="519")
    a = run(b, AS_OF, KB)
    critical = [f for f in a.findings if f.severity == "critical"]
    assert [f.code for f in critical] == ["interaction-allopurinol"]
    assert "at most 25 mg/day" in critical[0].action  # a quarter of the 150 mg taken before it


# ---------------------------------------------------------------- local protocol: the clinic's own lab and repeats
LOCAL = """
[protocol]
name = "Test Trust neurology"
version = "1"
[thresholds.alt-high]
follow_up = { group = "LFT", days = 7 }
[schedule.panels.LFT]
require = [["alt", "ast"]]
[[tpmt_activity]]
assay = ["test trust lab"]
lab = "Test Trust biochemistry"
unit = ["U/mL"]
bands = [
  { low = 0, high = 17, phenotype = "PM", label = "low: avoid" },
  { low = 17, high = 1e9, phenotype = "NM", label = "normal" },
]
"""


def test_a_local_protocol_sets_its_lab_bands_repeat_interval_and_panels(tmp_path) -> None:
    path = tmp_path / "local.toml"
    path.write_text(LOCAL, encoding="utf-8")
    local = load_knowledge(path)
    # the clinic's own assay: 10 U/mL is "low: avoid" -> poor metaboliser, no dose
    b = on_treatment(tpmt=None)
    b.tpmt_activity(10, "U/mL", "2025-08-01", "Test Trust Lab TPMT")
    a = run(b, AS_OF, local)
    assert a.pgx["tpmt"] == "Poor Metabolizer" and a.dose.recommended is None
    # a repeat LFT within 7 days (the default is 14) ...
    a = run(critical_alt(), AS_OF, local)
    assert groups(a)["LFT"].next_due == date(2025, 9, 8)
    assert groups(run(critical_alt(), AS_OF, KB))["LFT"].next_due == date(2025, 9, 15)
    # ... and ALT alone is this clinic's LFT panel (no albumin)
    b = critical_alt()
    b.lab("1742-6", 40, "U/L", "2025-09-08", "ALT")
    a = run(b, AS_OF, local)
    assert groups(a)["LFT"].last == date(2025, 9, 8) and "data-incomplete-panel" not in codes(a)
    a = run(b, AS_OF, KB)  # the default panel asks for albumin too
    assert groups(a)["LFT"].last == date(2025, 9, 1) and "data-incomplete-panel" in codes(a)
