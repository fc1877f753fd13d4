"""Processing in a child process: a native crash fails one run instead of killing the node.

Decoding and inference run in C/C++ code (GDCM, OpenJPEG, CharLS, libjpeg, PyTorch, ONNX
Runtime) that a corrupt instance can take down: GDCM throws a C++ exception through its Python
binding when the codestream does not match Rows/Columns, which ends in ``std::terminate``
(SIGABRT); a decoder can segfault; a huge declared image can get the process OOM-killed. The
node answered Success for such an instance before processing it, so if that happened in the
node's own process every association in flight was dropped, and the instance, re-queued at each
restart, crashed the node again until the journal failed it after repeated interruptions.

:class:`IsolatedProcessor` runs the configured processor (:func:`load_processor`) in a child
process of its own (``spawn``: a fresh interpreter, no inherited threads or locks) and talks to
it over a pipe: the instance goes in, the output objects come back encoded as DICOM files,
domain errors come back by category. When the child dies during a run, the run is tried once
more in a fresh child; a run that kills it twice is failed with the reason (signal or exit
code), and the next run gets a fresh child. The child ignores SIGTERM/SIGINT (systemd signals
the whole control group on stop): the node stops it after the run in hand, and it exits by
itself when the node is gone (its end of the pipe closes).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import multiprocessing.connection
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import pydicom
import pydicom.config

from dicom_node.config import ProcessingConfig
from dicom_node.errors import NodeConfigError, NodeError, NotSegmentable, ProcessingError
from dicom_node.outbox import ensure_file_meta
from dicom_node.pipeline import OutputObject, load_processor
from dicom_node.spool import StoredInstance
from tavicore.errors import TavisegError

logger = logging.getLogger(__name__)

#: Times a run is tried when the processing process dies during it (each time in a fresh one).
RUN_ATTEMPTS = 2
#: Longest wait for a child to load its processor (a large model on a slow disk).
LOAD_TIMEOUT_S = 900.0
_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class ProcessorDied(ProcessingError):
    """The processing process died while processing a run (signal or exit code in the message)."""


class ProcessingInterrupted(NodeError):
    """The node is stopping: the run in hand is left unfinished for the next start."""


def describe_exit(exitcode: int | None) -> str:
    """``killed by SIGABRT``, ``exit code 3``... for a child's exit code."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class _ChildDied(Exception):
    def __init__(self, exitcode: int | None) -> None:
        super().__init__(describe_exit(exitcode))
        self.exitcode = exitcode


