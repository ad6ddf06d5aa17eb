"""The live laboratory feed: HL7 v2 over MLLP into the import pipeline, one message at a time.

A laboratory (or its interface engine) keeps a TCP connection open and sends each ORU^R01 message
in an MLLP frame (`0x0B message 0x1C 0x0D`); it waits for an acknowledgement before sending the
next, and sends a message again until it gets one. So every message must be answered exactly once,
in one write, and only after its fate is certain:

- AA: stored (or already stored: a resend is a duplicate, nothing is stored twice);
- AE: read, but one or more of its records went to quarantine (unknown patient, bad value,
  invalid escape ...); the rest of the message is stored. Fix and re-process from quarantine;
- AR: the message cannot be read as an ORU^R01 (not HL7, another message type, a damaged segment,
  an oversize frame): kept whole in quarantine. Also AR, and nothing stored, when the database
  stayed busy past the store timeout or an internal error stopped the unit of work: HL7 v2 (table
  0008, original mode) reserves AR for "cannot process for reasons unrelated to content", after
  which the sender sends again; AE would tell it the content is wrong.

MSA-2 is always the message's own MSH-10. Each message is one unit of work through
`service.import_parsed` (the same reader, pipeline, re-assessment and audit trail as a file import,
channel "mllp"), run on a worker thread so the event loop keeps serving other connections; a busy
database is waited for and retried, never answered early. The framer is our own (python-hl7's
server would parse every message a second time): bytes outside frames are skipped and counted,
a frame may arrive across many reads, a frame over the size limit is answered AR and its head kept
in quarantine, and a frame cut off (by the next frame's start, or by the connection closing) is
kept in quarantine unanswered, since there is no complete message to acknowledge.

Logs carry counts and peer addresses only, never message content.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError

from azaguard import service
from azaguard.ingest.hl7v2 import Header, HL7Error, parse_hl7_text, read_header, split_messages
from azaguard.ingest.items import Parsed, Reject
from azaguard.ingest.pipeline import ImportSummary
from azaguard.knowledge import Knowledge
from azaguard.store.db import Database, is_busy

log = logging.getLogger("azaguard.mllp")

CHANNEL = "mllp"  # audit_log.channel (8 characters at most)
START, END = b"\x0b", b"\x1c\r"
DEFAULT_MAX_FRAME = 4 * 1024 * 1024  # bytes; a lab result message is a few kilobytes
KEEP_HEAD = 64 * 1024  # bytes of an oversize or cut-off frame kept in quarantine
DEFAULT_STORE_TIMEOUT = 60.0  # seconds a message may wait for a busy database before AR
DEFAULT_WORKERS = 4  # threads storing messages (SQLite writers still take turns at the write gate)
READ_SIZE = 64 * 1024
MAX_ACK = 4000  # bytes: python-hl7's mllp_send reads an answer with a single recv(4096)
MAX_TEXT = 200  # characters of explanation in MSA-3 and ERR-8
MAX_COPIED = 120  # characters of each MSH field copied from the message into the ACK
MAX_CONTROL_ID = 199  # MSH-10's length in HL7 v2.7+
DEFAULT_SEPARATORS = ("|", "^~\\&")
# HL7 table 0357 (message error condition codes) as ERR-3 uses them here.
ERROR_CODES = {
    "100": "Segment sequence error", "102": "Data type error", "103": "Table value not found",
    "200": "Unsupported message type", "204": "Unknown key identifier", "205": "Duplicate key identifier",
    "206": "Application record locked", "207": "Application internal error",
}  # fmt: skip
T = TypeVar("T")


# ---------------------------------------------------------------- framing
@dataclass(frozen=True)
class Frame:
    """A complete frame's content."""

    data: bytes


@dataclass(frozen=True)
class Oversize:
    """A complete frame over the size limit: its first KEEP_HEAD bytes, and its size."""

    head: bytes
    size: int


@dataclass(frozen=True)
class Fragment:
    """A frame that never ended: its first KEEP_HEAD bytes, its size so far, and why it ended."""

    head: bytes
    size: int
    reason: str


