"""Smoke tests of the node benchmarks (``bench/node_e2e.py``, ``bench/receive.py``) at tiny sizes.

They run each script as a command, with real peers (Orthanc, dcmtk), and check the one summary
line: its format and that the figures are positive. Speed targets are never asserted here.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, require_tool

pytestmark = pytest.mark.slow

NUMBER = r"(\d+(?:\.\d+)?)"
E2E_LINE = re.compile(
    rf"^node e2e linknet/resnet18 64px (\w+) ([\w-]+) batch 2: 4 frames 128x128, SEG in Orthanc after {NUMBER} s, "
    rf"pure inference {NUMBER} s, overhead (-?\d+)% \(target <= 25%\), real-time factor {NUMBER}$"
)
RECEIVE_LINE = re.compile(
    rf"^receive 5 frames 256x256 \({NUMBER} MB\) x1: node {NUMBER} MB/s, storescp {NUMBER} MB/s, "
    rf"ratio {NUMBER}x$"
)


def _run_bench(script: str, *args: str, timeout: float) -> tuple[str, str]:
    """Run ``bench/<script>``; (its stdout, which must be exactly one line, its stderr)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"{script} printed {len(lines)} lines on stdout:\n{proc.stdout}"
    return lines[0], proc.stderr


def test_node_e2e_bench_prints_one_summary_line():
    for tool in ("storescu", "Orthanc"):
        require_tool(tool)
    line, _ = _run_bench("node_e2e.py", "--frames", "4", "--size", "128", "--arch", "linknet",
                      "--encoder", "resnet18", "--input-size", "64", "--batch", "2", "--device", "cpu",
                      "--repeats", "1", timeout=600)
    match = E2E_LINE.match(line)
    assert match, f"unexpected summary line: {line!r}"
    device, _backend, latency, inference, overhead, rtf = match.groups()
    assert device == "cpu"
    assert float(latency) > 0 and float(inference) > 0 and float(rtf) > 0, line
    assert int(overhead) > 0, line  # sending, SEG and delivery dwarf inference on 4 tiny frames


def test_receive_bench_prints_one_summary_line():
    for tool in ("storescu", "storescp", "echoscu"):
        require_tool(tool)
    line, err = _run_bench("receive.py", "--frames", "5", "--size", "256", "--repeats", "1", "--decompose",
                           timeout=300)
    match = RECEIVE_LINE.match(line)
    assert match, f"unexpected summary line: {line!r}"
    size_mb, node, storescp, ratio = (float(v) for v in match.groups())
    assert size_mb > 0 and node > 0 and storescp > 0 and ratio > 0, line
    parts = re.search(r"decomposition \(medians\): (.*)", err)
    assert parts, err[-2000:]
    receivers = [p.split(" ")[0] for p in parts.group(1).split(", ")]
    assert receivers == ["storescp", "node", "node/pynetdicom-reader", "bare", "bare+fsync", "bare+writeback",
                         "bare/pynetdicom-reader"], parts.group(0)