class IsolatedProcessor:
    """A :class:`~dicom_node.pipeline.RunProcessor` whose work happens in a child process.

    Args:
        cfg: Processing settings; the child builds its processor with :func:`load_processor`.
        onnx_cache_dir: Passed on to :func:`load_processor`.
        load_timeout_s: Longest wait for the child to load the processor.

    Raises:
        NodeConfigError: the processor cannot be loaded (the child's error), or loading
            crashed or timed out.
    """

    def __init__(self, cfg: ProcessingConfig, *, onnx_cache_dir: Path | None = None,
                 load_timeout_s: float = LOAD_TIMEOUT_S) -> None:
        self.cfg = cfg
        self.onnx_cache_dir = onnx_cache_dir
        self.load_timeout_s = load_timeout_s
        self.name = ""
        self.version = ""
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._closing = threading.Event()
        self._spawn()

    @property
    def pid(self) -> int | None:
        """Process id of the current child (None when none runs)."""
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def _spawn(self) -> None:
        """Start a child and wait until its processor is loaded."""
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_child_main,
            args=(child_conn, self.cfg, self.onnx_cache_dir, logging.getLogger().getEffectiveLevel()),
            name="taviseg-processing",
            daemon=True,
        )
        proc.start()
        child_conn.close()
        self._proc, self._conn = proc, parent_conn
        try:
            ready = multiprocessing.connection.wait([parent_conn, proc.sentinel], timeout=self.load_timeout_s)
            if not ready:
                raise NodeConfigError(
                    f"the processing process did not load the processor within {self.load_timeout_s:.0f} s"
                )
            try:
                message = parent_conn.recv()
            except (EOFError, OSError):
                proc.join(5)
                raise NodeConfigError(
                    f"the processing process died while loading the processor ({describe_exit(proc.exitcode)})"
                ) from None
            if message[0] == "load-error":
                raise NodeConfigError(message[2] if message[1] == "NodeConfigError" else f"{message[1]}: {message[2]}")
        except BaseException:
            self._reap(kill=True)
            raise
        _, self.name, self.version = message
        logger.info("processing process pid %d ready (processor %s version %s)", proc.pid, self.name, self.version)

    def _reap(self, *, kill: bool = False, timeout: float = 5.0) -> None:
        """Forget the current child (terminated first when ``kill``)."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            if kill and proc.is_alive():
                proc.kill()
            proc.join(timeout)

    def _exchange(self, instance: StoredInstance) -> tuple:
        """Send one run to the child and return its reply; _ChildDied when it dies meanwhile."""
        proc, conn = self._proc, self._conn  # close() may reset the attributes meanwhile
        assert proc is not None and conn is not None
        try:
            conn.send(("process", instance))
            multiprocessing.connection.wait([conn, proc.sentinel])
            if conn.poll():
                return conn.recv()
        except (EOFError, BrokenPipeError, OSError):
            logger.debug("pipe to the processing process pid %d closed", proc.pid)
        proc.join(5)
        raise _ChildDied(proc.exitcode)

    def process(self, instance: StoredInstance) -> list[OutputObject]:
        """Process ``instance`` in the child; its outputs (decoded from the DICOM files it sent).

        Raises:
            NotSegmentable / ProcessingError: as raised by the processor (type and message kept;
                other errors become ProcessingError "<Type>: <message>").
            ProcessorDied: the child died in each of :data:`RUN_ATTEMPTS` tries.
            ProcessingInterrupted: the node is stopping (the run stays unfinished).
        """
        died: _ChildDied | None = None
        for attempt in range(1, RUN_ATTEMPTS + 1):
            if self._closing.is_set():
                raise ProcessingInterrupted("the node is stopping")
            if self._proc is None or not self._proc.is_alive():
                self._reap()
                try:
                    self._spawn()
                except NodeConfigError as exc:
                    raise ProcessingError(f"the processing process cannot be restarted: {exc}") from exc
            try:
                reply = self._exchange(instance)
            except _ChildDied as exc:
                if self._closing.is_set():
                    raise ProcessingInterrupted("the node stopped the processing process") from None
                died = exc
                logger.error("processing process died (%s) while processing instance #%d %s (try %d of %d)",
                             exc, instance.id, instance.sop_instance_uid, attempt, RUN_ATTEMPTS)
                self._reap()
                continue
            return _unpack(reply)
        raise ProcessorDied(
            f"the processing process died {RUN_ATTEMPTS} times while processing this run ({died}); "
            "the node itself kept running"
        )

    def close(self, timeout: float = 10.0) -> None:
        """Stop the child (after the run in hand when it ends within ``timeout``); idempotent."""
        self._closing.set()
        proc, conn = self._proc, self._conn
        if proc is None:
            return
        if conn is not None:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                logger.debug("processing process already gone")
        proc.join(timeout)
        if proc.is_alive():
            logger.warning("processing process pid %d still busy after %.0f s: killed", proc.pid, timeout)
        self._reap(kill=True)


def _unpack(reply: tuple) -> list[OutputObject]:
    """Outputs of an ``ok`` reply, or the processor's error raised again."""
    if reply[0] == "ok":
        return [OutputObject(kind, pydicom.dcmread(io.BytesIO(data)), qc_frames=qc_frames)
                for kind, data, qc_frames in reply[1]]
    _, category, type_name, message, *extra = reply
    if category == "not-segmentable":
        raise NotSegmentable(message, qc_frames=extra[0] if extra else None)
    if category == "processing":
        raise ProcessingError(message)
    raise ProcessingError(f"{'unexpected ' if category == 'unexpected' else ''}{type_name}: {message}")


def _encode(ds: pydicom.Dataset) -> bytes:
    """An output data set as a DICOM file (what the outbox would write)."""
    ensure_file_meta(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _child_main(conn: multiprocessing.connection.Connection, cfg: ProcessingConfig,
                onnx_cache_dir: Path | None, log_level: int) -> None:
    """The processing process: load the processor, then process runs until told to stop."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the node decides when this process ends
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=_LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("pynetdicom", "PIL", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(max(log_level, logging.WARNING))
    # As in the node's process: received values (names, dates) never reach the logs.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    from dicom_node.node import install_log_escaping  # here: node imports this module

    install_log_escaping()  # and no record of this process can forge a line of the node's log
    try:
        processor = load_processor(cfg, onnx_cache_dir=onnx_cache_dir)
    except Exception as exc:  # noqa: BLE001 - every load failure is reported to the node
        conn.send(("load-error", type(exc).__name__, str(exc)))
        return
    conn.send(("ready", processor.name, processor.version))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the node is gone
        if message[0] != "process":
            return
        instance: StoredInstance = message[1]
        try:
            outputs = processor.process(instance)
            try:
                reply: tuple = ("ok", [(o.kind, _encode(o.dataset), o.qc_frames) for o in outputs])
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                reply = ("error", "processing", type(exc).__name__, f"cannot encode an output object: {exc}")
        except NotSegmentable as exc:
            reply = ("error", "not-segmentable", type(exc).__name__, str(exc), exc.qc_frames)
        except ProcessingError as exc:
            reply = ("error", "processing", type(exc).__name__, str(exc))
        except TavisegError as exc:
            reply = ("error", "domain", type(exc).__name__, str(exc))
        except Exception as exc:  # noqa: BLE001 - a processor bug is reported, the process lives on
            logging.getLogger(__name__).error("unexpected error processing instance #%d:\n%s",
                                              instance.id, traceback.format_exc())
            reply = ("error", "unexpected", type(exc).__name__, str(exc))
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return
