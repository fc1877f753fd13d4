"""Real peers for tests: an Orthanc PACS, dciodvfy, and a PostgreSQL server.

Each launcher uses free loopback ports, its own data folder under the test's tmp path, waits
for readiness with a bounded deadline (no fixed sleeps) and stops the process afterwards.
Programs come from Debian packages (``bash scripts/setup.sh`` installs them); a missing program
skips the test locally and fails it in CI (see :func:`tests.conftest.require_tool`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port, require_tool

READY_TIMEOUT_S = 60.0


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``predicate`` until true or ``timeout`` seconds pass (bounded loop)."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail}")
        result = predicate()
        if result:
            return result
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s\n{tail}")


@dataclass
class OrthancServer:
    """A running Orthanc: DICOM on ``dicom_port``, REST API on ``url``."""

    dicom_port: int
    http_port: int
    aet: str
    workdir: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get_json(self, path: str):
        """GET ``path`` from the REST API and decode the JSON answer."""
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            return json.loads(resp.read())

    def get_bytes(self, path: str) -> bytes:
        """GET ``path`` from the REST API as raw bytes (e.g. ``/instances/<id>/file``)."""
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return resp.read()

    def post_json(self, path: str, payload) -> object:
        """POST a JSON payload to ``path`` and decode the answer."""
        data = json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        return self.get_json("/instances")

    def instance_tags(self, orthanc_id: str) -> dict:
        """``/instances/<id>/simplified-tags`` of one instance."""
        return self.get_json(f"/instances/{orthanc_id}/simplified-tags")

    def find_instances(self, **tags: str) -> list[str]:
        """Orthanc ids of instances matching DICOM keyword=value tags (``/tools/find``)."""
        return self.post_json("/tools/find", {"Level": "Instance", "Query": tags}) or []

    def wait_for_instances(self, count: int, timeout: float = 60.0, **tags: str) -> list[str]:
        """Wait until at least ``count`` instances (optionally matching ``tags``) are stored."""
        def enough():
            found = self.find_instances(**tags) if tags else self.instances()
            return found if len(found) >= count else None
        return _wait(enough, timeout, f"Orthanc holding {count} instance(s) {tags or ''}")

    def alive(self) -> bool:
        try:
            self.get_json("/system")
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def stop(self) -> None:
        """Terminate Orthanc (bounded wait, then kill)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_orthanc(
    workdir: Path,
    *,
    aet: str = "ORTHANC",
    known_modalities: Mapping[str, tuple[str, str, int]] | None = None,
    dicom_port: int | None = None,
    http_port: int | None = None,
    lua_scripts: list[Path] | None = None,
) -> OrthancServer:
    """Start Orthanc with its storage in ``workdir``; returns once its REST API answers.

    ``known_modalities`` maps a name to (AE title, host, port) for C-STORE from Orthanc.
    Passing the same ``workdir`` and ports again restarts it on the same data (outage tests).
    """
    binary = require_tool("Orthanc")
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = http_port or free_port()
    config = {
        "Name": "taviseg-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "TemporaryDirectory": str(workdir / "tmp"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": True,
        "Plugins": [],
        "LuaScripts": [str(p) for p in (lua_scripts or [])],
        "DicomModalities": {k: [a, h, p] for k, (a, h, p) in (known_modalities or {}).items()},
        "ConcurrentJobs": 2,
        "StableAge": 1,
        "DeidentifyLogs": True,
        "SaveJobs": False,
        "MaximumStorageCacheSize": 0,
    }
    (workdir / "tmp").mkdir(exist_ok=True)
    cfg_path = workdir / "orthanc.json"
    cfg_path.write_text(json.dumps(config, indent=2))
    log = workdir / "orthanc.log"
    proc = subprocess.Popen(
        [binary, str(cfg_path)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    server = OrthancServer(dicom_port, http_port, aet, workdir, proc)
    try:
        _wait(server.alive, READY_TIMEOUT_S, "Orthanc", proc, log)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def orthanc_server(
    tmp_path: Path,
    *,
    aet: str = "ORTHANC",
    known_modalities: Mapping[str, tuple[str, str, int]] | None = None,
    lua_scripts: list[Path] | None = None,
) -> Iterator[OrthancServer]:
    """Context manager: a fresh Orthanc in ``tmp_path/orthanc``, stopped on exit."""
    server = start_orthanc(
        tmp_path / "orthanc", aet=aet, known_modalities=known_modalities, lua_scripts=lua_scripts
    )
    try:
        yield server
    finally:
        server.stop()


def run_dciodvfy(path: str | Path) -> tuple[list[str], list[str], str]:
    """Validate a DICOM file with dicom3tools' dciodvfy.

    Returns:
        (error lines, warning lines, full output). dciodvfy writes "Error - ..." and
        "Warning - ..." lines; its exit status is not a reliable verdict.
    """
    binary = require_tool("dciodvfy")
    proc = subprocess.run(
        [binary, "-new", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    output = proc.stdout + proc.stderr
    errors = [ln for ln in output.splitlines() if ln.startswith("Error")]
    warnings = [ln for ln in output.splitlines() if ln.startswith("Warning")]
    return errors, warnings, output


@contextlib.contextmanager
def postgres_server(tmp_path: Path, *, database: str = "taviseg") -> Iterator[str]:
    """Context manager: a private PostgreSQL cluster in ``tmp_path``; yields a SQLAlchemy URL.

    The cluster listens on 127.0.0.1 at a free port; as root it runs as the ``postgres`` OS
    user (PostgreSQL refuses to run as root).
    """
    bindir = _postgres_bindir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root, and pytest's tmp folders are private to root:
        # the cluster lives in a folder of its own owned by the postgres user.
        runuser = require_tool("runuser")
        as_user = [runuser, "-u", "postgres", "--"]
        pgroot = Path(tempfile.mkdtemp(prefix="taviseg-pg-"))
        shutil.chown(pgroot, "postgres")
    else:
        pgroot = tmp_path / "pg"
        pgroot.mkdir(parents=True, exist_ok=True)
    datadir = pgroot / "data"
    sockdir = pgroot / "sock"
    port = free_port()
    subprocess.run([*as_user, "mkdir", "-p", str(sockdir)], check=True, timeout=30)
    log = tmp_path / "postgres.log"
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(datadir), "-U", "taviseg", "--auth=trust",
         "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )
    proc = subprocess.Popen(
        [*as_user, str(bindir / "postgres"), "-D", str(datadir), "-p", str(port),
         "-k", str(sockdir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
         "-c", "max_connections=50"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )
    try:
        def ready() -> bool:
            r = subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True, timeout=10, check=False,
            )
            return r.returncode == 0
        _wait(ready, READY_TIMEOUT_S, "PostgreSQL", proc, log)
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "taviseg", database],
            check=True, capture_output=True, timeout=60,
        )
        yield f"postgresql+psycopg2://taviseg@127.0.0.1:{port}/{database}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(pgroot, ignore_errors=True)


def _postgres_bindir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    if not candidates:
        require_tool("postgres")  # skips locally / fails in CI with the install hint
        return Path(shutil.which("postgres")).parent
    return candidates[0].parent


def basic_auth_header(user: str, password: str) -> str:
    """HTTP basic-auth header value (for Orthanc set-ups with authentication)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
