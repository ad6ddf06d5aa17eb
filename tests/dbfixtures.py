"""Real databases for tests: SQLite files and a throwaway PostgreSQL cluster (no mocks).

One migrated template per engine per session; each test gets a fresh copy (SQLite: a file copy;
PostgreSQL: CREATE DATABASE ... TEMPLATE), so tests are isolated and still fast.
Set TEST_DATABASE_URL to use an existing PostgreSQL server; otherwise the Debian binaries are
used to start one (as the postgres user when running as root). AZAGUARD_REQUIRE_PG=1 (set by
.ci/run) turns "PostgreSQL not available" into a failure instead of a skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from azaguard.store.db import Database, make_engine, migrate


def _start_cluster() -> Generator[str, None, None]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not bins:
        raise RuntimeError("PostgreSQL binaries not found (apt-get install -y postgresql)")
    pgbin = bins[-1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="azaguard-pg-")
    as_pg: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(tmp, "data")

    def run(*args: str) -> None:
        subprocess.run([*as_pg, *args], check=True, capture_output=True, text=True)

    run(f"{pgbin}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
    opts = (
        f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    run(f"{pgbin}/pg_ctl", "-D", data, "-l", f"{tmp}/server.log", "-w", "-t", "30", "-o", opts, "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_pg, f"{pgbin}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    if os.environ.get("TEST_DATABASE_URL"):
        given = make_url(os.environ["TEST_DATABASE_URL"]).set(database="postgres")
        yield given.render_as_string(hide_password=False)
        return
    try:
        gen = _start_cluster()
        url = next(gen)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        if os.environ.get("AZAGUARD_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL is required but could not be started: {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")
    yield url
    gen.close()


def _admin_exec(admin_url: str, sql: str) -> None:
    eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text(sql))
    eng.dispose()


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> str:
    name = f"azaguard_tpl_{uuid.uuid4().hex[:8]}"
    _admin_exec(pg_admin_url, f'CREATE DATABASE "{name}"')
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    eng = make_engine(url)
    migrate(eng)
    eng.dispose()
    return name


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    eng = make_engine(f"sqlite:///{path}")
    migrate(eng)
    with eng.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    eng.dispose()
    return path


def fresh_database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Generator[Database, None, None]:
    if kind == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "test.db"
        shutil.copy(template, path)
        db = Database(f"sqlite:///{path}", create=False)
        yield db
        db.engine.dispose()
        return
    admin: str = request.getfixturevalue("pg_admin_url")
    tpl: str = request.getfixturevalue("pg_template")
    name = f"azaguard_t_{uuid.uuid4().hex[:10]}"
    _admin_exec(admin, f'CREATE DATABASE "{name}" TEMPLATE "{tpl}"')
    db = Database(make_url(admin).set(database=name).render_as_string(hide_password=False), create=False)
    try:
        yield db
    finally:
        db.engine.dispose()
        _admin_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, migrated database; every test using it runs on SQLite and on PostgreSQL."""
    yield from fresh_database(request.param, request, tmp_path)


@pytest.fixture
def sqlite_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from fresh_database("sqlite", request, tmp_path)
