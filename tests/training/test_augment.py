"""The paper's augmentation pipeline: each transform checked on the images it actually produces.

Geometry is measured with coordinate-ramp images: the output pixel (r, c) of an image whose
value is its column index holds the source column it was sampled from, so the warp can be
recovered by least squares and compared with the paper's parameter ranges.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import warnings

import albumentations as A
import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from tests.conftest import REPO
from training.augment import (
    GrayHueSaturationValue,
    QuadPerspective,
    RoundedGaussNoise,
    build_eval_transform,
    build_train_transform,
)
from training.config import AugmentConfig

PAPER = AugmentConfig()


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    """Albumentations 2.x ignores some 1.x arguments with only a UserWarning: fail on any."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _pipeline_member(kind: type, *, p: float | None = None, size: int = 256) -> A.Compose:
    """The instance of ``kind`` from the real pipeline, alone in a seeded Compose (optionally p)."""
    members = [t for t in build_train_transform(size, PAPER).transforms if type(t) is kind]
    assert len(members) == 1, f"{kind.__name__} should appear once in the pipeline"
    member = copy.deepcopy(members[0])
    if p is not None:
        member.p = p
    return A.Compose([member], seed=0, strict=True, additional_targets={"yramp": "image"})


def _ramps(size: int) -> tuple[np.ndarray, np.ndarray]:
    cols = np.tile(np.arange(size, dtype=np.uint8), (size, 1))
    return cols, np.ascontiguousarray(cols.T)


def _changed_fraction(pipe: A.Compose, image: np.ndarray, draws: int) -> float:
    changed = 0
    for seed in range(draws):
        pipe.set_random_seed(seed)
        changed += not np.array_equal(pipe(image=image)["image"], image)
    return changed / draws


def test_pipeline_order_and_no_warning_on_full_pipeline():
    pipe = build_train_transform(624, PAPER, pad_to=640)
    kinds = [type(t).__name__ for t in pipe.transforms]
    assert kinds == ["Resize", "HorizontalFlip", "Affine", "PadIfNeeded", "RoundedGaussNoise", "QuadPerspective",
                     "RandomBrightnessContrast", "GrayHueSaturationValue"]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (700, 650), dtype=np.uint8)
    mask = np.zeros_like(image)
    mask[200:400, 250:450] = 1
    for seed in range(12):
        pipe.set_random_seed(seed)
        out = pipe(image=image, mask=mask)
        assert out["image"].shape == (640, 640) and out["image"].dtype == np.uint8
        assert out["mask"].shape == (640, 640)
        assert set(np.unique(out["mask"])) <= {0, 1}


def test_resize_then_pad_624_to_640_centred_zero_fill():
    pipe = build_eval_transform(624, pad_to=640)
    image = np.full((1000, 1000), 200, np.uint8)
    out = pipe(image=image, mask=np.ones_like(image))
    img, mask = out["image"], out["mask"]
    assert img.shape == mask.shape == (640, 640)
    assert (img[8:632, 8:632] == 200).all() and (mask[8:632, 8:632] == 1).all()
    border = np.ones((640, 640), bool)
    border[8:632, 8:632] = False
    assert (img[border] == 0).all() and (mask[border] == 0).all()
    # The same offset as inference's preprocessing (segmentation.inference.preprocess).
    from segmentation.inference.preprocess import to_model_input

    _, geometry = to_model_input(image, input_size=624, padded_size=640)
    assert geometry.pad_before == 8
    # A size already divisible by 32 is not padded.
    assert build_eval_transform(512, 512)(image=image)["image"].shape == (512, 512)


def test_horizontal_flip_mirrors_image_and_mask_half_of_the_time():
    pipe = _pipeline_member(A.HorizontalFlip)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    mask = (rng.random((64, 64)) > 0.5).astype(np.uint8)
    flipped = 0
    draws = 400
    for seed in range(draws):
        pipe.set_random_seed(seed)
        out = pipe(image=image, mask=mask)
        if np.array_equal(out["image"], image[:, ::-1]):
            flipped += 1
            assert np.array_equal(out["mask"], mask[:, ::-1])
        else:
            assert np.array_equal(out["image"], image) and np.array_equal(out["mask"], mask)
    assert 0.42 < flipped / draws < 0.58


