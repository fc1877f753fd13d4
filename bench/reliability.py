"""Reliability of the DICOM node against real peers: bad input, SIGKILL, PACS outage, load.

    .venv/bin/python bench/reliability.py [--only bad,crash,outage,load] [--quick] [--seed 0]
        [--mutants 520] [--crash-runs 50 --kills 15] [--outage-runs 20 --outage-s 10]
        [--senders 8 --runs-per-sender 10] [--workdir DIR] [-v]

Each scenario runs the node as a separate process (``python -m taviseg serve --config FILE``,
through :class:`tests.node.support.NodeProcess`) on free loopback ports with its own state
folder, talks to it with real peers (dcmtk ``storescu``, pynetdicom, a real Orthanc as PACS) and
prints ONE summary line on stdout. Diagnostics go to stderr (``logging``; ``-v`` for more); the
files of a run (node logs, per-send table ``bad_inputs.tsv``, crash logs) stay in ``--workdir``
when one is given. Exit code 0 when every selected scenario met its expectations, 1 otherwise.
Every wait is bounded and polls; every loop is bounded in count; nothing leaves 127.0.0.1.

Processors: ``model`` is a real model folder (random-weight LinkNet/ResNet-18 at 64 px, the
folder tests/node/conftest.py ``tiny_model`` builds; SEG + SR outputs) run by the node's
ModelPipeline, i.e. the real DICOM readers and decoders; ``fake`` is the test processor
``tests.node.fakes:threshold_processor`` (one SEG-like output), slowed down by
``TAVISEG_TEST_PROCESS_DELAY_S`` to widen the kill windows. Each line says which one ran.

bad: bad inputs
    Every file of the samples folder ($TAVISEG_DICOM_SAMPLES or ../shared/dicom-samples), sent
    unchanged with dcmtk storescu, then ``--mutants`` corrupt files (seeded) derived from the
    samples (the 96-frame JPEG run cut to its first 4 frames) and from small synthetic XA runs
    in seven transfer syntaxes: truncated at random offsets (header, pixel data, file meta),
    bit flips (header, pixel data, file meta, anywhere), wrong element lengths, zeroed /
    garbage / deleted / duplicated byte spans, damaged encapsulation (offset table, fragment
    lengths, delimiters), a File Meta claiming a wrong transfer syntax, garbage after the
    preamble, no preamble, the File Meta sent inside the data set, random files, huge or
    nonsensical NumberOfFrames / Rows / Columns / bit depths, more frames declared than the
    Pixel Data holds, missing Pixel Data and other missing attributes, garbled UIDs,
    calibration values and character sets, deeply nested sequences. Each mutant gets its own
    SOP Instance UID. Mutants are sent one C-STORE per association with pynetdicom's chunked
    send: the bytes after the File Meta go out exactly as they are, never decoded. When
    pynetdicom cannot read the File Meta at all (garbage after the preamble, no preamble, a
    truncated meta) the same bytes are sent as the data set under the command of the file they
    came from ("sent raw"). A mutant the SCU refuses to propose or send (e.g. a UID pynetdicom
    rejects) counts as "not sendable", separately from the sent ones.

    A send is ANSWERED CORRECTLY when the node returned a C-STORE response and:
      * the status is Success (0x0000) -- the node claims the bytes are stored durably -- and
        afterwards the journal records that SOP Instance UID with a final state: ``done``,
        ``skipped`` (not segmentable, reason recorded), ``kept`` (non-image object),
        ``superseded`` (the same UID arrived again before processing; samples only) or
        ``failed`` with a non-empty reason; never still ``received``/``processing`` once the
        node has drained (bounded wait), never missing; or
      * the status is a failure status of PS3.4 C-STORE: 0xA7xx (out of resources), 0xA9xx
        (data set does not match SOP class), 0xCxxx (cannot understand), 0x0122 (SOP class
        not supported), 0x0117 (invalid object instance). Not 0x0110: this node answers
        0x0110 only for an internal error (a bug). Unmodified samples must be answered
        Success; or
      * the node refused the proposed presentation context at association (a File Meta that
        names a SOP class or transfer syntax the node does not accept).
    Anything else is a wrong answer: 0x0110, warning or unknown statuses, an association the
    node dropped or aborted without answering, Success for an instance the journal never
    finishes. A CRASH is the node process exiting (it is then restarted and the run goes on);
    after every send the bench also sends a C-ECHO, which must be answered Success.
    "unexpected-error failures" counts instances failed with the worker's "unexpected ..."
    reason (an exception outside the node's domain errors: recorded, but a sign of a bug).

crash: crash safety
    ``--crash-runs`` small synthetic XA runs (8 frames 128x128) sent one association each by a
    sender that re-sends a run until it is answered Success (as an angiography system would),
    while the node is SIGKILLed ``--kills`` times (seeded) at moments drawn from: mid-transfer
    (the node has written part of a data set to disk), just after a Success answer, while a
    run is being processed, while outputs wait for delivery, at a random time; the node is
    restarted after each kill with a small max PDU so transfers span many PDUs. Then the node
    drains and the destination (a real Orthanc, or a folder when Orthanc is missing) is
    compared with the expected outputs: outputs have deterministic SOP Instance UIDs
    (:func:`dicom_node.pipeline.derive_uid`), so LOST = expected outputs of runs answered
    Success that are not at the destination and DUPLICATES = outputs at the destination
    beyond the expected ones (a second object for the same run, or a UID stored twice).
    Re-deliveries of the same UID (replaced in place, harmless) are reported separately.

outage: PACS outage
    ``--outage-runs`` runs sent while Orthanc is the destination; Orthanc is killed (SIGKILL:
    an abrupt outage) once a quarter of the outputs have been delivered (runs still being
    processed), kept down at least ``--outage-s`` seconds (and until every run is processed and a delivery attempt has
    failed), then restarted on the same storage folder and ports. Counts the outputs that were
    waiting and were delivered after it came back, against the expected number.

load: load
    ``--senders`` concurrent senders (dcmtk storescu processes, pynetdicom threads without it)
    x ``--runs-per-sender`` runs each (8 frames 128x128), one association per sender. Counts
    answered, processed and delivered runs; reports the node's peak memory (VmHWM of
    /proc/<pid>/status, its resident-set high-water mark) and the wall time from the first
    send until the last output was delivered.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import random
import re
import resource
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402
import pydicom.config  # noqa: E402
from pydicom.dataelem import RawDataElement  # noqa: E402
from pydicom.dataset import FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate, generate_frames  # noqa: E402
from pydicom.errors import InvalidDicomError  # noqa: E402
from pydicom.filereader import data_element_generator  # noqa: E402
from pydicom.filewriter import write_file_meta_info  # noqa: E402
from pydicom.tag import Tag  # noqa: E402
from pydicom.uid import (  # noqa: E402
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import _config as pynetdicom_config  # noqa: E402
from pynetdicom import evt  # noqa: E402
from pynetdicom.dsutils import split_dataset  # noqa: E402

from dicom_node.pipeline import derive_uid, model_fingerprint  # noqa: E402
from dicom_node.sop import TRANSFER_SYNTAXES  # noqa: E402
from taviseg.orthanc import OrthancError, OrthancServer, find_orthanc, start_orthanc  # noqa: E402
from tests.conftest import samples_path  # noqa: E402
from tests.node.support import (  # noqa: E402
    FAKE_PROCESSOR,
    NodeProcess,
    associate,
    base_config,
    echo,
    make_xa,
    wait_until,
    write_config,
)

logger = logging.getLogger("bench.reliability")

SCENARIOS = ("bad", "crash", "outage", "load")
GIB = 1024**3
#: Restarts tried after the node exits before a scenario gives up.
MAX_RESTARTS = 5
#: Version string of the fake processor (tests/node/fakes.py), part of its output UIDs.
FAKE_VERSION = "test-1"
#: Failure statuses that are a correct refusal (PS3.4 B.2.3; 0x0110 is this node's internal error).
REFUSAL_STATUSES = {0x0117, 0x0122}
FINAL_STATES = {"done", "skipped", "kept", "superseded", "failed"}
#: storescu option proposing a file's transfer syntax (compressed ones only when told).
STORESCU_TS_OPTION = {
    "1.2.840.10008.1.2.1": "-x=", "1.2.840.10008.1.2": "-x=", "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw",
}
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


class BenchError(RuntimeError):
    """A scenario could not be run (a peer did not start, a bounded wait ran out)."""


def is_refusal(status: int) -> bool:
    """True for the C-STORE failure statuses that are a correct refusal (see the docstring)."""
    return (status >> 8) in (0xA7, 0xA9) or (status >> 12) == 0xC or status in REFUSAL_STATUSES


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

    def start(self, timeout: float = 120.0) -> "BenchNode":
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
            section = {"processor_factory": None, "model_folder": str(folder), "backend": "eager",
                       "device": "cpu", "batch_size": 4, "outputs": ["seg", "sr"]}
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
        with path.open("wb") as f:
            f.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(f, carrier)
            f.write(body)
    attempt = StoreAttempt(mode, sop_uid=sop_uid)
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


# ---- bad inputs: bases and mutations -------------------------------------------------------


@dataclass
class Base:
    """A file mutants are derived from (a sample or a synthetic run), parsed once."""

    name: str
    dataset: pydicom.Dataset
    image: bool

    @property
    def encapsulated(self) -> bool:
        """True for a compressed (encapsulated) transfer syntax."""
        return UID(str(self.dataset.file_meta.TransferSyntaxUID)).is_compressed


@dataclass
class Layout:
    """Byte positions in a serialised file: end of the File Meta, elements, Pixel Data value."""

    meta_end: int
    #: (tag, VR, position of the length field, size of the length field, value position, length)
    elements: list[tuple[int, str, int, int, int, int]]
    pixel_value: int | None
    implicit: bool

    def element_start(self, index: int) -> int:
        """Byte position where top-level element ``index`` begins (its tag)."""
        _tag, _vr, len_pos, size, _value, _length = self.elements[index]
        if self.implicit:
            return len_pos - 4
        return len_pos - (8 if size == 4 else 6)


def serialize(ds: pydicom.Dataset) -> bytes:
    """The data set in DICOM file format (File Meta written as it is)."""
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=True)
    except (ValueError, AttributeError, TypeError):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def layout_of(data: bytes, ts: str) -> Layout:
    """Parse the top-level element positions of a file written by :func:`serialize`."""
    (group_length,) = struct.unpack("<L", data[140:144])
    meta_end = 144 + group_length
    uid = UID(ts)
    implicit = uid == ImplicitVRLittleEndian
    little = uid != ExplicitVRBigEndian
    fp = io.BytesIO(data)
    fp.seek(meta_end)
    elements = []
    pixel_value = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for raw in data_element_generator(fp, implicit, little, defer_size=256):
            vr = str(raw.VR or "")
            size = 4 if implicit or vr in _LONG_VRS else 2
            if isinstance(raw, RawDataElement):
                value_pos, length = raw.value_tell, int(raw.length)
            else:  # an undefined-length sequence, parsed by pydicom: file_tell is its value position
                value_pos, length = int(raw.file_tell), 0xFFFFFFFF
            elements.append((int(raw.tag), vr, value_pos - size, size, value_pos, length))
            if int(raw.tag) == 0x7FE00010:
                pixel_value = value_pos
    return Layout(meta_end, elements, pixel_value, implicit)


def with_new_uid(base: Base) -> tuple[pydicom.Dataset, str]:
    """A copy of the base with its own SOP Instance UID (data set and File Meta)."""
    ds = copy.deepcopy(base.dataset)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    return ds, uid


def set_raw(ds: pydicom.Dataset, keyword_or_tag: str | int, vr: str, value: bytes | str) -> None:
    """Put an element with exactly these value bytes into ``ds`` (no validation, no conversion)."""
    tag = Tag(keyword_or_tag)
    raw = value.encode("latin-1") if isinstance(value, str) else value
    if len(raw) % 2:
        raw += b"\x00" if vr in ("UI", "OB") else b" "
    little = ds.file_meta.TransferSyntaxUID != ExplicitVRBigEndian
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, implicit, little)


def us(value: int, ds: pydicom.Dataset) -> bytes:
    """An unsigned short in the data set's byte order."""
    big = ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    return struct.pack(">H" if big else "<H", value & 0xFFFF)


