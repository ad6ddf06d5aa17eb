"""Malformed imports through the real REST API: never a server error, nothing lost.

2,000 mutations of valid files of every format (HL7 v2, CSV, NDJSON, FHIR Bundle) - cut, doubled
or spliced bytes, CR-only line endings, 150,000-character cells, JSON nested 5,000 deep, damaged
HL7 escapes, stray quotes - each with a valid record in the same batch. Every post must answer
below 500, and every record the reader produced must be counted exactly once (imported, a
duplicate, a correction, a deletion or quarantined with its reason): the accounting is checked
against an independent parse of the same text.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dbfixtures import fresh_database
from fastapi.testclient import TestClient

from azaguard import auth
from azaguard.app import create_app
from azaguard.ingest import parse_text
from azaguard.knowledge import Knowledge
from azaguard.store.writes import add_patient

pytestmark = pytest.mark.slow

COUNTED = ("imported", "duplicates", "corrected", "deleted", "quarantined")
PATIENTS = ("FZ-1", "FZ-2")
N_PER_FORMAT = 500  # 2,000 posts in all


def hl7_message(n: int, patient: str, value: float) -> str:
    return "\r".join(
        [
            f"MSH|^~\\&|LAB|HOSP|AZA|CLINIC|20250101120000||ORU^R01|FZ{n}|P|2.5",
            f"PID|1||{patient}^^^HOSP^MR||Fuzz^Test",
            f"OBR|1||ORD{n}|CBC|||20250101080000",
            f"OBX|1|NM|751-8^Neutrophils^LN||{value}|10*9/L|2.0-7.5|N|||F|||20250101080000",
            f"OBX|2|NM|6690-2^WBC^LN||{value + 3}|10*9/L|4-11|N|||F|||20250101080000",
        ]
    )


def csv_rows(n: int) -> str:
    return (
        "patient_id,date,code,value,unit,result_id\n"
        f"FZ-1,2025-02-{1 + n % 27:02d},751-8,3.{n % 10},10*9/L,csv-{n}-a\n"
        f"FZ-2,2025-02-{1 + n % 27:02d},777-3,2{n % 10}0,10*9/L,csv-{n}-b\n"
    )


def observation(n: int, patient: str, code: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"fz-{n}-{code}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2025-03-01",
        "valueQuantity": {"value": value, "unit": "10*9/L", "system": "http://unitsofmeasure.org", "code": "10*9/L"},
    }


def ndjson_lines(n: int) -> list[str]:
    return [json.dumps(observation(n, "FZ-1", "751-8", 3.3)), json.dumps(observation(n, "FZ-2", "777-3", 210))]


def bundle(n: int) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": observation(n, p, c, v)} for p, c, v in (("FZ-1", "751-8", 3.1), ("FZ-2", "6690-2", 6))],
    }


# ---------------------------------------------------------------- mutations of a text
def _cut(rng: random.Random, t: str) -> str:
    i = rng.randrange(len(t))
    return t[:i] + t[i + rng.randint(1, 40) :]


def _double(rng: random.Random, t: str) -> str:
    i = rng.randrange(len(t))
    return t[:i] + t[i : i + rng.randint(1, 60)] * 2 + t[i:]


def _splice(rng: random.Random, t: str) -> str:
    junk = rng.choice(['"', "\\Xzz\\", "\\", "|||", "^^", ",", "{", "]", "\ufffd", "\t", "9" * 30, "-1e309", "NaN"])
    i = rng.randrange(len(t))
    return t[:i] + junk + t[i:]


def _cr_only(rng: random.Random, t: str) -> str:
    return t.replace("\r\n", "\n").replace("\n", "\r")


def _huge_cell(rng: random.Random, t: str) -> str:
    i = rng.randrange(len(t))
    return t[:i] + "7" * 150_000 + t[i:]


def _deep(rng: random.Random, t: str) -> str:
    i = rng.randrange(len(t))
    return t[:i] + "[" * 5000 + "]" * 5000 + t[i:]


def _truncate(rng: random.Random, t: str) -> str:
    return t[: rng.randrange(1, len(t))]


MUTATIONS: list[Callable[[random.Random, str], str]] = [
    _cut, _double, _splice, _splice, _cr_only, _huge_cell, _deep, _truncate,
]  # fmt: skip


def mutated(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 3)):
        if len(text) > 1:
            text = rng.choice(MUTATIONS)(rng, text) or text
    return text


def cases(rng: random.Random) -> Iterator[tuple[str, str]]:
    """(format, text): a damaged part and a valid record in the same batch."""
    for n in range(N_PER_FORMAT):
        bad = mutated(rng, hl7_message(n, "FZ-1", 3.2))
        yield "hl7v2", bad + "\r" + hl7_message(100_000 + n, "FZ-2", 3.4)
    for n in range(N_PER_FORMAT):
        good = csv_rows(n).split("\n", 1)
        yield "csv", good[0] + "\n" + mutated(rng, good[1]) + "\n" + csv_rows(5000 + n).split("\n", 1)[1]
    for n in range(N_PER_FORMAT):
        first, second = ndjson_lines(n)
        yield "ndjson", mutated(rng, first) + "\n" + second + "\n"
    for n in range(N_PER_FORMAT):
        doc = bundle(n)
        # a damaged resource inside an otherwise valid Bundle, or a damaged Bundle text
        if rng.random() < 0.5:
            doc["entry"][0]["resource"] = json.loads(json.dumps(doc["entry"][0]["resource"]))
            key = rng.choice(["status", "valueQuantity", "code", "effectiveDateTime", "subject", "id"])
            doc["entry"][0]["resource"][key] = rng.choice([None, 7, "x", [], {"a": 1}, "2025-13-45", "9" * 400])
            yield "fhir", json.dumps(doc)
        else:
            yield "fhir", mutated(rng, json.dumps(doc, indent=1))


@pytest.fixture(scope="module")
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kb: Knowledge
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    gen = fresh_database("sqlite", request, tmp_path_factory.mktemp("fuzz"))
    db = next(gen)
    with db.session() as s:
        for ident in PATIENTS:
            add_patient(s, ident, f"Patient {ident}")
        user = auth.create_user(s, "fuzz", "fuzz-password-123", "clinician")
        token = auth.create_api_token(s, user, "fuzz")
    yield TestClient(create_app(db, kb), raise_server_exceptions=False), {"Authorization": f"Bearer {token}"}
    gen.close()


def test_two_thousand_malformed_imports_give_no_server_error_and_lose_nothing(
    api: tuple[TestClient, dict[str, str]], kb: Knowledge
) -> None:
    client, headers = api
    rng = random.Random(20261201)
    statuses: Counter[int] = Counter()
    totals: Counter[str] = Counter()
    n = 0
    for fmt, text in cases(rng):
        n += 1
        r = client.post(
            "/api/v1/import", params={"format": fmt, "filename": f"fuzz-{n}"}, content=text.encode(), headers=headers
        )
        statuses[r.status_code] += 1
        assert r.status_code < 500, (fmt, n, r.status_code, r.text[:300])
        if r.status_code != 200:
            assert r.status_code in (400, 413, 422), (fmt, n, r.status_code, r.text[:300])
            continue
        summary = r.json()
        expected = parse_text(text, kb, fmt, f"fuzz-{n}")
        counted = sum(summary[k] for k in COUNTED)
        assert counted == len(expected.items) + len(expected.rejects), (fmt, n, summary)
        assert counted >= 1, (fmt, n, summary)
        for k in COUNTED:
            totals[k] += summary[k]
    assert n == 4 * N_PER_FORMAT
    assert statuses == Counter({200: n}), statuses  # every batch is taken: damage is quarantined, never refused whole
    assert totals["quarantined"] > 0 and totals["imported"] > 0, totals
    print(f"fuzz: {n} posts, statuses {dict(statuses)}, totals {dict(totals)}")
