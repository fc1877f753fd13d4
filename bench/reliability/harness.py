"""Shared harness of the reliability bench: the node process, processors, journal, destination, sends."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import resource
import shutil
import sqlite3
import struct
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom import uid
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.dsutils import split_dataset

from dicom_node.pipeline import derive_uid, model_fingerprint
from testkit.node import (
    FAKE_PROCESSOR,
    NodeProcess,
    associate,
    base_config,
    part10_bytes,
    wait_until,
    write_config,
)
from testkit.orthanc import OrthancServer, find_orthanc, start_orthanc

logger = logging.getLogger("bench.reliability")

GIB = 1024**3
#: Version string of the fake processor (tests/node/fakes.py), part of its output UIDs.
FAKE_VERSION = "test-1"
#: storescu option proposing a file's transfer syntax (compressed ones only when told).
STORESCU_TS_OPTION = {
    uid.ExplicitVRLittleEndian: "-x=", uid.ImplicitVRLittleEndian: "-x=", uid.ExplicitVRBigEndian: "-xb",
    uid.RLELossless: "-xr", uid.JPEGBaseline8Bit: "-xy", uid.JPEGExtended12Bit: "-xx",
    uid.JPEGLosslessSV1: "-xs", uid.JPEGLSLossless: "-xt", uid.JPEGLSNearLossless: "-xu",
    uid.JPEG2000Lossless: "-xv", uid.JPEG2000: "-xw",
}


class BenchError(RuntimeError):
    """A scenario could not be run (a peer did not start, a bounded wait ran out)."""


# ---- peers and the node --------------------------------------------------------------------


def find_dcmtk_storescu() -> str | None:
    """dcmtk's storescu (not pynetdicom's script of the same name in the virtualenv)."""
    candidates = ["/usr/bin/storescu", shutil.which("storescu") or ""]
    for path in candidates:
        if not path or not Path(path).is_file():
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("%s --version failed: %s", path, exc)
            continue
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return path
    return None


class BenchNode(NodeProcess):
    """A node process with an address-space cap (protects a shared machine) and memory readings.

    Args:
        config_path: The node's YAML configuration.
        env: Extra environment (e.g. ``TAVISEG_TEST_PROCESS_DELAY_S``).
        memory_limit_gib: RLIMIT_AS applied once the node is ready (0: none). A huge allocation
            then fails with MemoryError inside the node instead of calling the OOM killer.
    """

    def __init__(self, config_path: Path, *, env: dict[str, str] | None = None,
                 memory_limit_gib: float = 0.0) -> None:
        super().__init__(config_path, env=env)
        self.memory_limit_gib = memory_limit_gib
        self.starts = 0

    def start(self, timeout: float = 120.0) -> BenchNode:
        """Start the node, wait until it answers C-ECHO, then cap its processes' address space."""
        super().start(timeout=timeout)
        self.starts += 1
        if self.memory_limit_gib > 0:  # processing processes started later inherit the limit
            limit = int(self.memory_limit_gib * GIB)
            for pid in [self.proc.pid, *descendants(self.proc.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
        logger.info("node pid %d ready on port %d (start #%d)", self.proc.pid, self.port, self.starts)
        return self

    def alive(self) -> bool:
        """True while the node process runs."""
        return self.proc is not None and self.proc.poll() is None

    def memory_kib(self, field_name: str = "VmHWM") -> int | None:
        """A memory figure of ``/proc/<pid>/status`` in KiB (None once the process is gone)."""
        return proc_status_kib(self.proc.pid, field_name) if self.alive() else None

    def tree_memory_kib(self, field_name: str = "VmHWM") -> tuple[int, int]:
        """(node process, sum over its child processes) of a ``/proc/<pid>/status`` figure in KiB."""
        if not self.alive():
            return 0, 0
        own = proc_status_kib(self.proc.pid, field_name) or 0
        return own, sum(proc_status_kib(pid, field_name) or 0 for pid in descendants(self.proc.pid))


def proc_status_kib(pid: int, field_name: str) -> int | None:
    """``VmHWM``, ``VmRSS``... of a process in KiB (None when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else None


def descendants(pid: int) -> list[int]:
    """Process ids of every process below ``pid`` (children, their children...)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def build_tiny_model(folder: Path) -> Path:
    """The random-weight LinkNet/ResNet-18 64-px model folder of tests/node/conftest.py."""
    import torch

    from segmentation.models.folder import ModelSpec, save_model_folder
    from segmentation.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("linknet", "resnet18")
    spec = ModelSpec(architecture="linknet", encoder="resnet18", input_size=64, folds=(0,),
                     provenance={"purpose": "reliability bench, random weights"})
    return save_model_folder(folder, spec, {0: model.state_dict()})


@dataclass
class Processor:
    """What processes runs in a scenario's node, and the output UIDs it will produce."""

    kind: str  # "model" or "fake"
    section: dict[str, Any]
    version: str
    outputs: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """How the summary lines name this processor."""
        if self.kind == "model":
            return f"tiny LinkNet model, {'+'.join(self.outputs).upper()} outputs"
        delay = self.env.get("TAVISEG_TEST_PROCESS_DELAY_S", "0")
        return f"fake threshold processor, {delay} s per run"

    def expected_uids(self, source_sop_uid: str) -> set[str]:
        """The deterministic SOP Instance UIDs of the outputs of one source instance."""
        return {derive_uid(source_sop_uid, self.version, kind, None) for kind in self.outputs}


class Bench:
    """Shared state of one bench run: work folder, options, tools and the tiny model."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.rng_seed = args.seed
        self.orthanc = find_orthanc()
        self.storescu = find_dcmtk_storescu()
        self._model: Path | None = None

    def model_folder(self) -> Path:
        """The tiny model folder, built once per bench run."""
        if self._model is None:
            self._model = build_tiny_model(self.workdir / "model" / "tiny")
        return self._model

    def processor(self, kind: str, *, delay_s: float = 0.0) -> Processor:
        """The ``model`` or ``fake`` processor (the fake slowed down by ``delay_s`` per run)."""
        if kind == "model":
            folder = self.model_folder()
            section = {"processor_factory": None, "model_folder": str(folder),
                       "inference": {"backend": "eager", "device": "cpu", "batch_size": 4}, "outputs": ["seg", "sr"]}
            return Processor("model", section, model_fingerprint(folder), ("seg", "sr"))
        env = {"TAVISEG_TEST_PROCESS_DELAY_S": f"{delay_s:g}"} if delay_s else {}
        return Processor("fake", {"processor_factory": FAKE_PROCESSOR}, FAKE_VERSION, ("seg",), env)

    def node(self, name: str, processor: Processor, **extra: Any) -> BenchNode:
        """A node configuration under ``workdir/name`` (not started)."""
        root = self.workdir / name
        root.mkdir(parents=True, exist_ok=True)
        extra.setdefault("delivery", {"initial_retry_s": 0.5, "max_retry_s": 2.0})
        cfg = base_config(root / "state", processing=processor.section, **extra)
        return BenchNode(write_config(root / "node.yaml", cfg), env=processor.env,
                         memory_limit_gib=self.args.node_memory_limit_gib)


def journal_rows(state: Path, table: str) -> list[dict[str, Any]]:
    """Every row of the journal's ``instances`` or ``outbox`` table (read-only connection)."""
    if table not in ("instances", "outbox"):
        raise ValueError(f"journal table {table!r}: expected 'instances' or 'outbox'")
    path = state / "journal.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY id")]
    finally:
        db.close()


