"""The thorax behind the heart: lungs, mediastinum, spine, ribs, diaphragm, trachea, collimation.

All values are grey levels of the display domain before the tone curve: ``base`` is the
brightness of the static body (bright lungs minus mediastinum, spine...), ``breathing`` the
darkening of what moves with respiration (ribs, diaphragm), ``transmission``/``floor`` the
collimator shutters, wedge filter and vignetting applied last (``v * t + floor * (1 - t)``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from tavidata.phantom import raster

logger = logging.getLogger(__name__)


@dataclass
class Background:
    """Static layers of a run (float32 arrays of the frame shape)."""

    base: np.ndarray
    breathing: np.ndarray
    transmission: np.ndarray
    floor: float
    open_field: np.ndarray
    info: dict


@dataclass(frozen=True)
class BodyOptions:
    """Per-run body and acquisition settings drawn by the case sampler (grey levels, fractions)."""

    lung_level: float
    mediastinum: float
    spine_x: float
    spine_tilt: float
    spine_density: float
    rib_density: float
    rib_tilt: float
    diaphragm_y: float
    trachea: bool
    shutters: tuple[float, float, float, float]
    round_shutter: float
    wedge: float
    vignetting: float
    floor: float


def _spine(rng: np.random.Generator, X: np.ndarray, Y: np.ndarray, ppm: float, opts: BodyOptions) -> np.ndarray:
    """Thoracic spine: rounded vertebral bodies with faint end plates, pedicles and processes."""
    h, w = X.shape
    x_s = opts.spine_x * w
    bend = rng.normal(0, 4.0) * ppm
    xc = x_s + np.tan(opts.spine_tilt) * (Y - h / 2) + bend * np.sin(Y / h * np.pi * rng.uniform(0.5, 1.5))
    t = X - xc.astype(np.float32)
    body_w = rng.uniform(38.0, 50.0) * ppm
    period = rng.uniform(30.0, 38.0) * ppm * (1.0 + 0.04 * np.sin(Y / h * 3.0 + rng.uniform(0, 6)))
    phase = (Y / period.astype(np.float32) + rng.uniform(0, 1)).astype(np.float32)
    index = np.floor(phase)
    ph = phase - index
    body_frac = rng.uniform(0.76, 0.84)
    jitter = np.sin(index * 2.1 + rng.uniform(0, 6)) * 0.05
    waist = 1.0 - 0.07 * np.sin(np.pi * np.clip(ph / body_frac, 0, 1))
    half = np.float32(body_w / 2) * (1.0 + jitter) * waist
    r = np.abs(t) / half
    lat = np.clip(1.0 - r ** 4, 0.0, 1.0)
    ramp = rng.uniform(0.08, 0.14)
    vert = raster.smoothstep(0.0, ramp, ph) * (1.0 - raster.smoothstep(body_frac - ramp, body_frac, ph))
    trab = np.sqrt(lat) * vert
    rim = np.exp(-((r - 0.95) / 0.1) ** 2) * vert
    plate_w = 0.03
    plates = (np.exp(-((ph - 0.5 * ramp) / plate_w) ** 2)
              + np.exp(-((ph - body_frac + 0.5 * ramp) / plate_w) ** 2)) * np.sqrt(lat)
    bone = 0.75 * trab + 0.25 * rim + 0.18 * plates
    for side in (-1.0, 1.0):  # pedicles: faint oval rings; transverse processes
        pu = (t - side * 0.36 * body_w) / np.float32(0.1 * body_w)
        pv = (ph - 0.3) / np.float32(0.12)
        dq = np.sqrt(pu * pu + pv * pv)
        bone += 0.22 * np.exp(-((dq - 1.0) / 0.3) ** 2) + 0.08 * (dq < 1)
        tp = np.exp(-((ph - 0.32) / 0.08) ** 2) * raster.smoothstep(0.3 * body_w, 0.5 * body_w, side * t) * (
            1.0 - raster.smoothstep(0.55 * body_w, 0.8 * body_w, side * t))
        bone += 0.15 * tp
    su = t / np.float32(0.08 * body_w)
    sv = (ph - body_frac) / np.float32(0.18)
    bone += 0.18 * np.exp(-(su * su + sv * sv) ** 2)
    grain = raster.smooth_noise(rng, X.shape, max(2.0, 2.5 * ppm), octaves=2)
    bone *= 1.0 + 0.1 * grain
    para = raster.smoothstep(-1.1, -0.75, -np.abs(t) / np.float32(body_w))  # paraspinal soft tissue
    return (opts.spine_density * (bone + 0.45 * para)).astype(np.float32)


def _ribs(rng: np.random.Generator, shape: tuple[int, int], ppm: float, opts: BodyOptions) -> np.ndarray:
    """Posterior ribs arching out of the spine and fainter anterior ribs sloping to the sternum."""
    h, w = shape
    layer = np.zeros(shape, np.float32)
    x_s = opts.spine_x * w
    spacing = rng.uniform(26.0, 36.0) * ppm
    y = rng.uniform(-1.5, -0.5) * spacing
    step = max(1.0, 1.5 * ppm)
    while y < h + spacing:
        for side in (-1.0, 1.0):
            start = np.array([x_s + side * rng.uniform(20.0, 28.0) * ppm, y])
            heading = np.arctan2(np.tan(opts.rib_tilt) + rng.uniform(-0.35, 0.05), side)
            length = rng.uniform(0.45, 0.75) * w
            n = int(length / step) + 1
            turn = rng.uniform(0.6, 1.2)
            curv = side * turn / length * np.linspace(0.6, 1.4, max(1, n - 1))
            rib = raster.smooth_path(start, heading, length, step, curv)
            raster.draw_tube(layer, rib, rng.uniform(6.0, 8.5) * ppm, opts.rib_density * rng.uniform(0.8, 1.2),
                             wall=0.2)
            if rng.random() < 0.75:
                a_start = np.array([x_s + side * rng.uniform(0.3, 0.55) * w, y + rng.uniform(0.5, 2.5) * spacing])
                a_head = np.arctan2(rng.uniform(0.2, 0.5), -side)
                a_len = rng.uniform(0.18, 0.32) * w
                na = int(a_len / step) + 1
                ant = raster.smooth_path(a_start, a_head, a_len, step, -side * 0.5 / a_len * np.ones(max(1, na - 1)))
                raster.draw_tube(layer, ant, rng.uniform(5.0, 7.0) * ppm, 0.4 * opts.rib_density)
        y += spacing * rng.uniform(0.9, 1.1)
    return raster.gaussian_blur(layer, rng.uniform(0.5, 1.5) * ppm)


def _diaphragm(rng: np.random.Generator, X: np.ndarray, Y: np.ndarray, ppm: float, opts: BodyOptions) -> np.ndarray:
    h, w = X.shape
    x0 = w * rng.uniform(0.3, 0.7)
    y0 = opts.diaphragm_y * h
    curv = rng.uniform(0.4, 0.9) * h / w ** 2
    dome = y0 + curv * (X - x0) ** 2 + rng.uniform(-0.06, 0.06) * h * raster.smoothstep(-0.1 * w, 0.1 * w, X - x0)
    edge = rng.uniform(4.0, 10.0) * ppm
    below = raster.smoothstep(-edge, edge, Y - dome.astype(np.float32))
    return (below * rng.uniform(30.0, 55.0)).astype(np.float32)


def _trachea(rng: np.random.Generator, shape: tuple[int, int], ppm: float, x: float) -> np.ndarray:
    h, w = shape
    layer = np.zeros(shape, np.float32)
    carina = np.array([x, h * rng.uniform(0.1, 0.35)])
    raster.draw_tube(layer, np.stack([np.array([x + rng.normal(0, 5 * ppm), -10.0]), carina]),
                     rng.uniform(7.0, 10.0) * ppm, 1.0)
    for side in (-1.0, 1.0):
        ang = np.pi / 2 + side * rng.uniform(0.45, 0.8)
        end = carina + 0.25 * h * np.array([np.cos(ang), np.sin(ang)])
        raster.draw_tube(layer, np.stack([carina, end]), rng.uniform(5.0, 7.0) * ppm, 0.8)
    return raster.gaussian_blur(layer, 2.0 * ppm)


def _shutters(rng: np.random.Generator, X: np.ndarray, Y: np.ndarray, ppm: float,
              opts: BodyOptions) -> tuple[np.ndarray, np.ndarray]:
    h, w = X.shape
    left, right, top, bottom = opts.shutters
    edge = max(0.7, rng.uniform(0.5, 2.0) * ppm)
    inside = np.ones(X.shape, np.float32)
    for frac, coord, extent, sign in ((left, X, w, 1.0), (right, X, w, -1.0), (top, Y, h, 1.0), (bottom, Y, h, -1.0)):
        if frac > 0:
            at = frac * extent if sign > 0 else (1.0 - frac) * extent
            inside *= raster.smoothstep(-edge, edge, sign * (coord - at))
    if opts.round_shutter > 0:
        r = opts.round_shutter * np.hypot(w, h) / 2
        dist = np.hypot(X - w / 2, Y - h / 2)
        inside = inside * raster.smoothstep(-edge, edge, r - dist)
    trans = 0.1 + 0.9 * inside
    if opts.wedge > 0:
        ang = rng.uniform(0, 2 * np.pi)
        proj = (X - w / 2) * np.cos(ang) + (Y - h / 2) * np.sin(ang)
        at = rng.uniform(0.2, 0.45) * w
        trans = trans * (1.0 - opts.wedge * raster.smoothstep(at - 3 * ppm, at + 3 * ppm, proj))
    if opts.vignetting > 0:
        r2 = ((X - w / 2) ** 2 + (Y - h / 2) ** 2) / (0.5 * w) ** 2
        trans = trans * (1.0 - opts.vignetting * np.clip(r2, 0, 2.5) / 2.0)
    return trans.astype(np.float32), inside.astype(np.float32)


def render_background(rng: np.random.Generator, shape: tuple[int, int], ppm: float, opts: BodyOptions,
                      *, mediastinum_x: float, factor: int = 1) -> Background:
    """Draw the static thorax of a run.

    Everything here is blurred by at least a few pixels, so it is drawn ``factor`` times
    smaller and up-sampled (a 4x saving for factor 2).

    Args:
        rng: Random generator (the run's).
        shape: Frame shape.
        ppm: Pixels per mm.
        opts: Per-run body settings.
        mediastinum_x: Image x (px) of the mediastinum's centre (near the aortic root).
        factor: Down-sampling factor of the drawing (1 or more).

    Returns:
        The background layers at ``shape``.
    """
    out_h, out_w = shape
    factor = max(1, int(factor))
    h, w = -(-out_h // factor), -(-out_w // factor)
    shape = (h, w)
    ppm = ppm / factor
    mediastinum_x = mediastinum_x / factor
    X, Y = raster.grid(shape)
    base = np.full(shape, opts.lung_level, np.float32)
    # mediastinum: a central band (great vessels, oesophagus) with soft borders against the lungs
    xm = 0.5 * (mediastinum_x + opts.spine_x * w) + rng.normal(0.0, 10.0) * ppm
    half = (rng.uniform(35.0, 55.0) * ppm * (1.0 + rng.uniform(0.0, 0.3) * Y / h)).astype(np.float32)
    soft = rng.uniform(20.0, 40.0) * ppm
    band = raster.smoothstep(-half - soft, -half + soft, -np.abs(X - np.float32(xm)))
    base -= opts.mediastinum * band
    # chest wall and soft tissue: thicker towards the sides and the bottom
    sides = np.maximum(0.0, np.abs(X - w / 2) / (w / 2) - 0.5) / 0.5
    base -= rng.uniform(10.0, 30.0) * sides ** 2
    base -= rng.uniform(0.0, 20.0) * (Y / h) ** 2
    base += 5.0 * raster.smooth_noise(rng, shape, 60.0 * ppm, octaves=3)
    base += 1.5 * raster.smooth_noise(rng, shape, 8.0 * ppm, octaves=2)
    # lung markings: a faint network of vessels outside the mediastinum
    ridge = 1.0 - np.abs(raster.smooth_noise(rng, shape, 12.0 * ppm, octaves=3))
    ridge2 = 1.0 - np.abs(raster.smooth_noise(rng, shape, 6.0 * ppm, octaves=2))
    base -= (1.0 - band) * (rng.uniform(4.0, 9.0) * np.clip(ridge, 0, 1) ** 8 + 3.0 * np.clip(ridge2, 0, 1) ** 8)
    base -= raster.gaussian_blur(_spine(rng, X, Y, ppm, opts), rng.uniform(0.8, 2.0) * ppm)
    info: dict = {"spine_x": float(opts.spine_x)}
    if opts.trachea:
        base += rng.uniform(6.0, 14.0) * _trachea(rng, shape, ppm, opts.spine_x * w + rng.normal(0, 8 * ppm))
    breathing = _ribs(rng, shape, ppm, opts)
    breathing += _diaphragm(rng, X, Y, ppm, opts)
    transmission, inside = _shutters(rng, X, Y, ppm, opts)

    def up(layer: np.ndarray) -> np.ndarray:
        layer = layer.astype(np.float32)
        if layer.shape == (out_h, out_w):
            return layer
        return cv2.resize(layer, (out_w, out_h), interpolation=cv2.INTER_LINEAR)

    return Background(base=up(base), breathing=up(breathing), transmission=up(transmission),
                      floor=float(opts.floor), open_field=up(inside) > 0.5, info=info)
