"""MLLP test support: realistic ORU^R01 lab messages, a listener running in a background thread, and
an asyncio client that reads acknowledgements the way a laboratory's interface engine does."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, TypeVar

import hl7  # type: ignore[import-untyped]

from azaguard.ehr.mllp import DEFAULT_MAX_FRAME, Background, start_in_thread
from azaguard.knowledge import Knowledge
from azaguard.store.db import Database

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a thread of its own. In the full suite a browser test (Playwright's sync API)
    may leave an event loop running on the main thread, where asyncio.run refuses to start."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


START, END = b"\x0b", b"\x1c\r"

# (LOINC, text, value, unit as labs send it, reference range) per panel: a full blood count and liver tests
FBC = [
    ("6690-2", "Leukocytes", "6.2", "10*9/L", "4.0-11.0"),
    ("751-8", "Neutrophils", "3.9", "10*9/L", "2.0-7.5"),
    ("731-0", "Lymphocytes", "1.6", "x10\\S\\9/L", "1.0-4.0"),
    ("777-3", "Platelets", "245", "x10^9/L", "150-400"),
    ("718-7", "Hemoglobin", "13.8", "g/dL", "12.0-16.0"),
    ("787-2", "MCV", "94", "fL", "80-100"),
]
LFT = [
    ("1742-6", "ALT", "24", "U/L", "0-40"),
    ("6768-6", "ALP", "81", "IU/L", "30-130"),
    ("1975-2", "Bilirubin", "9", "umol/L", "0-21"),
]


def oru(
    control: str,
    patient: str,
    order: str,
    when: date | None = None,
    panel: str = "FBC",
    values: dict[str, str] | None = None,
    name: str = "OKAFOR^GRACE",
) -> str:
    """An ORU^R01 as a hospital laboratory sends it: MSH/PID/PV1/ORC/OBR/OBX, segments ending in \\r."""
    day = (when or date.today() - timedelta(days=1)).strftime("%Y%m%d")
    tests = FBC if panel == "FBC" else LFT
    code, text = ("58410-2", "CBC panel") if panel == "FBC" else ("24325-3", "Hepatic function panel")
    segs = [
        f"MSH|^~\\&|WINPATH|NMC-PATH|AZAGUARD|NEURO-CLINIC|{day}102000||ORU^R01^ORU_R01|{control}|P|2.5.1",
        f"PID|1||{patient}^^^NMC^MR||{name}||19780415|F",
        "PV1|1|O|NEURO^^^NMC",
        f"ORC|RE|{order}^NEUROEPR|{order}L^WINPATH||CM",
        f"OBR|1|{order}^NEUROEPR|{order}L^WINPATH|{code}^{text}^LN|||{day}083000|||||||||||||||{day}102000||HM|F",
    ]
    for n, (loinc, label, value, unit, ref) in enumerate(tests, 1):
        value = (values or {}).get(loinc, value)
        segs.append(f"OBX|{n}|NM|{loinc}^{label}^LN||{value}|{unit}|{ref}|N|||F|||{day}083000")
    return "\r".join(segs) + "\r"


def frame(message: str | bytes) -> bytes:
    return START + (message.encode() if isinstance(message, str) else message) + END


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1
    control: str  # MSA-2
    text: str  # MSA-3
    raw: bytes


def parse_ack(raw: bytes) -> Ack:
    """An acknowledgement as python-hl7 reads it (so it must be valid HL7)."""
    body = raw.strip(b"\x0b\x1c\r\n")
    msg = hl7.parse(body.decode("utf-8"))
    msa = msg.segment("MSA")
    return Ack(str(msa(1)), str(msa(2)), msg.unescape(str(msa(3))) if len(msa) > 3 else "", raw)


def parse_acks(output: bytes) -> list[Ack]:
    """Every ACK in a byte stream (mllp_send's stdout prints each raw answer and a newline)."""
    return [parse_ack(START + part.lstrip(b"\r\n")) for part in output.split(b"\x1c") if part.strip(b"\r\n\x0b ")]


@contextmanager
def listening(
    db: Database, kb: Knowledge, max_frame: int = DEFAULT_MAX_FRAME, store_timeout: float = 60.0
) -> Iterator[Background]:
    """The real listener on a free local port, in a background thread; stopped (cleanly) afterwards."""
    running = start_in_thread(db, kb, "127.0.0.1", 0, max_frame, store_timeout)
    try:
        yield running
    finally:
        running.stop()


class Client:
    """One MLLP connection: send bytes, read framed answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def ack(self, timeout: float = 60.0) -> Ack:
        raw = await asyncio.wait_for(self.reader.readuntil(END), timeout)
        return parse_ack(raw)

    async def call(self, message: str | bytes) -> Ack:
        await self.send(frame(message))
        return await self.ack()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
