"""A 200 MB request body against a real server: refused with 413 within a second, with the
server's memory barely moving. Prints one line per route.

    .venv/bin/python bench/limits.py
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PORT = 8791
ROUTES = ("/api/v1/token", "/api/v1/import", "/login", "/import")
SIZE = 200 * 1024 * 1024


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def post_huge(path: str) -> tuple[int, float]:
    """Send the headers of a 200 MB body and as much of it as the server reads; time the answer."""
    sock = socket.create_connection(("127.0.0.1", PORT), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {SIZE}\r\n\r\n"
    )
    start = time.perf_counter()
    sock.sendall(head.encode())
    sock.setblocking(False)
    chunk, sent, reply = b"x" * 65536, 0, b""
    while time.perf_counter() - start < 10:
        try:
            reply += sock.recv(4096)
            if b"\r\n\r\n" in reply:
                break
        except BlockingIOError:
            pass
        if sent < SIZE:
            with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                sent += sock.send(chunk)
    elapsed = time.perf_counter() - start
    sock.close()
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
    return status, elapsed


def main() -> int:
    folder = tempfile.mkdtemp(prefix="azaguard-limits-")
    env = {**os.environ, "AZAGUARD_DATABASE_URL": f"sqlite:///{folder}/limits.db"}
    server = subprocess.Popen(
        [sys.executable, "-m", "azaguard.cli", "serve", "--demo", "--port", str(PORT)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        before = rss_kb(server.pid)
        print(f"{'route':<18} {'status':>6} {'seconds':>8} {'RSS growth MB':>14}")
        for path in ROUTES:
            status, seconds = post_huge(path)
            grown = (rss_kb(server.pid) - before) / 1024
            print(f"{path:<18} {status:>6} {seconds:>8.3f} {grown:>14.1f}")
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