def journal_state_counts(state: Path) -> Counter:
    """Instances per state, and outbox rows per state under ``outbox:<state>``."""
    counts: Counter = Counter()
    path = state / "journal.sqlite"
    if not path.exists():
        return counts
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            for st, n in db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state"):
                counts[st] = n
            for st, n in db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
                counts[f"outbox:{st}"] = n
        finally:
            db.close()
    except sqlite3.Error as exc:  # the node may be between creating and initialising the file
        logger.debug("journal not readable yet: %s", exc)
    return counts


def wait_drained(state: Path, timeout: float, *, deliveries: bool = True) -> bool:
    """Wait until nothing is received/processing (and no output pending); False on timeout."""
    def drained() -> bool:
        c = journal_state_counts(state)
        return c["received"] == 0 and c["processing"] == 0 and (not deliveries or c["outbox:pending"] == 0)
    try:
        wait_until(drained, timeout, "node drained")
        return True
    except TimeoutError:
        return False


class Destination:
    """Where a scenario's outputs end up: a real Orthanc or a folder; lists SOP Instance UIDs."""

    def __init__(self, pacs: OrthancServer | None, folder: Path | None) -> None:
        self.pacs = pacs
        self.folder = folder

    @property
    def name(self) -> str:
        """How the summary lines name the destination."""
        return "Orthanc" if self.pacs is not None else "a folder"

    def node_settings(self) -> dict[str, Any]:
        """Node configuration keys that send the outputs here."""
        if self.pacs is not None:
            return {"destinations": [{"name": "pacs", "ae_title": self.pacs.aet, "host": "127.0.0.1",
                                      "port": self.pacs.dicom_port, "timeout_s": 10}]}
        return {"output_folder": str(self.folder)}

    def sop_uids(self) -> Counter:
        """How many stored objects carry each SOP Instance UID."""
        if self.pacs is not None:
            found = self.pacs.get_json("/instances?expand")
            return Counter(str(i["MainDicomTags"].get("SOPInstanceUID", "")) for i in found)
        assert self.folder is not None
        return Counter(p.stem for p in self.folder.rglob("*.dcm"))


