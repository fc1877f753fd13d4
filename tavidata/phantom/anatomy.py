"""Cardiac anatomy of the phantom: aortic root, left ventricle, coronaries, calcium, heart shadow.

The aortic root is an implicit shape in a local frame (``u`` along the vessel axis from the
annulus upwards, ``v`` across it): a tube whose radius widens from the sino-tubular junction to
the ascending aorta, smoothly united (soft minimum of normalised distances) with three
ellipsoidal sinus lobes whose rounded bottoms sit on the annulus line. The local frame is bent
(lateral offset ``b(u)``) and rotated into the image, so the shape is curved like a real
ascending aorta and usually leaves the field at the top edge.

The projected path length through the shape is what the contrast darkens; the mask is the set
of pixels where that path length is positive, so ground truth and image come from the same
field and agree to the pixel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tavidata.phantom import raster

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lobe:
    """One sinus of Valsalva: an ellipse in the local (u, v) frame, all lengths in px."""

    u: float
    v: float
    half_width: float
    half_height: float


@dataclass(frozen=True)
class RootGeometry:
    """The aortic root and ascending aorta in image pixels.

    ``annulus`` is the centre of the annulus line; ``angle`` tilts the axis from image-up
    (positive: the aorta leans to the image right); the centreline is offset laterally by
    ``bend2 * u^2 + bend3 * u^3``. Radii and heights are in px.
    """

    annulus: tuple[float, float]
    angle: float
    bend2: float
    bend3: float
    r_annulus: float
    r_stj: float
    r_ascending: float
    r_sinus: float
    sinus_height: float
    lobes: tuple[Lobe, ...]
    softness: float
    bulge: float
    bulge_at: float

    # ---------------------------------------------------------------- frame
    @property
    def axis(self) -> np.ndarray:
        """Unit vector along the axis (upwards from the annulus), image (x, y)."""
        return np.array([np.sin(self.angle), -np.cos(self.angle)], np.float64)

    @property
    def normal(self) -> np.ndarray:
        """Unit vector across the axis (towards image right when the angle is 0)."""
        return np.array([np.cos(self.angle), np.sin(self.angle)], np.float64)

    def offset(self, u: np.ndarray | float) -> np.ndarray | float:
        """Lateral offset of the centreline at height ``u`` (px)."""
        return self.bend2 * u * u + self.bend3 * u * u * u

    def slope(self, u: np.ndarray | float) -> np.ndarray | float:
        """d offset / d u."""
        return 2.0 * self.bend2 * u + 3.0 * self.bend3 * u * u

    def radius(self, u: np.ndarray | float) -> np.ndarray | float:
        """Radius of the tubular part at height ``u``: annulus -> sinus bulge -> STJ -> ascending."""
        u = np.asarray(u, np.float32)
        h = self.sinus_height
        base = self.r_annulus + (self.r_stj - self.r_annulus) * raster.smoothstep(0.0, h, u)
        t = np.clip(u / h, 0.0, 1.0)
        sinus = (0.9 * self.r_sinus - base) * np.clip(np.sin(np.pi * t), 0.0, 1.0) ** 1.3 * (u < h)
        grow = raster.smoothstep(h, h + 2.0 * self.r_ascending, u)
        r = base + sinus + (self.r_ascending - self.r_stj) * grow
        bump = np.exp(-((u - self.bulge_at) / (1.5 * self.r_ascending)) ** 2)
        return r * (1.0 + self.bulge * bump)

    def to_local(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates -> (u, v): height above the annulus and signed distance across."""
        d, n = self.axis.astype(np.float32), self.normal.astype(np.float32)
        dx, dy = X - np.float32(self.annulus[0]), Y - np.float32(self.annulus[1])
        u = dx * d[0] + dy * d[1]
        vp = dx * n[0] + dy * n[1]
        uc = np.maximum(u, 0.0)
        v = (vp - self.offset(uc)) / np.sqrt(1.0 + self.slope(uc) ** 2)
        return u.astype(np.float32), v.astype(np.float32)

    def to_image(self, u: np.ndarray | float, v: np.ndarray | float) -> np.ndarray:
        """(u, v) -> image points (N, 2); the inverse of :meth:`to_local` for u >= 0."""
        u = np.atleast_1d(np.asarray(u, np.float64))
        v = np.broadcast_to(np.asarray(v, np.float64), u.shape)
        uc = np.maximum(u, 0.0)
        slope = self.slope(uc)
        lateral = self.offset(uc) + v * np.sqrt(1.0 + slope ** 2)
        pts = (np.asarray(self.annulus)[None, :] + u[:, None] * self.axis[None, :]
               + lateral[:, None] * self.normal[None, :])
        return pts.astype(np.float32)

    def centerline(self, u0: float, u1: float, step: float) -> np.ndarray:
        """Centreline points from height ``u0`` to ``u1``."""
        n = max(2, int(abs(u1 - u0) / max(step, 0.5)) + 1)
        return self.to_image(np.linspace(u0, u1, n), 0.0)

    # ---------------------------------------------------------------- fields
    def implicit(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Soft union of the tube and the sinus lobes: < 1 inside the root."""
        r = self.radius(u)
        cap_u = 0.12 * self.sinus_height
        cap = np.minimum(u - cap_u, 0.0) / np.float32(0.3 * self.r_annulus)
        terms = [(v / r) ** 2 + cap * cap]
        for lobe in self.lobes:
            terms.append(((u - lobe.u) / lobe.half_height) ** 2 + ((v - lobe.v) / lobe.half_width) ** 2)
        q = np.stack(terms)
        m = q.min(axis=0)
        k = np.float32(self.softness)
        return (m - k * np.log(np.exp(-(q - m) / k).sum(axis=0))).astype(np.float32)

    def path_length(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Projected contrast path length (1.0 = the ascending aorta's diameter) and the mask.

        Returns:
            (thickness float32, mask bool, u float32) over the grid ``X, Y``.
        """
        u, v = self.to_local(X, Y)
        # only pixels near the vessel can be inside: evaluate the shape there
        reach = 1.3 * max(self.r_sinus, self.r_ascending * (1.0 + self.bulge),
                          max(abs(lobe.v) + lobe.half_width for lobe in self.lobes))
        near = (np.abs(v) < reach) & (u > -0.6 * self.sinus_height)
        uu, vv = u[near], v[near]
        f = self.implicit(uu, vv)
        r = self.radius(uu)
        deepest = max(lobe.half_width for lobe in self.lobes) * 1.6
        bulb = raster.smoothstep(-0.1 * self.sinus_height, 0.3 * self.sinus_height, uu) * (
            1.0 - raster.smoothstep(0.8 * self.sinus_height, 1.3 * self.sinus_height, uu))
        depth = (r + (deepest - r) * bulb) / np.float32(self.r_ascending)
        thickness = np.zeros(u.shape, np.float32)
        thickness[near] = depth * np.sqrt(np.clip(1.0 - f, 0.0, 1.0))
        inside = np.zeros(u.shape, bool)
        inside[near] = f < 1.0
        return thickness, inside, u

    def lobe_point(self, index: int, along: float, across: float) -> np.ndarray:
        """Image point at fractions of a lobe's half height / half width from its centre."""
        lobe = self.lobes[index]
        return self.to_image(lobe.u + along * lobe.half_height, lobe.v + across * lobe.half_width)[0]


@dataclass(frozen=True)
class RootSizes:
    """A patient's root dimensions in calibrated mm (lobes: u, v, half width, half height)."""

    r_annulus: float
    r_stj: float
    r_ascending: float
    r_sinus: float
    sinus_height: float
    lobes: tuple[tuple[float, float, float, float], ...]
    softness: float
    bulge: float
    bulge_at: float


def sample_root_sizes(rng: np.random.Generator) -> RootSizes:
    """Draw a patient's aortic root dimensions (mm at the paper's calibration, ~1.35x anatomy)."""
    r_ann = rng.uniform(19.0, 26.0)
    r_asc = r_ann * rng.uniform(1.15, 1.5)
    r_stj = r_ann * rng.uniform(0.95, 1.1)
    r_sin = r_ann * rng.uniform(1.5, 1.85)
    h_s = r_ann * rng.uniform(1.8, 2.4)
    lobes = []
    for side in (-1.0, 1.0):
        hw = r_sin * rng.uniform(0.5, 0.65)
        hh = h_s * rng.uniform(0.45, 0.6)
        lobes.append((hh * rng.uniform(0.85, 1.1), side * (r_sin - hw) * rng.uniform(0.9, 1.05), hw, hh))
    hw = r_ann * rng.uniform(0.8, 1.05)
    hh = h_s * rng.uniform(0.4, 0.5)
    lobes.append((hh * rng.uniform(0.75, 0.95), r_ann * rng.uniform(-0.3, 0.3), hw, hh))
    return RootSizes(r_annulus=r_ann, r_stj=r_stj, r_ascending=r_asc, r_sinus=r_sin, sinus_height=h_s,
                     lobes=tuple(lobes),
                     softness=rng.uniform(0.12, 0.25), bulge=rng.uniform(0.0, 0.18),
                     bulge_at=h_s + r_asc * rng.uniform(1.5, 4.0))


def place_root(rng: np.random.Generator, sizes: RootSizes, shape: tuple[int, int], ppm: float, *,
               arch_side: float) -> RootGeometry:
    """Place a patient's root in this run's frame: position, tilt and bend of the projection.

    Args:
        rng: The run's random generator.
        sizes: The patient's dimensions (mm).
        shape: Frame shape (H, W).
        ppm: Pixels per mm in this run (includes the run's zoom).
        arch_side: +1 when the aorta bends to the image right going up, -1 to the left.
    """
    h, w = shape
    k = ppm
    # lobes seen from another angle: small independent shifts of their heights
    lobes = tuple(Lobe(u=(lu + rng.normal(0.0, 0.08) * sizes.sinus_height) * k, v=lv * k * rng.uniform(0.9, 1.1),
                       half_width=lw * k, half_height=lh * k) for lu, lv, lw, lh in sizes.lobes)
    angle = np.deg2rad(np.clip(rng.normal(-4.0 * arch_side, 12.0), -35.0, 30.0))
    size = float(min(h, w))
    reach = size * rng.uniform(0.35, 0.7)
    off2 = arch_side * rng.uniform(0.0, 0.28) * size
    off3 = rng.normal(0.0, 0.06) * size
    annulus = (w * rng.uniform(0.36, 0.64), h * rng.uniform(0.42, 0.66))
    return RootGeometry(
        annulus=annulus,
        angle=float(angle),
        bend2=float(off2 / reach ** 2),
        bend3=float(off3 / reach ** 3),
        r_annulus=float(sizes.r_annulus * k),
        r_stj=float(sizes.r_stj * k),
        r_ascending=float(sizes.r_ascending * k),
        r_sinus=float(sizes.r_sinus * k),
        sinus_height=float(sizes.sinus_height * k),
        lobes=lobes,
        softness=float(sizes.softness),
        bulge=float(sizes.bulge),
        bulge_at=float(sizes.bulge_at * k),
    )


@dataclass(frozen=True)
class Ventricle:
    """The left ventricle cavity below the annulus: an ellipsoid towards the apex (px)."""

    center: tuple[float, float]
    direction: tuple[float, float]
    half_length: float
    half_width: float

    @property
    def apex(self) -> np.ndarray:
        """Image point near the apex (inside the cavity)."""
        return np.asarray(self.center) + 0.7 * self.half_length * np.asarray(self.direction)


def sample_ventricle(rng: np.random.Generator, root: RootGeometry, ppm: float, *, apex_side: float) -> Ventricle:
    """Draw the left ventricle below ``root``'s annulus, pointing down towards ``apex_side``."""
    down = -root.axis
    beta = np.deg2rad(rng.uniform(25.0, 60.0)) * apex_side
    c, s = np.cos(beta), np.sin(beta)
    direction = np.array([down[0] * c - down[1] * s, down[0] * s + down[1] * c])
    half_length = rng.uniform(45.0, 65.0) * ppm
    half_width = rng.uniform(28.0, 40.0) * ppm
    center = np.asarray(root.annulus) + direction * (half_length + 0.25 * root.r_annulus)
    return Ventricle(center=(float(center[0]), float(center[1])), direction=(float(direction[0]), float(direction[1])),
                     half_length=float(half_length), half_width=float(half_width))


def ventricle_field(lv: Ventricle, root: RootGeometry, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Regurgitant contrast in the ventricle: densest below the valve, fading towards the apex."""
    angle = float(np.arctan2(-lv.direction[1], lv.direction[0]))
    body = raster.ellipsoid(X.shape, lv.center, (lv.half_length, lv.half_width), angle, X=X, Y=Y)
    dist = np.hypot(X - np.float32(root.annulus[0]), Y - np.float32(root.annulus[1]))
    jet = np.exp(-dist / np.float32(0.9 * lv.half_length)).astype(np.float32)
    return (body * (0.25 + 0.75 * jet)).astype(np.float32)


def heart_shadow(rng: np.random.Generator, root: RootGeometry, lv: Ventricle, ppm: float,
                 X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """The cardiac silhouette (path length 0..1) around the ventricle, below and beside the root."""
    center = (np.asarray(root.annulus) * 0.45 + np.asarray(lv.center) * 0.55
              + rng.normal(0.0, 10.0 * ppm, 2))
    a = rng.uniform(70.0, 100.0) * ppm
    b = rng.uniform(55.0, 80.0) * ppm
    angle = float(np.arctan2(-lv.direction[1], lv.direction[0])) + rng.normal(0.0, 0.3)
    wobble = tuple((float(rng.uniform(0.02, 0.08)), float(rng.uniform(0, 2 * np.pi))) for _ in range(4))
    shadow = raster.ellipsoid(X.shape, tuple(center), (a, b), angle, X=X, Y=Y, power=0.35, harmonics=wobble)
    # the ventricle's own bulge towards the apex, and the atria / great vessels above and behind the root
    apex = np.asarray(lv.center) + 0.4 * lv.half_length * np.asarray(lv.direction)
    bulge = raster.ellipsoid(X.shape, tuple(apex), (1.1 * lv.half_length, 1.2 * lv.half_width), angle, X=X, Y=Y,
                             power=0.4)
    shadow = np.maximum(shadow, 0.9 * bulge)
    up = np.asarray(root.annulus) + root.axis * rng.uniform(20.0, 50.0) * ppm - np.asarray(lv.direction) * 25 * ppm
    shadow += 0.5 * raster.ellipsoid(X.shape, tuple(up), (rng.uniform(40, 60) * ppm, rng.uniform(40, 60) * ppm),
                                     0.0, X=X, Y=Y, power=0.6)
    return np.clip(shadow, 0.0, 1.2).astype(np.float32)


def coronary_paths(rng: np.random.Generator, root: RootGeometry, ppm: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Proximal coronary arteries leaving the two lateral sinuses: (polyline, radii) pairs."""
    paths = []
    step = max(1.0, 1.5 * ppm)
    for index, side in ((0, -1.0), (1, 1.0)):
        if rng.random() < 0.15:
            continue  # ostium not opacified / out of plane
        start = root.lobe_point(index, rng.uniform(-0.1, 0.5), 0.85)
        outward = root.normal * side
        heading = np.arctan2(outward[1], outward[0]) + side * rng.uniform(0.1, 0.7)
        length = rng.uniform(35.0, 80.0) * ppm
        n = int(length / step) + 1
        wave = np.sin(np.arange(n) * step / (rng.uniform(6.0, 12.0) * ppm) + rng.uniform(0, 6.3))
        curv = (np.cumsum(rng.normal(0.0, 0.006 / ppm, n)) + 0.02 / ppm * wave
                + side * rng.uniform(0.0, 0.015) / ppm)
        main = raster.smooth_path(start, heading, length, step, curv[: max(1, n - 1)])
        r0 = rng.uniform(2.2, 3.5) * ppm
        radii = np.linspace(r0, 0.6 * r0, len(main))
        paths.append((main, radii))
        for _ in range(int(rng.integers(0, 3))):
            at = int(rng.integers(len(main) // 5, max(len(main) // 5 + 1, 4 * len(main) // 5)))
            seg = main[min(at + 1, len(main) - 1)] - main[at]
            h0 = np.arctan2(seg[1], seg[0]) + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0)
            blen = rng.uniform(15.0, 45.0) * ppm
            nb = int(blen / step) + 1
            branch = raster.smooth_path(main[at], h0, blen, step, rng.normal(0, 0.01 / ppm, max(1, nb - 1)))
            paths.append((branch, np.linspace(0.7 * radii[at], 0.3 * radii[at], len(branch))))
    return paths


def calcium_field(rng: np.random.Generator, root: RootGeometry, shape: tuple[int, int], ppm: float,
                  amount: float) -> np.ndarray:
    """Leaflet and annular calcification: irregular dense clumps around the annulus (0..1)."""
    field = np.zeros(shape, np.float32)
    count = int(rng.poisson(6.0 * amount))
    if count == 0:
        return field
    h, w = shape
    for _ in range(count):
        u = rng.uniform(-0.05, 0.5) * root.sinus_height
        v = rng.uniform(-1.0, 1.0) * root.r_annulus
        center = root.to_image(u, v)[0]
        size = rng.uniform(1.5, 5.0) * ppm
        r = int(np.ceil(3 * size)) + 2
        x0, y0 = int(center[0]) - r, int(center[1]) - r
        if x0 < 0 or y0 < 0 or x0 + 2 * r >= w or y0 + 2 * r >= h:
            continue
        X, Y = raster.grid((2 * r, 2 * r))
        blob = raster.ellipsoid((2 * r, 2 * r), (center[0] - x0, center[1] - y0),
                                (size * rng.uniform(1.0, 2.2), size), rng.uniform(0, np.pi), X=X, Y=Y, power=0.7)
        grain = raster.smooth_noise(rng, (2 * r, 2 * r), max(2.0, size * 0.6), octaves=2)
        field[y0:y0 + 2 * r, x0:x0 + 2 * r] += blob * np.clip(0.6 + 0.5 * grain, 0.0, 1.5)
    return np.clip(field, 0.0, 1.5)
