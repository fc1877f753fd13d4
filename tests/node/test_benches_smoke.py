"""Smoke tests of benchmarks at tiny sizes: ``bench/node_e2e.py``, ``bench/receive.py`` (real
peers: Orthanc, dcmtk), ``bench/contexts_copy.py``, ``bench/disk.py``, ``bench/onnx_session.py``
and ``bench/cross_domain.py``.

They run each script as a command and check its one summary line: its format, and that the
figures mean what the line says (the ratio is the quotient of the two speeds, the node's
contexts copy faster than plain ones, ...). Speed targets are never asserted here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, require_tool

NUMBER = r"(\d+(?:\.\d+)?)"
E2E_LINE = re.compile(
    rf"^node e2e linknet/resnet18 64px (\w+) ([\w-]+) batch 2: 4 frames 128x128, SEG in Orthanc after {NUMBER} s, "
    rf"pure inference {NUMBER} s, overhead (-?\d+)% \(target <= 25%\), real-time factor {NUMBER}$"
)
RECEIVE_LINE = re.compile(
    rf"^receive 5 frames 256x256 \({NUMBER} MB\) x1: node {NUMBER} MB/s, storescp {NUMBER} MB/s, "
    rf"ratio {NUMBER}x$"
)
CONTEXTS_LINE = re.compile(
    rf"^contexts (\d+) \(other_objects keep\): deepcopy plain {NUMBER} ms, node's shared-UID {NUMBER} ms, "
    rf"{NUMBER}x$"
)
DISK_LINE = re.compile(
    rf"^disk (.+): write 8 MiB \+ fdatasync {NUMBER} MB/s \({NUMBER}\); final fdatasync after 8 MiB written: "
    rf"no write-back {NUMBER} s, fdatasync every 2 MiB {NUMBER} s, sync_file_range every 2 MiB {NUMBER} s$"
)


def _run_bench(script: str, *args: str, timeout: float) -> tuple[str, str]:
    """Run ``bench/<script>``; (its stdout, which must be exactly one line, its stderr)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"{script} printed {len(lines)} lines on stdout:\n{proc.stdout}"
    return lines[0], proc.stderr


@pytest.mark.slow
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


@pytest.mark.slow
def test_receive_bench_prints_one_summary_line():
    for tool in ("storescu", "storescp", "echoscu"):
        require_tool(tool)
    line, err = _run_bench("receive.py", "--frames", "5", "--size", "256", "--repeats", "1", "--decompose",
                           "--cpu", timeout=300)
    match = RECEIVE_LINE.match(line)
    assert match, f"unexpected summary line: {line!r}"
    size_mb, node, storescp, ratio = (float(v) for v in match.groups())
    assert 0.3 < size_mb < 0.4, line  # 5 frames of 256 x 256 8-bit pixels plus the header
    assert node > 0 and storescp > 0, line
    assert ratio == pytest.approx(node / storescp, rel=0.02, abs=0.01), line  # the ratio of the two medians
    cpu = re.search(r"cpu per send \(medians, user \+ system\): (.*)", err)
    assert cpu, err[-2000:]
    per_receiver = {name: (float(user), float(system))
                    for name, user, system in re.findall(rf"([\w/-]+) {NUMBER} s \+ {NUMBER} s", cpu.group(1))}
    assert sorted(per_receiver) == ["node", "node/pynetdicom-reader", "storescp"], cpu.group(0)
    assert all(0 <= v < 30 for pair in per_receiver.values() for v in pair), cpu.group(0)
    parts = re.search(r"decomposition \(medians\): (.*)", err)
    assert parts, err[-2000:]
    receivers = [p.split(" ")[0] for p in parts.group(1).split(", ")]
    assert receivers == ["storescp", "node", "node/pynetdicom-reader", "bare", "bare+fsync", "bare+writeback",
                         "bare/pynetdicom-reader"], parts.group(0)