@contextlib.contextmanager
def destination(bench: Bench, name: str) -> Iterator[Destination]:
    """A fresh Orthanc for the scenario (stopped afterwards), or a folder without Orthanc."""
    if bench.orthanc is None:
        yield Destination(None, bench.workdir / name / "destination")
        return
    pacs = start_orthanc(bench.workdir / name / "orthanc", binary=bench.orthanc)
    try:
        yield Destination(pacs, None)
    finally:
        pacs.stop()


def count_outputs(dest: Destination, expected: set[str]) -> tuple[int, int, int]:
    """(expected outputs present, lost, duplicates) at the destination."""
    present = dest.sop_uids()
    lost = len(expected - set(present))
    duplicates = sum(n - 1 for n in present.values() if n > 1) + len(set(present) - expected)
    return len(expected) - lost, lost, duplicates


def redeliveries(state: Path) -> int:
    """Outbox rows delivered beyond one per output UID (same object replaced at the PACS)."""
    per_uid = Counter(r["sop_instance_uid"] for r in journal_rows(state, "outbox") if r["state"] == "delivered")
    return sum(n - 1 for n in per_uid.values() if n > 1)


def fmt_s(seconds: float) -> str:
    """Seconds for a summary line."""
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


# ---- sending -------------------------------------------------------------------------------


@dataclass
class StoreAttempt:
    """Outcome of one C-STORE attempt as the SCU saw it."""

    mode: str  # "file" (File Meta read by the SCU), "raw" (bytes sent under the base's command), "storescu"
    status: int | None = None
    outcome: str = ""  # answered / context-refused / not-sendable / no-answer / no-association
    detail: str = ""
    sop_uid: str = ""  # Affected SOP Instance UID of the C-STORE command (what the journal records)


