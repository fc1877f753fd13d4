"""Run a local Orthanc PACS (Debian package ``orthanc``) for the demo, benchmarks and tests.

Orthanc gets its own folder (storage, index, configuration, log), free loopback ports and a
configuration that accepts stores only from the AE titles it is told about when
``restrict_to_known`` is set (the DICOM port of Orthanc 1.10 listens on every interface, so the
demo lets only its known modalities at 127.0.0.1 store or echo; its REST API answers loopback
only). Readiness is awaited by polling the REST API with a bounded deadline.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tavicore.errors import TavisegError

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0


class OrthancError(TavisegError):
    """Orthanc is not installed, did not start, or did not answer in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_orthanc() -> str | None:
    """Path of the Orthanc executable, or None when it is not installed."""
    for candidate in (shutil.which("Orthanc"), "/usr/sbin/Orthanc", "/usr/bin/Orthanc"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
) -> object:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` seconds pass.

    Raises:
        OrthancError: the watched process exited, or the deadline passed (with the log tail).
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise OrthancError(f"{what}: process exited with {proc.returncode}\n{_tail(log)}")
        result = predicate()
        if result:
            return result
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise OrthancError(f"{what}: not ready after {timeout:.0f} s\n{_tail(log)}")


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-3000:] if log and log.exists() else ""


@dataclass
class OrthancServer:
    """A running Orthanc: DICOM on ``dicom_port``, REST API and web interface at ``url``."""

    dicom_port: int
    http_port: int
    aet: str
    workdir: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def explorer_url(self) -> str:
        """The web interface (Orthanc Explorer)."""
        return f"{self.url}/app/explorer.html"

    def get_json(self, path: str):
        """GET ``path`` from the REST API and decode the JSON answer."""
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            return json.loads(resp.read())

    def get_bytes(self, path: str) -> bytes:
        """GET ``path`` as raw bytes (e.g. ``/instances/<id>/file``)."""
        with urllib.request.urlopen(self.url + path, timeout=60) as resp:
            return resp.read()

    def post_json(self, path: str, payload) -> object:
        """POST a JSON payload to ``path`` and decode the answer."""
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(), method="POST")
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

        return wait_until(enough, timeout, f"Orthanc holding {count} instance(s) {tags or ''}")

    def alive(self) -> bool:
        """True when the REST API answers."""
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
    restrict_to_known: bool = False,
    dicom_port: int | None = None,
    http_port: int | None = None,
    lua_scripts: list[Path] | None = None,
    binary: str | None = None,
    plugins: list[str] | None = None,
    extra_config: Mapping[str, object] | None = None,
) -> OrthancServer:
    """Start Orthanc with its storage in ``workdir``; return once its REST API answers.

    Args:
        workdir: Folder for storage, index, configuration and log (created).
        aet: Orthanc's AE title.
        known_modalities: name -> (AE title, host, port) of the peers Orthanc may send to.
        restrict_to_known: Accept C-STORE/C-ECHO only from ``known_modalities`` at their host.
        dicom_port, http_port: Ports (free ones by default). Passing the same folder and ports
            again restarts Orthanc on the same data (outage tests).
        lua_scripts: Lua scripts to load (e.g. auto-routing to the node).
        binary: Orthanc executable (found on PATH by default).
        plugins: Plugin files or folders to load (e.g. the DICOMweb plugin, see testkit.viewers).
        extra_config: Further configuration keys, set last (e.g. the plugins' sections).

    Raises:
        OrthancError: Orthanc is not installed or did not start.
    """
    binary = binary or find_orthanc()
    if binary is None:
        raise OrthancError("Orthanc is not installed (bash scripts/setup.sh installs the Debian package)")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = http_port or free_port()
    config = {
        "Name": "taviseg",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "TemporaryDirectory": str(workdir / "tmp"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": not restrict_to_known,
        "DicomAlwaysAllowEcho": not restrict_to_known,
        "DicomCheckModalityHost": restrict_to_known,
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": True,
        "Plugins": [str(p) for p in (plugins or [])],
        "LuaScripts": [str(p) for p in (lua_scripts or [])],
        "DicomModalities": {k: [a, h, p] for k, (a, h, p) in (known_modalities or {}).items()},
        "ConcurrentJobs": 2,
        "StableAge": 1,
        "DeidentifyLogs": True,
        "SaveJobs": False,
        "MaximumStorageCacheSize": 0,
    }
    config.update(extra_config or {})
    cfg_path = workdir / "orthanc.json"
    cfg_path.write_text(json.dumps(config, indent=2))
    log = workdir / "orthanc.log"
    proc = subprocess.Popen(
        [binary, str(cfg_path)], stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=workdir
    )
    server = OrthancServer(dicom_port, http_port, aet, workdir, proc)
    try:
        wait_until(server.alive, READY_TIMEOUT_S, "Orthanc", proc, log)
    except BaseException:
        server.stop()
        raise
    logger.info("Orthanc %s listening: DICOM %d, web %s", aet, dicom_port, server.explorer_url)
    return server