class Framer:
    """Cuts a byte stream into MLLP frames: skip to 0x0B, cut at 0x1C 0x0D.

    Memory stays bounded by `max_frame` (plus one read): a frame that grows past it is no longer
    kept, only its head and its length, until its end arrives. A 0x0B inside a frame starts a new
    frame (a sender that gave up on one and started again); the unfinished one becomes a Fragment."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.skipped = 0  # bytes outside any frame (noise between frames, a keep-alive newline ...)
        self._buf = bytearray()
        self._inside = False
        self._scan = 0  # where the search for the end resumes in _buf
        self._dropped = 0  # bytes of the current (oversize) frame no longer in _buf
        self._head = b""  # the first bytes (up to KEEP_HEAD) of the current frame's part no longer in _buf

    def feed(self, data: bytes) -> list[Frame | Oversize | Fragment]:
        out: list[Frame | Oversize | Fragment] = []
        buf = self._buf
        buf += data
        while buf:
            if not self._inside:
                start = buf.find(START)
                if start < 0:
                    self.skipped += len(buf)
                    buf.clear()
                    break
                self.skipped += start
                del buf[: start + 1]
                self._inside, self._scan, self._dropped, self._head = True, 0, 0, b""
                continue
            end = buf.find(END, self._scan)
            restart = buf.find(START, self._scan, end if end >= 0 else len(buf))
            if restart >= 0:  # a new frame started before this one ended
                out.append(self._cut(restart, "a new frame started (0x0B) before this one ended (0x1C 0x0D)"))
                del buf[:restart]
                self._inside = False
                continue
            if end < 0:
                self._scan = max(0, len(buf) - 1)  # the end marker may be split across reads
                if self._dropped + len(buf) > self.max_frame and len(buf) > 1:
                    drop = len(buf) - 1  # all but the last byte, which may begin the end marker
                    self._head = self._head_with(drop)
                    self._dropped += drop
                    del buf[:drop]
                    self._scan = 0
                break
            size = self._dropped + end
            if size > self.max_frame:
                out.append(Oversize(self._head_with(end), size))
            else:
                out.append(Frame(bytes(buf[:end])))
            del buf[: end + len(END)]
            self._inside = False
        return out

    def _head_with(self, upto: int) -> bytes:
        """The frame's first KEEP_HEAD bytes: those kept so far, then from the first `upto` of _buf."""
        return self._head + bytes(self._buf[: max(0, min(KEEP_HEAD - len(self._head), upto))])

    def _cut(self, at: int, reason: str) -> Fragment:
        return Fragment(self._head_with(at), self._dropped + at, reason)

    def finish(self) -> Fragment | None:
        """At the end of the stream: the frame still open, if any."""
        if not self._inside:
            self.skipped += len(self._buf)
            self._buf.clear()
            return None
        fragment = self._cut(len(self._buf), "connection closed mid-message")
        self._buf.clear()
        self._inside = False
        return fragment


# ---------------------------------------------------------------- acknowledgements
@dataclass(frozen=True)
class Reply:
    code: str  # AA | AE | AR
    ack: bytes  # the framed acknowledgement


def _escape(text: str, fs: str, enc: str) -> str:
    """Text for one field: separators as HL7 escape sequences (\\F\\ \\S\\ \\R\\ \\E\\ \\T\\), no line breaks
    or other control characters. Other characters stay as they are (the ACK is sent in the message's
    own character set), where python-hl7's escape() would write them as \\Xhh\\ code points."""
    table = {enc[2]: "E", fs: "F", enc[0]: "S", enc[1]: "R", enc[3]: "T"}
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return "".join(f"{enc[2]}{table[c]}{enc[2]}" if c in table else c for c in flat)


def _control_id(text: str) -> str:
    """MSH-10 as sent, read without the reader's checks, for an answer to a message it refuses."""
    if not text.startswith("MSH") or len(text) < 4:
        return ""
    fields = text.split("\r", 1)[0].split(text[3])
    return fields[9] if len(fields) > 9 else ""


