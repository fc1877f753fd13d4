"""``python -m bench.reliability --quick``: every scenario runs against real peers and its summary
line shows no crash, nothing lost, nothing duplicated, every bad input answered correctly."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, require_tool


def _number(pattern: str, line: str) -> int:
    match = re.search(pattern, line)
    assert match, f"{pattern!r} not in the summary line: {line}"
    return int(match.group(1))


@pytest.mark.slow
def test_reliability_bench_quick_shows_no_crash_no_loss_no_duplicate(tmp_path, samples_dir):
    require_tool("Orthanc")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.reliability", "--quick", "--workdir", str(tmp_path / "bench")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    lines = proc.stdout.strip().splitlines()
    by_name = {line.split(":", 1)[0]: line for line in lines}
    assert sorted(by_name) == ["PACS outage", "bad inputs", "crash safety", "load"], proc.stdout + proc.stderr[-3000:]
    for line in lines:
        assert _number(r"(\d+) crashes", line) == 0, line
    bad = by_name["bad inputs"]
    sent = _number(r"(\d+) sent \(", bad)
    assert sent >= 40 and _number(r"(\d+) answered correctly", bad) == sent, bad
    assert _number(r"(\d+) wrong answers", bad) == 0, bad
    assert "node answered C-ECHO after every send" in bad
    for name in ("crash safety", "PACS outage", "load"):
        line = by_name[name]
        assert _number(r"(\d+) lost", line) == 0, line
        assert _number(r"(\d+) duplicates", line) == 0, line
    assert _number(r"(\d+) SIGKILLs", by_name["crash safety"]) >= 1
    assert proc.returncode == 0, proc.stderr[-3000:]