def test_contexts_copy_bench_shows_the_node_contexts_copy_faster():
    line, _ = _run_bench("contexts_copy.py", "--repeats", "3", timeout=120)
    match = CONTEXTS_LINE.match(line)
    assert match, f"unexpected summary line: {line!r}"
    count, plain, shared, ratio = match.groups()
    assert int(count) > 100, line  # every storage SOP class pynetdicom knows, plus Verification
    # sharing the UIDs skips copying ~1,000 UID objects: far cheaper, not within the noise
    assert float(shared) * 2 < float(plain), line
    assert float(ratio) == pytest.approx(float(plain) / float(shared), rel=0.05), line


def test_disk_bench_prints_measured_speed_and_sync_times(tmp_path):
    line, _ = _run_bench("disk.py", "--dir", str(tmp_path), "--size-mib", "8", "--writeback-mib", "8",
                         "--step-mib", "2", "--repeats", "1", timeout=180)
    match = DISK_LINE.match(line)
    assert match, f"unexpected summary line: {line!r}"
    folder, median, single, *waits = match.groups()
    assert folder == str(tmp_path), line
    assert float(median) == float(single) and 0 < float(median) < 100_000, line  # one run: its median is it
    assert all(0 <= float(w) < 60 for w in waits), line
    assert list(tmp_path.iterdir()) == []  # the files it wrote are gone


@pytest.mark.slow
def test_onnx_session_bench_times_the_session_inside_the_engine():
    line, _ = _run_bench("onnx_session.py", "--arch", "linknet", "--encoder", "resnet18", "--size", "64",
                         "--frames", "4", "--batch", "2", "--repeats", "1", timeout=600)
    match = re.match(rf"^onnx session alone linknet/resnet18 64px batch 2, \d+ threads: {NUMBER} ms/frame "
                     rf"\(median {NUMBER}\); engine {NUMBER} ms/frame \(median {NUMBER}\); "
                     rf"engine - session (-?\d+) ms/frame$", line)
    assert match, f"unexpected summary line: {line!r}"
    session, _, engine, _, difference = (float(v) for v in match.groups())
    # the engine runs the same session plus resizing 1000x1000 frames and post-processing them
    assert 0 < session < engine, line
    assert difference == pytest.approx(engine - session, abs=1), line


def test_cross_domain_bench_scores_each_model_on_both_generators(tmp_path):
    """bench/cross_domain.py at a toy size: two cohorts, two 1-epoch models, a 2x2 table."""
    out = tmp_path / "cross.json"
    line, err = _run_bench("cross_domain.py", "--workdir", str(tmp_path / "work"), "--preset", "ct_tiny",
                           "--patients", "6", "--epochs", "1", "--json", str(out), timeout=600)
    match = re.match(
        rf"^cross-domain: v2 model on v1 {NUMBER} \(v1 model on v1 {NUMBER}, ratio {NUMBER}\); v1 model on v2 "
        rf"{NUMBER} \(v2 model on v2 {NUMBER}, ratio {NUMBER}\); median Dice, fold 0 test patients, cpu_phantom "
        rf"on ct_tiny$", line)
    assert match, f"unexpected summary line: {line!r}"
    v2_v1, v1_v1, ratio1, v1_v2, v2_v2, ratio2 = map(float, match.groups())
    assert all(0.0 <= d <= 1.0 for d in (v2_v1, v1_v1, v1_v2, v2_v2)), line
    assert ratio1 == pytest.approx(v2_v1 / max(v1_v1, 1e-9), abs=0.006), line
    assert ratio2 == pytest.approx(v1_v2 / max(v2_v2, 1e-9), abs=0.006), line
    figures = json.loads(out.read_text())
    assert set(figures["median_dice"]) == {"v1_on_v1", "v1_on_v2", "v2_on_v1", "v2_on_v2"}
    assert figures["frames"]["v2_on_v1"] == figures["frames"]["v1_on_v1"] > 0  # same held-out frames
    for generator in ("v1", "v2"):  # the two cohorts differ only in their generator
        ds = json.loads((tmp_path / "work" / f"cohort_{generator}" / "dataset.json").read_text())
        assert ds["config"]["generator"] == {"v1": "v1", "v2": "ct"}[generator] and ds["patients"] == 6
    assert "v1 model on v2 test frames: median Dice" in err