def build_ack(
    code: str,
    header: Header | None,
    control_id: str,
    text: str = "",
    error: str = "",
    charset: str = "utf-8",
    when: datetime | None = None,
) -> bytes:
    """The framed ACK (original mode): MSH, MSA (code, the message's control id, text), and for AE/AR
    an ERR segment with the HL7 table 0357 `error` code. The sender's MSH fields are copied with the
    sender's own separators (so MSA-2 is MSH-10 byte for byte); a message that could not be split
    is answered with the default separators. Always under MAX_ACK bytes."""
    usable = header is not None and len(header.encoding) >= 4 and not header.field_separator.isspace()
    fs, enc = (header.field_separator, header.encoding[:4]) if header is not None and usable else DEFAULT_SEPARATORS
    comp = enc[0]

    def copied(value: str, limit: int = MAX_COPIED) -> str:
        if header is not None and usable:
            return value[:limit]  # as sent, in the same encoding
        return _escape(value[:limit], fs, enc)

    stamp = (when or datetime.now(UTC)).strftime("%Y%m%d%H%M%S+0000")
    trigger = copied(header.trigger) if header is not None else ""
    msh = [
        "MSH", enc,
        copied(header.receiving_application) if header is not None and header.receiving_application else "AZAGUARD",
        copied(header.receiving_facility) if header is not None else "",
        copied(header.sending_application) if header is not None else "",
        copied(header.sending_facility) if header is not None else "",
        stamp, "", f"ACK{comp}{trigger}{comp}ACK", f"AZA{uuid.uuid4().hex[:17]}",
        (copied(header.processing_id) if header is not None else "") or "P",
        (copied(header.version) if header is not None else "") or "2.5.1",
    ]  # fmt: skip
    msa = ["MSA", code, copied(control_id, MAX_CONTROL_ID)]
    segments = [msh, msa]
    if code != "AA":
        said = _escape(text[:MAX_TEXT], fs, enc)
        msa.append(said)
        segments.append(
            ["ERR", "", "", comp.join([error, ERROR_CODES.get(error, ""), "HL70357"]), "E", "", "", "", said]
        )
    ack = "".join(fs.join(seg) + "\r" for seg in segments).encode(charset, "replace")
    if len(ack) + len(START) + len(END) > MAX_ACK and text:
        return build_ack(code, header, control_id, "", error, charset, when)
    return START + ack + END


# ---------------------------------------------------------------- one message, one unit of work
_CHARSETS = {f"8859/{n}": f"iso8859-{n}" for n in range(1, 16) if n != 12} | {
    "ASCII": "ascii", "ISO IR6": "ascii", "ISO IR100": "iso8859-1", "UNICODE UTF-8": "utf-8",
}  # fmt: skip


