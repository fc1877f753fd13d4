"""Our outline where radiologists look: SEG, GSPS, burned-in SC and SR of a multi-frame XA run
opened in real web viewers (OHIF v3 and the Orthanc Web Viewer, served by a real Orthanc with
its DICOMweb plugin) in headless Debian Chromium.

Each cell opens the study, loads the object, steps to frame FRAME, takes a screenshot, finds the
image's rectangle in it and compares the overlay (coloured or black-haloed pixels, holes
filled) with every frame's mask projected into that rectangle: Dice >= 0.9 with FRAME's mask
is "shows it on the right frame". Cells that cannot work today are xfail with the reason
found in the viewer's source, after checking that they still behave as recorded.
One Orthanc, one OHIF server and one browser for the module (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import pytest

from testkit import viewers
from tests.conftest import PEERS_REQUIRED, require_tool

FRAME = 5  # of 8: the ellipse moves between frames, so a neighbouring frame scores Dice < 0.9


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    binary = require_tool("Orthanc")
    missing = viewers.missing_parts()
    if missing:
        message = "viewer stack incomplete (bash scripts/viewers.sh): " + "; ".join(missing)
        if PEERS_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    running = viewers.ViewerStack.start(tmp_path_factory.mktemp("viewers"), binary=binary)
    try:
        yield running
    finally:
        running.stop()


def test_screenshot_reading_tells_right_wrong_and_missing(stack):
    """The reader itself: the masks drawn as a red fill into a grey picture at another scale."""
    import cv2
    import numpy as np

    masks = stack.study.masks
    picture = np.full((700, 1000, 3), 0, np.uint8)
    top, left, height, width = 30, 60, 640, 800  # 320x256 scaled by 2.5
    picture[top:top + height, left:left + width] = 128
    fill = cv2.resize(masks[FRAME - 1].astype(np.uint8), (width, height),
                      interpolation=cv2.INTER_NEAREST).astype(bool)
    region = picture[top:top + height, left:left + width]
    region[fill] = (200, 60, 60)
    right = viewers.read_screenshot(picture, masks, FRAME)
    assert right.rectangle == (top, left, top + height, left + width)
    assert right.verdict == viewers.RIGHT_FRAME and right.dice > 0.99
    wrong = viewers.read_screenshot(picture, masks, FRAME + 1)
    assert wrong.verdict == viewers.WRONG_FRAME and wrong.best_frame == FRAME
    region[fill] = 128
    assert viewers.read_screenshot(picture, masks, FRAME).verdict == viewers.IGNORES


#: Cells that passed in some runs and read "misplaced" in others on the same code (2026-12-07:
#: passed alone and in one whole-suite run, misplaced in the next two), not yet explained: OHIF
#: may screenshot before it has stepped the SEG to the frame. Reported as xfail, never as pass.
INTERMITTENT = {("OHIF v3", "SEG + image plane groups"): "OHIF's SEG frame step races the screenshot"}


@pytest.mark.parametrize("viewer,label", list(viewers.EXPECTED), ids=lambda v: str(v).replace(" ", "_"))
def test_viewer_shows_outline(stack, viewer, label, tmp_path):
    reading = stack.cell(viewer, label, FRAME, tmp_path / "shot.png")
    expected = viewers.EXPECTED[(viewer, label)]
    if expected == viewers.RIGHT_FRAME and reading.verdict != expected:
        # OHIF 3.13's stack statistics race (docs/viewers/matrix.md) can crash a load that works;
        # one more load tells that apart from a real regression, which fails both times.
        first = reading.verdict
        reading = stack.cell(viewer, label, FRAME, tmp_path / "shot.png")
        reading.note = f"{reading.note}; first load: {first}"
    detail = (f"{viewer} x {label}: {reading.verdict} (Dice with frame {FRAME}: {reading.dice}, "
              f"per frame {reading.dice_by_frame}, image at {reading.rectangle}; {reading.note}); "
              f"screenshot {tmp_path / 'shot.png'}")
    if expected == viewers.RIGHT_FRAME and (viewer, label) in INTERMITTENT and reading.verdict != expected:
        pytest.xfail(f"intermittent, seen twice in a row: {INTERMITTENT[(viewer, label)]}: {detail}")
    if expected == viewers.RIGHT_FRAME:
        assert reading.verdict == viewers.RIGHT_FRAME, detail
        assert reading.dice >= viewers.DICE_MIN and reading.best_frame == FRAME, detail
        return
    # Cannot work today: it must still not show the outline (else update the table). Whether OHIF
    # ignores such an object or errors on it varied from run to run (the recorded mode is in the
    # table); both leave the image without an outline.
    not_shown = (viewers.IGNORES, viewers.REFUSES)
    assert reading.verdict in not_shown, f"behaviour changed, update viewers.EXPECTED: {detail}"
    pytest.xfail(f"{reading.verdict}: {viewers.REASONS[(viewer, label)]}")


@pytest.mark.samples
def test_real_xa_run_seg_in_ohif(stack, samples_dir, tmp_path):
    """A real 96-frame JPEG Baseline XA run with our SEG on frames 10, 40 and 70: OHIF shows
    frame 40's outline on frame 40 (see testkit.viewers.real_run_reading)."""
    reading = viewers.real_run_reading(stack.browser, stack.ohif, stack.pacs,
                                       samples_dir / viewers.REAL_RUN, tmp_path / "real.png")
    assert reading.verdict == viewers.RIGHT_FRAME and reading.best_frame == 2, reading
    assert reading.dice >= viewers.DICE_MIN, reading
