"""The viewer compatibility table: which web viewer shows which of our objects on a multi-frame
XA run, from the same browser checks as tests/viewers/test_browser.py.

Starts Orthanc (DICOMweb + Web Viewer plugins), OHIF v3 and headless Chromium on free loopback
ports, stores a synthetic 8-frame XA run with a known root mask per frame and our SEG (as
written by default and with ``image_plane_groups=True``), GSPS, burned-in SC and TID 1500 SR,
opens each object in each viewer at frame 5, and reads the screenshot (image rectangle,
overlay, Dice with every frame's projected mask). Writes docs/viewers/matrix.md and one small
PNG per cell in docs/viewers/, and prints the table.

Usage: .venv/bin/python scripts/viewer_matrix.py [--out docs/viewers] [--frame 5]
(needs bash scripts/viewers.sh once; about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import logging
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# run as a script: testkit is not in the .venv's editable install yet
sys.path.insert(0, str(REPO))

from testkit import viewers  # noqa: E402 - sys.path set above
from testkit.paths import samples_path  # noqa: E402 - sys.path set above

SHORT = {
    viewers.RIGHT_FRAME: "right frame",
    viewers.WRONG_FRAME: "wrong frame",
    viewers.MISPLACED: "misplaced",
    viewers.REFUSES: "refuses",
    viewers.IGNORES: "ignores",
}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_").replace("__", "_")


def versions() -> str:
    chromium = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True,
                              check=False).stdout.strip()
    packages = []
    for package in ("orthanc", "orthanc-dicomweb", "orthanc-webviewer"):
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                             text=True, check=False).stdout.strip()
        packages.append(f"{package} {out or '?'}")
    ohif = viewers.OHIF_DIST.resolve().parent.parent.name
    return f"OHIF {ohif} (npm @ohif/app dist), {', '.join(packages)}, {chromium}, {platform.machine()}"


def crash_count(stack: viewers.ViewerStack, path: Path, repeats: int) -> int:
    """Load the real run's SEG ``repeats`` times in an OHIF without prefetcher; count crashes."""
    ohif = viewers.OhifServer.start(stack.pacs, prefetch=False)
    crashes = 0
    try:
        for attempt in range(repeats):
            viewers.real_run_reading(stack.browser, ohif, stack.pacs, path, wait_cached=False)
            deadline = time.monotonic() + 10  # the statistics worker runs after the display
            while time.monotonic() < deadline and not viewers.ohif_crashed(stack.browser):
                time.sleep(0.5)
            crashed = viewers.ohif_crashed(stack.browser)
            crashes += crashed
            print(f"  no prefetch, load {attempt + 1}: {'crashed' if crashed else 'ok'}", flush=True)
    finally:
        ohif.stop()
    return crashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "viewers")
    parser.add_argument("--frame", type=int, default=5)
    parser.add_argument("--crash-repeats", type=int, default=0, metavar="N",
                        help="also load the real run's SEG N times in OHIF without its study "
                             "prefetcher and count the viewer crashes (needs the samples)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    missing = viewers.missing_parts()
    if missing:
        print("viewer_matrix: missing: " + "; ".join(missing) + " (bash scripts/viewers.sh)",
              file=sys.stderr)
        return 2
    start = time.monotonic()
    readings = {}
    with tempfile.TemporaryDirectory(prefix="viewer-matrix-") as tmp:
        stack = viewers.ViewerStack.start(Path(tmp))
        try:
            for viewer in viewers.VIEWERS:
                for label in viewers.OBJECTS:
                    shot = args.out / f"{slug(viewer)}__{slug(label)}.png"
                    t0 = time.monotonic()
                    reading = stack.cell(viewer, label, args.frame, shot)
                    readings[viewer, label] = (reading, shot, time.monotonic() - t0)
                    print(f"{viewer} x {label}: {reading.verdict} (Dice {reading.dice}, "
                          f"best frame {reading.best_frame}) {time.monotonic() - t0:.1f} s",
                          flush=True)
            samples = samples_path()
            real, crashes = None, None
            if samples is not None:  # no screenshot kept: the sample's licence is unclear
                real = viewers.real_run_reading(stack.browser, stack.ohif, stack.pacs,
                                                samples / viewers.REAL_RUN)
                print(f"OHIF v3 x SEG + image plane groups on {viewers.REAL_RUN}: "
                      f"{real.verdict} (Dice {real.dice})", flush=True)
                if args.crash_repeats:
                    crashes = crash_count(stack, samples / viewers.REAL_RUN, args.crash_repeats)
        finally:
            stack.stop()
    elapsed = time.monotonic() - start

    labels = list(viewers.OBJECTS)
    lines = [
        "# Web viewers x taviseg objects on a multi-frame XA run",
        "",
        (f"Produced by `.venv/bin/python scripts/viewer_matrix.py` (frame {args.frame} of 8, "
         f"{elapsed:.0f} s); the same checks run in `tests/viewers/test_browser.py`."),
        f"Stack: {versions()}.",
        "",
        ("Cell: what the screenshot shows at the requested frame (overlay vs that frame's mask "
         "projected into the image rectangle found in the screenshot; Dice >= 0.9 = right "
         "frame)."),
        "",
        "| viewer | " + " | ".join(labels) + " |",
        "| --- | " + " | ".join("---" for _ in labels) + " |",
    ]
    for viewer in viewers.VIEWERS:
        cells = []
        for label in labels:
            reading, shot, _ = readings[viewer, label]
            text = SHORT[reading.verdict]
            if reading.dice is not None:
                text += f" (Dice {reading.dice:.3f})"
            cells.append(f"[{text}]({shot.name})")
        lines.append(f"| {viewer} | " + " | ".join(cells) + " |")
    if real is not None:
        lines += ["", (f"Real run ({viewers.REAL_RUN}: 96 frames, 512 x 512, JPEG Baseline; "
                       "ImagerPixelSpacing added, the file has none), SEG with image plane "
                       f"groups on frames 10/40/70, OHIF v3 at frame 40: **{SHORT[real.verdict]}** "
                       f"(Dice {real.dice}, per SEG frame {real.dice_by_frame}; {real.note}).")]
    if crashes is not None:
        lines += ["", (f"OHIF without its study prefetcher, the same real-run SEG loaded "
                       f"{args.crash_repeats} times: the viewer crashed (route error boundary, "
                       f"'calculateSegmentsStatisticsStack ... reading scalarData') {crashes} "
                       f"times. prepareStackDataForWorker skips source frames not yet in the "
                       "cache, so imageInfo is shorter than segmentationInfo and the worker reads "
                       "imageInfo[i].scalarData of undefined: an OHIF bug, not our SEG. The "
                       "checks enable the prefetcher and wait until every frame is cached.")]
    lines += ["", "## Why (from the viewers' source)", ""]
    for (viewer, label), reason in viewers.REASONS.items():
        reading = readings[viewer, label][0]
        lines.append(f"- **{viewer} x {label}** ({SHORT[reading.verdict]}): {reason}."
                     + (f" Seen: {reading.note.rstrip('.')}." if reading.note else ""))
    lines.append("")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matrix.md").write_text("\n".join(lines))
    table_start = lines.index(next(line for line in lines if line.startswith("| viewer")))
    print("\n".join(lines[table_start:table_start + 2 + len(viewers.VIEWERS)]))
    print(f"viewer_matrix: {len(readings)} cells in {elapsed:.0f} s -> {args.out / 'matrix.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
