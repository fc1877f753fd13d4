"""Image formation: compose the run's static layers once, then render each frame fast.

A :class:`Scene` holds everything that does not change during a run, already blurred by the
detector and edge-enhanced like a real angiography system's processing (both linear, so they
are applied to each layer once): the static thorax, the layers that move with breathing, and
the layers that move with the heart (devices, heart shadow, calcium, and the contrast fields of
the root, ventricle and coronaries, each scaled per frame by its bolus curve).

A frame is then: weighted sum of the heart layers -> one smooth warp (cardiac + respiratory
displacement, computed on a coarse grid) applied identically to the layers and to the root
mask -> shift of the breathing layer -> collimation -> signal-dependent correlated noise ->
tone curve to 8-bit MONOCHROME2 (contrast-filled vessels dark) -> for some runs a JPEG round
trip (frames exported lossy from an archive). Every random number comes from
the generators passed in, so a seed fixes the bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.special import ndtri

from tavidata.phantom import raster
from tavidata.phantom.anatomy import (
    RootGeometry,
    Ventricle,
    calcium_field,
    coronary_paths,
    heart_shadow,
    place_root,
    sample_ventricle,
    ventricle_field,
)
from tavidata.phantom.background import render_background
from tavidata.phantom.case import PatientProfile, RunCase
from tavidata.phantom.devices import render_devices

logger = logging.getLogger(__name__)

#: Coarse grid step (px) of the motion field.
MOTION_STEP = 8
#: Smooth layers (background, heart shadow, ventricle) are drawn this many times smaller...
COARSE_FACTOR = 2
#: ...for frames at least this large.
COARSE_MIN_SIZE = 384
#: Tone-curve input: grey value v maps to LUT index (v + LUT_OFFSET) * LUT_SCALE.
LUT_OFFSET = 64.0
LUT_SCALE = 4.0
LUT_SIZE = 1536
#: 256 Gaussian quantiles: a uniform random byte through this table is a N(0, 1) sample.
_GAUSS = ndtri((np.arange(256) + 0.5) / 256.0).astype(np.float32).reshape(1, 256)


@dataclass
class Scene:
    """The static part of a run; :meth:`render` makes its frames."""

    case: RunCase
    root: RootGeometry
    ventricle: Ventricle
    base: np.ndarray
    breathing: np.ndarray
    heart: np.ndarray
    contrast_fields: dict[str, np.ndarray]
    mask: np.ndarray
    transmission: np.ndarray
    floor: float
    open_field: np.ndarray
    lut: np.ndarray
    motion_basis: dict[str, np.ndarray]
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.floor_term = (self.floor * (1.0 - self.transmission)).astype(np.float32)
        # a field that is zero everywhere (no regurgitation, no coronary) costs nothing per frame
        self.contrast_fields = {k: v for k, v in self.contrast_fields.items() if float(np.abs(v).max()) > 0.0}

    @property
    def shape(self) -> tuple[int, int]:
        """Frame shape (H, W)."""
        return self.base.shape  # type: ignore[return-value]

    # ------------------------------------------------------------------ per frame
    def gains(self, t: float) -> dict[str, float]:
        """Weights of the contrast fields at time ``t`` (fractions of the peak)."""
        tm = self.case.timing
        systole = float(tm.systole(t))
        return {
            "root_low": float(tm.fill(t)) * (1.0 - tm.systolic_washout * systole),
            "root_up": float(tm.fill(t - tm.lag_ascending)),
            "ventricle": float(tm.fill(t - 0.3)) * (0.6 + 0.4 * (1.0 - systole)),
            "coronary": float(tm.fill(t - 0.15)),
        }

    def displacement(self, t: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """Coarse cardiac+respiratory displacement (dx, dy) of the heart, and the breathing shift."""
        c, tm = self.case, self.case.timing
        ph = float(tm.cardiac(t))
        long = c.cardiac_mm * c.ppm * (np.sin(np.pi * min(ph / 0.4, 1.0)) ** 2 if ph < 0.4 else
                                       -0.15 * np.sin(np.pi * (ph - 0.4) / 0.6))
        swing = c.cardiac_swing_mm * c.ppm * np.sin(2 * np.pi * ph)
        squeeze = c.contraction * float(tm.systole(t))
        resp = c.resp_mm * c.ppm * float(tm.breathing(t))
        rx, ry = resp * np.cos(c.resp_angle), resp * np.sin(c.resp_angle)
        b = self.motion_basis
        axis, normal = self.root.axis, self.root.normal
        dx = b["w"] * (-long * axis[0] + swing * normal[0] - squeeze * b["cx"]) + rx
        dy = b["w"] * (-long * axis[1] + swing * normal[1] - squeeze * b["cy"]) + ry
        return dx.astype(np.float32), dy.astype(np.float32), (0.8 * rx, 0.8 * ry)

    def render(self, t: float, noise_rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One frame at time ``t``: (uint8 image, bool mask)."""
        h, w = self.shape
        layer = self.heart.copy()
        for name, gain in self.gains(t).items():
            if gain > 1e-4 and name in self.contrast_fields:
                cv2.scaleAdd(self.contrast_fields[name], gain, layer, dst=layer)
        dx, dy, (bx, by) = self.displacement(t)
        gx, gy = self.motion_basis["gx"], self.motion_basis["gy"]
        map_x = gx - cv2.resize(dx, (w, h), interpolation=cv2.INTER_LINEAR)
        map_y = gy - cv2.resize(dy, (w, h), interpolation=cv2.INTER_LINEAR)
        moved = cv2.remap(layer, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mask = cv2.remap(self.mask, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) > 127
        shift = np.float32([[1, 0, bx], [0, 1, by]])
        ribs = cv2.warpAffine(self.breathing, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        v = cv2.subtract(self.base, moved)
        cv2.subtract(v, ribs, dst=v)
        cv2.multiply(v, self.transmission, dst=v)
        cv2.add(v, self.floor_term, dst=v)
        cv2.add(v, self._noise(v, noise_rng), dst=v)
        idx = np.clip((v + LUT_OFFSET) * LUT_SCALE, 0, LUT_SIZE - 1).astype(np.int16)
        image = np.take(self.lut, idx)
        if self.case.jpeg_quality:  # lossy export of the archive the frames came from
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.case.jpeg_quality])
            if ok:
                image = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        return image, mask & self.open_field

    def _noise(self, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.case
        h, w = v.shape
        raw = np.frombuffer(rng.bytes(h * w), np.uint8).reshape(h, w)
        n = cv2.LUT(raw, _GAUSS)
        sigma_c = c.noise_corr_px
        if sigma_c >= 0.35:
            n = cv2.GaussianBlur(n, (0, 0), sigma_c, borderType=cv2.BORDER_REFLECT)
            n *= np.float32(1.0 / _blur_gain(sigma_c))
        level = cv2.addWeighted(v, -c.noise * c.noise_dark_gain / 128.0, v, 0.0, c.noise * (1.0 + c.noise_dark_gain))
        np.clip(level, 0.5 * c.noise, 2.5 * c.noise, out=level)
        cv2.multiply(n, level, dst=n)
        return n


def _blur_gain(sigma: float) -> float:
    """Standard deviation of unit white noise after a Gaussian blur of ``sigma`` px."""
    k = cv2.getGaussianKernel(int(2 * np.ceil(4 * sigma) + 1) if sigma > 0 else 1, sigma).ravel()
    return float(np.sum(k ** 2))


def tone_lut(black: float, white: float, gamma: float) -> np.ndarray:
    """Display tone curve: grey value -> uint8, indexed by ``(v + LUT_OFFSET) * LUT_SCALE``."""
    v = np.arange(LUT_SIZE, dtype=np.float64) / LUT_SCALE - LUT_OFFSET
    x = np.clip((v - black) / (white - black), 0.0, 1.0)
    # gamma plus a soft toe/shoulder so that shutters and bright lungs do not clip hard
    y = x ** gamma
    y = y + 0.06 * np.sin(np.pi * y) * (0.5 - y)
    return np.clip(np.round(255.0 * y), 0, 255).astype(np.uint8)


def auto_window(rng: np.random.Generator, case: RunCase, base: np.ndarray, breathing: np.ndarray,
                heart: np.ndarray, fields: dict[str, np.ndarray], transmission: np.ndarray, floor: float,
                open_field: np.ndarray) -> np.ndarray:
    """The system's automatic windowing: a tone curve fitted to a noiseless preview of the run.

    The window width and gamma are the run's; the black point is solved so that the mean of
    the open field lands on a drawn target (120-158 grey), like the brightness control of an
    angiography system.

    Returns:
        The uint8 LUT (see :func:`tone_lut`).
    """
    step = 4
    v = base[::step, ::step] - heart[::step, ::step] - breathing[::step, ::step]
    t_mid = case.timing.frame_times[len(case.timing.frame_times) // 2]
    fill = case.timing.fill(t_mid)
    for f in fields.values():
        v = v - float(fill) * f[::step, ::step]
    tr = transmission[::step, ::step]
    v = v * tr + floor * (1.0 - tr)
    inside = v[open_field[::step, ::step]]
    if inside.size < 16:
        inside = v.ravel()
    span = case.white - case.black
    target = float(rng.uniform(120.0, 158.0))
    sample = inside.ravel()
    lo, hi = float(sample.min()) - span, float(sample.max()) + span
    for _ in range(40):  # bisection on the black point: the mean falls as it rises
        black = 0.5 * (lo + hi)
        x = np.clip((sample - black) / span, 0.0, 1.0) ** case.gamma
        if 255.0 * float(np.mean(x)) > target:
            lo = black
        else:
            hi = black
    black = 0.5 * (lo + hi)
    return tone_lut(black, black + span, case.gamma)


def _coarse_grid(shape: tuple[int, int], factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution coordinates of the centres of a ``factor`` times smaller grid."""
    h, w = shape
    hc, wc = -(-h // factor), -(-w // factor)
    xs = (np.arange(wc, dtype=np.float32) + 0.5) * (w / wc) - 0.5
    ys = (np.arange(hc, dtype=np.float32) + 0.5) * (h / hc) - 0.5
    return np.meshgrid(xs, ys)


def _upsample(layer: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    layer = layer.astype(np.float32)
    if layer.shape == shape:
        return layer
    return cv2.resize(layer, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _optics(layer: np.ndarray, case: RunCase) -> np.ndarray:
    """Detector blur and the system's edge enhancement (both linear)."""
    out = raster.gaussian_blur(layer, case.blur_px)
    if case.unsharp > 0.01:
        low = raster.gaussian_blur(out, case.unsharp_px)
        out = out + np.float32(case.unsharp) * (out - low)
    return out.astype(np.float32)


def _motion_basis(root: RootGeometry, lv: Ventricle, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    h, w = shape
    gh, gw = h // MOTION_STEP + 2, w // MOTION_STEP + 2
    # resize maps the coarse grid onto the frame; sample positions matching cv2.resize's mapping
    sx = (np.arange(gw, dtype=np.float32) + 0.5) * (w / gw) - 0.5
    sy = (np.arange(gh, dtype=np.float32) + 0.5) * (h / gh) - 0.5
    cx, cy = np.meshgrid(sx, sy)
    u, _ = root.to_local(cx, cy)
    size = float(max(h, w))
    weight = np.exp(-np.maximum(u, 0.0) / (0.6 * size)).astype(np.float32)
    gx, gy = raster.grid(shape)
    return {
        "w": weight,
        "cx": (cx - np.float32(lv.center[0])).astype(np.float32),
        "cy": (cy - np.float32(lv.center[1])).astype(np.float32),
        "gx": gx,
        "gy": gy,
        "coarse_shape": np.array([gh, gw]),
    }


def build_scene(rng: np.random.Generator, case: RunCase, patient: PatientProfile) -> Scene:
    """Draw and compose the static layers of a run.

    Args:
        rng: The run's random generator (after :func:`~tavidata.phantom.case.sample_run`).
        case: The run's settings.
        patient: The patient's lasting features.

    Returns:
        The scene, ready to render frames.
    """
    size = case.size
    shape = (size, size)
    ppm = case.ppm
    X, Y = raster.grid(shape)
    root = place_root(rng, patient.root, shape, ppm, arch_side=patient.arch_side)
    lv = sample_ventricle(rng, root, ppm, apex_side=patient.apex_side)

    thickness, inside, u = root.path_length(X, Y)
    texture = 1.0 + case.contrast_texture * raster.smooth_noise(rng, shape, 14.0 * ppm, octaves=2)
    w_low = 1.0 - raster.smoothstep(0.8 * root.sinus_height, 0.8 * root.sinus_height + 1.5 * root.r_ascending, u)
    root_field = case.contrast * thickness * texture
    factor = COARSE_FACTOR if size >= COARSE_MIN_SIZE else 1
    Xc, Yc = _coarse_grid(shape, factor)
    fields = {
        "root_low": root_field * w_low,
        "root_up": root_field * (1.0 - w_low),
        "ventricle": _upsample(case.contrast * case.regurgitation * 1.6 * ventricle_field(lv, root, Xc, Yc), shape),
    }
    coronary = np.zeros(shape, np.float32)
    for path, radii in coronary_paths(rng, root, ppm):
        raster.draw_tube(coronary, path, radii, case.contrast * case.coronary_gain * rng.uniform(0.5, 0.85))
    fields["coronary"] = coronary

    heart = _upsample(case.heart_shadow * heart_shadow(rng, root, lv, ppm, Xc, Yc), shape)
    heart += rng.uniform(15.0, 35.0) * calcium_field(rng, root, shape, ppm, case.calcium)
    devices = render_devices(rng, shape, root, lv, ppm, case.devices)
    heart += devices.heart
    bg = render_background(rng, shape, ppm, case.body, mediastinum_x=float(root.annulus[0]),
                           factor=factor)
    breathing = bg.breathing + devices.surface

    base = _optics(bg.base, case)
    breathing = _optics(breathing, case)
    heart = _optics(heart, case)
    contrast_fields = {k: _optics(v.astype(np.float32), case) for k, v in fields.items()}
    lut = auto_window(rng, case, base, breathing, heart, contrast_fields, bg.transmission, bg.floor, bg.open_field)
    scene = Scene(
        case=case,
        root=root,
        ventricle=lv,
        base=base,
        breathing=breathing,
        heart=heart,
        contrast_fields=contrast_fields,
        mask=(inside.astype(np.uint8) * 255),
        transmission=bg.transmission,
        floor=bg.floor,
        open_field=bg.open_field,
        lut=lut,
        motion_basis=_motion_basis(root, lv, shape),
        info={"devices": devices.info, "background": bg.info},
    )
    return scene