def _recover_affine(pipe: A.Compose, size: int) -> np.ndarray:
    """Forward 3x3 matrix (source -> output pixel coordinates) of one draw, by least squares."""
    xr, yr = _ramps(size)
    out = pipe(image=xr, yramp=yr, mask=np.ones((size, size), np.uint8))
    valid = out["mask"].astype(bool)
    # Drop the rim of the valid region, where bilinear sampling mixes in the zero fill.
    inner = binary_erosion(valid, iterations=2, border_value=0)
    rows, cols = np.nonzero(inner)
    design = np.stack([cols, rows, np.ones_like(cols)], axis=1).astype(float)
    src = np.stack([out["image"][rows, cols], out["yramp"][rows, cols]], axis=1).astype(float)
    inverse, *_ = np.linalg.lstsq(design, src, rcond=None)
    residual = np.abs(design @ inverse - src).max()
    assert residual < 1.5, f"output is not an affine warp of the input (max residual {residual:.2f})"
    inverse3 = np.vstack([inverse.T, [0, 0, 1]])
    return np.linalg.inv(inverse3)


def test_affine_is_the_papers_shift_scale_rotate():
    size = 256
    pipe = _pipeline_member(A.Affine, p=1.0, size=size)
    scales, angles, shifts = [], [], []
    for seed in range(40):
        pipe.set_random_seed(seed)
        forward = _recover_affine(pipe, size)
        linear = forward[:2, :2]
        # A similarity (ShiftScaleRotate): same scale on both axes, no shear.
        assert abs(linear[0, 0] - linear[1, 1]) < 0.02 and abs(linear[0, 1] + linear[1, 0]) < 0.02
        scales.append(math.sqrt(abs(np.linalg.det(linear))))
        angles.append(math.degrees(math.atan2(linear[1, 0], linear[0, 0])))
        centre = np.array([(size - 1) / 2, (size - 1) / 2, 1.0])
        shifts.extend(((forward @ centre)[:2] - centre[:2]) / size)
    scales, angles, shifts = np.array(scales), np.abs(angles), np.abs(shifts)
    assert scales.min() >= 0.9 - 0.01 and scales.max() <= 1.1 + 0.01
    assert scales.min() < 0.95 and scales.max() > 1.05  # the range is used, not a default
    assert angles.max() <= 15 + 0.5 and angles.max() > 10
    assert shifts.max() <= 0.0625 + 0.005 and shifts.max() > 0.04
    # Outside the warped frame: constant zero fill (explicit border mode), also in the mask.
    pipe.set_random_seed(3)
    out = pipe(image=np.full((size, size), 255, np.uint8), mask=np.ones((size, size), np.uint8))
    assert out["image"].min() == 0 and ((out["image"] == 0) == (out["mask"] == 0)).mean() > 0.99
    # Applied with p = 0.5.
    rng = np.random.default_rng(2)
    fraction = _changed_fraction(_pipeline_member(A.Affine), rng.integers(0, 256, (64, 64), dtype=np.uint8), 300)
    assert 0.4 < fraction < 0.6


def test_gauss_noise_variance_3_to_10_grey_levels():
    pipe = _pipeline_member(RoundedGaussNoise, p=1.0)
    flat = np.full((256, 256), 128, np.uint8)
    variances = []
    for seed in range(40):
        pipe.set_random_seed(seed)
        out = pipe(image=flat)["image"].astype(float)
        assert abs(out.mean() - 128) < 0.3  # zero-mean noise
        variances.append(out.var())
    variances = np.array(variances)
    # Rounding to uint8 adds ~1/12; the Albumentations 2.x default would give variance ~2600-12600
    # and its truncation toward zero 1.9-7.8.
    assert variances.min() > 3 - 0.2 and variances.max() < 10 + 0.5
    assert variances.min() < 4.5 and variances.max() > 8
    fraction = _changed_fraction(_pipeline_member(RoundedGaussNoise), flat[:64, :64], 400)
    assert 0.13 < fraction < 0.27


def test_perspective_corner_jitter_scale_5_to_10_percent():
    size = 256
    pipe = _pipeline_member(QuadPerspective, p=1.0, size=size)
    xr, yr = _ramps(size)
    jitters = []
    for seed in range(40):
        pipe.set_random_seed(seed)
        out = pipe(image=xr, yramp=yr)
        sx, sy = out["image"].astype(float), out["yramp"].astype(float)
        assert sx.shape == (size, size)  # keep_size
        # Each output corner samples a source point moved inward from that corner.
        for r, c in ((0, 0), (0, -1), (-1, -1), (-1, 0)):
            dx = sx[r, c] if c == 0 else size - 1 - sx[r, c]
            dy = sy[r, c] if r == 0 else size - 1 - sy[r, c]
            jitters.extend((dx / size, dy / size))
    jitters = np.array(jitters)
    # Jitter is |N(0, s)| mod 0.32 of the size.
    assert jitters.min() >= -0.01 and jitters.max() <= 0.33
    # |N(0, s)| with s uniform in [0.05, 0.1] has mean 0.0598 (sqrt(2/pi) * 0.075).
    assert 0.045 < jitters.mean() < 0.075
    rng = np.random.default_rng(3)
    fraction = _changed_fraction(_pipeline_member(QuadPerspective), rng.integers(0, 256, (64, 64), dtype=np.uint8), 300)
    assert 0.4 < fraction < 0.6