def decode(data: bytes) -> tuple[str | None, str]:
    """(text or None, codec): UTF-8 (HL7's ASCII default is a subset of it), or the character set
    MSH-18 declares. None when the bytes are neither."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    first = data.split(b"\r", 1)[0].decode("latin-1")
    declared = ""
    if first.startswith("MSH") and len(first) > 3:
        fields = first.split(first[3])
        declared = fields[17].split(fields[1][1:2] or "~")[0].strip().upper() if len(fields) > 17 else ""
    codec = _CHARSETS.get(declared)
    if codec is None:
        return None, "utf-8"
    try:
        return data.decode(codec), codec
    except UnicodeDecodeError:
        return None, "utf-8"


def _error_code(reason: str) -> str:
    """An HL7 table 0357 code for a quarantine reason (the words stay in MSA-3 and ERR-8)."""
    if reason.startswith("unknown patient") or "PID" in reason:
        return "204"
    if reason.startswith(("unknown code", "unknown unit")):
        return "103"
    if "conflicts with the stored result" in reason or "already belongs" in reason:
        return "205"
    return "102"


class LabFeed:
    """Stores what arrives over MLLP, message by message, and says how to answer each. Thread-safe:
    every call is its own unit of work on the shared Database."""

    def __init__(self, db: Database, kb: Knowledge, store_timeout: float = DEFAULT_STORE_TIMEOUT) -> None:
        self.db = db
        self.kb = kb
        self.store_timeout = store_timeout

    def message(self, data: bytes, peer: str) -> Reply:
        """Store one frame's message and answer it (the module docstring has the rules)."""
        try:
            return self._message(data, peer)
        except Exception as exc:  # a fault of ours: the sender keeps the message and sends it again
            return self._failed(exc, None, _control_id(data.decode("utf-8", "replace")), "utf-8")

    def _message(self, data: bytes, peer: str) -> Reply:
        source = f"{CHANNEL} {peer}"
        text, charset = decode(data)
        if text is None:
            why = "not UTF-8 text, and MSH-18 names no character set that reads it"
            original = data.decode("utf-8", "backslashreplace")
            return self._refuse(original, why, None, _control_id(original), source, charset)
        messages = split_messages(text)
        if not messages:
            return Reply("AR", build_ack("AR", None, "", "empty frame: no message", "100"))
        if len(messages) > 1:
            why = f"{len(messages)} messages in one frame; MLLP carries one message per frame"
            return self._refuse(text, why, None, _control_id(messages[0]), source, charset)
        try:
            header: Header | None = read_header(messages[0])
        except HL7Error:
            header = None
        parsed = parse_hl7_text(text, self.kb, source)
        refused = "not a parsable HL7 v2 message" if header is None else header.readable
        control = header.control_id if header is not None else _control_id(messages[0])
        try:
            summary = self._store(parsed, source)
        except Exception as exc:
            return self._failed(exc, header, control, charset)
        if refused is not None:
            why = parsed.rejects[0].reason if parsed.rejects else refused
            code = "200" if header is not None and header.message_type != "ORU^R01" else "100"
            return Reply("AR", build_ack("AR", header, control, f"{why}; kept in quarantine", code, charset))
        quarantined = summary.counts.get("quarantined", 0)
        if quarantined:
            first = summary.rejects[0].reason if summary.rejects else "see quarantine"
            total = len(parsed.items) + len(parsed.rejects)
            said = f"{quarantined} of {total} record(s) quarantined: {first}"
            return Reply("AE", build_ack("AE", header, control, said, _error_code(first), charset))
        return Reply("AA", build_ack("AA", header, control, charset=charset))

    def oversize(self, head: bytes, size: int, limit: int, peer: str) -> Reply:
        source = f"{CHANNEL} {peer}"
        original = head.decode("utf-8", "backslashreplace")
        why = (
            f"frame of {size} bytes is over the {limit}-byte limit: not read; its first "
            f"{min(len(head), size)} bytes are kept here"
        )
        return self._refuse(original, why, None, _control_id(original), source, "utf-8")

    def fragment(self, head: bytes, size: int, reason: str, peer: str) -> None:
        """Keep an unfinished frame in quarantine (there is nothing to acknowledge; its sender, having
        no answer, sends the message again)."""
        original = head.decode("utf-8", "backslashreplace")
        if not original.strip():
            return
        detail = f"incomplete MLLP frame ({size} bytes): {reason}"
        parsed = Parsed("hl7v2", [], [Reject(f"{CHANNEL} {peer} frame", detail, original)])
        try:
            self._store(parsed, f"{CHANNEL} {peer}")
        except Exception as exc:
            log.error("mllp: an incomplete frame could not be kept in quarantine: %s", type(exc).__name__)

    def _refuse(self, original: str, why: str, header: Header | None, control: str, source: str, charset: str) -> Reply:
        """AR for input the reader cannot take at all, kept whole in quarantine."""
        parsed = Parsed("hl7v2", [], [Reject(f"{source} frame", why, original)])
        try:
            self._store(parsed, source)
        except Exception as exc:
            return self._failed(exc, header, control, charset)
        return Reply("AR", build_ack("AR", header, control, f"{why}; kept in quarantine", "207", charset))

    def _failed(self, exc: Exception, header: Header | None, control: str, charset: str) -> Reply:
        if _is_busy(exc):
            why = "database busy: nothing stored; send the message again"
            return Reply("AR", build_ack("AR", header, control, why, "206", charset))
        log.error("mllp: a message could not be stored: %s", type(exc).__name__)
        why = f"internal error ({type(exc).__name__}): nothing stored; send the message again"
        return Reply("AR", build_ack("AR", header, control, why, "207", charset))

    def _store(self, parsed: Parsed, source: str) -> ImportSummary:
        """One unit of work (`service.import_parsed`: store, re-assess, audit), tried again while the
        database is busy or a concurrent import of the same record won the race (the retry then
        finds it a duplicate), until `store_timeout` has passed."""
        deadline = time.monotonic() + self.store_timeout
        pause = 0.02
        while True:
            try:
                with self.db.session() as s:
                    return service.import_parsed(s, self.kb, None, parsed, source, CHANNEL)
            except Exception as exc:
                if not (_is_busy(exc) or isinstance(exc, IntegrityError)) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def _is_busy(exc: BaseException) -> bool:
    return is_busy(exc) or (exc.__cause__ is not None and is_busy(exc.__cause__))


