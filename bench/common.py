"""What the node benchmarks run as scripts share (``bench/node_e2e.py``, ``bench/receive.py``):
their error, polling, dcmtk's ``storescu``, logging, the work folder and the exit on a peer's failure.

``bench/receive.py`` is also imported by the node it starts (its processor factory), so this
module imports :mod:`testkit` only where it is used.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

#: The longest a single ``storescu`` send may take.
SEND_TIMEOUT_S = 300.0


class BenchError(RuntimeError):
    """A peer is missing, did not start, refused a send, or a result never arrived."""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, *, max_delay: float = 0.1) -> Any:
    """:func:`testkit.node.wait_until` polling from 5 ms (the benches time what they wait for).

    Raises:
        BenchError: ``timeout`` seconds passed.
    """
    from testkit.node import wait_until as poll

    return poll(predicate, timeout, what, initial_delay=0.005, max_delay=max_delay, error=BenchError)


def require_tool(name: str) -> str:
    """Path of a dcmtk program.

    Raises:
        BenchError: it is not installed.
    """
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
    if path is None:
        raise BenchError(f"{name} is not installed (dcmtk; bash scripts/setup.sh installs it)")
    return path


def storescu(path: Path, port: int, called: str) -> float:
    """Send ``path`` with dcmtk storescu as ANGIO (one association); seconds from start to exit.

    Raises:
        BenchError: storescu is missing, failed, or the receiver did not answer Success.
    """
    cmd = [require_tool("storescu"), "-v", "-aet", "ANGIO", "-aec", called, "127.0.0.1", str(port), str(path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SEND_TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or "Received Store Response (Success)" not in out:
        raise BenchError(f"storescu of {path.name} to {called} at port {port} failed (rc={proc.returncode}): "
                         f"{out[-800:]}")
    return elapsed


def setup_logging(logger: logging.Logger, verbose: bool) -> None:
    """Warnings of the libraries on stderr (INFO with ``verbose``), ``logger``'s INFO always."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


@contextlib.contextmanager
def work_folder(keep: Path | None, prefix: str) -> Iterator[Path]:
    """``keep`` (created, kept), or a temporary folder removed at the end."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def run_main(main: Callable[[], int], logger: logging.Logger) -> NoReturn:
    """``sys.exit(main())``; a peer's failure exits with 1 and its message logged, no traceback."""
    try:
        sys.exit(main())
    except (BenchError, TimeoutError, RuntimeError, OSError) as exc:  # peers: name the problem, no traceback
        logger.error("%s: %s", type(exc).__name__, exc)
        sys.exit(1)
