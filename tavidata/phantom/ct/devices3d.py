"""Devices and small contrast-filled vessels placed in 3D in the CT's frame, then projected.

Every device is a 3D curve (or a lattice of struts) in world mm, placed with the root region's
centre lines (:class:`~tavidata.phantom.ct.root.RootRegion`): the pigtail catheter comes up the
descending aorta, over the arch and down the ascending aorta to a loop in a sinus; the
delivery system follows the same route to the annulus, its capsule holding the valve; the
self-expanding valve frame (Evolut-like or ACURATE-like lattice) sits on the root axis at the
annulus, released from the capsule by the run's deployment fraction; the stiff guide wire
curls in the left ventricle; a pacing lead runs from the superior vena cava to the right
ventricle; ECG electrodes lie on the skin and sternal wires around the sternum. Coronary
arteries leave the sinuses (iodine, on their own layer).

They are projected through the run's :class:`~tavidata.phantom.ct.geometry.CArmGeometry` (at
the output size) and drawn with the v1 rasteriser as line integrals (attenuation x mm), so
they overlap the root exactly as the CT does in the same view.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter1d

from tavidata.phantom import raster
from tavidata.phantom.ct.geometry import CArmGeometry
from tavidata.phantom.ct.root import RootRegion
from tavidata.phantom.ct.volume import CTVolume
from tavidata.phantom.devices import DeviceOptions

logger = logging.getLogger(__name__)

#: Unit vector from the annulus towards the left-ventricular apex (RAS: left, anterior, down).
APEX_DIR = np.array([-0.55, 0.45, -0.7]) / np.linalg.norm([-0.55, 0.45, -0.7])


@dataclass
class DeviceLayers3D:
    """Line integrals of the devices: moving with the heart, on the chest wall, and coronary iodine."""

    heart: np.ndarray
    surface: np.ndarray
    coronary: np.ndarray
    info: dict = field(default_factory=dict)


def _resample(points: np.ndarray, step: float) -> np.ndarray:
    pts = np.asarray(points, np.float64)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if s[-1] <= 0:
        return pts
    t = np.linspace(0.0, s[-1], max(2, int(np.ceil(s[-1] / step)) + 1))
    return np.stack([np.interp(t, s, pts[:, i]) for i in range(3)], axis=1)


def _smooth(points: np.ndarray, sigma: float) -> np.ndarray:
    if len(points) < 4:
        return points
    return gaussian_filter1d(points, sigma, axis=0, mode="nearest")


def _perp(axis: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(axis, a)
    phi = rng.uniform(0, 2 * np.pi)
    return np.cos(phi) * a + np.sin(phi) * b, -np.sin(phi) * a + np.cos(phi) * b


class _Painter:
    """Projects 3D curves through the geometry and draws them on a layer."""

    def __init__(self, geometry: CArmGeometry):
        self.g = geometry
        self.px_per_mm = 1.0 / geometry.detector_spacing_mm

    def tube(self, layer: np.ndarray, pts: np.ndarray, radius_mm: float | np.ndarray, value: float,
             wall: float = 0.0) -> None:
        if len(pts) < 2:
            return
        px, mag = self.g.project(pts)
        r = np.asarray(radius_mm, np.float64) * mag * self.px_per_mm
        raster.draw_tube(layer, px.astype(np.float32), np.maximum(r, 0.3).astype(np.float32), value, wall=wall)

    def struts(self, layer: np.ndarray, a: np.ndarray, b: np.ndarray, width_mm: float, value: float) -> None:
        pa, mag = self.g.project(a)
        pb, _ = self.g.project(b)
        segs = np.stack([pa, pb], axis=1).astype(np.float32)
        raster.draw_lines(layer, segs, float(width_mm * np.mean(mag) * self.px_per_mm), value)


def _catheter_route(rng: np.random.Generator, root: RootRegion, end: np.ndarray, spread: float) -> np.ndarray:
    """The aorta's route (descending, arch, ascending) ending at ``end``, wandering in the lumen."""
    route = _resample(root.catheter_mm, 2.0)
    route = _smooth(route, 3.0)
    n = len(route)
    wander = np.cumsum(rng.normal(0.0, 0.6, (n, 3)), axis=0)
    wander = gaussian_filter1d(wander, 6.0, axis=0) * spread
    wander -= np.linspace(0, 1, n)[:, None] * wander[-1]
    route = route + wander
    # finish at the end point: blend the last ~30 mm towards it
    blend = np.clip((np.arange(n) - (n - 15)) / 15.0, 0.0, 1.0)[:, None]
    route = route * (1 - blend) + (route[-1] + (end - route[-1])) * blend
    return _resample(np.concatenate([route, end[None]]), 1.0)


