"""Real peers for tests: an Orthanc PACS, dciodvfy, and a PostgreSQL server.

Each launcher uses free loopback ports, its own data folder under the test's tmp path, waits
for readiness with a bounded deadline (no fixed sleeps) and stops the process afterwards.
Programs come from Debian packages (``bash scripts/setup.sh`` installs them); a missing program
skips the test locally and fails it in CI (see :func:`tests.conftest.require_tool`).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from testkit.orthanc import OrthancServer, wait_until
from testkit.orthanc import start_orthanc as _start_orthanc
from tests.conftest import free_port, require_tool

__all__ = ["OrthancServer", "orthanc_server", "postgres_server", "run_dciodvfy", "start_orthanc"]

READY_TIMEOUT_S = 60.0


def _wait(predicate, timeout: float, what: str, proc=None, log=None):
    """Poll ``predicate`` with a bounded deadline (see :func:`testkit.orthanc.wait_until`)."""
    return wait_until(predicate, timeout, what, proc, log)


def start_orthanc(workdir: Path, **kwargs) -> OrthancServer:
    """Start Orthanc for a test (skipped locally / failed in CI when it is not installed)."""
    return _start_orthanc(workdir, binary=require_tool("Orthanc"), **kwargs)


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
