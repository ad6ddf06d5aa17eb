"""The MLLP lab feed in-process: the framer byte by byte, the acknowledgements, and the real listener
over TCP with asyncio clients - partial frames, noise between frames, a client gone mid-message, an
oversize frame, many connections at once, a busy database - on SQLite (and PostgreSQL where the
`db` fixture is used). tests/test_mllp.py drives it with python-hl7's own client, mllp_send."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import hl7  # type: ignore[import-untyped]
import pytest
from mllp_fixtures import END, FBC, START, Client, frame, listening, oru, parse_ack, run_async
from sqlalchemy import func, select

from azaguard.ehr.mllp import KEEP_HEAD, MAX_ACK, Fragment, Frame, Framer, Oversize, build_ack
from azaguard.ingest.hl7v2 import read_header
from azaguard.knowledge import Knowledge
from azaguard.store import models as m
from azaguard.store.db import Database
from azaguard.store.writes import add_patient


def count(db: Database, model: Any) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def quarantine(db: Database) -> list[m.QuarantineItem]:
    with db.session() as s:
        return list(s.scalars(select(m.QuarantineItem).order_by(m.QuarantineItem.id)))


def register(db: Database, *identifiers: str) -> None:
    with db.session() as s:
        for ident in identifiers:
            add_patient(s, ident, f"Patient {ident}")


# ---------------------------------------------------------------- the framer
STREAM = b"noise\r\n" + frame("MSH|one") + b"\r\n\x00junk" + frame("MSH|two\x1cstill two") + b"\n" + frame("MSH|3")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_frames_are_cut_at_the_end_marker_whatever_the_reads(size: int) -> None:
    framer = Framer()
    events = [e for i in range(0, len(STREAM), size) for e in framer.feed(STREAM[i : i + size])]
    assert events == [Frame(b"MSH|one"), Frame(b"MSH|two\x1cstill two"), Frame(b"MSH|3")]  # 0x1C alone is content
    assert framer.finish() is None
    assert framer.skipped == len(b"noise\r\n") + len(b"\r\n\x00junk") + len(b"\n")


def test_an_oversize_frame_is_measured_not_kept_and_the_next_frame_is_read() -> None:
    framer = Framer(max_frame=1000)
    big = b"MSH|" + b"x" * 200_000
    events: list[Any] = []
    for i in range(0, len(START + big + END), 4096):
        events += framer.feed((START + big + END)[i : i + 4096])
        assert len(framer._buf) + len(framer._head) <= 1000 + 4096 + KEEP_HEAD  # bounded: the limit, one read, the head
    events += framer.feed(frame("MSH|small"))
    assert events == [Oversize(big[:KEEP_HEAD], len(big)), Frame(b"MSH|small")]


def test_a_frame_cut_off_by_a_new_start_or_by_the_end_of_the_stream_is_a_fragment() -> None:
    framer = Framer()
    events = framer.feed(START + b"MSH|half" + frame("MSH|whole") + START + b"MSH|never ended")
    assert events[1] == Frame(b"MSH|whole")
    assert isinstance(events[0], Fragment) and events[0].head == b"MSH|half" and "new frame started" in events[0].reason
    last = framer.finish()
    assert last == Fragment(b"MSH|never ended", 15, "connection closed mid-message")


# ---------------------------------------------------------------- acknowledgements
def test_an_ack_echoes_the_control_id_and_swaps_sender_and_receiver() -> None:
    header = read_header(oru("WP-0001", "MRN1", "ORD1").rstrip("\r"))
    ack = build_ack("AA", header, header.control_id)
    assert ack.startswith(START) and ack.endswith(END)
    msg = hl7.parse(ack.strip(b"\x0b\x1c\r").decode())
    msh, msa = msg.segment("MSH"), msg.segment("MSA")
    assert (str(msa(1)), str(msa(2))) == ("AA", "WP-0001")
    assert [str(msh(n)) for n in (3, 4, 5, 6)] == ["AZAGUARD", "NEURO-CLINIC", "WINPATH", "NMC-PATH"]
    assert str(msh(9)) == "ACK^R01^ACK" and str(msh(12)) == "2.5.1"


def test_a_hostile_message_gets_a_valid_ack_under_4_kib() -> None:
    control = "C" * 5000
    raw = oru(control, "MRN1", "ORD1").replace("WINPATH|NMC-PATH", "é" * 3000 + "|" + "ü" * 3000).rstrip("\r")
    header = read_header(raw)
    text = "reason with | and ^ and ~ and \\ and & \rMSH|^~\\&|INJECTED " + "ß" * 5000
    ack = build_ack("AE", header, header.control_id, text, "102")
    assert len(ack) < MAX_ACK
    parsed = parse_ack(ack)
    assert parsed.code == "AE" and parsed.control == "C" * 199  # MSH-10's longest form (v2.7)
    segments = [seg[:3] for seg in ack.strip(b"\x0b\x1c\r").split(b"\r")]
    assert segments == [b"MSH", b"MSA", b"ERR"]  # the text, escaped, cannot add a segment or a field
    assert parsed.text.startswith("reason with | and ^ and ~ and \\ and & MSH|^~\\&|INJECTED")
    # no header at all (the message could not be split): default separators, the control id as found
    bare = parse_ack(build_ack("AR", None, "X|Y", "not HL7", "102"))
    assert (bare.code, bare.control, bare.text) == ("AR", "X\\F\\Y", "not HL7")  # escaped in the default encoding


# ---------------------------------------------------------------- the listener
def test_each_message_is_answered_with_its_control_id_and_its_fate(db: Database, kb: Knowledge) -> None:
    register(db, "MRN1", "MRN2")
    ok = oru("M-OK", "MRN1", "ORD1")
    cases: list[tuple[str | bytes, str, str]] = [
        (ok, "AA", "M-OK"),
        (ok, "AA", "M-OK"),  # resent: a duplicate, nothing stored twice
        (oru("M-LFT", "MRN2", "ORD2", panel="LFT"), "AA", "M-LFT"),
        (oru("M-UNK", "NOBODY", "ORD3"), "AE", "M-UNK"),  # unknown patient: quarantined
        (oru("M-VAL", "MRN1", "ORD4", values={"751-8": "-1"}), "AE", "M-VAL"),  # impossible value: that OBX only
        (oru("M-ESC", "MRN1", "ORD5", values={"751-8": "3\\Xzz\\1"}), "AE", "M-ESC"),  # invalid escape
        (b"this is not HL7 at all", "AR", ""),
        (oru("M-ADT", "MRN1", "ORD6").replace("ORU^R01^ORU_R01", "ADT^A01"), "AR", "M-ADT"),
        (oru("M-DMG", "MRN1", "ORD7").replace("PV1|1|O", "PVX garbled"), "AR", "M-DMG"),
        (oru("M-TWO", "MRN1", "ORD8") + oru("M-TWO-B", "MRN1", "ORD9"), "AR", "M-TWO"),
        (oru("M-LATIN", "MRN2", "ORD10", name="MÜLLER^JOSÉ").replace("|P|2.5.1", "|P|2.5.1||||||8859/1")
         .encode("latin-1"), "AA", "M-LATIN"),  # not UTF-8, but MSH-18 names the character set: read
        (b"MSH|^~\\&|LAB|H|AZA|C|20250101||ORU^R01|M-BYTES|P|2.5.1\rPID|1||\xff\xfe\r", "AR", "M-BYTES"),
    ]  # fmt: skip

    async def run(port: int) -> list[tuple[str, str]]:
        client = await Client.open(port)
        got = [(a.code, a.control) for a in [await client.call(msg) for msg, _, _ in cases]]
        await client.close()
        return got

    with listening(db, kb) as feed:
        got = run_async(run(feed.port))
    assert got == [(code, control) for _, code, control in cases]
    with db.session() as s:
        stored = s.scalar(select(func.count()).select_from(m.Observation).where(m.Observation.kind == "lab"))
    assert stored == 6 + 3 + 5 + 5 + 6  # M-OK once, M-LFT, the good results of M-VAL and M-ESC, M-LATIN
    reasons = " | ".join(q.reason for q in quarantine(db))
    for expected in ("unknown patient", "impossible value", "invalid escape", "does not start with an MSH",
                     "ADT^A01 is not ORU^R01", "damaged message", "2 messages in one frame", "not UTF-8"):  # fmt: skip
        assert expected in reasons


def test_partial_frames_and_noise_between_frames(sqlite_db: Database, kb: Knowledge) -> None:
    register(sqlite_db, "MRN1")
    stream = b"\r\n\r\n" + frame(oru("P-1", "MRN1", "ORD1")) + b"keep-alive\n" + frame(oru("P-2", "MRN1", "ORD2"))

    async def run(port: int) -> list[str]:
        client = await Client.open(port)
        for i in range(0, len(stream), 7):  # seven bytes at a time, as a slow link delivers them
            await client.send(stream[i : i + 7])
            await asyncio.sleep(0.001)
        acks = [await client.ack(), await client.ack()]
        await client.close()
        return [f"{a.code} {a.control}" for a in acks]

    with listening(sqlite_db, kb) as feed:
        assert run_async(run(feed.port)) == ["AA P-1", "AA P-2"]
    assert count(sqlite_db, m.Observation) == 12


def test_a_client_gone_mid_message_stores_nothing_and_the_fragment_is_kept(db: Database, kb: Knowledge) -> None:
    register(db, "MRN1")
    whole = frame(oru("GONE-1", "MRN1", "ORD1"))

    async def run(port: int) -> tuple[bytes, str]:
        client = await Client.open(port)
        await client.send(whole[: len(whole) // 2])
        await asyncio.sleep(0.05)
        await client.close()  # no end marker: no message, no ACK
        other = await Client.open(port)  # the listener carries on
        ack = await other.call(oru("NEXT-1", "MRN1", "ORD2"))
        await other.close()
        return whole[: len(whole) // 2], f"{ack.code} {ack.control}"

    with listening(db, kb) as feed:
        sent, answer = run_async(run(feed.port))
    assert answer == "AA NEXT-1"
    items = quarantine(db)
    assert len(items) == 1 and "connection closed mid-message" in items[0].reason
    assert items[0].original.encode() == sent[1:]  # the fragment as received, after the start byte
    with db.session() as s:  # only NEXT-1's results: nothing of the half message
        assert set(s.scalars(select(m.Observation.source_key).distinct())) == {
            f"hl7:NMC-PATH:ORD2L:{code}:1" for code, *_ in FBC
        }


def test_an_oversize_frame_is_answered_ar_and_kept_in_quarantine(sqlite_db: Database, kb: Knowledge) -> None:
    register(sqlite_db, "MRN1")
    big = oru("BIG-1", "MRN1", "ORD1") + "NTE|1|L|" + "x" * 10_000 + "\r"

    async def run(port: int) -> list[str]:
        client = await Client.open(port)
        acks = [await client.call(big), await client.call(oru("SMALL-1", "MRN1", "ORD2"))]
        await client.close()
        return [f"{a.code} {a.control} {a.text[:45]}" for a in acks]

    with listening(sqlite_db, kb, max_frame=4000) as feed:
        first, second = run_async(run(feed.port))
    assert first.startswith("AR BIG-1 frame of") and "over the 4000-byte limit" in quarantine(sqlite_db)[0].reason
    assert second == "AA SMALL-1 "
    assert count(sqlite_db, m.Observation) == 6  # SMALL-1 only


def test_many_connections_at_once_store_each_result_once(db: Database, kb: Knowledge) -> None:
    patients = [f"MRN{i}" for i in range(10)]
    register(db, *patients)
    messages = [oru(f"C-{n}", patients[n % 10], f"ORD{n}") for n in range(60)]

    async def client(port: int, mine: list[str]) -> list[str]:
        c = await Client.open(port)
        got = [(await c.call(msg)).code for msg in mine]
        await c.close()
        return got

    async def run(port: int) -> list[list[str]]:
        # 20 connections; each sends 6 messages of its own and 3 that another connection sends too
        work = [messages[i * 3 : i * 3 + 6] + messages[(i * 3 + 30) % 60 : (i * 3 + 30) % 60 + 3] for i in range(20)]
        return await asyncio.gather(*(client(port, w) for w in work))

    with listening(db, kb) as feed:
        results = run_async(run(feed.port))
    assert {code for codes in results for code in codes} == {"AA"}
    assert count(db, m.Observation) == 60 * 6  # every result once, whatever the races
    assert quarantine(db) == []


def test_a_busy_database_is_waited_for_and_only_then_refused(
    sqlite_db: Database, kb: Knowledge, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(sqlite_db, "MRN1")

    def hold(seconds: float, holding: threading.Event) -> None:
        with sqlite_db.write():  # another writer holds the write lock
            holding.set()
            time.sleep(seconds)

    async def send(port: int, msg: str) -> tuple[str, str, float]:
        started = time.monotonic()
        c = await Client.open(port)
        ack = await c.call(msg)
        await c.close()
        return ack.code, ack.text, time.monotonic() - started

    # waits: the lock is held for 1 s, the message is stored once it is free
    holding = threading.Event()
    holder = threading.Thread(target=hold, args=(1.0, holding))
    with listening(sqlite_db, kb) as feed:
        holder.start()
        holding.wait()
        code, _, took = run_async(send(feed.port, oru("BUSY-1", "MRN1", "ORD1")))
        holder.join()
    assert code == "AA" and took >= 0.8 and count(sqlite_db, m.Observation) == 6
    # refused: the lock is held longer than the store timeout (each try gives up after 0.2 s)
    monkeypatch.setenv("AZAGUARD_BUSY_TIMEOUT", "0.2")
    impatient = Database(sqlite_db.url, create=False)
    holding = threading.Event()
    holder = threading.Thread(target=hold, args=(2.5, holding))
    with listening(impatient, kb, store_timeout=1.0) as feed:
        holder.start()
        holding.wait()
        code, text, _ = run_async(send(feed.port, oru("BUSY-2", "MRN1", "ORD2")))
        holder.join()
        assert (code, text) == ("AR", "database busy: nothing stored; send the message again")
        assert count(sqlite_db, m.Observation) == 6 and quarantine(sqlite_db) == []  # nothing half-stored
        code, _, _ = run_async(send(feed.port, oru("BUSY-2", "MRN1", "ORD2")))  # the sender tries again
    impatient.engine.dispose()
    assert code == "AA" and count(sqlite_db, m.Observation) == 12


def test_no_patient_data_in_any_log_line(sqlite_db: Database, kb: Knowledge, caplog: pytest.LogCaptureFixture) -> None:
    register(sqlite_db, "MRN1")
    caplog.set_level(logging.DEBUG)
    hostile = oru("LOG-1", "NMC-SECRET-ID", "ORD1", name="SECRET^NAME")  # unknown patient
    escape = oru("LOG-2", "MRN1", "ORD2", values={"751-8": "3\\Xzz\\1"})  # an escape python-hl7 would log

    async def run(port: int) -> list[str]:
        c = await Client.open(port)
        codes = [(await c.call(hostile)).code, (await c.call(escape)).code]
        await c.send(START + b"MSH|^~\\&|SECRET-FRAGMENT")  # gone mid-message
        await c.close()
        return codes

    with listening(sqlite_db, kb) as feed:
        assert run_async(run(feed.port)) == ["AE", "AE"]
        for _ in range(100):  # the close line is written once the fragment is stored
            if "connection closed" in caplog.text:
                break
            time.sleep(0.02)
    for secret in ("SECRET", "Xzz", "MRN1", "NMC", "3.9", "OKAFOR"):
        assert secret not in caplog.text
    mllp_lines = [r.getMessage() for r in caplog.records if r.name == "azaguard.mllp"]
    assert sum("connection opened" in line for line in mllp_lines) == 1
    closed = [line for line in mllp_lines if "connection closed" in line]
    assert len(closed) == 1 and "2 message(s) (AA 0, AE 2, AR 0), 1 incomplete frame(s)" in closed[0]


def test_a_database_that_cannot_be_used_is_answered_ar_and_logged_without_content(
    tmp_path: Any, kb: Knowledge, caplog: pytest.LogCaptureFixture
) -> None:
    from azaguard.ehr.mllp import LabFeed

    caplog.set_level(logging.DEBUG)
    gone = Database(f"sqlite:///{tmp_path}/no/such/folder/azaguard.db", create=False)
    reply = LabFeed(gone, kb).message(oru("DOWN-1", "MRN-SECRET", "ORD1").encode(), "127.0.0.1")
    ack = parse_ack(reply.ack)
    assert (reply.code, ack.control) == ("AR", "DOWN-1")
    assert ack.text == "internal error (OperationalError): nothing stored; send the message again"
    assert "mllp: a message could not be stored: OperationalError" in caplog.text and "SECRET" not in caplog.text
