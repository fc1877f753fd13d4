"""Rasterisation of projected bodies: smooth random fields, tubes, ellipsoids, lines.

Every function here draws the X-ray *path length* of a simple 3-D body onto a float32 layer
(the brighter the layer value, the more the body attenuates), vectorised with numpy/OpenCV.
The phantom's modules combine them into anatomy, devices and background. Coordinates are image
pixels, x to the right and y down; polylines are ``(N, 2)`` float arrays of (x, y).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

logger = logging.getLogger(__name__)

#: Sub-pixel bits used for OpenCV drawing (coordinates are multiplied by 2**SHIFT).
SHIFT = 4


def smoothstep(edge0: float, edge1: float, x: np.ndarray | float) -> np.ndarray | float:
    """Cubic Hermite step from 0 (x <= edge0) to 1 (x >= edge1)."""
    t = np.clip((np.asarray(x, dtype=np.float32) - edge0) / (edge1 - edge0 + 1e-12), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell_px: float,
                 octaves: int = 3, persistence: float = 0.5) -> np.ndarray:
    """Band-limited random field (mean ~0, std ~1) with features about ``cell_px`` wide.

    Sums ``octaves`` bicubically up-sampled random grids, each twice as fine and ``persistence``
    times as strong as the previous one.
    """
    h, w = shape
    out = np.zeros(shape, np.float32)
    amp, total = 1.0, 0.0
    cell = float(cell_px)
    for _ in range(max(1, octaves)):
        gh, gw = max(2, int(np.ceil(h / cell)) + 2), max(2, int(np.ceil(w / cell)) + 2)
        grid = rng.standard_normal((gh, gw)).astype(np.float32)
        big = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
        oy = int(rng.integers(0, max(1, big.shape[0] - h + 1)))
        ox = int(rng.integers(0, max(1, big.shape[1] - w + 1)))
        out += amp * big[oy:oy + h, ox:ox + w]
        total += amp * amp
        amp *= persistence
        cell = max(2.0, cell / 2.0)
    out /= np.float32(np.sqrt(total) * 0.8)
    return out


def grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinate arrays (X, Y) of ``shape``, float32."""
    h, w = shape
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def _bbox(points: np.ndarray, margin: float, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    h, w = shape
    x0 = int(max(0, np.floor(points[:, 0].min() - margin)))
    x1 = int(min(w, np.ceil(points[:, 0].max() + margin) + 1))
    y0 = int(max(0, np.floor(points[:, 1].min() - margin)))
    y1 = int(min(h, np.ceil(points[:, 1].max() + margin) + 1))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def draw_tube(layer: np.ndarray, points: np.ndarray, radius: float | np.ndarray, value: float,
              *, wall: float = 0.0, closed: bool = False) -> None:
    """Add the projected path length of a tube of circular section along a polyline.

    The profile across the tube is ``value * sqrt(1 - (d / r)^2)`` (a solid cylinder) or, with
    ``wall`` in (0, 1), the profile of a hollow tube whose lumen has radius ``(1 - wall) * r``
    (dark edges, lighter centre: a catheter shaft). Overlapping parts of the same tube are not
    counted twice. Thin tubes (r < 1.5 px) are drawn as anti-aliased lines.

    Args:
        layer: float32 image modified in place.
        points: (N, 2) polyline, N >= 2.
        radius: Radius in px, scalar or one per point (varying along the tube).
        value: Path-length value at the tube centre.
        wall: Wall thickness as a fraction of the radius (0: solid).
        closed: Join the last point to the first.
    """
    pts = np.asarray(points, np.float32)
    if len(pts) < 2:
        return
    radii = np.broadcast_to(np.asarray(radius, np.float32), (len(pts),))
    rmax = float(radii.max())
    box = _bbox(pts, rmax + 3, layer.shape)
    if box is None:
        return
    x0, y0, x1, y1 = box
    local = pts - np.float32([x0, y0])
    sub = layer[y0:y1, x0:x1]
    if rmax < 1.5:
        canvas = np.zeros(sub.shape, np.uint8)
        cv2.polylines(canvas, [_fixed(local)], closed, 255, 1, cv2.LINE_AA, SHIFT)
        sub += canvas.astype(np.float32) * np.float32(value * min(1.0, 0.8 * rmax) / 255.0)
        return
    seeds = np.full(sub.shape, 255, np.uint8)
    cv2.polylines(seeds, [_fixed(local)], closed, 0, 1, cv2.LINE_8, SHIFT)
    dist = cv2.distanceTransform(seeds, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    np.minimum(dist, 2.0 * rmax + 4.0, out=dist)  # no seed in the box (path outside the frame): far
    if np.ptp(radii) > 1e-3:
        rfield = np.zeros(sub.shape, np.float32)
        thick = int(np.ceil(2 * rmax + 4))
        for i in range(len(local) - 1):
            a, b = local[i], local[i + 1]
            cv2.line(rfield, tuple(int(v) for v in np.round(a * (1 << SHIFT))),
                     tuple(int(v) for v in np.round(b * (1 << SHIFT))),
                     float(0.5 * (radii[i] + radii[i + 1])), thick, cv2.LINE_8, SHIFT)
        rfield = np.maximum(rfield, 0.5)
    else:
        rfield = np.float32(rmax)
    q = np.clip(1.0 - (dist / rfield) ** 2, 0.0, 1.0)
    prof = np.sqrt(q)
    if wall > 0.0:
        inner = (1.0 - wall)
        qi = np.clip(1.0 - (dist / (rfield * inner)) ** 2, 0.0, 1.0)
        prof = prof - 0.85 * inner * np.sqrt(qi)
    sub += np.float32(value) * prof.astype(np.float32)


def draw_lines(layer: np.ndarray, segments: np.ndarray, width_px: float, value: float) -> None:
    """Add anti-aliased straight segments (wire struts) of about ``width_px`` to ``layer``.

    Crossing segments add up (a strut seen behind another is darker at the crossing).

    Args:
        layer: float32 image modified in place.
        segments: (M, 2, 2) array of segment end points (x, y).
        width_px: Line width in px (values below 1 are drawn 1 px wide, fainter).
        value: Path-length value of one strut.
    """
    segs = np.asarray(segments, np.float32).reshape(-1, 2, 2)
    if len(segs) == 0:
        return
    box = _bbox(segs.reshape(-1, 2), width_px + 3, layer.shape)
    if box is None:
        return
    x0, y0, x1, y1 = box
    sub = layer[y0:y1, x0:x1]
    thick = max(1, int(round(width_px)))
    gain = float(value) * min(1.0, width_px) / 255.0
    # Two canvases (alternating segments) so that crossings accumulate instead of saturating.
    for parity in (0, 1):
        canvas = np.zeros(sub.shape, np.uint8)
        for a, b in segs[parity::2] - np.float32([x0, y0]):
            cv2.line(canvas, tuple(int(v) for v in np.round(a * (1 << SHIFT))),
                     tuple(int(v) for v in np.round(b * (1 << SHIFT))), 255, thick, cv2.LINE_AA, SHIFT)
        sub += canvas.astype(np.float32) * np.float32(gain)


def ellipsoid(shape: tuple[int, int], center: tuple[float, float], semi_axes: tuple[float, float],
              angle_rad: float, *, X: np.ndarray | None = None, Y: np.ndarray | None = None,
              power: float = 0.5, harmonics: tuple[tuple[float, float], ...] = ()) -> np.ndarray:
    """Projected path length of an ellipsoid, normalised to 1 at its centre.

    Args:
        shape: Output shape.
        center: (x, y) centre in px.
        semi_axes: (a, b) semi-axes in px along the rotated x and y directions.
        angle_rad: Rotation of the a-axis from the image x axis (counter-clockwise in image
            coordinates, i.e. towards -y).
        X, Y: Optional pre-computed coordinate grids of ``shape``.
        power: Exponent of ``1 - q`` (0.5 for a true ellipsoid; larger: softer edges).
        harmonics: (amplitude, phase) of the 2nd, 3rd... angular harmonics that deform the
            outline (an irregular, organ-like silhouette).

    Returns:
        float32 array in [0, 1].
    """
    if X is None or Y is None:
        X, Y = grid(shape)
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    dx, dy = X - np.float32(center[0]), Y - np.float32(center[1])
    u = (dx * c - dy * s) / np.float32(semi_axes[0])
    v = (dx * s + dy * c) / np.float32(semi_axes[1])
    r2 = u * u + v * v
    if harmonics:
        theta = np.arctan2(v, u)
        scale = np.ones_like(u)
        for k, (amp, phase) in enumerate(harmonics, start=2):
            scale += np.float32(amp) * np.cos(k * theta + np.float32(phase))
        r2 = r2 / (scale * scale)
    q = np.clip(1.0 - r2, 0.0, 1.0)
    return np.power(q, power, dtype=np.float32) if power != 1.0 else q.astype(np.float32)


def gaussian_blur(layer: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur with ``sigma_px`` (no-op below 0.2 px); large sigmas go through a down-sample."""
    if sigma_px < 0.2:
        return layer
    if sigma_px <= 6.0:
        return cv2.GaussianBlur(layer, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    factor = int(sigma_px // 3)
    h, w = layer.shape
    small = cv2.resize(layer, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / factor, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def resample_polyline(points: np.ndarray, step_px: float) -> np.ndarray:
    """Resample a polyline at (about) equal arc-length steps of ``step_px``."""
    pts = np.asarray(points, np.float64)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] <= 0:
        return pts.astype(np.float32)
    n = max(2, int(np.ceil(s[-1] / max(step_px, 0.25))) + 1)
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], axis=1).astype(np.float32)


def smooth_path(start: np.ndarray, heading_rad: float, length_px: float, step_px: float,
                curvature: np.ndarray | float) -> np.ndarray:
    """A planar curve from ``start`` with initial ``heading`` and curvature per unit length.

    ``curvature`` (1/px) is a scalar or a profile along the path (stretched to one value per
    step); the heading is measured
    in image coordinates (0 = +x, pi/2 = +y, i.e. downwards).
    """
    n = max(2, int(np.ceil(length_px / step_px)) + 1)
    k = np.asarray(curvature, np.float64)
    if k.ndim == 0 or k.size == 1:
        k = np.full(n - 1, float(k.reshape(-1)[0]))
    elif k.size != n - 1:  # stretch the given profile over the path
        k = np.interp(np.linspace(0.0, 1.0, n - 1), np.linspace(0.0, 1.0, k.size), k)
    heading = heading_rad + np.concatenate([[0.0], np.cumsum(k * step_px)])
    steps = np.stack([np.cos(heading[:-1]), np.sin(heading[:-1])], axis=1) * step_px
    return (np.asarray(start, np.float64) + np.concatenate([[[0.0, 0.0]], np.cumsum(steps, axis=0)])).astype(np.float32)