def _pigtail(rng, p: _Painter, layer, root: RootRegion, density: float) -> dict:
    u, _ = _perp(root.axis, rng)
    r0 = float(root.radius_mm[min(len(root.radius_mm) - 1, 6)])
    end = root.annulus_mm + root.axis * rng.uniform(12.0, 22.0) + u * r0 * rng.uniform(0.2, 0.5)
    shaft = _catheter_route(rng, root, end, spread=rng.uniform(0.5, 1.5))
    radius = rng.uniform(6.0, 9.0)
    centre = end - root.axis * radius * 0.8 + u * radius * 0.3
    turns = rng.uniform(1.0, 1.4)
    t = np.linspace(0, 2 * np.pi * turns, 80)
    shrink = np.linspace(1.0, 0.75, len(t))
    plane_b = np.cross(root.axis, u) * rng.uniform(0.3, 1.0) + root.axis * 0.5
    plane_b /= np.linalg.norm(plane_b)
    loop = centre + radius * shrink[:, None] * (np.cos(t)[:, None] * u + np.sin(t)[:, None] * plane_b)
    path = np.concatenate([shaft, loop])
    p.tube(layer, path, rng.uniform(0.9, 1.1), density * rng.uniform(0.35, 0.6), wall=0.3)
    return {"pigtail": True}


