"""The EHR side, for real, offline: the FHIR memory server and the SMART launcher as pytest fixtures.

Both are Node tools from ../shared/tools (their READMEs say what they are). Import the fixtures into
a test module and add the file's name to EHR_FILES in tests/conftest.py (marker `ehr`):

    import ehr_tools
    from ehr_tools import FhirServer, SmartLauncher

    fhir_server = ehr_tools.fhir_server  # the fixtures, by name (a plain import of a fixture that is
    smart_launcher = ehr_tools.smart_launcher  # then a test's argument trips ruff's F811)

    def test_it(fhir_server: FhirServer) -> None:
        pid = fhir_server.add_patient_on_azathioprine("MRN-1", neut=0.8)   # the EHR's Patient id
        found = fhir_server.search("Observation", patient=pid)             # the resources of the searchset

Fixtures (session scope: one server each per test run; tests share them, so give every patient its
own identifier):

- `fhir_server` -> `FhirServer`: Medplum's in-memory FHIR R4 server. `.base` is
  `http://127.0.0.1:PORT/fhir/R4` (always 127.0.0.1, never localhost: JWT `aud`/`iss` and launch
  URLs are compared as strings). `.post_bundle(bundle)` POSTs a transaction Bundle and returns the
  response Bundle (assigned ids in `entry[i].response.location` and `entry[i].resource`);
  `transaction(builder)` turns an `azaguard.fhirbuild.BundleBuilder` into such a Bundle (POST
  entries, urn:uuid fullUrls, references rewritten so they resolve); `.post_builder(builder)` posts
  one and returns the new Patient's id; `.add_patient_on_azathioprine(identifier, **labs)` builds a
  typical patient on azathioprine (Patient.identifier = `identifier`, myasthenia, weight, TPMT and
  NUDT15 normal, a full set of bloods two days ago - any of `wbc`, `neut`, `plt`, `alt`, `creat`
  overrides a value - then `extra(builder)` if given) and returns its FHIR id. `.get(path)` and
  `.search(type, **params)` read back.
- `smart_launcher` -> `SmartLauncher` (uses `fhir_server`): the reference SMART App Launch v2 EHR
  simulator proxying the FHIR server with OAuth. `.base` `http://127.0.0.1:PORT`; `.iss` the EHR
  launch's FHIR base (`{base}/v/r4/fhir`); `.launch_code(patient, provider, ...)` the launcher's
  launch options as its codec (src/isomorphic/codec.ts) writes them; `.ehr_launch_url(app_launch,
  patient, provider, ...)` the URL an EHR opens (`{app_launch}?iss=...&launch=...`: no UI, the
  login and approval screens skipped, encounter "NONE"); `.standalone_iss(patient, provider, ...)`
  the `iss` of a standalone launch (`{base}/v/r4/sim/<options>/fhir`, launch type provider-standalone);
  `.jwks_uri` (`{base}/keys`; its id_tokens are RS256 with the launcher's private-key.pem and no
  `kid`, `fhirUser` = `Practitioner/<provider>`).

Where the tools come from: `AZAGUARD_TOOLS_DIR` if set (CI prepares it: a copy of each tool with its
node_modules), else the git-ignored cache test-artifacts/ehr-tools/, which the fixtures fill
themselves from `AZAGUARD_SHARED_TOOLS` (default <repo>/../shared/tools, which may be read-only):
a copy, then `npm install --no-package-lock` (FHIR server, ~5 s) or `npm ci` (launcher, its lock
file, ~60 s), once; the copy is refreshed when its source changes. Without node, npm or the tools
the tests skip, unless AZAGUARD_REQUIRE_EHR_TOOLS=1 (CI), which makes that a failure. Each server's
output goes to test-artifacts/ehr-logs/.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any, NoReturn
from urllib.parse import urlencode

import httpx
import pytest

from azaguard.fhirbuild import BundleBuilder

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "test-artifacts" / "ehr-tools"
LOGS = REPO / "test-artifacts" / "ehr-logs"
FHIR_TOOL = "fhir-memory-server"
LAUNCHER_TOOL = "smart-launcher"
INSTALL = {
    FHIR_TOOL: ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error"],
    LAUNCHER_TOOL: ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
}
MARKER = ".azaguard-installed"  # written after a complete install: the source's fingerprint
START_TIMEOUT = 60.0  # seconds for a server to answer (ts-node compiles the launcher on start: ~5-10 s)
IDENTIFIER_SYSTEM = "urn:azaguard:test:mrn"


def _missing(reason: str) -> NoReturn:
    if os.environ.get("AZAGUARD_REQUIRE_EHR_TOOLS") == "1":
        pytest.fail(f"the EHR tools are required (AZAGUARD_REQUIRE_EHR_TOOLS=1): {reason}")
    pytest.skip(reason)


def shared_tools() -> Path:
    return Path(os.environ.get("AZAGUARD_SHARED_TOOLS") or REPO.parent / "shared" / "tools")


def _fingerprint(source: Path) -> str:
    """What the copy was made from: every file's path and content (node_modules excluded)."""
    h = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file() and "node_modules" not in p.parts):
        h.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _writable(folder: Path) -> None:
    """The shared folder has no write bits, and a copy keeps them: npm must write in the copy."""
    for path in [folder, *folder.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode):
            path.chmod(mode | stat.S_IWUSR)


