"""``taviseg demo``: the whole product on the embedded default, end to end.

phantom cohort (with DICOM XA runs) -> patient split -> train a small model on one fold (or
reuse it) -> start a real Orthanc (when installed; a folder destination otherwise) and the node
as a separate process -> send the fold's held-out runs over C-STORE as an angiography system
would (dcmtk ``storescu`` when installed) -> wait for the SEG objects -> score them against the
phantom's ground truth (Dice, ASSD in mm) and time them -> overlay PNGs and a report.

Every step reuses what a previous demo in the same work folder left (cohort, split, trained
fold), so a second run only repeats the node part. Ctrl-C stops the node and Orthanc.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydicom.uid import SegmentationStorage

from tavicore.config import setting
from tavicore.errors import TavisegError
from testkit.orthanc import OrthancServer, find_orthanc, free_port, start_orthanc, wait_until
from testkit.viewers import OhifServer, start_viewer_pacs
from testkit.viewers import missing_parts as viewer_missing_parts

logger = logging.getLogger(__name__)

NODE_AET = "TAVISEG"
SENDER_AET = "DEMO-ANGIO"
PACS_AET = "ORTHANC"
SEG_SOP_CLASS = SegmentationStorage


class DemoError(TavisegError):
    """A step of the demo failed (the message names the step)."""


@dataclass(frozen=True)
class DemoConfig:
    """Settings of ``taviseg demo`` (conf/demo.yaml)."""

    workdir: Path = setting(Path("runs/demo"), doc="work folder (relative to the current folder)")
    phantom_preset: str = setting("ct_demo", doc="phantom preset of conf/phantom.yaml (ct_demo: v2, demo: v1)")
    train_config: str = setting("cpu_demo_ct", doc="conf/train/<name>.yaml or a path")
    k_folds: int = setting(4, ge=2, le=10, doc="folds of the patient split")
    fold: int = setting(0, ge=0, doc="fold to train; its test patients' runs are sent")
    max_runs: int = setting(4, ge=1, le=100, doc="runs sent to the node")
    outputs: tuple[str, ...] = setting(("seg", "sr", "sc"), doc="output kinds of the node")
    orthanc: Literal["auto", "yes", "no"] = "auto"
    sender: Literal["auto", "storescu", "pynetdicom"] = "auto"
    result_timeout_s: float = setting(900.0, gt=0, doc="wait for all results at most this long")
    keep_running: Literal["auto", "yes", "no"] = setting(
        "no", doc="keep Orthanc and the node up at the end until Ctrl-C (auto: when interactive)"
    )


@dataclass
class RunResult:
    """One sent run and what came back."""

    run_file: Path
    sop_instance_uid: str
    frames: int
    sent_at: float
    seg_at: float | None = None
    dice: float | None = None
    assd_mm: float | None = None
    hd95_mm: float | None = None
    overlay_png: Path | None = None

    @property
    def latency_s(self) -> float | None:
        return None if self.seg_at is None else self.seg_at - self.sent_at


@dataclass
class DemoSummary:
    """What the demo produced and measured."""

    workdir: Path
    runs: list[RunResult] = field(default_factory=list)
    orthanc_url: str | None = None
    viewer_url: str | None = None
    output_folder: Path | None = None
    report_md: Path | None = None
    report_html: Path | None = None
    model_folder: Path | None = None


# ----------------------------------------------------------------------------------- steps


def prepare_cohort(cfg: DemoConfig, workdir: Path) -> Path:
    """Generate the phantom cohort with DICOM runs (reused when already there) and split it."""
    from tavidata.phantom import generate_cohort, load_phantom_preset
    from tavidata.splits import SPLITS_FILENAME, split_dataset

    cohort = workdir / "cohort"
    if not (cohort / "manifest.csv").is_file():
        logger.info("step 1/6: generating the phantom cohort (preset %s) in %s", cfg.phantom_preset, cohort)
        if cohort.exists():
            shutil.rmtree(cohort)
        generate_cohort(cohort, load_phantom_preset(cfg.phantom_preset), progress=True, dicom=True)
    else:
        logger.info("step 1/6: reusing the phantom cohort in %s", cohort)
    if not (cohort / SPLITS_FILENAME).is_file():
        split_dataset(cohort, k=cfg.k_folds, seed=0, val_fraction=0.2, force=False)
    return cohort


def prepare_model(cfg: DemoConfig, workdir: Path, cohort: Path) -> Path:
    """Train the demo model on one fold (a finished fold is reused by ``train``)."""
    from training.config import load_train_config
    from training.train import train

    train_cfg = load_train_config(cfg.train_config)
    logger.info("step 2/6: training %s/%s on fold %d (reused when already trained)",
                train_cfg.model.architecture, train_cfg.model.encoder, cfg.fold)
    return train(train_cfg, cohort, workdir / "train", folds=[cfg.fold], progress=True)


def held_out_runs(cfg: DemoConfig, cohort: Path) -> list[tuple[Path, Path]]:
    """(DICOM run, ground-truth file) pairs of the trained fold's test patients."""
    from tavidata.phantom.dicom_export import ground_truth_path
    from tavidata.splits import load_splits

    splits = load_splits(cohort)
    test_patients = set(splits.fold(cfg.fold).test)
    pairs = []
    for dcm in sorted((cohort / "dicom").glob("*/*.dcm")):
        if dcm.parent.name in test_patients:
            pairs.append((dcm, ground_truth_path(dcm)))
    if not pairs:
        raise DemoError(f"no DICOM runs of the test patients {sorted(test_patients)} in {cohort / 'dicom'}")
    return pairs[: cfg.max_runs]