def _valve(rng, p: _Painter, layer, root: RootRegion, opts: DeviceOptions, expanded: float, r_annulus: float) -> None:
    """Strut lattice of the valve frame; ``expanded`` (0..1) of its height is out of the capsule."""
    axis = root.axis
    u, v = _perp(axis, rng)
    base = root.annulus_mm - axis * rng.uniform(2.0, 6.0)
    if opts.valve == "evolut":
        height = rng.uniform(44.0, 52.0)
        zs = np.array([0.0, 0.1, 0.2, 0.32, 0.46, 0.62, 0.8, 1.0])
        n_around = int(rng.integers(12, 16))
        r_in = r_annulus * rng.uniform(1.05, 1.2)
        r_out = r_in * rng.uniform(1.3, 1.55)

        def radius(z):
            waist = 0.85 * r_in
            flare = waist + (r_out - waist) * (np.maximum(z - 0.4, 0.0) / 0.6) ** 1.5
            return np.where(z < 0.4, r_in + (waist - r_in) * z / 0.4, flare)
    else:
        height = rng.uniform(48.0, 54.0)
        zs = np.array([0.0, 0.12, 0.25, 0.38, 0.55, 0.75, 1.0])
        n_around = int(rng.integers(9, 13))
        r_in = r_annulus * rng.uniform(1.05, 1.18)

        def radius(z):
            crown = r_in * (1.0 + 0.12 * np.exp(-((z - 0.12) / 0.1) ** 2))
            return np.where(z < 0.45, crown, r_in * (1.0 + 0.25 * (z - 0.45) / 0.55))
    r_cap = rng.uniform(2.8, 3.6)
    rows = []
    for j, z in enumerate(zs):
        out = z <= expanded
        r = float(radius(np.asarray(z))) if out else r_cap
        phi = 2 * np.pi * (np.arange(n_around) + 0.5 * (j % 2)) / n_around
        ring = base + axis * (z * height) + r * (np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * v)
        rows.append(ring)
    a_list, b_list = [], []
    for j in range(len(rows) - 1):
        lo, hi = rows[j], rows[j + 1]
        a_list += [lo, lo]
        b_list += [hi, np.roll(hi, -1 if j % 2 == 0 else 1, axis=0)]
    a, b = np.concatenate(a_list), np.concatenate(b_list)
    p.struts(layer, a, b, rng.uniform(0.22, 0.32), opts.density * rng.uniform(0.25, 0.45))
    # radiopaque markers at the inflow
    for k in range(3):
        m = rows[0][k * n_around // 3]
        p.tube(layer, np.stack([m - axis * 1.2, m + axis * 1.2]), 0.9, opts.density * 0.9)


def _delivery(rng, p: _Painter, layer, root: RootRegion, opts: DeviceOptions) -> dict:
    axis = root.axis
    r_annulus = float(np.median(root.radius_mm[:6])) if len(root.radius_mm) else 12.0
    tip_depth = rng.uniform(15.0, 30.0)
    cap_len = rng.uniform(40.0, 55.0)
    stage = opts.stage
    if stage == "positioning":
        cap_low = -rng.uniform(2.0, 8.0)
    elif stage == "deployment":
        cap_low = -rng.uniform(0.0, 6.0) + cap_len * opts.deploy_fraction
    else:
        cap_low = rng.uniform(40.0, 70.0)  # control: the empty capsule pulled back up
    cap_start = root.annulus_mm + axis * cap_low
    shaft = _catheter_route(rng, root, cap_start + axis * cap_len, spread=rng.uniform(0.2, 0.6))
    p.tube(layer, shaft, rng.uniform(2.6, 3.2), opts.density * rng.uniform(0.25, 0.4), wall=0.25)
    capsule = np.stack([cap_start + axis * cap_len, cap_start])
    p.tube(layer, _resample(capsule, 1.0), rng.uniform(3.0, 3.6), opts.density * rng.uniform(0.5, 0.8), wall=0.15)
    nose = _resample(np.stack([cap_start, cap_start - axis * 8.0]), 1.0)
    p.tube(layer, nose, np.linspace(3.0, 1.0, len(nose)), opts.density * 0.35)
    if stage == "positioning":
        _valve(rng, p, layer, root, opts, expanded=-1.0, r_annulus=r_annulus)
    elif stage == "deployment":
        _valve(rng, p, layer, root, opts, expanded=opts.deploy_fraction, r_annulus=r_annulus)
    else:
        _valve(rng, p, layer, root, opts, expanded=1.0, r_annulus=r_annulus)
    return {"delivery_tip_mm": round(float(tip_depth), 1), "capsule_low_mm": round(float(cap_low), 1)}


def _guide_wire(rng, p: _Painter, layer, root: RootRegion, density: float) -> None:
    start = root.annulus_mm + root.axis * 10.0
    shaft = _catheter_route(rng, root, start, spread=rng.uniform(0.2, 0.8))
    lv_dir = APEX_DIR + rng.normal(0, 0.15, 3)
    lv_dir /= np.linalg.norm(lv_dir)
    depth = rng.uniform(55.0, 75.0)
    apex = root.annulus_mm + lv_dir * depth
    down = np.stack([start, root.annulus_mm - root.axis * 10.0, apex])
    down = _smooth(_resample(down, 1.0), 8.0)
    u, _ = _perp(lv_dir, rng)
    radius = rng.uniform(12.0, 20.0)
    t = np.linspace(0, 2 * np.pi * rng.uniform(0.8, 1.3), 60)
    w = np.cross(lv_dir, u)
    shrink = np.linspace(1, 0.8, len(t))[:, None]
    loop = apex - lv_dir * radius + radius * (np.cos(t)[:, None] * lv_dir + np.sin(t)[:, None] * w) * shrink
    p.tube(layer, np.concatenate([shaft, down, loop]), 0.45, density * rng.uniform(0.6, 1.0))


def _coronaries(rng, p: _Painter, layer, root: RootRegion, mu_iodine: float) -> None:
    base = root.annulus_mm + root.axis * rng.uniform(6.0, 12.0)
    r0 = float(np.median(root.radius_mm[:8])) if len(root.radius_mm) else 12.0
    trees = {
        "left": [(np.array([-0.8, 0.1, -0.1]), 12.0, 2.2), (np.array([-0.35, 0.55, -0.75]), 90.0, 1.8),
                 (np.array([-0.55, -0.55, -0.6]), 65.0, 1.6)],
        "right": [(np.array([0.55, 0.75, -0.15]), 20.0, 2.0), (np.array([0.55, 0.25, -0.8]), 80.0, 1.7)],
    }
    for segs in trees.values():
        ostium_dir = segs[0][0] / np.linalg.norm(segs[0][0])
        start = base + ostium_dir * r0 * 0.9
        d0, l0, rad0 = segs[0]
        trunk_end = start + d0 / np.linalg.norm(d0) * l0
        p.tube(layer, _resample(np.stack([start, trunk_end]), 1.0), rad0, mu_iodine * 2 * rad0)
        for d, length, rad in segs[1:]:
            d = d / np.linalg.norm(d) + rng.normal(0, 0.1, 3)
            n = int(length / 2.0)
            bend = np.cumsum(rng.normal(0, 0.08, (n, 3)), axis=0)
            dirs = d[None] + gaussian_filter1d(bend, 3.0, axis=0)
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            pts = trunk_end + np.concatenate([[[0, 0, 0]], np.cumsum(dirs * 2.0, axis=0)])
            radii = np.linspace(rad, 0.6, len(pts))
            p.tube(layer, pts, radii, mu_iodine * 2 * rad)


def _skin_point(ct: CTVolume, x: float, z: float) -> np.ndarray | None:
    """Most anterior skin point of the CT column at world (x, z)."""
    ix, _, iz = ct.world_to_index(np.array([x, 0.0, z]))
    ix, iz = round(float(ix)), round(float(iz))
    nz, _, nx = ct.shape_zyx
    if not (0 <= ix < nx and 0 <= iz < nz):
        return None
    col = np.nonzero(ct.hu[iz, :, ix] > -300)[0]
    if len(col) == 0:
        return None
    return ct.index_to_world(np.array([ix, col.max(), iz], np.float64))


def _ecg(rng, p: _Painter, layer, ct: CTVolume, root: RootRegion, count: int, density: float) -> None:
    for _ in range(count):
        x = root.annulus_mm[0] + rng.uniform(-120.0, 80.0)
        z = root.annulus_mm[2] + rng.uniform(-90.0, 90.0)
        skin = _skin_point(ct, x, z)
        if skin is None:
            continue
        pad = skin + np.array([0, 2.0, 0])
        disc = pad + np.stack([np.array([np.cos(a), 0, np.sin(a)]) * 10.0 for a in np.linspace(0, 2 * np.pi, 40)])
        p.tube(layer, disc, 1.0, density * 0.05)
        p.tube(layer, np.stack([pad - [1.5, 0, 0], pad + [1.5, 0, 0]]), 2.2, density * rng.uniform(0.5, 0.9))
        heading = rng.uniform(0, 2 * np.pi)
        n = 120
        ang = heading + np.cumsum(rng.normal(0, 0.05, n))
        steps = np.stack([np.cos(ang), np.zeros(n), np.sin(ang)], 1) * 2.5
        lead = pad + np.concatenate([[[0, 0, 0]], np.cumsum(steps, axis=0)])
        p.tube(layer, lead, 0.7, density * rng.uniform(0.15, 0.3), wall=0.3)


def _sternal_wires(rng, p: _Painter, layer, ct: CTVolume, count: int, density: float) -> None:
    try:
        (sid,) = ct.label_ids("sternum")
    except KeyError:
        return
    zz, yy, xx = np.nonzero(ct.labels == sid)
    if len(zz) == 0:
        return
    levels = np.linspace(zz.min() + 3, zz.max() - 3, count)
    for lv in levels:
        sel = np.abs(zz - lv) < 1.5
        if not sel.any():
            continue
        c = ct.index_to_world(np.array([xx[sel].mean(), yy[sel].mean(), lv]))
        a = np.linspace(0, 2 * np.pi, 50)
        loop = c + np.stack([np.cos(a) * rng.uniform(10, 15), np.sin(a) * rng.uniform(5, 8),
                             rng.normal(0, 1.0) + 0 * a], 1)
        p.tube(layer, loop, 0.5, density * rng.uniform(0.7, 1.1))
        knot = c + np.array([rng.uniform(-12, 12), 8.0, 0])
        p.tube(layer, np.stack([knot, knot + [rng.uniform(-4, 4), 2, rng.uniform(-6, 6)]]), 0.9, density)


def _pacing_lead(rng, p: _Painter, layer, ct: CTVolume, root: RootRegion, density: float) -> None:
    try:
        (svc,) = ct.label_ids("superior_vena_cava")
    except KeyError:
        return
    zz, yy, xx = np.nonzero(ct.labels == svc)
    if len(zz) == 0:
        return
    top = ct.index_to_world(np.array([xx[zz == zz.max()].mean(), yy[zz == zz.max()].mean(), zz.max()]))
    bottom = ct.index_to_world(np.array([xx[zz == zz.min()].mean(), yy[zz == zz.min()].mean(), zz.min()]))
    ra = bottom + np.array([rng.uniform(0, 15), rng.uniform(0, 10), -rng.uniform(20, 35)])
    apex = root.annulus_mm + APEX_DIR * rng.uniform(60, 80) + np.array([rng.uniform(5, 25), 15.0, -10.0])
    path = _smooth(_resample(np.stack([top + [0, 0, 80], top, bottom, ra, apex]), 2.0), 6.0)
    p.tube(layer, path, 0.9, density * rng.uniform(0.3, 0.5), wall=0.2)
    p.tube(layer, np.stack([path[-1], path[-1] + (path[-1] - path[-4]) * 1.5]), 1.2, density * 0.9)


def render_devices_3d(rng: np.random.Generator, geometry: CArmGeometry, ct: CTVolume, root: RootRegion,
                      opts: DeviceOptions, *, coronary_mu_per_mm: float) -> DeviceLayers3D:
    """Draw the run's devices (and coronary iodine at full fill) as line-integral layers.

    Args:
        rng: The run's generator.
        geometry: The run's C-arm geometry at the output size.
        ct: The CT (skin and sternum positions).
        root: The root region and centre lines.
        opts: Which devices (v1's options: stage, valve, pigtail, wires...).
        coronary_mu_per_mm: Iodine attenuation of the coronaries at full fill (0: none).
    """
    shape = (geometry.rows, geometry.cols)
    heart = np.zeros(shape, np.float32)
    surface = np.zeros(shape, np.float32)
    coronary = np.zeros(shape, np.float32)
    p = _Painter(geometry)
    info: dict = {}
    if opts.pigtail:
        info.update(_pigtail(rng, p, heart, root, opts.density))
    if opts.stage in ("positioning", "deployment") or (opts.stage == "control" and opts.delivery_in_control):
        info.update(_delivery(rng, p, heart, root, opts))
    elif opts.stage == "control":
        r_annulus = float(np.median(root.radius_mm[:6])) if len(root.radius_mm) else 12.0
        _valve(rng, p, heart, root, opts, expanded=1.0, r_annulus=r_annulus)
    if opts.guide_wire:
        _guide_wire(rng, p, heart, root, opts.density)
        info["guide_wire"] = True
    if opts.pacing_lead:
        _pacing_lead(rng, p, heart, ct, root, opts.density)
    if opts.ecg_electrodes:
        _ecg(rng, p, surface, ct, root, opts.ecg_electrodes, opts.density)
    if opts.sternal_wires:
        _sternal_wires(rng, p, surface, ct, opts.sternal_wires, opts.density)
    if coronary_mu_per_mm > 0:
        _coronaries(rng, p, coronary, root, coronary_mu_per_mm)
    info.update({"ecg_electrodes": opts.ecg_electrodes, "sternal_wires": opts.sternal_wires})
    return DeviceLayers3D(heart=heart, surface=surface, coronary=coronary, info=info)


__all__ = ["APEX_DIR", "DeviceLayers3D", "render_devices_3d"]