def tool_dir(name: str) -> Path:
    """A ready copy of the tool `name` from the shared tools folder (node_modules installed for the
    tools in INSTALL; any other, pre-built, is just copied), or skip/fail saying why not."""
    given = os.environ.get("AZAGUARD_TOOLS_DIR")
    if given:
        folder = Path(given) / name
        if not folder.is_dir() or (name in INSTALL and not (folder / "node_modules").is_dir()):
            _missing(f"{folder} is missing or not installed (AZAGUARD_TOOLS_DIR is prepared by .ci/run)")
        return folder
    for program in ("node", "npm"):
        if shutil.which(program) is None:
            _missing(f"{program} is not installed")
    source = shared_tools() / name
    if not source.is_dir():
        _missing(f"{source} is missing (set AZAGUARD_SHARED_TOOLS to the shared tools folder)")
    CACHE.mkdir(parents=True, exist_ok=True)
    folder = CACHE / name
    with open(CACHE / ".lock", "w") as lock:  # another pytest run may be preparing the same copy
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = _fingerprint(source)
        marker = folder / MARKER
        if marker.exists() and marker.read_text() == wanted:
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source, folder, symlinks=True)
        _writable(folder)
        LOGS.mkdir(parents=True, exist_ok=True)
        log = LOGS / f"{name}-install.log"
        if name in INSTALL:  # a pre-built tool (the CDS Hooks sandbox) is only copied
            with log.open("w") as out:
                done = subprocess.run(INSTALL[name], cwd=folder, stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                _missing(f"{' '.join(INSTALL[name])} failed in {folder} (see {log})")
        marker.write_text(wanted)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class NodeProcess:
    """A Node server in its own process group (so its children die with it), output to a log file."""

    proc: subprocess.Popen[bytes]
    log: Path
    _out: IO[bytes]

    @classmethod
    def start(cls, name: str, cmd: list[str], cwd: Path, env: Mapping[str, str]) -> NodeProcess:
        LOGS.mkdir(parents=True, exist_ok=True)
        log = LOGS / f"{name}.log"
        out = log.open("wb")
        proc = subprocess.Popen(
            cmd, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        return cls(proc, log, out)

    def wait_ready(self, url: str, what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"{what} exited with {self.proc.returncode} before answering (see {self.log})")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{what} did not answer {url} within {timeout:.0f} s (see {self.log})")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self._out.close()


# ---------------------------------------------------------------- FHIR memory server
def transaction(builder: BundleBuilder) -> dict[str, Any]:
    """The builder's resources as a transaction Bundle the server assigns ids to: each entry a POST
    with a urn:uuid fullUrl, every reference to another entry ("Patient/p") rewritten to that urn."""
    entries = [dict(r) for r in builder.entries]
    urns = {f"{r['resourceType']}/{r['id']}": f"urn:uuid:{uuid.uuid4()}" for r in entries}

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: urns.get(v, v) if k == "reference" and isinstance(v, str) else rewrite(v) for k, v in value.items()
            }
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    out = []
    for r in entries:
        urn = urns[f"{r['resourceType']}/{r['id']}"]
        body = rewrite({k: v for k, v in r.items() if k != "id"})
        out.append({"fullUrl": urn, "resource": body, "request": {"method": "POST", "url": r["resourceType"]}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": out}


@dataclass
class FhirServer:
    base: str  # http://127.0.0.1:PORT/fhir/R4
    log: Path
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30.0))

    def get(self, path: str, **params: str) -> dict[str, Any]:
        r = self.client.get(f"{self.base}/{path.lstrip('/')}", params=params)
        r.raise_for_status()
        found: dict[str, Any] = r.json()
        return found

    def search(self, resource_type: str, **params: str) -> list[dict[str, Any]]:
        """The resources of a search (its first page, up to 1000)."""
        bundle = self.get(resource_type, _count="1000", **params)
        return [e["resource"] for e in bundle.get("entry", [])]

    def post_bundle(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction Bundle; returns the response Bundle (each entry's assigned id in
        `response.location` and `resource`). A refused Bundle fails the test with the server's
        OperationOutcome."""
        r = self.client.post(self.base, json=bundle, headers={"content-type": "application/fhir+json"})
        if r.status_code >= 300:
            pytest.fail(f"the FHIR server refused the bundle ({r.status_code}): {r.text[:2000]}")
        found: dict[str, Any] = r.json()
        return found

    def post_builder(self, builder: BundleBuilder) -> str:
        """Store a BundleBuilder's resources; returns the id the server gave its Patient."""
        response = self.post_bundle(transaction(builder))
        for sent, got in zip(builder.entries, response["entry"], strict=True):
            if sent["resourceType"] == "Patient":
                return str(got["resource"]["id"])
        raise AssertionError("the builder has no Patient")

    def add_patient_on_azathioprine(
        self,
        identifier: str,
        *,
        name: str = "Ada Ehrtest",
        birth_date: str = "1970-03-01",
        sex: str = "female",
        dose: float = 150,
        weight: float = 70,
        bloods_on: date | None = None,
        started: date | None = None,
        extra: Callable[[BundleBuilder], object] | None = None,
        **bloods: float,
    ) -> str:
        """A patient on azathioprine (myasthenia gravis, weight, TPMT and NUDT15 *1/*1, started
        `started` - default 200 days ago - at `dose` mg/day) with a full set of bloods on `bloods_on`
        (default two days ago; `wbc`, `neut`, `plt`, `alt`, `creat` override the normal values).
        Patient.identifier is `identifier` (system IDENTIFIER_SYSTEM). Returns the FHIR id."""
        today = date.today()
        when = bloods_on or today - timedelta(days=2)
        b = BundleBuilder("p", birth_date, sex, name)
        b.entries[0]["identifier"] = [{"system": IDENTIFIER_SYSTEM, "value": identifier}]
        b.condition("91637004", "Myasthenia gravis", today - timedelta(days=400))
        b.weight(weight, when)
        b.genotype("TPMT", "*1/*1", today - timedelta(days=300))
        b.genotype("NUDT15", "*1/*1", today - timedelta(days=300))
        b.bloods(when, **bloods)
        b.azathioprine(started or today - timedelta(days=200), dose)
        if extra is not None:
            extra(b)
        return self.post_builder(b)


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirServer]:
    folder = tool_dir(FHIR_TOOL)
    port = free_port()
    node = NodeProcess.start(FHIR_TOOL, ["node", "--experimental-websocket", "server.mjs"], folder, {"PORT": str(port)})
    base = f"http://127.0.0.1:{port}/fhir/R4"
    node.wait_ready(f"{base}/metadata", "the FHIR memory server")
    server = FhirServer(base, node.log)
    try:
        yield server
    finally:
        server.client.close()
        node.stop()


# ---------------------------------------------------------------- SMART launcher
# The launcher's codec (src/isomorphic/codec.ts): indexes into its lists of launch and client types.
LAUNCH_TYPES = ("provider-ehr", "patient-portal", "provider-standalone", "patient-standalone", "backend-service")
CLIENT_TYPES = ("public", "confidential-symmetric", "confidential-asymmetric", "backend-service")
PKCE = ("none", "auto", "always")


def b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@dataclass
class SmartLauncher:
    base: str  # http://127.0.0.1:PORT
    fhir: FhirServer  # the FHIR server it proxies
    log: Path

    @property
    def iss(self) -> str:
        """The FHIR base an EHR launch names as `iss` (launch options travel in `launch`)."""
        return f"{self.base}/v/r4/fhir"

    @property
    def jwks_uri(self) -> str:
        return f"{self.base}/keys"

    @staticmethod
    def launch_code(
        patient: str,
        provider: str,
        *,
        launch_type: str = "provider-ehr",
        client_id: str = "",
        redirect_uris: str = "",
        scope: str = "",
        pkce: str = "auto",
        auth_error: str = "",
    ) -> str:
        """The launch options, base64url of the codec's JSON array: one patient, one provider, no
        encounter ("NONE": "AUTO" would search Encounters), login and approval screens skipped,
        a public client. `client_id`, `redirect_uris`, `scope`: what the launcher then insists on."""
        options = [
            LAUNCH_TYPES.index(launch_type),
            patient,
            provider,
            "NONE",  # encounter
            1,  # skip_login
            1,  # skip_auth
            0,  # sim_ehr
            scope,
            redirect_uris,
            client_id,
            "",  # client_secret
            auth_error,
            "",  # jwks_url
            "",  # jwks
            CLIENT_TYPES.index("public"),
            PKCE.index(pkce),
            "",  # fhir_server (the launcher's FHIR_SERVER_R4)
        ]
        return b64url(json.dumps(options))

    def ehr_launch_url(self, app_launch: str, patient: str, provider: str, **options: str) -> str:
        """What an EHR opens to launch the app at `app_launch` for `patient` as `provider`."""
        launch = self.launch_code(patient, provider, **options)
        return f"{app_launch}?{urlencode({'iss': self.iss, 'launch': launch})}"

    def standalone_iss(self, patient: str, provider: str, **options: str) -> str:
        """The `iss` of a standalone launch: the options ride in the URL (launch type provider-standalone)."""
        code = self.launch_code(patient, provider, launch_type="provider-standalone", **options)
        return f"{self.base}/v/r4/sim/{code}/fhir"


@pytest.fixture(scope="session")
def smart_launcher(fhir_server: FhirServer) -> Iterator[SmartLauncher]:
    folder = tool_dir(LAUNCHER_TOOL)
    port = free_port()
    env = {
        "NODE_ENV": "production",
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "FHIR_SERVER_R4": fhir_server.base,
        "FHIR_SERVER_R2": "",
        "FHIR_SERVER_R3": "",
        "SECRET": secrets.token_urlsafe(32),
    }
    cmd = ["node_modules/.bin/ts-node", "--skipProject", "--transpile-only", "backend/index.ts"]
    node = NodeProcess.start(LAUNCHER_TOOL, cmd, folder, env)
    base = f"http://127.0.0.1:{port}"
    node.wait_ready(f"{base}/keys", "the SMART launcher")
    try:
        yield SmartLauncher(base, fhir_server, node.log)
    finally:
        node.stop()
