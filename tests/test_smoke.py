from conftest import codes, on_treatment, run


def test_on_treatment_base_is_quiet_when_bloods_are_on_schedule(kb):
    b = on_treatment()
    b.bloods("2025-09-01")
    a = run(b, "2025-09-10", kb)
    assert a.monitoring.phase == "stable"
    assert not [f for f in a.findings if f.severity == "critical"], codes(a)
