"""`taviseg demo` end to end as shipped: cohort -> model -> node -> PACS -> scores (Dice >= 0.8).

The first run uses the real peers (Orthanc as the PACS, dcmtk storescu as the angiography
system); the second reuses the cohort and the trained model and sends with pynetdicom to a
node writing to a folder, the path a machine without Orthanc takes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest

from tavicore.config import load_config
from taviseg.demo import DemoConfig, run_demo
from tests.conftest import REPO, require_tool

#: The shipped demo (the v2 phantom preset ct_demo and the CPU recipe cpu_demo_ct), sending 2
#: runs instead of 4.
SHIPPED = {"max_runs": 2, "result_timeout_s": 600}
#: The Dice the demo must print on each held-out phantom run (issue 15). On 2026-12-07 the
#: shipped recipe (8 epochs, cosine learning rate, channels-last) printed 0.862 and 0.874 on these
#: two runs (validation Dice 0.863); the 12-epoch constant-rate recipe before it 0.846 and 0.832.
MIN_DICE = 0.8


@pytest.mark.slow
@pytest.mark.timeout(2400)  # trains the shipped CPU demo model (about 6-10 min on 2 cores)
def test_demo_with_orthanc_then_reused_with_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    require_tool("Orthanc")
    require_tool("storescu")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    work = tmp_path / "demo"
    cfg = load_config(REPO / "conf" / "demo.yaml", DemoConfig,
                      overrides={**SHIPPED, "workdir": str(work), "orthanc": "yes", "sender": "storescu"})
    first = run_demo(cfg)

    assert len(first.runs) == 2
    for run in first.runs:
        assert run.seg_at is not None and run.latency_s > 0
        assert run.dice >= MIN_DICE, (run.run_file, run.dice)
        assert run.overlay_png is not None and run.overlay_png.read_bytes()[:4] == b"\x89PNG"
    assert first.orthanc_url and first.orthanc_url.startswith("http://127.0.0.1:")
    # the viewer stack is part of the set-up (scripts/viewers.sh): the demo names the OHIF page
    assert first.viewer_url and "/viewer?StudyInstanceUIDs=" in first.viewer_url
    report = first.report_md.read_text()
    assert report.count("\n| P") == 2 and "Orthanc web interface" in report
    out = capsys.readouterr().out
    assert "median Dice" in out and "SEG/SR/overlay objects are in Orthanc" in out
    assert "the first study in the OHIF viewer: http://127.0.0.1:" in out

    trained = sorted((work / "train").glob("fold_*/*"))
    assert any(p.name == "done.json" for p in trained)
    stamp = {p: p.stat().st_mtime_ns for p in trained if p.is_file()}
    second = run_demo(load_config(REPO / "conf" / "demo.yaml", DemoConfig,
                                  overrides={**SHIPPED, "workdir": str(work), "orthanc": "no",
                                             "sender": "pynetdicom"}))
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp, "the trained fold was not reused"
    assert second.orthanc_url is None and second.output_folder is not None
    assert [r.sop_instance_uid for r in second.runs] == [r.sop_instance_uid for r in first.runs]
    assert all(r.dice is not None for r in second.runs)
    kinds = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).Modality)
                   for p in second.output_folder.rglob("*.dcm"))
    assert kinds == sorted(["SEG", "SR", "OT"] * 2), kinds  # SEG, SR and the burned-in SC overlay
