"""Property-based API testing with schemathesis: no request the OpenAPI schema allows (or almost allows) is a 5xx.

Schemathesis reads /openapi.json in-process (no server) and generates requests for every operation:
valid ones (positive mode) and ones that break the schema (negative mode). Each request goes to a populated
synthetic clinic (`build_demo(db, 30)`) with a real bearer token, once as a clinician (every route reachable)
and once as a patient (most routes refused): whatever is sent, the answer must be a documented status
(`status_code_conformance`) and never a server error (`not_a_server_error`).

The run here is deliberately short (15 examples per operation as a clinician, 7 as a patient, fixed seed,
schemathesis's coverage phase off, so CI time stays low).
For a longer campaign, raise the example count and drop the seed, e.g.

    AZAGUARD_FUZZ_EXAMPLES=500 AZAGUARD_FUZZ_SEED=random AZAGUARD_FUZZ_COVERAGE=1 \\
        .venv/bin/pytest -q tests/test_schemathesis.py

or point the schemathesis CLI at a running demo server (`azaguard serve --demo`, token from
`azaguard token nurse --database sqlite:///azaguard-demo.db`):

    .venv/bin/schemathesis run http://127.0.0.1:8000/openapi.json -H "Authorization: Bearer $TOKEN" \\
        --checks all --max-examples 1000 --phases examples,coverage,fuzzing,stateful

(The pytest loader `schemathesis.pytest.from_fixture` is not used: with pytest 9 it fails on a removed
private attribute, so the schema is loaded at import from an app whose database is set by a fixture.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from dbfixtures import fresh_database
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance
from sqlalchemy import select

from azaguard import auth
from azaguard.app import create_app
from azaguard.knowledge import load_knowledge
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.synth import build_demo

EXAMPLES = int(os.environ.get("AZAGUARD_FUZZ_EXAMPLES", "15"))
SEED = os.environ.get("AZAGUARD_FUZZ_SEED", "20261127")

# The database is a placeholder until the `clinic` fixture swaps in the populated demo database:
# loading the schema only needs GET /openapi.json, which never touches it.
APP = create_app(Database("sqlite://", create=False), load_knowledge())
COVERAGE = os.environ.get("AZAGUARD_FUZZ_COVERAGE") == "1"  # the coverage phase: every boundary value, slower
CONFIG = schemathesis.Config.from_dict(
    {**({} if SEED == "random" else {"seed": int(SEED)}), "phases": {"coverage": {"enabled": COVERAGE}}}
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)
# Every answer, errors included, matches the schema the API publishes (the view models are the response models).
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def tokens(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A 30-patient demo clinic on SQLite, and one bearer token per demo login."""
    gen = fresh_database("sqlite", request, tmp_path_factory.mktemp("fuzz"))
    db = next(gen)
    build_demo(db, 30)
    previous, APP.state.db = APP.state.db, db
    with db.session() as s:
        found = {u.username: auth.create_api_token(s, u, "schemathesis") for u in s.scalars(select(m.User))}
    yield found
    APP.state.db = previous
    gen.close()


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@schema.parametrize()
@fuzz(EXAMPLES)
def test_api_as_clinician_never_errors(case: schemathesis.Case[Any], tokens: dict[str, str]) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {tokens['nurse']}"}, checks=CHECKS)


@schema.parametrize()
@fuzz(max(5, EXAMPLES // 2))  # most answers are 403: fewer examples find the same
def test_api_as_patient_never_errors(case: schemathesis.Case[Any], tokens: dict[str, str]) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {tokens['patient1']}"}, checks=CHECKS)