def write_node_config(cfg: DemoConfig, workdir: Path, model: Path, pacs: OrthancServer | None) -> tuple[Path, Path]:
    """Write the node configuration of the demo; returns (config path, ready-file path)."""
    ready = workdir / "node" / "ready.json"
    ready.unlink(missing_ok=True)
    node_cfg = {
        "ae_title": NODE_AET,
        "bind_address": "127.0.0.1",
        "port": free_port(),
        "allowed_callers": [{"ae_title": SENDER_AET, "hosts": ["127.0.0.1"]}],
        "state_dir": str((workdir / "node" / "state").resolve()),
        "output_folder": str((workdir / "node" / "outputs").resolve()),
        "ready_file": str(ready.resolve()),
        "processing": {
            "model_folder": str(model.resolve()),
            "outputs": list(cfg.outputs),
            "inference": {"device": "auto", "folds": [cfg.fold]},
        },
        "metrics": {"enabled": True, "bind_address": "127.0.0.1", "port": 0},
        "destinations": [],
    }
    if pacs is not None:
        node_cfg["destinations"] = [
            {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
        ]
    path = workdir / "node" / "node.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(node_cfg, sort_keys=False))
    return path, ready


@contextmanager
def running_node(config_path: Path, ready_file: Path, log_path: Path) -> Iterator[dict]:
    """Run ``taviseg serve`` as a separate process; yields its ready-file content."""
    cmd = [sys.executable, "-m", "taviseg", "serve", "--config", str(config_path)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: ready_file.is_file() and ready_file.stat().st_size > 0, 300.0,
                   "the node (taviseg serve)", proc, log_path)
        yield json.loads(ready_file.read_text())
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def send_run(path: Path, port: int, sender: str) -> None:
    """C-STORE one file to the node, as the angiography system would."""
    storescu = shutil.which("storescu")
    if sender == "storescu" or (sender == "auto" and storescu):
        if not storescu:
            raise DemoError("storescu is not installed (bash scripts/setup.sh installs dcmtk)")
        proc = subprocess.run(
            [storescu, "-aet", SENDER_AET, "-aec", NODE_AET, "127.0.0.1", str(port), str(path)],
            capture_output=True, text=True, timeout=600, check=False,
        )
        if proc.returncode != 0:
            raise DemoError(f"storescu failed for {path.name}: {proc.stderr.strip()[-500:]}")
        return
    import pydicom
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    ae = AE(ae_title=SENDER_AET)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        raise DemoError(f"the node refused the association for {path.name}")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    if not status or status.Status != 0:
        raise DemoError(f"C-STORE of {path.name} answered {getattr(status, 'Status', None)}")


def _find_seg_in_pacs(pacs: OrthancServer, source_uid: str, seen: dict[str, bytes]) -> bytes | None:
    for oid in pacs.find_instances(Modality="SEG"):
        if oid not in seen:
            seen[oid] = pacs.get_bytes(f"/instances/{oid}/file")
        if source_uid.encode() in seen[oid]:
            return seen[oid]
    return None


def _find_seg_in_folder(folder: Path, source_uid: str, seen: dict[Path, str | None]) -> bytes | None:
    """The SEG in ``folder`` whose source image is ``source_uid`` (headers read once per file)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    for path in sorted(folder.rglob("*.dcm")):
        if path not in seen:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError):
                continue  # still being written by the folder destination: next poll
            seen[path] = None
            if ds.get("SOPClassUID") == SEG_SOP_CLASS:
                refs = [str(inst.ReferencedSOPInstanceUID)
                        for series in ds.get("ReferencedSeriesSequence", [])
                        for inst in series.get("ReferencedInstanceSequence", [])]
                seen[path] = refs[0] if refs else None
        if seen[path] == source_uid:
            return path.read_bytes()
    return None


def score_segmentation(seg_bytes: bytes, gt_file: Path, run_file: Path, out_png: Path) -> tuple[float, float, float]:
    """Dice, ASSD and HD95 (mm, medians over frames) of a returned SEG against the ground truth."""
    import io

    import pydicom

    from segmentation.dicom.reader import open_run
    from segmentation.dicom.seg import referenced_frames
    from segmentation.metrics import dice, surface_metrics
    from tavidata.phantom.dicom_export import read_ground_truth

    seg = pydicom.dcmread(io.BytesIO(seg_bytes))
    seg_frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns).astype(bool)
    numbers = referenced_frames(seg)
    gt = read_ground_truth(gt_file)
    run = open_run(run_file)
    spacing = run.calibration.spacing_mm or (1.0, 1.0)
    pred = np.zeros_like(gt, dtype=bool)
    for i, n in enumerate(numbers):
        pred[(n or 1) - 1] = seg_frames[i]
    d = [dice(p, g) for p, g in zip(pred, gt)]
    a, h = zip(*(surface_metrics(p, g, spacing) for p, g in zip(pred, gt)))
    middle = len(gt) // 2
    frame = next(f for i, f in run.iter_frames() if i == middle)
    _write_overlay(out_png, frame, gt[middle], pred[middle])
    return float(np.median(d)), float(np.nanmedian(a)), float(np.nanmedian(h))


def _write_overlay(path: Path, frame: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> None:
    import cv2

    img = frame.astype(np.float32)
    img = (255 * (img - img.min()) / max(float(np.ptp(img)), 1.0)).astype(np.uint8)
    rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    for mask, colour in ((gt, (0, 200, 0)), (pred, (0, 0, 255))):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, colour, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rgb)


def write_report(summary: DemoSummary) -> None:
    """report.md and report.html in the work folder."""
    lines = [
        "# taviseg demo",
        "",
        "Phantom runs of held-out patients sent to the node over C-STORE; the returned SEG "
        "scored against the phantom's ground truth (medians over the frames of each run).",
        "",
        "| run | frames | Dice | ASSD (mm) | HD95 (mm) | latency (s) | overlay |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary.runs:
        lines.append(
            f"| {r.run_file.parent.name}/{r.run_file.stem} | {r.frames} | {_fmt(r.dice, 3)} | "
            f"{_fmt(r.assd_mm, 2)} | {_fmt(r.hd95_mm, 2)} | {_fmt(r.latency_s, 1)} | "
            f"{r.overlay_png.name if r.overlay_png else '-'} |"
        )
    lines += ["", "Green: ground truth; red: the node's SEG.", ""]
    if summary.orthanc_url:
        lines.append(f"Orthanc web interface: {summary.orthanc_url}")
    if summary.viewer_url:
        lines.append(f"OHIF viewer, first study: {summary.viewer_url}")
    if summary.output_folder:
        lines.append(f"Output folder: {summary.output_folder}")
    md = summary.workdir / "report" / "report.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines) + "\n")
    rows = "".join(
        f"<tr><td>{r.run_file.parent.name}/{r.run_file.stem}</td><td>{r.frames}</td><td>{_fmt(r.dice, 3)}</td>"
        f"<td>{_fmt(r.assd_mm, 2)}</td><td>{_fmt(r.hd95_mm, 2)}</td><td>{_fmt(r.latency_s, 1)}</td>"
        f"<td>{f'<img src={chr(34)}{r.overlay_png.name}{chr(34)} width=256>' if r.overlay_png else ''}</td></tr>"
        for r in summary.runs
    )
    html = (
        "<!doctype html><meta charset=utf-8><title>taviseg demo</title><h1>taviseg demo</h1>"
        "<table border=1 cellpadding=4><tr><th>run</th><th>frames</th><th>Dice</th><th>ASSD (mm)</th>"
        f"<th>HD95 (mm)</th><th>latency (s)</th><th>overlay</th></tr>{rows}</table>"
        "<p>Green: ground truth; red: the node's SEG.</p>"
    )
    html_path = md.with_suffix(".html")
    html_path.write_text(html)
    summary.report_md, summary.report_html = md, html_path


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


# ------------------------------------------------------------------------------- the demo


def viewer_ready() -> bool:
    """Whether Orthanc's DICOMweb plugin and OHIF are installed (``scripts/viewers.sh``)."""
    needed = [part for part in viewer_missing_parts() if "chromium" not in part and "playwright" not in part]
    if needed:
        logger.info("no web viewer for the demo (%s); Orthanc's own explorer only", "; ".join(needed))
    return not needed


def run_demo(cfg: DemoConfig) -> DemoSummary:
    """Run the whole demo; returns what it measured and where the outputs are.

    Raises:
        DemoError: a step failed (names the step); node and Orthanc are stopped on the way out.
    """
    import pydicom

    workdir = cfg.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    summary = DemoSummary(workdir=workdir)
    cohort = prepare_cohort(cfg, workdir)
    summary.model_folder = prepare_model(cfg, workdir, cohort)
    runs = held_out_runs(cfg, cohort)

    use_orthanc = cfg.orthanc == "yes" or (cfg.orthanc == "auto" and find_orthanc() is not None)
    with ExitStack() as stack:
        pacs = None
        ohif = None
        if use_orthanc:
            logger.info("step 3/6: starting Orthanc (the PACS)")
            pacs_dir = workdir / "orthanc"
            if pacs_dir.exists():
                shutil.rmtree(pacs_dir)
            pacs_options = {"aet": PACS_AET, "known_modalities": {"taviseg": (NODE_AET, "127.0.0.1", 1)},
                            "restrict_to_known": True}
            if viewer_ready():  # scripts/viewers.sh installed DICOMweb and OHIF: a person can look
                pacs = start_viewer_pacs(pacs_dir, **pacs_options)
                stack.callback(pacs.stop)
                ohif = OhifServer.start(pacs)
                stack.callback(ohif.stop)
            else:
                pacs = start_orthanc(pacs_dir, **pacs_options)
                stack.callback(pacs.stop)
            summary.orthanc_url = pacs.explorer_url
        else:
            logger.info("step 3/6: Orthanc not installed: the node writes its results to a folder")
        node_dir = workdir / "node"
        if node_dir.exists():
            shutil.rmtree(node_dir)
        config_path, ready = write_node_config(cfg, workdir, summary.model_folder, pacs)
        summary.output_folder = None if pacs else node_dir / "outputs"
        logger.info("step 4/6: starting the node (taviseg serve) as a separate process")
        info = stack.enter_context(running_node(config_path, ready, node_dir / "node.log"))
        port = int(info["dicom_port"])

        logger.info("step 5/6: sending %d held-out run(s) to the node over C-STORE", len(runs))
        for run_file, _gt in runs:
            header = pydicom.dcmread(run_file, stop_before_pixels=True)
            result = RunResult(run_file, str(header.SOPInstanceUID), int(getattr(header, "NumberOfFrames", 1) or 1),
                               sent_at=time.monotonic())
            send_run(run_file, port, cfg.sender)
            summary.runs.append(result)
            if ohif is not None and summary.viewer_url is None:
                summary.viewer_url = ohif.study_url(str(header.StudyInstanceUID))

        logger.info("step 6/6: waiting for the SEG objects and scoring them")
        seen: dict = {}
        deadline = time.monotonic() + cfg.result_timeout_s
        pending = {r.sop_instance_uid: r for r in summary.runs}
        gts = {r.sop_instance_uid: gt for r, (_f, gt) in zip(summary.runs, runs)}
        while pending and time.monotonic() < deadline:
            for uid, r in list(pending.items()):
                data = (_find_seg_in_pacs(pacs, uid, seen) if pacs
                        else _find_seg_in_folder(summary.output_folder, uid, seen))
                if data is None:
                    continue
                r.seg_at = time.monotonic()
                png = workdir / "report" / f"{r.run_file.parent.name}_{r.run_file.stem}.png"
                r.dice, r.assd_mm, r.hd95_mm = score_segmentation(data, gts[uid], r.run_file, png)
                r.overlay_png = png
                del pending[uid]
                logger.info("run %s: SEG back after %.1f s, Dice %.3f", r.run_file.stem, r.latency_s, r.dice)
            if pending:
                time.sleep(0.25)
        if pending:
            raise DemoError(
                f"{len(pending)} run(s) got no SEG within {cfg.result_timeout_s:.0f} s; "
                f"see {node_dir / 'node.log'}"
            )
        write_report(summary)
        keep = cfg.keep_running == "yes" or (cfg.keep_running == "auto" and sys.stdin.isatty())
        print_summary(summary)
        if keep and pacs is not None:
            print(f"Orthanc and the node keep running: open {summary.viewer_url or pacs.explorer_url}; "
                  "Ctrl-C to stop.",
                  file=sys.stderr)
            try:
                while pacs.process.poll() is None:
                    time.sleep(1.0)
            except KeyboardInterrupt:
                pass
    return summary


def print_summary(summary: DemoSummary) -> None:
    """Print the per-run figures and where the outputs are (stdout)."""
    out = sys.stdout
    print("\ntaviseg demo: results of the node on held-out phantom runs", file=out)
    print(f"{'run':<22}{'frames':>7}{'Dice':>8}{'ASSD mm':>9}{'HD95 mm':>9}{'latency s':>11}", file=out)
    for r in summary.runs:
        print(f"{r.run_file.parent.name + '/' + r.run_file.stem:<22}{r.frames:>7}{_fmt(r.dice, 3):>8}"
              f"{_fmt(r.assd_mm, 2):>9}{_fmt(r.hd95_mm, 2):>9}{_fmt(r.latency_s, 1):>11}", file=out)
    if summary.runs:
        dices = [r.dice for r in summary.runs if r.dice is not None]
        lats = [r.latency_s for r in summary.runs if r.latency_s is not None]
        print(f"median Dice {np.median(dices):.3f}; median end-to-end latency {np.median(lats):.1f} s", file=out)
    if summary.orthanc_url:
        print(f"SEG/SR/overlay objects are in Orthanc: {summary.orthanc_url}", file=out)
    if summary.viewer_url:
        print(f"the first study in the OHIF viewer: {summary.viewer_url}", file=out)
    if summary.output_folder:
        print(f"SEG/SR/overlay objects are in {summary.output_folder}", file=out)
    print(f"overlay PNGs and report: {summary.report_md} ({summary.report_html.name})", file=out)
    print(f"model folder: {summary.model_folder}", file=out)
