"""The MLLP lab feed against a real client: python-hl7's `mllp_send` sends files of framed ORU^R01
messages to `azaguard listen` (the command, in its own process) on SQLite and PostgreSQL.

A file of 1,000 messages - full blood counts and liver tests for patients of the synthetic clinic,
some for a patient the clinic does not know (AE), some that are not ORU^R01 at all (AR) - is sent,
then sent again: every answer is the same the second time, carries its message's control id, and
nothing is stored twice. A low neutrophil count sent the same way puts the patient on the worklist
with the critical finding. The listener's log names no patient and no value.

mllp_send reads its file in MLLP frames; its stdin mode does not work on Python 3, so --file always.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from mllp_fixtures import Ack, frame, oru, parse_acks
from sqlalchemy import func, select

from azaguard import service
from azaguard.knowledge import Knowledge
from azaguard.service_models import WorklistQuery
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.synth import build_demo
from azaguard.worklist import stored_assessment

BIN = Path(sys.executable).parent
UNKNOWN = "NMC999999"


def mllp_send() -> str:
    found = shutil.which("mllp_send", path=str(BIN)) or shutil.which("mllp_send")
    if found:
        return found
    if os.environ.get("AZAGUARD_REQUIRE_EHR_TOOLS") == "1":
        pytest.fail("python-hl7's mllp_send is required (AZAGUARD_REQUIRE_EHR_TOOLS=1) but is not installed")
    pytest.skip("python-hl7's mllp_send is not installed")


@contextmanager
def azaguard_listen(db: Database, log: Path) -> Iterator[int]:
    """`azaguard listen --mllp-port 0` on the test database, in its own process; yields its port."""
    env = {**os.environ, "AZAGUARD_DATABASE_URL": db.url}
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [str(BIN / "azaguard"), "listen", "--mllp-port", "0"], stdout=subprocess.PIPE, stderr=err, env=env
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            found = re.search(r"on 127\.0\.0\.1:(\d+)", line)
            assert found, f"the listener did not start: {line!r} {log.read_text()}"
            yield int(found.group(1))
        finally:
            proc.send_signal(signal.SIGTERM)  # a clean stop: connections ended, stores finished
            assert proc.wait(60) == 0


def send(path: Path, port: int) -> list[Ack]:
    done = subprocess.run(
        [mllp_send(), "--file", str(path), "--port", str(port), "127.0.0.1"], capture_output=True, timeout=900
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return parse_acks(done.stdout)


def count(db: Database, model: Any) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def clinic(db: Database) -> list[tuple[int, str]]:
    """The synthetic clinic's patients (id, identifier)."""
    build_demo(db, 30)
    with db.session() as s:
        return [
            (r.id, r.identifier) for r in s.execute(select(m.Patient.id, m.Patient.identifier).order_by(m.Patient.id))
        ]


UNREADABLE = [
    "LAB INTERFACE RESTARTED 03:00",  # not HL7
    oru("X-ADT", "NMC000001", "ADT1").replace("ORU^R01^ORU_R01", "ADT^A08"),  # another message type
    oru("X-DMG", "NMC000001", "DMG1").replace("PV1|1|O", "P@1 line damaged in transfer"),  # a damaged segment
    "MSH|12345|LAB|X-ENC|||\rPID|1||NMC000001\r",  # no encoding characters
]