def test_brightness_contrast_linear_map_within_limits():
    pipe = _pipeline_member(A.RandomBrightnessContrast, p=1.0)
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    slopes, offsets = [], []
    for seed in range(60):
        pipe.set_random_seed(seed)
        out = pipe(image=ramp)["image"][0].astype(float)
        keep = (out > 2) & (out < 253)
        slope, offset = np.polyfit(np.arange(256)[keep], out[keep], 1)
        assert np.abs(slope * np.arange(256)[keep] + offset - out[keep]).max() <= 1.0
        slopes.append(slope)
        offsets.append(offset)
    slopes, offsets = np.array(slopes), np.array(offsets)
    assert slopes.min() >= 0.8 - 0.01 and slopes.max() <= 1.2 + 0.01
    assert np.abs(offsets).max() <= 0.2 * 255 + 1
    assert slopes.min() < 0.9 and slopes.max() > 1.1 and np.abs(offsets).max() > 30
    rng = np.random.default_rng(4)
    fraction = _changed_fraction(
        _pipeline_member(A.RandomBrightnessContrast), rng.integers(0, 256, (64, 64), dtype=np.uint8), 300
    )
    assert 0.83 < fraction < 0.96


def test_hue_saturation_value_is_a_grey_offset_up_to_20():
    pipe = _pipeline_member(GrayHueSaturationValue, p=1.0)
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    offsets = []
    for seed in range(60):
        pipe.set_random_seed(seed)
        out = pipe(image=ramp)["image"].astype(int)
        assert out.shape == ramp.shape
        diff = out[:, 25:230] - ramp[:, 25:230].astype(int)  # away from clipping at 0/255
        assert np.unique(diff).size == 1, "hue/saturation must not act on grey pixels"
        offsets.append(int(diff[0, 0]))
        assert (out[:, :25] >= 0).all() and (out[:, 230:] <= 255).all()
    offsets = np.array(offsets)
    assert np.abs(offsets).max() <= 20
    assert offsets.min() < -10 and offsets.max() > 10
    # The same draws as Albumentations' own transform on the RGB image the authors used.
    import cv2

    reference = A.Compose([A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=30, val_shift_limit=20, p=1)],
                          seed=0, strict=True)
    for seed in range(10):
        pipe.set_random_seed(seed)
        reference.set_random_seed(seed)
        ours = pipe(image=ramp)["image"]
        theirs = reference(image=cv2.cvtColor(ramp, cv2.COLOR_GRAY2RGB))["image"]
        assert np.array_equal(ours, cv2.cvtColor(theirs, cv2.COLOR_RGB2GRAY))
    rng = np.random.default_rng(5)
    fraction = _changed_fraction(
        _pipeline_member(GrayHueSaturationValue), rng.integers(0, 256, (64, 64), dtype=np.uint8), 300
    )
    assert 0.8 < fraction < 0.96


def test_disabled_augmentation_is_the_eval_transform():
    cfg = AugmentConfig(enabled=False)
    image = np.random.default_rng(6).integers(0, 256, (100, 90), dtype=np.uint8)
    a = build_train_transform(64, cfg)(image=image)["image"]
    b = build_eval_transform(64)(image=image)["image"]
    assert np.array_equal(a, b) and a.shape == (64, 64)


def test_importing_the_pipeline_makes_no_network_request():
    """Albumentations' import-time PyPI version check is off (no downloads at run time)."""
    spy = ("import json, urllib.request\n"
           "calls = []\n"
           "def _open(self, url, *a, **k):\n"
           "    calls.append(str(getattr(url, 'full_url', url)))\n"
           "    raise OSError('network blocked by the test')\n"
           "urllib.request.OpenerDirector.open = _open\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}

    def urls_opened(imports: str) -> list[str]:
        proc = subprocess.run([sys.executable, "-c", spy + imports + "\nprint(json.dumps(calls))"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    assert any("pypi.org" in u for u in urls_opened("import albumentations")), "the spy sees the check"
    assert urls_opened("import training.augment") == []