# ---------------------------------------------------------------- the listener
class Listener:
    """An asyncio TCP server speaking MLLP; storage runs on a small thread pool."""

    def __init__(
        self,
        feed: LabFeed,
        host: str = "127.0.0.1",
        port: int = 2575,
        max_frame: int = DEFAULT_MAX_FRAME,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.feed = feed
        self.host = host
        self.port = port
        self.max_frame = max_frame
        self.open = 0
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="azaguard-mllp")
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, limit=READ_SIZE)
        self.port = self._server.sockets[0].getsockname()[1]  # the port chosen when 0 was asked for
        log.info("mllp listening on %s:%d (frames up to %d bytes)", self.host, self.port, self.max_frame)

    async def stop(self) -> None:
        """Stop accepting, end the connections, let messages being stored finish (they are atomic;
        their senders get no answer and send them again, as duplicates)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else "local"
        label = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) > 1 else host
        framer = Framer(self.max_frame)
        counts: Counter[str] = Counter()
        started = time.monotonic()
        self.open += 1
        log.info("mllp connection opened: %s (%d open)", label, self.open)
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                for event in framer.feed(data):
                    if isinstance(event, Fragment):
                        await self._call(self.feed.fragment, event.head, event.size, event.reason, host)
                        counts["incomplete"] += 1
                        continue
                    if isinstance(event, Oversize):
                        reply = await self._call(self.feed.oversize, event.head, event.size, self.max_frame, host)
                    else:
                        reply = await self._call(self.feed.message, event.data, host)
                    counts[reply.code] += 1
                    writer.write(reply.ack)  # one write per answer: some clients read it with one recv()
                    await writer.drain()
        except (ConnectionError, OSError) as exc:
            counts["errors"] += 1
            log.info("mllp connection %s: %s", label, type(exc).__name__)
        finally:
            pending = framer.finish()
            if pending is not None:
                counts["incomplete"] += 1
                with suppress(Exception):
                    await self._call(self.feed.fragment, pending.head, pending.size, pending.reason, host)
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()
            self.open -= 1
            if task is not None:
                self._tasks.discard(task)
            log.info(
                "mllp connection closed: %s after %.1f s: %d message(s) (AA %d, AE %d, AR %d), "
                "%d incomplete frame(s), %d byte(s) outside frames",
                label, time.monotonic() - started, counts["AA"] + counts["AE"] + counts["AR"],
                counts["AA"], counts["AE"], counts["AR"], counts["incomplete"], framer.skipped,
            )  # fmt: skip


def listen(
    db: Database,
    kb: Knowledge,
    host: str,
    port: int,
    max_frame: int = DEFAULT_MAX_FRAME,
    store_timeout: float = DEFAULT_STORE_TIMEOUT,
    ready: Callable[[Listener], None] | None = None,
) -> None:
    """Run the listener until SIGINT or SIGTERM (`azaguard listen`)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        listener = Listener(LabFeed(db, kb, store_timeout), host, port, max_frame)
        await listener.start()
        if ready is not None:
            ready(listener)
        await stop.wait()
        await listener.stop()

    asyncio.run(main())


class Background:
    """A listener on an event loop of its own in a daemon thread (`azaguard serve --mllp-port`, tests,
    bench/mllp.py). Created listening: a port in use raises here, before anything else starts."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="azaguard-mllp-listener", daemon=True)
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(listener.start(), self.loop).result(30)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            raise

    @property
    def port(self) -> int:
        return self.listener.port

    def stop(self, timeout: float = 60.0) -> None:
        """Stop as `Listener.stop` does, then end the thread."""
        asyncio.run_coroutine_threadsafe(self.listener.stop(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        self.loop.close()


def start_in_thread(
    db: Database,
    kb: Knowledge,
    host: str,
    port: int,
    max_frame: int = DEFAULT_MAX_FRAME,
    store_timeout: float = DEFAULT_STORE_TIMEOUT,
    workers: int = DEFAULT_WORKERS,
) -> Background:
    """The listener, running in the background (see Background)."""
    return Background(Listener(LabFeed(db, kb, store_timeout), host, port, max_frame, workers))