def thousand(patients: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """1,000 messages and the (code, control id) each must be answered with."""
    messages, expected = [], []
    for i in range(1000):
        when = date.today() - timedelta(days=1 + i % 30)
        if i % 40 == 7:
            messages.append(oru(f"WP{i:05d}", UNKNOWN, f"U{i:05d}", when))
            expected.append(("AE", f"WP{i:05d}"))
        elif i % 50 == 13:
            bad = UNREADABLE[(i // 50) % len(UNREADABLE)]
            messages.append(bad)
            control = "" if not bad.startswith("MSH|^") else bad.split("\r")[0].split("|")[9]
            expected.append(("AR", control))
        else:
            panel = "FBC" if i % 3 else "LFT"
            messages.append(oru(f"WP{i:05d}", patients[i % len(patients)], f"L{i:05d}", when, panel))
            expected.append(("AA", f"WP{i:05d}"))
    return messages, expected


def test_mllp_send_a_thousand_messages_then_the_same_file_again(db: Database, kb: Knowledge, tmp_path: Path) -> None:
    mllp_send()
    known = clinic(db)
    messages, expected = thousand([ident for _, ident in known])
    path = tmp_path / "feed.hl7"
    path.write_bytes(b"".join(frame(msg) for msg in messages))  # MLLP frames, segments ending in \r
    assert Counter(code for code, _ in expected) == {"AA": 955, "AE": 25, "AR": 20}
    results = sum(msg.count("\rOBX|") for msg, (code, _) in zip(messages, expected, strict=True) if code == "AA")
    before = count(db, m.Observation)
    log = tmp_path / "listen.log"
    with azaguard_listen(db, log) as port:
        first = send(path, port)
        assert [(a.code, a.control) for a in first] == expected  # one answer per message, in order, its own id
        stored = count(db, m.Observation)
        assert stored - before == results
        waiting = count(db, m.QuarantineItem)
        again = send(path, port)
    assert [(a.code, a.control) for a in again] == expected  # the resend: AA again, nothing stored twice
    assert count(db, m.Observation) == stored and count(db, m.QuarantineItem) == waiting
    assert "unknown patient 'NMC999999'" in next(a.text for a in first if a.code == "AE")
    # every message audited on the mllp channel, with the ids of the patients it changed
    with db.session() as s:
        audited = set(s.scalars(select(m.AuditEvent.patient_id).where(m.AuditEvent.channel == "mllp")))
        batches = s.scalar(select(func.count()).select_from(m.ImportBatch).where(m.ImportBatch.source.like("mllp %")))
        per_message = s.scalar(
            select(func.count())
            .select_from(m.AuditEvent)
            .where(m.AuditEvent.channel == "mllp", m.AuditEvent.action == "import", m.AuditEvent.patient_id.is_(None))
        )
    assert audited - {None} == {pid for pid, ident in known if any(ident in msg for msg in messages)}
    assert batches == per_message == 2000  # each message (AR ones too) is a batch with its own audit row
    # the log: one line per connection with counts, no patient and no value
    text = log.read_text()
    assert text.count("connection opened") == 2
    assert text.count("1000 message(s) (AA 955, AE 25, AR 20), 0 incomplete frame(s)") == 2
    assert not re.search(r"NMC\d|WP\d|OKAFOR|\b3\.9\b", text)


def test_a_low_neutrophil_count_over_mllp_puts_the_patient_on_the_worklist(
    db: Database, kb: Knowledge, tmp_path: Path
) -> None:
    mllp_send()
    known = clinic(db)
    with db.session() as s:
        on_treatment = [
            (pid, ident)
            for pid, ident in known
            if (a := stored_assessment(s, pid)) is not None
            and a["treatment"]["state"] == "active"
            and "lab-neutrophils-low" not in {f["code"] for f in a["findings"]}
        ]
        nurse = s.scalars(select(m.User).where(m.User.username == "nurse")).one()
    pid, ident = on_treatment[0]
    path = tmp_path / "critical.hl7"
    path.write_bytes(frame(oru("CRIT-1", ident, "CRIT1", date.today(), values={"751-8": "0.4"})))
    with azaguard_listen(db, tmp_path / "listen.log") as port:
        [ack] = send(path, port)
    assert (ack.code, ack.control) == ("AA", "CRIT-1")
    with db.session() as s:
        result = stored_assessment(s, pid)
        assert result is not None
        low = [f for f in result["findings"] if f["code"] == "lab-neutrophils-low"]
        page = service.worklist(s, service.principal_of(nurse), WorklistQuery(needs="critical"), "web")
    assert low and low[0]["severity"] == "critical" and result["knowledge_version"] == kb.version
    assert pid in {e.patient_id for e in page.entries}
    assert next(e for e in page.entries if e.patient_id == pid).worst == "critical"