Mutation = Callable[[random.Random, pydicom.Dataset, Base], tuple[bytes, str]]


def _flip(rng: random.Random, data: bytearray, lo: int, hi: int, count: int) -> None:
    if hi <= lo:
        return
    for _ in range(count):
        i = rng.randrange(lo, hi)
        data[i] ^= 1 << rng.randrange(8)


def m_truncate_header(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Cut the file at a random offset inside the header."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    end = lay.pixel_value or len(data)
    cut = rng.randrange(lay.meta_end, max(end, lay.meta_end + 1))
    return data[:cut], f"truncated at byte {cut} of {len(data)} (header)"


def m_truncate_pixels(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Cut the file at a random offset inside the Pixel Data."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    start = lay.pixel_value or lay.meta_end
    cut = rng.randrange(start, len(data))
    return data[:cut], f"truncated at byte {cut} of {len(data)} (pixel data)"


def m_truncate_meta(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Cut the file inside the File Meta."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    cut = rng.randrange(128, lay.meta_end)
    return data[:cut], f"truncated at byte {cut} (file meta)"


def m_flip_header(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Flip 1-8 random bits in the data set header."""
    data = bytearray(serialize(ds))
    lay = layout_of(bytes(data), ds.file_meta.TransferSyntaxUID)
    n = rng.randint(1, 8)
    _flip(rng, data, lay.meta_end, lay.pixel_value or len(data), n)
    return bytes(data), f"{n} bit flip(s) in the header"


def m_flip_pixels(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Flip 1-64 random bits in the Pixel Data."""
    data = bytearray(serialize(ds))
    lay = layout_of(bytes(data), ds.file_meta.TransferSyntaxUID)
    n = rng.randint(1, 64)
    _flip(rng, data, lay.pixel_value or lay.meta_end, len(data), n)
    return bytes(data), f"{n} bit flip(s) in the pixel data"


def m_flip_anywhere(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Flip 1-16 random bits anywhere after the preamble."""
    data = bytearray(serialize(ds))
    n = rng.randint(1, 16)
    _flip(rng, data, 132, len(data), n)
    return bytes(data), f"{n} bit flip(s) anywhere"


def m_flip_meta(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Flip 1-4 random bits in the File Meta."""
    data = bytearray(serialize(ds))
    lay = layout_of(bytes(data), ds.file_meta.TransferSyntaxUID)
    n = rng.randint(1, 4)
    _flip(rng, data, 132, lay.meta_end, n)
    return bytes(data), f"{n} bit flip(s) in the file meta"


def m_wrong_length(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Give one top-level element a wrong value length."""
    data = bytearray(serialize(ds))
    little = ds.file_meta.TransferSyntaxUID != ExplicitVRBigEndian
    lay = layout_of(bytes(data), ds.file_meta.TransferSyntaxUID)
    tag, vr, len_pos, size, _value, length = rng.choice(lay.elements)
    limit = 0xFFFF if size == 2 else 0xFFFFFFFF
    remaining = len(data) - _value
    choices = [0, length + 1, max(length - 1, 0), length * 2 + 7, remaining + 1000, limit - 1, limit,
               rng.randrange(limit)]
    new = rng.choice(choices) & limit
    fmt = ("<" if little else ">") + ("H" if size == 2 else "L")
    data[len_pos:len_pos + size] = struct.pack(fmt, new)
    return bytes(data), f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr} length {length} -> {new}"


def m_zero_span(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Zero a random span (a file partly written)."""
    data = bytearray(serialize(ds))
    start = rng.randrange(132, len(data))
    n = rng.randint(1, 4096)
    data[start:start + n] = bytes(len(data[start:start + n]))
    return bytes(data), f"{n} bytes zeroed at {start}"


def m_garbage_span(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Overwrite a random span with random bytes."""
    data = bytearray(serialize(ds))
    start = rng.randrange(132, len(data))
    n = rng.randint(1, 4096)
    data[start:start + n] = rng.randbytes(len(data[start:start + n]))
    return bytes(data), f"{n} random bytes at {start}"


def m_delete_span(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Delete a random span."""
    data = serialize(ds)
    start = rng.randrange(132, len(data))
    n = rng.randint(1, 512)
    return data[:start] + data[start + n:], f"{n} bytes deleted at {start}"


def m_duplicate_span(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Repeat whole elements elsewhere (duplicated, out-of-order tags)."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    if len(lay.elements) >= 2:  # repeat whole elements: out-of-order and duplicated tags
        i = rng.randrange(len(lay.elements) - 1)
        start = lay.element_start(i)
        end = lay.element_start(min(i + rng.randint(1, 4), len(lay.elements) - 1))
        where = lay.element_start(rng.randrange(len(lay.elements)))
        return data[:where] + data[start:end] + data[where:], f"elements {start}:{end} repeated at {where}"
    start = rng.randrange(132, len(data))
    return data[:start] + data[start:start + 64] + data[start:], f"64 bytes repeated at {start}"


def m_encapsulation(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Damage the encapsulation: offset table, fragment length, item tag, delimiter, order."""
    data = bytearray(serialize(ds))
    lay = layout_of(bytes(data), ds.file_meta.TransferSyntaxUID)
    if not base.encapsulated or lay.pixel_value is None:
        return m_flip_pixels(rng, ds, base)
    p = lay.pixel_value
    (bot_len,) = struct.unpack("<L", data[p + 4:p + 8])
    first = p + 8 + bot_len
    choice = rng.choice(["bot-offsets", "bot-length", "fragment-length", "item-tag", "no-delimiter",
                         "fragments-shuffled"])
    if choice == "bot-offsets" and bot_len >= 4:
        k = rng.randrange(bot_len // 4)
        data[p + 8 + 4 * k:p + 12 + 4 * k] = struct.pack("<L", rng.randrange(1 << 32))
    elif choice in ("bot-offsets", "bot-length"):
        data[p + 4:p + 8] = struct.pack("<L", rng.choice([4, 8, 12, 0xFFFFFFF0, 0xFFFFFFFF, bot_len + 4]))
    elif choice == "fragment-length" and first + 8 <= len(data):
        data[first + 4:first + 8] = struct.pack("<L", rng.choice([0, 1, 0x7FFFFFF0, 0xFFFFFFFF, 3]))
    elif choice == "item-tag" and first + 8 <= len(data):
        data[first:first + 4] = rng.randbytes(4)
    elif choice == "fragments-shuffled":
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
        rng.shuffle(frames)
        if frames:
            frames[0] = frames[0][: len(frames[0]) // 2]
        ds.PixelData = encapsulate(frames)
        return serialize(ds), "fragments shuffled, first one halved"
    else:
        del data[-8:]
    return bytes(data), f"encapsulation damaged: {choice}"


def m_wrong_ts(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """A File Meta that claims another transfer syntax than the data set's."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    actual = str(ds.file_meta.TransferSyntaxUID)
    options = [ts for ts in TRANSFER_SYNTAXES if ts != actual] + ["1.2.840.10008.1.2.4.100", "1.2.3.4"]
    claimed = rng.choice(options)
    meta = copy.deepcopy(ds.file_meta)
    meta.TransferSyntaxUID = claimed
    buf = io.BytesIO()
    buf.write(data[:132])
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue() + data[lay.meta_end:], f"File Meta claims {claimed} for {actual} data"


def m_garbage_after_preamble(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Preamble and DICM prefix followed by random bytes."""
    n = rng.randint(0, 65536)
    return b"\x00" * 128 + b"DICM" + rng.randbytes(n), f"preamble + DICM + {n} random bytes"


def m_no_prefix(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """No preamble/prefix, or a wrong prefix."""
    data = serialize(ds)
    kind = rng.choice(["no-preamble", "wrong-prefix"])
    if kind == "no-preamble":
        return data[132:], "file without preamble and DICM prefix"
    return data[:128] + b"DIKM" + data[132:], "prefix DIKM instead of DICM"


def m_meta_in_dataset(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """The whole file (File Meta, or even the preamble) sent as the data set."""
    data = serialize(ds)
    cut = rng.choice([132, 0])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta)
    return buf.getvalue() + data[cut:], "the whole file (" + ("meta" if cut else "preamble") + " on) inside the data set"


def m_random_file(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Random bytes, no DICOM structure at all."""
    n = rng.randint(1, 20000)
    return rng.randbytes(n), f"{n} random bytes, no DICOM structure"


def m_garbage_dataset(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """A valid File Meta followed by random bytes."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    n = rng.randint(0, 8192)
    return data[:lay.meta_end] + rng.randbytes(n), f"valid File Meta, {n} random bytes as data set"


def m_frames(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """A nonsensical NumberOfFrames value."""
    value = rng.choice(["0", "-1", "5001", "999999999", "abc", "", "1.5", "3\\4", "+3",
                        "99999999999999999999", "2147483648", "1e2"])
    set_raw(ds, "NumberOfFrames", "IS", value)
    return serialize(ds), f"NumberOfFrames {value!r}"


def m_dims(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Zero, tiny, huge or mismatched Rows/Columns (huge ones with many frames)."""
    rows, cols = rng.choice([(0, 0), (1, 1), (65535, 65535), (4096, 4096), (2, 8192), (int(ds.Rows), 0),
                             (int(ds.Rows) + 1, int(ds.Columns))])
    set_raw(ds, "Rows", "US", us(rows, ds))
    set_raw(ds, "Columns", "US", us(cols, ds))
    frames = rng.choice([None, "1000", "5000"]) if rows * cols >= 4096 * 4096 else None
    if frames is not None:
        set_raw(ds, "NumberOfFrames", "IS", frames)
    return serialize(ds), f"Rows {rows} Columns {cols}" + (f" NumberOfFrames {frames}" if frames else "")


def m_frames_beyond_pixels(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """More frames declared than the Pixel Data holds."""
    actual = int(ds.get("NumberOfFrames", 1) or 1)
    big = int(ds.Rows) * int(ds.Columns) > 256 * 256
    declared = rng.choice([actual + 1, actual * 2, 64] + ([] if big else [500]))
    set_raw(ds, "NumberOfFrames", "IS", str(declared))
    return serialize(ds), f"NumberOfFrames {declared} for {actual} frame(s) of Pixel Data"


def m_bits(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Nonsensical bit depths, pixel representation or samples per pixel."""
    changes = []
    for _ in range(rng.randint(1, 2)):
        kw, value = rng.choice([("BitsAllocated", v) for v in (0, 1, 7, 12, 32, 64, 0xFFFF)]
                               + [("BitsStored", v) for v in (0, 17, 99)]
                               + [("HighBit", v) for v in (0, 99)]
                               + [("PixelRepresentation", v) for v in (1, 2)]
                               + [("SamplesPerPixel", v) for v in (0, 3, 4, 0xFFFF)])
        set_raw(ds, kw, "US", us(value, ds))
        changes.append(f"{kw} {value}")
    return serialize(ds), ", ".join(changes)


def m_photometric(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """A photometric interpretation that does not fit the pixels."""
    value = rng.choice(["RGB", "YBR_FULL_422", "PALETTE COLOR", "MONOCHROME3", "", "\x01\x02garbage"])
    set_raw(ds, "PhotometricInterpretation", "CS", value)
    if rng.random() < 0.3:
        set_raw(ds, "PlanarConfiguration", "US", us(1, ds))
    return serialize(ds), f"PhotometricInterpretation {value!r}"


def m_missing(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """One or two required attributes removed (Pixel Data, Rows, UIDs...)."""
    keywords = ["PixelData", "Rows", "Columns", "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID",
                "SeriesInstanceUID", "BitsAllocated", "PhotometricInterpretation", "SamplesPerPixel",
                "NumberOfFrames", "Modality", "ImagerPixelSpacing", "FrameIncrementPointer", "BitsStored"]
    gone = [kw for kw in rng.sample(keywords, rng.randint(1, 2)) if kw in ds]
    for kw in gone:
        delattr(ds, kw)
    return serialize(ds), "missing " + (", ".join(gone) or "nothing (absent already)")


def m_uid_garbage(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Garbled, empty, over-long or mismatching UIDs."""
    kw, value = rng.choice([
        ("SOPInstanceUID", str(generate_uid())), ("StudyInstanceUID", "abc.def"),
        ("SeriesInstanceUID", "1." + "2" * 80), ("StudyInstanceUID", ".1.2..3"),
        ("SeriesInstanceUID", "1.2.3\x00\x00"), ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"),
        ("StudyInstanceUID", ""), ("SOPInstanceUID", str(ds.SOPInstanceUID) + ".1"),
    ])
    set_raw(ds, kw, "UI", value)
    return serialize(ds), f"{kw} {value[:30]!r}"


def m_calibration(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Zero, negative, infinite or non-numeric calibration and timing values."""
    kw, vr, value = rng.choice([
        ("ImagerPixelSpacing", "DS", "0\\0"), ("ImagerPixelSpacing", "DS", "-1\\-1"),
        ("ImagerPixelSpacing", "DS", "abc\\def"), ("ImagerPixelSpacing", "DS", "1e308\\1e308"),
        ("ImagerPixelSpacing", "DS", "nan\\nan"), ("ImagerPixelSpacing", "DS", "0.3"),
        ("PixelSpacing", "DS", "inf\\0"), ("DistanceSourceToDetector", "DS", "0"),
        ("DistanceSourceToDetector", "DS", "-5"), ("DistanceSourceToPatient", "DS", "nan"),
        ("EstimatedRadiographicMagnificationFactor", "DS", "0"),
        ("EstimatedRadiographicMagnificationFactor", "DS", "inf"), ("FrameTime", "DS", "abc"),
        ("FrameTime", "DS", "0"), ("FrameTime", "DS", "-1"), ("FrameTimeVector", "DS", "1\\2"),
        ("CineRate", "IS", "x"), ("FrameIncrementPointer", "AT", b"\x00\x00"),
    ])
    set_raw(ds, kw, vr, value)
    return serialize(ds), f"{kw} {value!r}"


def m_text(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Unknown character sets, invalid bytes, very long text values."""
    kw, vr, value = rng.choice([
        ("SpecificCharacterSet", "CS", "ISO_IR 999"), ("SpecificCharacterSet", "CS", "ISO 2022 IR 87"),
        ("SpecificCharacterSet", "CS", "\\\\\\"), ("PatientName", "PN", b"\xff\xfe\xfd^\xc3("),
        ("PatientName", "PN", "A" * 10000), ("PatientID", "LO", "\x00\x1b$B\x1b(B"),
        ("SeriesDescription", "LO", b"\xe9" * 300), ("Manufacturer", "LO", "x\\" * 2000),
    ])
    set_raw(ds, kw, vr, value)
    if kw == "PatientName" and rng.random() < 0.5:
        set_raw(ds, "SpecificCharacterSet", "CS", "ISO_IR 192")
    return serialize(ds), f"{kw} garbled"


def m_pixel_vr(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Pixel Data of odd length, VR UN, too short or empty."""
    if "PixelData" not in ds or base.encapsulated:
        return m_flip_pixels(rng, ds, base)
    value = bytes(ds.PixelData)
    choice = rng.choice(["odd", "UN", "OW-short", "empty"])
    if choice == "odd":  # an odd value length, which DICOM forbids (set_raw would pad it)
        set_raw(ds, "PixelData", "OB", value[:-1])
        data = bytearray(serialize(ds))
        lay = layout_of(bytes(data), ds.file_meta.TransferSyntaxUID)
        for tag, _vr, len_pos, size, _v, length in lay.elements:
            if tag == 0x7FE00010:
                data[len_pos:len_pos + size] = struct.pack("<L" if size == 4 else "<H", length - 1)
        return bytes(data[:-1]), "Pixel Data of odd length"
    if choice == "UN":
        set_raw(ds, "PixelData", "UN", value)
    elif choice == "OW-short":
        set_raw(ds, "PixelData", "OW", value[: len(value) // 3 * 2])
    else:
        set_raw(ds, "PixelData", "OB", b"")
    return serialize(ds), f"Pixel Data {choice}"


def m_deep_sequence(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """A private sequence nested 20, 300 or 3000 levels deep."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    implicit = lay.implicit
    if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
        return m_flip_header(rng, ds, base)
    depth = rng.choice([20, 300, 3000])
    tag = struct.pack("<HH", 0x0009, 0x1001)
    sq = tag + (b"" if implicit else b"SQ\x00\x00") + b"\xff\xff\xff\xff"
    item, item_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    creator = struct.pack("<HH", 0x0009, 0x0010) + (b"" if implicit else b"LO") + (
        struct.pack("<L", 6) if implicit else struct.pack("<H", 6)) + b"BENCH "
    nested = (sq + item) * depth + (item_end + seq_end) * depth
    where = next((lay.element_start(i) for i, e in enumerate(lay.elements) if e[0] > 0x00091001), len(data))
    return data[:where] + creator + nested + data[where:], f"private sequence nested {depth} deep"


BYTE_MUTATIONS: dict[str, tuple[Mutation, int]] = {
    "truncate-header": (m_truncate_header, 6), "truncate-pixels": (m_truncate_pixels, 6),
    "truncate-meta": (m_truncate_meta, 2), "flip-header": (m_flip_header, 8),
    "flip-pixels": (m_flip_pixels, 8), "flip-anywhere": (m_flip_anywhere, 4),
    "flip-meta": (m_flip_meta, 3), "wrong-length": (m_wrong_length, 10),
    "zero-span": (m_zero_span, 3), "garbage-span": (m_garbage_span, 3),
    "delete-span": (m_delete_span, 3), "duplicate-span": (m_duplicate_span, 3),
    "encapsulation": (m_encapsulation, 6), "wrong-ts": (m_wrong_ts, 6),
    "garbage-after-preamble": (m_garbage_after_preamble, 3), "no-prefix": (m_no_prefix, 2),
    "meta-in-dataset": (m_meta_in_dataset, 2), "random-file": (m_random_file, 1),
    "garbage-dataset": (m_garbage_dataset, 2), "deep-sequence": (m_deep_sequence, 2),
}
IMAGE_MUTATIONS: dict[str, tuple[Mutation, int]] = {
    "frames": (m_frames, 6), "dims": (m_dims, 6), "frames-beyond-pixels": (m_frames_beyond_pixels, 4),
    "bits": (m_bits, 5), "photometric": (m_photometric, 3), "missing": (m_missing, 7),
    "uid-garbage": (m_uid_garbage, 4), "calibration": (m_calibration, 4), "text": (m_text, 3),
    "pixel-vr": (m_pixel_vr, 2),
}


def synthetic_bases() -> list[Base]:
    """Small synthetic XA runs (3 frames 64x64) in seven transfer syntaxes."""
    bases = []
    for name, ts, kwargs in [
        ("synthetic-explicit", ExplicitVRLittleEndian, None), ("synthetic-implicit", ImplicitVRLittleEndian, None),
        ("synthetic-bigendian", ExplicitVRBigEndian, None), ("synthetic-rle", RLELossless, {}),
        ("synthetic-jpegls", JPEGLSLossless, {}), ("synthetic-jpegls-near", JPEGLSNearLossless, {"jls_error": 2}),
        ("synthetic-j2k", JPEG2000Lossless, {}), ("synthetic-j2k-lossy", JPEG2000, {"j2k_cr": [10]}),
    ]:
        ds = make_xa(frames=3, size=64, seed=len(bases))
        if kwargs is not None:
            ds.compress(ts, **kwargs)
        else:
            ds.file_meta.TransferSyntaxUID = ts
        bases.append(Base(name, pydicom.dcmread(io.BytesIO(serialize(ds))), True))
    return bases


def sample_bases(folder: Path) -> list[Base]:
    """Every sample file as a base; runs of more than 4 frames are cut to their first 4."""
    bases = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        image = "PixelData" in ds
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if image and frames > 4:
            ts = UID(str(ds.file_meta.TransferSyntaxUID))
            if ts.is_compressed:
                ds.PixelData = encapsulate(list(generate_frames(ds.PixelData, number_of_frames=frames))[:4])
            else:
                ds.PixelData = bytes(ds.PixelData)[: len(ds.PixelData) // frames * 4]
            ds.NumberOfFrames = 4
        bases.append(Base(path.stem, ds, image))
    return bases


@dataclass
class Mutant:
    """One corrupt file to send."""

    name: str
    family: str
    base: str
    description: str
    data: bytes
    fallback: tuple[str, str, str]  # SOP Class UID, SOP Instance UID, transfer syntax of the original

    @property
    def sop_uid(self) -> str:
        """The mutant's own SOP Instance UID."""
        return self.fallback[1]


def make_mutants(count: int, bases: Sequence[Base], rng: random.Random) -> Iterator[Mutant]:
    """``count`` seeded mutants, spread over the bases and the mutation families."""
    synthetic = [b for b in bases if b.name.startswith("synthetic")]
    samples = [b for b in bases if not b.name.startswith("synthetic")]
    for i in range(count):
        base = rng.choice(synthetic if (i % 2 == 0 or not samples) else samples)
        families = dict(BYTE_MUTATIONS)
        if base.image:
            families.update(IMAGE_MUTATIONS)
        names = list(families)
        for _ in range(10):  # a few combinations cannot be written by pydicom: draw again
            family = rng.choices(names, weights=[families[n][1] for n in names])[0]
            ds, uid = with_new_uid(base)
            fallback = (str(ds.file_meta.MediaStorageSOPClassUID), uid, str(ds.file_meta.TransferSyntaxUID))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    data, description = families[family][0](rng, ds, base)
                    break
                except (ValueError, TypeError, AttributeError, KeyError, IndexError, LookupError, struct.error,
                        OverflowError) as exc:
                    logger.debug("mutation %s of %s cannot be written (%s: %s); drawing again",
                                 family, base.name, type(exc).__name__, exc)
        else:
            raise BenchError(f"no mutation of {base.name} could be written in 10 draws")
        yield Mutant(f"{i:04d}-{family}-{base.name}", family, base.name, description, data, fallback)


# ---- scenario: bad inputs ------------------------------------------------------------------


@dataclass
class SendRecord:
    """What happened to one bad-input send (a row of bad_inputs.tsv)."""

    name: str
    kind: str
    family: str
    description: str
    sop_uid: str
    attempt: StoreAttempt
    echo_ok: bool = True
    crashed: bool = False
    final_state: str = ""
    final_detail: str = ""
    verdict: str = ""


def scenario_bad(bench: Bench) -> tuple[str, bool]:
    """Samples + mutants against a running node; see the module docstring for the verdicts."""
    args = bench.args
    t0 = time.monotonic()
    samples_dir = samples_path()
    if samples_dir is None:
        raise BenchError("real DICOM samples not found: set TAVISEG_DICOM_SAMPLES or place them in "
                         "../shared/dicom-samples (with MANIFEST.tsv)")
    processor = bench.processor(args.bad_processor)
    node = bench.node("bad", processor)
    state = Path(node.cfg["state_dir"])
    scratch = bench.workdir / "bad" / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"bad-{args.seed}")
    records: list[SendRecord] = []
    crashes = 0
    node.start()
    try:
        by_uid: dict[str, SendRecord] = {}

        def handle_crash(when: str) -> None:
            """Count the exit, name the instance being processed, restart (bounded)."""
            nonlocal crashes
            for _ in range(MAX_RESTARTS):
                crashes += 1
                culprits = [r["sop_instance_uid"] for r in journal_rows(state, "instances")
                            if r["state"] == "processing"]
                for uid in culprits:
                    if uid in by_uid:
                        by_uid[uid].crashed = True
                crash_log = bench.workdir / "bad" / f"crash-{crashes:03d}.log"
                crash_log.write_text(node.log()[-20000:])
                logger.error("node exited with %s %s while processing %s; log tail in %s; restarting",
                             node.proc.returncode, when, [by_uid[u].name if u in by_uid else u for u in culprits],
                             crash_log)
                try:
                    node.start()
                    return
                except RuntimeError as exc:
                    logger.error("node restart failed: %s", str(exc).splitlines()[0])
            raise BenchError(f"bad inputs: the node does not come back after {MAX_RESTARTS} restarts")

        def after_send(record: SendRecord) -> None:
            records.append(record)
            by_uid[record.sop_uid] = record
            if node.alive():
                record.echo_ok = echo(node.port) == 0x0000
                if not record.echo_ok and node.alive():
                    logger.error("node did not answer C-ECHO after %s", record.name)
            if not node.alive():
                record.echo_ok = True  # not an echo failure: the exit is counted as a crash
                handle_crash(f"after {record.name} was sent")

        def drain() -> bool:
            deadline = time.monotonic() + args.drain_timeout
            while time.monotonic() < deadline:
                if wait_drained(state, min(30.0, max(deadline - time.monotonic(), 1.0))):
                    return True
                if not node.alive():
                    handle_crash("while draining")
            return False

        for path in sorted(samples_dir.glob("*.dcm")):
            meta = pydicom.dcmread(path, stop_before_pixels=True)
            if bench.storescu:
                attempt = storescu_file(bench.storescu, node.port, path)
            else:
                attempt = store_bytes(node.port, path.read_bytes(), scratch, fallback=(
                    str(meta.SOPClassUID), str(meta.SOPInstanceUID), str(meta.file_meta.TransferSyntaxUID)))
            after_send(SendRecord(path.name, "sample", "unchanged", "sample file as it is",
                                  str(meta.SOPInstanceUID), attempt))
        bases = synthetic_bases() + sample_bases(samples_dir)
        for mutant in make_mutants(args.mutants, bases, rng):
            attempt = store_bytes(node.port, mutant.data, scratch, fallback=mutant.fallback)
            after_send(SendRecord(mutant.name, "mutant", mutant.family, mutant.description,
                                  attempt.sop_uid or mutant.sop_uid, attempt))
            if len(records) % 50 == 0:
                logger.info("bad inputs: %d sent", len(records))
        drained = drain()
        if not drained:
            logger.error("bad inputs: node not drained after %.0f s", args.drain_timeout)
        peak_kib = sum(node.tree_memory_kib("VmHWM"))
        leftovers = [p.name for p in (state / "spool" / "incoming").iterdir()] if node.alive() else []
    finally:
        node.terminate()
    elapsed = time.monotonic() - t0
    return _judge_bad(bench, records, state, crashes, peak_kib, leftovers, processor, elapsed)


def _judge_bad(bench: Bench, records: list[SendRecord], state: Path, crashes: int, peak_kib: int,
               leftovers: list[str], processor: Processor, elapsed: float) -> tuple[str, bool]:
    rows_by_uid: dict[str, list[dict[str, Any]]] = {}
    for row in journal_rows(state, "instances"):
        rows_by_uid.setdefault(row["sop_instance_uid"], []).append(row)
    statuses: Counter = Counter()
    finals: Counter = Counter()
    unexpected = died = 0
    for rec in records:
        a = rec.attempt
        if a.outcome == "not-sendable":
            rec.verdict = "not sendable"
            continue
        if rec.crashed:
            rec.verdict = "crash"
        elif a.outcome == "context-refused":
            rec.verdict = "correct"
            statuses["context refused"] += 1
        elif a.outcome != "answered" or a.status is None:
            rec.verdict = f"wrong: {a.outcome}"
        elif a.status == 0x0000:
            rows = rows_by_uid.get(rec.sop_uid, [])
            if not rows:
                rec.verdict = "wrong: Success but not in the journal"
            else:
                last = rows[-1]
                rec.final_state, rec.final_detail = last["state"], last["detail"]
                finals[last["state"]] += 1
                if last["detail"].startswith("unexpected"):
                    unexpected += 1
                if "processing process died" in last["detail"]:
                    died += 1
                ok = all(r["state"] in FINAL_STATES and (r["state"] != "failed" or r["detail"]) for r in rows)
                rec.verdict = "correct" if ok else f"wrong: Success, journal state {last['state']}"
            statuses["0x0000"] += 1
        elif rec.kind == "mutant" and is_refusal(a.status):
            rec.verdict = "correct"
            statuses[f"0x{a.status:04X}"] += 1
        else:
            rec.verdict = f"wrong: status 0x{a.status:04X}"
            statuses[f"0x{a.status:04X}"] += 1
        if rec.verdict != "correct" and rec.verdict != "crash":
            logger.error("bad input %s (%s): %s %s", rec.name, rec.description, rec.verdict, a.detail)
    table = bench.workdir / "bad" / "bad_inputs.tsv"
    with table.open("w") as f:
        f.write("name\tkind\tfamily\tdescription\tmode\toutcome\tstatus\techo\tfinal_state\tverdict\tdetail\n")
        for r in records:
            a = r.attempt
            status = "" if a.status is None else f"0x{a.status:04X}"
            detail = re.sub(r"\s+", " ", (r.final_detail or a.detail))[:300]
            f.write(f"{r.name}\t{r.kind}\t{r.family}\t{r.description}\t{a.mode}\t{a.outcome}\t{status}\t"
                    f"{'ok' if r.echo_ok else 'FAIL'}\t{r.final_state}\t{r.verdict}\t{detail}\n")
    sendable = [r for r in records if r.attempt.outcome != "not-sendable"]
    mutants_sent = sum(r.kind == "mutant" for r in sendable)
    samples_sent = sum(r.kind == "sample" for r in sendable)
    raw = sum(r.attempt.mode == "raw" for r in sendable)
    not_sendable = len(records) - len(sendable)
    correct = sum(r.verdict == "correct" for r in sendable)
    wrong = sum(r.verdict.startswith("wrong") for r in sendable)
    no_answer = sum(r.attempt.outcome in ("no-answer", "no-association") for r in sendable)
    echo_fail = sum(not r.echo_ok for r in sendable)
    refusals = ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items()) if k != "0x0000")
    finals_text = ", ".join(f"{v} {k}" for k, v in sorted(finals.items(), key=lambda kv: -kv[1]))
    stuck = sum(r.verdict.startswith("wrong: Success") for r in sendable)
    echo_text = ("node answered C-ECHO after every send" if echo_fail == 0
                 else f"node did not answer C-ECHO after {echo_fail} send(s)")
    line = (
        f"bad inputs: {len(sendable)} sent ({samples_sent} sample files, {mutants_sent} mutants; {raw} sent raw), "
        f"{not_sendable} not sendable, {correct} answered correctly, {wrong} wrong answers "
        f"({no_answer} without an answer, {stuck} stuck), {crashes} crashes, {echo_text}; "
        f"{statuses['0x0000']} Success ({finals_text or 'none'}; {died} failed because the run killed the "
        f"processing process, {unexpected} unexpected-error failures), "
        f"refused: {refusals or 'none'}; {len(leftovers)} temp files left in incoming/; "
        f"{processor.describe()}, node peak RSS {peak_kib / 1024**2:.2f} GiB (node + processing processes), "
        f"{fmt_s(elapsed)}"
    )
    ok = (correct == len(sendable) and crashes == 0 and echo_fail == 0 and mutants_sent >= min(500, bench.args.mutants)
          and not leftovers)
    if mutants_sent < min(500, bench.args.mutants):
        logger.error("only %d mutants were sent (%d not sendable)", mutants_sent, not_sendable)
    logger.info("per-send table: %s", table)
    return line, ok


# ---- scenario: crash safety ----------------------------------------------------------------


class KillController:
    """SIGKILLs and restarts the node; the sender waits for it between kills."""

    def __init__(self, node: BenchNode) -> None:
        self.node = node
        self.lock = threading.Lock()
        self.kills: Counter = Counter()
        self.killed = threading.Event()
        self.mid_transfer_pending = threading.Event()
        self.acked = threading.Event()
        self.unexpected_exits = 0

    def kill(self, reason: str) -> bool:
        """SIGKILL the node now (False when it was not running)."""
        with self.lock:
            if not self.node.alive():
                return False
            self.node.proc.send_signal(signal.SIGKILL)
            self.node.proc.wait(timeout=30)
            self.kills[reason] += 1
            self.killed.set()
            logger.info("SIGKILL (%s): #%d", reason, sum(self.kills.values()))
            return True

    def restart(self) -> None:
        """Start the node again after a kill (waits until it answers C-ECHO)."""
        with self.lock:
            if self.node.alive():
                return
            self.node.start()
            self.killed.clear()

    def mid_transfer_hook(self, incoming: Path, after_pdus: int) -> Callable[[Any], None]:
        """An EVT_PDU_SENT handler that kills the node once it has part of the data set on disk."""
        sent = [0]

        def on_pdu(event: Any) -> None:
            if type(event.pdu).__name__ != "P_DATA_TF" or not self.mid_transfer_pending.is_set():
                return
            sent[0] += 1
            if sent[0] == after_pdus:
                self.mid_transfer_pending.clear()
                try:
                    wait_until(lambda: any(p.stat().st_size > 0 for p in incoming.iterdir()), 20,
                               "node writing the data set to disk")
                except (TimeoutError, OSError) as exc:
                    logger.warning("mid-transfer kill: no partial file seen (%s); killing anyway", exc)
                self.kill("mid-transfer")

        return on_pdu


def scenario_crash(bench: Bench) -> tuple[str, bool]:
    """Runs sent while the node is SIGKILLed and restarted; lost and duplicated outputs."""
    args = bench.args
    t0 = time.monotonic()
    rng = random.Random(f"crash-{args.seed}")
    processor = bench.processor(args.crash_processor, delay_s=args.crash_delay_s)
    runs = [make_xa(frames=8, size=128, seed=10_000 + i) for i in range(args.crash_runs)]
    acked: dict[int, int] = {}
    resent = Counter()
    refused: dict[int, int] = {}
    with destination(bench, "crash") as dest:
        node = bench.node("crash", processor, limits={"min_free_bytes": 0, "max_pdu_size": 16384},
                          **dest.node_settings())
        state = Path(node.cfg["state_dir"])
        incoming = state / "spool" / "incoming"
        ctl = KillController(node)
        done_sending = threading.Event()
        sender_error: list[BaseException] = []

        def sender() -> None:
            try:
                for i, run in enumerate(runs):
                    for attempt in range(args.max_resends + 1):
                        if not node.alive() or ctl.killed.is_set():
                            wait_until(lambda: node.alive() and not ctl.killed.is_set(), 180, "node restarted")
                        hook = None
                        if ctl.mid_transfer_pending.is_set():
                            hook = ctl.mid_transfer_hook(incoming, after_pdus=rng_sender.randint(2, 6))
                        status = send_dataset(node.port, run, on_pdu=hook)
                        if status == 0x0000:
                            acked[i] = attempt
                            ctl.acked.set()
                            break
                        if status is not None:
                            refused[i] = status
                            logger.error("crash: run %d refused with 0x%04X", i, status)
                            break
                        resent[i] += 1
                        wait_until(lambda: ctl.killed.is_set() or not node.alive() or echo(node.port) == 0,
                                   180, "node answering again")
            except BaseException as exc:  # reported by the main thread
                sender_error.append(exc)
            finally:
                done_sending.set()

        rng_sender = random.Random(f"crash-sender-{args.seed}")
        node.start()
        thread = threading.Thread(target=sender, name="crash-sender", daemon=True)
        thread.start()
        triggers = ["mid-transfer", "after-ack", "processing", "delivering", "random"]
        try:
            for k in range(args.kills):
                target = round((k + 1) * len(runs) / (args.kills + 1))
                with contextlib.suppress(TimeoutError):
                    wait_until(lambda: len(acked) >= target or done_sending.is_set(), 300, "sender progress")
                trigger = rng.choice(triggers)
                _kill_on(trigger, ctl, state, rng, done_sending, args.crash_delay_s)
                if node.alive():  # the trigger did not fire (work ran out): kill now
                    ctl.kill(f"{trigger} (idle)")
                try:
                    ctl.restart()
                except (RuntimeError, TimeoutError) as exc:
                    ctl.unexpected_exits += 1
                    raise BenchError(f"node did not restart after kill #{k + 1}: {exc}") from exc
            thread.join(600)
            if thread.is_alive():
                raise BenchError("crash: the sender did not finish within 600 s")
            if sender_error:
                raise BenchError(f"crash: sender failed: {sender_error[0]!r}")
            if not node.alive():
                ctl.unexpected_exits += 1
                node.start()
            drained = wait_drained(state, args.drain_timeout)
            if not node.alive():
                ctl.unexpected_exits += 1
        finally:
            ctl.mid_transfer_pending.clear()
            node.terminate()
        expected = set().union(*(processor.expected_uids(str(runs[i].SOPInstanceUID)) for i in acked)) if acked else set()
        present, lost, duplicates = count_outputs(dest, expected)
        again = redeliveries(state)
        counts = journal_state_counts(state)
        dest_name = dest.name
    elapsed = time.monotonic() - t0
    kills = sum(ctl.kills.values())
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(ctl.kills.items()))
    line = (
        f"crash safety: {len(runs)} runs ({processor.describe()}) to {dest_name}, {kills} SIGKILLs ({kinds}), "
        f"{len(acked)} answered Success ({sum(resent.values())} re-sends after a kill left a C-STORE unanswered), "
        f"{present} of {len(expected)} outputs at the destination, {lost} lost, {duplicates} duplicates, "
        f"{again} re-deliveries of the same UID, journal: {counts['done']} done, {counts['failed']} failed, "
        f"{counts['received'] + counts['processing']} unfinished; {ctl.unexpected_exits} crashes "
        f"(exits not caused by the bench), {fmt_s(elapsed)}"
    )
    ok = (lost == 0 and duplicates == 0 and len(acked) == len(runs) and not refused and drained
          and ctl.unexpected_exits == 0 and counts["failed"] == 0)
    return line, ok


def _kill_on(trigger: str, ctl: KillController, state: Path, rng: random.Random,
             done_sending: threading.Event, delay_s: float) -> None:
    """Wait (bounded) for the trigger's moment and SIGKILL the node; no kill when it never comes."""
    pause = threading.Event()  # never set: Event.wait is a bounded, interruptible pause
    try:
        if trigger == "mid-transfer":
            if done_sending.is_set():
                return
            ctl.mid_transfer_pending.set()
            wait_until(lambda: ctl.killed.is_set() or done_sending.is_set(), 60, "mid-transfer kill")
            ctl.mid_transfer_pending.clear()
        elif trigger == "after-ack":
            if done_sending.is_set():
                return
            ctl.acked.clear()
            wait_until(lambda: ctl.acked.is_set() or done_sending.is_set(), 60, "a Success answer")
            ctl.kill("after-ack")
        elif trigger == "processing":
            wait_until(lambda: journal_state_counts(state)["processing"] > 0, 30, "a run in processing")
            pause.wait(rng.uniform(0, max(delay_s, 0.05)))
            ctl.kill("processing")
        elif trigger == "delivering":
            wait_until(lambda: journal_state_counts(state)["outbox:pending"] > 0, 30, "an output pending")
            pause.wait(rng.uniform(0, 0.1))
            ctl.kill("delivering")
        else:
            pause.wait(rng.uniform(0, 1.5))
            ctl.kill("random")
    except TimeoutError as exc:
        logger.info("kill trigger %s did not come (%s)", trigger, exc)
    finally:
        ctl.mid_transfer_pending.clear()


# ---- scenario: PACS outage -----------------------------------------------------------------


def scenario_outage(bench: Bench) -> tuple[str, bool]:
    """Orthanc stopped while runs are processed, restarted on the same storage and ports."""
    args = bench.args
    if bench.orthanc is None:
        return "PACS outage: skipped (Orthanc is not installed; bash scripts/setup.sh installs it)", False
    t0 = time.monotonic()
    processor = bench.processor(args.outage_processor, delay_s=args.outage_delay_s)
    runs = [make_xa(frames=4, size=64, seed=20_000 + i) for i in range(args.outage_runs)]
    expected = set().union(*(processor.expected_uids(str(r.SOPInstanceUID)) for r in runs))
    pacs_dir = bench.workdir / "outage" / "orthanc"
    pacs = start_orthanc(pacs_dir, binary=bench.orthanc)
    dicom_port, http_port = pacs.dicom_port, pacs.http_port
    dest = Destination(pacs, None)
    node = bench.node("outage", processor, **dest.node_settings())
    state = Path(node.cfg["state_dir"])
    statuses: list[int | None] = []
    crashes = 0
    try:
        node.start()
        sender = threading.Thread(target=lambda: statuses.extend(send_dataset(node.port, r) for r in runs),
                                  name="outage-sender", daemon=True)
        sender.start()
        quarter = max(1, len(expected) // 4)
        wait_until(lambda: journal_state_counts(state)["outbox:delivered"] >= quarter, 120,
                   f"{quarter} output(s) delivered before the outage")
        pacs.process.kill()  # an abrupt outage (a graceful stop may serve on for seconds)
        pacs.process.wait(30)
        down_at = time.monotonic()
        before = journal_state_counts(state)["outbox:delivered"]
        logger.info("outage: Orthanc stopped after %d output(s) delivered", before)
        sender.join(120)
        processed_during = journal_state_counts(state)
        def processed_and_tried() -> bool:
            counts = journal_state_counts(state)
            if counts["done"] + counts["failed"] < len(runs):
                return False
            pending = [r for r in journal_rows(state, "outbox") if r["state"] == "pending"]
            return not pending or any(r["attempts"] > 0 for r in pending)

        wait_until(processed_and_tried, min(args.drain_timeout, 120 + 5 * len(runs)),
                   "every run processed and a failed delivery attempt")
        pause = threading.Event()
        pause.wait(max(0.0, args.outage_s - (time.monotonic() - down_at)))  # the outage lasts at least --outage-s
        waiting = journal_state_counts(state)
        pending_rows = [r for r in journal_rows(state, "outbox") if r["state"] == "pending"]
        failed_attempts = sum(r["attempts"] for r in pending_rows)
        pacs = start_orthanc(pacs_dir, binary=bench.orthanc, dicom_port=dicom_port, http_port=http_port)
        dest = Destination(pacs, None)
        up_at = time.monotonic()
        outage_s = up_at - down_at
        delivered_ok = wait_drained(state, args.drain_timeout)
        back_s = time.monotonic() - up_at
        after = journal_state_counts(state)["outbox:delivered"] - waiting["outbox:delivered"]
        if not node.alive():
            crashes += 1
        present, lost, duplicates = count_outputs(dest, expected)
    finally:
        node.terminate()
        pacs.stop()
    elapsed = time.monotonic() - t0
    answered = sum(s == 0 for s in statuses)
    line = (
        f"PACS outage: {len(runs)} runs ({processor.describe()}), {answered} answered Success, Orthanc killed "
        f"after {before} of {len(expected)} outputs were delivered (runs still processing: "
        f"{processed_during['received'] + processed_during['processing']}), down {fmt_s(outage_s)} while "
        f"{len(pending_rows)} outputs waited ({failed_attempts} failed delivery attempts), restarted on the same "
        f"storage and ports: {after} of {len(pending_rows)} delivered after it came back (all within "
        f"{fmt_s(back_s)}), {present} of {len(expected)} outputs at the PACS, {lost} lost, {duplicates} duplicates, "
        f"{crashes} crashes, {fmt_s(elapsed)}"
    )
    ok = (lost == 0 and duplicates == 0 and crashes == 0 and delivered_ok and answered == len(runs)
          and after == len(pending_rows) and len(pending_rows) > 0)
    return line, ok


# ---- scenario: load ------------------------------------------------------------------------


def scenario_load(bench: Bench) -> tuple[str, bool]:
    """Concurrent senders; processed count, node peak memory and wall time."""
    args = bench.args
    t0 = time.monotonic()
    processor = bench.processor(args.load_processor)
    n_senders, per = args.senders, args.runs_per_sender
    folders = []
    runs: list[pydicom.Dataset] = []
    for s in range(n_senders):
        folder = bench.workdir / "load" / f"sender{s}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per):
            runs.append(make_xa(folder / f"run{j:03d}.dcm", frames=8, size=128, seed=30_000 + s * 1000 + j))
        folders.append(folder)
    expected = set().union(*(processor.expected_uids(str(r.SOPInstanceUID)) for r in runs))
    with destination(bench, "load") as dest:
        node = bench.node("load", processor, limits={"min_free_bytes": 0, "max_associations": n_senders + 2},
                          **dest.node_settings())
        state = Path(node.cfg["state_dir"])
        node.start()
        try:
            baseline_kib = sum(node.tree_memory_kib("VmRSS"))
            start = time.monotonic()
            answered, how = _load_send(bench, node.port, folders)
            answered_s = time.monotonic() - start
            drained = wait_drained(state, args.drain_timeout)
            wall = time.monotonic() - start
            own_kib, children_kib = node.tree_memory_kib("VmHWM")
            crashes = 0 if node.alive() else 1
            counts = journal_state_counts(state)
        finally:
            node.terminate()
        present, lost, duplicates = count_outputs(dest, expected)
        dest_name = dest.name
    total = n_senders * per
    line = (
        f"load: {n_senders} concurrent senders ({how}) x {per} runs (8 frames 128x128 XA), {answered} of {total} "
        f"answered Success in {fmt_s(answered_s)}, {counts['done']} of {total} processed ({processor.describe()}), "
        f"{present} of {len(expected)} outputs at {dest_name}, {lost} lost, {duplicates} duplicates, {crashes} crashes, "
        f"node peak RSS {(own_kib + children_kib) / 1024**2:.2f} GiB (VmHWM: node process {own_kib / 1024**2:.2f} + "
        f"processing process {children_kib / 1024**2:.2f}; {baseline_kib / 1024**2:.2f} GiB after start-up), "
        f"wall {fmt_s(wall)} from first send to last delivery ({total / wall:.2f} runs/s); total {fmt_s(time.monotonic() - t0)}"
    )
    ok = answered == total and counts["done"] == total and lost == 0 and duplicates == 0 and crashes == 0 and drained
    return line, ok


def _load_send(bench: Bench, port: int, folders: list[Path]) -> tuple[int, str]:
    """All senders at once; the number of Success answers and how they were sent."""
    files = [sorted(f.glob("*.dcm")) for f in folders]
    if bench.storescu:
        procs = [subprocess.Popen([bench.storescu, "-v", "-x=", "-aet", "STORESCU", "-aec", "TAVISEG", "127.0.0.1",
                                   str(port), *map(str, fs)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for fs in files]
        answered = 0
        for p in procs:
            try:
                out, _ = p.communicate(timeout=bench.args.drain_timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate(timeout=30)
                logger.error("storescu (pid %d) did not finish in time", p.pid)
            answered += out.count("Received Store Response (Success)")
        return answered, "dcmtk storescu processes"
    results: list[int] = []
    lock = threading.Lock()

    def one(fs: list[Path]) -> None:
        from tests.node.support import send
        statuses = send(port, fs, calling="STORESCU")
        with lock:
            results.extend(s for s in statuses if s == 0)

    threads = [threading.Thread(target=one, args=(fs,)) for fs in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(bench.args.drain_timeout)
    return len(results), "pynetdicom threads"


# ---- main ----------------------------------------------------------------------------------

QUICK = {"mutants": 40, "crash_runs": 12, "kills": 4, "outage_runs": 6, "outage_s": 2.0,
         "senders": 4, "runs_per_sender": 3, "load_processor": "fake"}
FULL = {"mutants": 520, "crash_runs": 50, "kills": 15, "outage_runs": 20, "outage_s": 10.0,
        "senders": 8, "runs_per_sender": 10, "load_processor": "model"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; sizes left unset take the --quick or the full defaults."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios to run (default: all of {','.join(SCENARIOS)})")
    parser.add_argument("--quick", action="store_true", help="small counts (a couple of minutes in all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of mutants and kill moments")
    parser.add_argument("--mutants", type=int, help=f"bad inputs: mutants (default {FULL['mutants']}, quick {QUICK['mutants']})")
    parser.add_argument("--bad-processor", choices=("model", "fake"), default="model")
    parser.add_argument("--crash-runs", type=int, help=f"crash: runs (default {FULL['crash_runs']})")
    parser.add_argument("--kills", type=int, help=f"crash: SIGKILLs (default {FULL['kills']})")
    parser.add_argument("--crash-processor", choices=("model", "fake"), default="fake")
    parser.add_argument("--crash-delay-s", type=float, default=0.3, help="crash: fake processor delay per run")
    parser.add_argument("--max-resends", type=int, default=10, help="crash: re-sends of one run at most")
    parser.add_argument("--outage-runs", type=int, help=f"outage: runs (default {FULL['outage_runs']})")
    parser.add_argument("--outage-s", type=float, help=f"outage: least time Orthanc stays down (default {FULL['outage_s']:g})")
    parser.add_argument("--outage-processor", choices=("model", "fake"), default="fake")
    parser.add_argument("--outage-delay-s", type=float, default=0.5, help="outage: fake processor delay per run")
    parser.add_argument("--senders", type=int, help=f"load: concurrent senders (default {FULL['senders']})")
    parser.add_argument("--runs-per-sender", type=int, help=f"load: runs per sender (default {FULL['runs_per_sender']})")
    parser.add_argument("--load-processor", choices=("model", "fake"),
                        help="load: processor (default model; fake with --quick)")
    parser.add_argument("--drain-timeout", type=float, default=900.0, help="longest wait for the node to finish its work")
    parser.add_argument("--node-memory-limit-gib", type=float, default=12.0,
                        help="address-space cap of the node process (0: none), protects a shared machine")
    parser.add_argument("--workdir", type=Path, help="keep every file of the run here (default: a temporary folder)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more diagnostics on stderr")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in SCENARIOS]
    if unknown:
        parser.error(f"--only: unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected scenarios, one summary line each on stdout; exit code 0 when all passed."""
    args = parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL if args.verbose < 2 else logging.INFO)
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", module="pydicom")
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="taviseg-reliability-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, workdir)
    if bench.orthanc is None:
        logger.warning("Orthanc is not installed: crash and load use a folder destination, outage is skipped")
    if bench.storescu is None:
        logger.warning("dcmtk storescu not found: samples and load are sent with pynetdicom")
    functions = {"bad": scenario_bad, "crash": scenario_crash, "outage": scenario_outage, "load": scenario_load}
    all_ok = True
    try:
        for name in args.only:
            t0 = time.monotonic()
            try:
                line, ok = functions[name](bench)
            except (BenchError, OrthancError, TimeoutError, RuntimeError, OSError) as exc:
                logger.exception("scenario %s could not run", name)
                line, ok = f"{name}: NOT RUN ({type(exc).__name__}: {exc})".replace("\n", " ")[:600], False
            print(line, flush=True)
            logger.info("scenario %s finished in %.0f s (%s)", name, time.monotonic() - t0, "ok" if ok else "FAILED")
            all_ok &= ok
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
