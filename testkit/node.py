"""Helpers for the node tests: synthetic XA runs, node configs, a node in a separate process,
and a small pynetdicom SCU. Every wait is bounded and polls; no fixed ports."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import yaml
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import Verification

from dicom_node.journal import Journal
from tavidata.xa import Calibration, Identity, build_xray
from testkit.paths import REPO, free_port

XA = XRayAngiographicImageStorage
VERIFICATION = Verification
FAKE_PROCESSOR = "testkit.fakes:threshold_processor"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, *, initial_delay: float = 0.02,
               max_delay: float = 0.3, error: Callable[[str], Exception] = TimeoutError) -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout`` s.

    The pause between polls starts at ``initial_delay`` s and grows by half each time up to
    ``max_delay`` s.

    Raises:
        TimeoutError: (or ``error``, called with the message) ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    delay = initial_delay
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise error(f"{what}: not reached after {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 1.5, max_delay)


def make_xa(
    path: Path | None = None,
    *,
    frames: int = 3,
    size: int = 64,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    seed: int = 0,
) -> pydicom.Dataset:
    """A small multi-frame X-Ray Angiographic image (dark disc on a brighter background)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size * 0.4) ** 2 + (xx - size * 0.5) ** 2 < (size * 0.2) ** 2
    pixels = np.where(disc, 60, 150)[None].repeat(frames, 0) + rng.integers(0, 20, (frames, size, size))
    identity = Identity(patient_id="NODETEST1", patient_name="NODE^TEST", sex="F", study_uid=study_uid,
                        series_uid=series_uid, sop_uid=sop_uid, study_date="20250101", accession="A1",
                        manufacturer="test")
    ds = build_xray(pixels.astype(np.uint8), identity=identity, calibration=Calibration((0.3, 0.3)))
    if path is not None:
        ds.save_as(path, enforce_file_format=True)
    return ds


def garbage_file(path: Path, sop_uid: str) -> Path:
    """A DICOM file whose File Meta is valid (an XA instance) but whose data set is garbage."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = XA, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.write_bytes(part10_bytes(meta, b"\x08\x00\x18\x00UI\xff\xff" + b"\xde\xad\xbe\xef" * 64))  # bogus length
    return path


def part10_bytes(meta: FileMetaDataset, body: bytes) -> bytes:
    """A DICOM file as bytes: zero preamble, ``DICM``, the File Meta group of ``meta``, then ``body``
    as it is (which may be anything: the way to send or store a data set pydicom cannot write)."""
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta)
    return buf.getvalue() + body


def send_raw(port: int, path: Path, *, calling: str = "ANGIO", tls_args: Any = None) -> int | None:
    """C-STORE a file's bytes as they are (no decoding: pynetdicom's chunked send); its status."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    assoc = associate(port, [(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])],
                      calling=calling, tls_args=tls_args)
    if not assoc.is_established:
        raise ConnectionError(f"association to port {port} as {calling} failed")
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        rsp = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        if assoc.is_established:
            assoc.release()
    return int(rsp.Status) if rsp and "Status" in rsp else None


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a node configuration YAML file; returns its path."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def base_config(state_dir: Path, *, port: int | None = None, **extra: Any) -> dict[str, Any]:
    """A node configuration for tests: free ports, fake processor, ready file."""
    cfg: dict[str, Any] = {
        "ae_title": "TAVISEG",
        "port": port or free_port(),
        "allowed_callers": [{"ae_title": "ANGIO"}, {"ae_title": "STORESCU"}, {"ae_title": "ANGIO2"}],
        "state_dir": str(state_dir),
        "ready_file": str(state_dir / "ready.json"),
        "shutdown_timeout_s": 10,
        "limits": {"min_free_bytes": 0},
        "processing": {"processor_factory": FAKE_PROCESSOR},
        "delivery": {"initial_retry_s": 0.5, "max_retry_s": 2.0},
        "metrics": {"enabled": True, "port": free_port()},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


class NodeProcess:
    """``python -m taviseg serve --config <file>`` as a child process."""

    def __init__(self, config_path: Path, *, env: dict[str, str] | None = None) -> None:
        self.config_path = Path(config_path)
        self.cfg = yaml.safe_load(self.config_path.read_text())
        self.port = int(self.cfg["port"])
        self.ready_file = Path(self.cfg["ready_file"])
        self.log_path = self.config_path.with_suffix(".log")
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen | None = None
        #: Readiness probe after the ready file appears (a TLS node needs a TLS C-ECHO).
        self.ready_echo: Callable[[], bool] = lambda: echo(self.port) == 0x0000

    def start(self, timeout: float = 90.0) -> NodeProcess:
        """Start and wait for the ready file and a successful C-ECHO."""
        self.ready_file.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taviseg", "-v", "serve", "--config", str(self.config_path)],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            return self.ready_file.is_file() and self.ready_echo()

        wait_until(ready, timeout, "node ready")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """SIGKILL: no clean-up at all."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()


def echo(port: int, *, calling: str = "ANGIO", called: str = "TAVISEG", tls_args: Any = None) -> int | None:
    """C-ECHO status, or None when no association could be made."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)
    if not assoc.is_established:
        return None
    try:
        rsp = assoc.send_c_echo()
        return int(rsp.Status) if "Status" in rsp else None
    finally:
        assoc.release()


def associate(port: int, contexts: Iterable[tuple[str, Sequence[str]]], *, calling: str = "ANGIO",
              tls_args: Any = None):
    """An association (may not be established) proposing ``(sop_class, [ts...])`` contexts."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.requested_contexts = [build_context(sop, list(ts)) for sop, ts in contexts]
    return ae.associate("127.0.0.1", port, ae_title="TAVISEG", tls_args=tls_args)


def send(port: int, datasets: Sequence[pydicom.Dataset | Path], *, calling: str = "ANGIO",
         tls_args: Any = None) -> list[int | None]:
    """C-STORE each data set (or file) over one association; their statuses (None: no answer)."""
    items = [pydicom.dcmread(d) if isinstance(d, (str, Path)) else d for d in datasets]
    pairs = sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in items})
    assoc = associate(port, [(s, [t]) for s, t in pairs], calling=calling, tls_args=tls_args)
    if not assoc.is_established:
        raise ConnectionError(f"association to port {port} as {calling} failed")
    statuses: list[int | None] = []
    try:
        for ds in items:
            rsp = assoc.send_c_store(ds)
            statuses.append(int(rsp.Status) if rsp and "Status" in rsp else None)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def journal_counts(state_dir: Path) -> dict[str, int]:
    """Instance counts per state, read like ``taviseg status`` does."""
    journal = Journal(Path(state_dir) / "journal.sqlite", readonly=True)
    try:
        return journal.instance_counts()
    finally:
        journal.close()


def outbox_counts(state_dir: Path) -> dict[str, dict[str, int]]:
    """Outbox counts per destination and state."""
    journal = Journal(Path(state_dir) / "journal.sqlite", readonly=True)
    try:
        return journal.outbox_counts()
    finally:
        journal.close()


def read_ready(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