def store_bytes(port: int, data: bytes, scratch: Path, *, fallback: tuple[str, str, str],
                calling: str = "ANGIO") -> StoreAttempt:
    """C-STORE a file's bytes as they are, with pynetdicom's chunked send (no decoding).

    The SCU reads the File Meta for the command (SOP Class/Instance UID) and the presentation
    context (transfer syntax) and sends the bytes after it. When it cannot read the File Meta,
    the bytes after the preamble (the whole file without one) are sent as the data set under
    ``fallback`` = (SOP Class UID, SOP Instance UID, transfer syntax) of the original file.
    """
    path = scratch / "mutant.dcm"
    path.write_bytes(data)
    mode = "file"
    try:
        meta, _ = split_dataset(path)
        sop_class = str(meta["MediaStorageSOPClassUID"].value)
        ts = str(meta["TransferSyntaxUID"].value)
        sop_uid = str(meta["MediaStorageSOPInstanceUID"].value)
    except (InvalidDicomError, KeyError, ValueError, TypeError, AttributeError, EOFError, OSError,
            struct.error, OverflowError, NotImplementedError, RecursionError) as exc:
        mode = "raw"
        logger.debug("SCU cannot read the File Meta (%s: %s): sending raw", type(exc).__name__, exc)
        sop_class, sop_uid, ts = fallback
        body = data[132:] if data[128:132] == b"DICM" else data
        carrier = FileMetaDataset()
        carrier.MediaStorageSOPClassUID, carrier.MediaStorageSOPInstanceUID = sop_class, sop_uid
        carrier.TransferSyntaxUID = ts
        path.write_bytes(part10_bytes(carrier, body))
    attempt = StoreAttempt(mode, sop_uid=sop_uid)
    if not (sop_class.isascii() and ts.isascii()):
        # pynetdicom fails to encode the A-ASSOCIATE-RQ in its own thread (UnicodeEncodeError) and
        # reports "association not established": the SCU cannot send this, the node never sees it
        attempt.outcome, attempt.detail = "not-sendable", f"non-ASCII UID in the context: {sop_class!r} / {ts!r}"
        return attempt
    try:
        assoc = associate(port, [(sop_class, [ts])], calling=calling)
    except (ValueError, TypeError, AttributeError) as exc:
        attempt.outcome, attempt.detail = "not-sendable", f"SCU refused the context: {type(exc).__name__}: {exc}"
        return attempt
    if not assoc.is_established:
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            # the node accepted the association but none of its contexts (the SCU then aborts)
            attempt.outcome, attempt.detail = "context-refused", f"{sop_class} / {ts} not accepted"
        else:
            attempt.outcome, attempt.detail = "no-association", "association not established"
        return attempt
    try:
        if not any(cx.abstract_syntax == sop_class and cx.transfer_syntax and cx.transfer_syntax[0] == ts
                   for cx in assoc.accepted_contexts):
            attempt.outcome, attempt.detail = "context-refused", f"{sop_class} / {ts} not accepted"
            return attempt
        previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
        try:
            rsp = assoc.send_c_store(path)
        except (ValueError, TypeError, AttributeError, KeyError, InvalidDicomError, NotImplementedError) as exc:
            attempt.outcome, attempt.detail = "not-sendable", f"SCU refused to send: {type(exc).__name__}: {exc}"
            return attempt
        except (ConnectionError, OSError, RuntimeError) as exc:
            attempt.outcome, attempt.detail = "no-answer", f"{type(exc).__name__}: {exc}"
            return attempt
        finally:
            pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous
        if rsp is not None and "Status" in rsp:
            attempt.status, attempt.outcome = int(rsp.Status), "answered"
        else:
            attempt.outcome = "no-answer"
            attempt.detail = "aborted" if assoc.is_aborted else "no response"
        return attempt
    finally:
        if assoc.is_established:
            assoc.release()


def storescu_file(storescu: str, port: int, path: Path, *, calling: str = "ANGIO",
                  timeout: float = 300.0) -> StoreAttempt:
    """Send one file with dcmtk storescu; Success -> status 0, otherwise the response text."""
    ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    cmd = [storescu, "-v", STORESCU_TS_OPTION.get(ts, "-x="), "-aet", calling, "-aec", "TAVISEG",
           "127.0.0.1", str(port), str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    attempt = StoreAttempt("storescu")
    for line in out.splitlines():
        if "Received Store Response" in line:
            text = line.split("(", 1)[1].rstrip(")") if "(" in line else line
            attempt.outcome, attempt.detail = "answered", text
            attempt.status = 0 if text == "Success" else _status_from_text(text)
            return attempt
    attempt.outcome, attempt.detail = "no-answer", f"rc={proc.returncode}: {out[-300:]}"
    return attempt


def _status_from_text(text: str) -> int:
    """The numeric status in a storescu response text (0xFFFF when none is shown)."""
    match = re.search(r"0x([0-9A-Fa-f]{4})", text)
    return int(match.group(1), 16) if match else 0xFFFF


def send_dataset(port: int, ds: pydicom.Dataset, *, on_pdu: Callable[[Any], None] | None = None,
                 calling: str = "ANGIO") -> int | None:
    """C-STORE one data set on its own association; its status, None when not answered."""
    try:
        assoc = associate(port, [(str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)])], calling=calling)
    except (ConnectionError, OSError) as exc:
        logger.debug("association failed: %s", exc)
        return None
    if not assoc.is_established:
        return None
    if on_pdu is not None:
        assoc.bind(evt.EVT_PDU_SENT, on_pdu)
    try:
        rsp = assoc.send_c_store(ds)
    except (ConnectionError, OSError, RuntimeError) as exc:  # the node vanished mid-message
        logger.debug("C-STORE interrupted: %s", exc)
        return None
    finally:
        if assoc.is_established:
            assoc.release()
    return int(rsp.Status) if rsp is not None and "Status" in rsp else None
