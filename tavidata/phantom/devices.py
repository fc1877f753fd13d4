"""Devices of a TAVI run, drawn as radiopaque path lengths in grey levels of darkening.

Inside the heart (they move with it): the pigtail catheter with its loop in a sinus, the valve
delivery system (shaft, capsule, nose cone), the self-expanding valve frame (Evolut-like tall
lattice with a flared outflow, or ACURATE-like crowns with stabilisation arches), the stiff
guide wire curled in the left ventricle, a temporary pacing lead in the right ventricle.
On the chest wall (they move with breathing only): ECG electrodes with their leads, sternal
wires. Catheters enter from the top edge, coming down the ascending aorta from the arch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from tavidata.phantom import raster
from tavidata.phantom.anatomy import RootGeometry, Ventricle

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceOptions:
    """Which optional devices a run shows, and how dense devices look (grey levels)."""

    stage: str
    valve: str
    density: float = 1.0
    pigtail: bool = True
    guide_wire: bool = True
    delivery_in_control: bool = False
    pacing_lead: bool = False
    ecg_electrodes: int = 0
    sternal_wires: int = 0
    deploy_fraction: float = 0.5
    view_obliquity: float = 0.1


@dataclass
class DeviceLayers:
    """Darkening (grey levels) of the devices: moving with the heart, and on the chest wall."""

    heart: np.ndarray
    surface: np.ndarray
    info: dict = field(default_factory=dict)


def _u_top(root: RootGeometry, shape: tuple[int, int]) -> float:
    return float(2.0 * np.hypot(*shape))


def aortic_catheter(rng: np.random.Generator, root: RootGeometry, shape: tuple[int, int], *,
                    side: float, u_end: float, v_end: float, step: float) -> np.ndarray:
    """Polyline of a catheter coming down the aorta from beyond the frame to (u_end, v_end).

    ``side`` (-1..1) is where it runs across the lumen, as a fraction of the local radius.
    """
    u_top = _u_top(root, shape)
    n = int(max(8, (u_top - u_end) / step))
    u = np.linspace(u_top, u_end, n)
    wobble = np.cumsum(rng.normal(0.0, 0.01, n))
    wobble -= np.linspace(0, 1, n) * wobble[-1]
    frac = np.clip(side + 0.3 * np.sin(u / (3.0 * root.r_ascending) + rng.uniform(0, 6.3)) * 0.3 + wobble, -0.8, 0.8)
    r = np.asarray(root.radius(u.astype(np.float32)), np.float64)
    v = frac * r
    blend = raster.smoothstep(u_end, u_end + 1.5 * root.sinus_height, u)
    v = blend * v + (1.0 - blend) * v_end
    return root.to_image(u, v)


def _loop(center: np.ndarray, radius: float, ratio: float, tilt: float, start: float, turns: float,
          step: float, direction: float = 1.0) -> np.ndarray:
    n = max(12, int(2 * np.pi * radius * turns / step))
    t = start + direction * np.linspace(0.0, 2 * np.pi * turns, n)
    shrink = np.linspace(1.0, 0.8, n)
    ex, ey = radius * np.cos(t) * shrink, radius * ratio * np.sin(t) * shrink
    c, s = np.cos(tilt), np.sin(tilt)
    return np.stack([center[0] + ex * c - ey * s, center[1] + ex * s + ey * c], axis=1).astype(np.float32)


def _pigtail(rng: np.random.Generator, layer: np.ndarray, root: RootGeometry, ppm: float, density: float) -> dict:
    index = int(rng.choice(3, p=[0.3, 0.3, 0.4]))
    lobe = root.lobes[index]
    step = max(1.0, ppm)
    u_end = lobe.u + rng.uniform(-0.1, 0.5) * lobe.half_height
    v_end = lobe.v + rng.uniform(-0.3, 0.3) * lobe.half_width
    side = rng.uniform(-0.6, 0.6)
    shaft = aortic_catheter(rng, root, layer.shape, side=side, u_end=u_end, v_end=v_end, step=step)
    radius = rng.uniform(7.0, 11.0) * ppm
    heading = shaft[-1] - shaft[-4]
    heading = heading / (np.linalg.norm(heading) + 1e-9)
    normal = np.array([-heading[1], heading[0]]) * rng.choice([-1.0, 1.0])
    center = shaft[-1] + normal * radius
    start = float(np.arctan2(shaft[-1][1] - center[1], shaft[-1][0] - center[0]))
    loop = _loop(center, radius, rng.uniform(0.35, 1.0), 0.0, start, rng.uniform(1.0, 1.4), step,
                 direction=rng.choice([-1.0, 1.0]))
    path = np.concatenate([shaft, loop[1:]])
    raster.draw_tube(layer, path, rng.uniform(1.1, 1.5) * ppm, density * rng.uniform(45.0, 75.0), wall=0.3)
    return {"pigtail_sinus": index}


def _delivery_path(rng: np.random.Generator, root: RootGeometry, lv: Ventricle, shape: tuple[int, int],
                   ppm: float, side: float, u_tip: float) -> tuple[np.ndarray, np.ndarray]:
    """The delivery system's path: down the aorta, through the annulus centre, into the LV.

    Returns:
        (points, u) where ``u`` is the root-axis height of every point (decreasing).
    """
    step = max(1.0, ppm)
    above = aortic_catheter(rng, root, shape, side=side, u_end=0.0, v_end=rng.normal(0, 0.08) * root.r_annulus,
                            step=step)
    u_above = np.linspace(_u_top(root, shape), 0.0, len(above))
    below_len = max(0.0, -u_tip)
    if below_len <= 0:
        keep = u_above >= u_tip
        return above[keep], u_above[keep]
    n = max(2, int(below_len / step))
    s = np.linspace(0, below_len, n)
    down = -root.axis
    lvdir = np.asarray(lv.direction)
    w = raster.smoothstep(0.0, 3.0 * root.r_annulus, s)[:, None]
    dirs = down[None, :] * (1 - w) + lvdir[None, :] * w
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    below = above[-1] + np.concatenate([[[0, 0]], np.cumsum(dirs[:-1] * step, axis=0)])
    pts = np.concatenate([above, below[1:]]).astype(np.float32)
    return pts, np.concatenate([u_above, -s[1:]])


def _valve_segments(root: RootGeometry, kind: str, ppm: float, rng: np.random.Generator, *,
                    u_inflow: float, released: tuple[float, float], r_compressed: float,
                    obliquity: float, tilt: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Struts of a self-expanding valve frame as projected segments, plus marker points.

    ``released`` is the (z0, z1) part of the frame height (0 = inflow, 1 = top) that is out of
    the capsule; the rest is compressed to ``r_compressed``.
    """
    r_in = root.r_annulus * rng.uniform(1.08, 1.2)
    phi0 = rng.uniform(0, 2 * np.pi)
    markers: list[np.ndarray] = []
    if kind == "evolut":
        height = rng.uniform(60.0, 72.0) * ppm
        z_rows = np.array([0.0, 0.1, 0.2, 0.31, 0.45, 0.62, 0.8, 1.0])
        n_around = int(rng.integers(12, 16))
        r_out = min(root.r_ascending * 0.98, r_in * rng.uniform(1.35, 1.6))

        def radius(z: np.ndarray) -> np.ndarray:
            waist = r_in * 0.86
            lower = r_in + (waist - r_in) * raster.smoothstep(0.0, 0.38, z)
            return lower + (r_out - waist) * raster.smoothstep(0.38, 1.0, z)
    else:
        height = rng.uniform(52.0, 62.0) * ppm
        z_rows = np.array([0.0, 0.1, 0.2, 0.3, 0.42, 0.52])
        n_around = 9
        r_top = r_in * rng.uniform(1.2, 1.35)

        def radius(z: np.ndarray) -> np.ndarray:
            base = r_in * (1.06 - 0.1 * raster.smoothstep(0.0, 0.2, z))
            return base + (r_top - r_in * 0.96) * raster.smoothstep(0.28, 0.5, z)

    def project(z: np.ndarray, phi: np.ndarray) -> np.ndarray:
        zc = np.clip(z, 0.0, 1.0)
        r = np.asarray(radius(zc), np.float64)
        out = (zc < released[0]) | (zc > released[1])
        edge = np.minimum(np.abs(zc - released[0]), np.abs(zc - released[1]))
        cone = np.clip(edge / 0.25, 0.0, 1.0)
        inside = ~out
        r = np.where(out, r_compressed, r_compressed + (r - r_compressed) * np.where(inside, cone ** 0.7, 1.0))
        u = u_inflow + z * height + r * np.cos(phi) * obliquity
        v = r * np.sin(phi) + np.tan(tilt) * z * height
        return root.to_image(u, v)

    segs = []
    sub = np.linspace(0.0, 1.0, 5)
    for j in range(len(z_rows) - 1):
        for i in range(n_around):
            phi_a = 2 * np.pi * (i + 0.5 * (j % 2)) / n_around + phi0
            for di in (0.5, -0.5):
                phi_b = phi_a + 2 * np.pi * di / n_around
                z = z_rows[j] + (z_rows[j + 1] - z_rows[j]) * sub
                phi = phi_a + (phi_b - phi_a) * sub
                p = project(z, phi)
                segs.extend(np.stack([p[:-1], p[1:]], axis=1))
    if kind == "evolut":
        for k in range(2):  # outflow paddles
            phi = phi0 + np.pi * k + rng.uniform(-0.3, 0.3)
            markers.append(project(np.array([1.0]), np.array([phi]))[0])
    else:
        for k in range(3):  # stabilisation arches and commissure posts
            a0 = phi0 + 2 * np.pi * k / 3 + 0.25
            a1 = a0 + 2 * np.pi / 3 - 0.5
            t = np.linspace(0.0, 1.0, 24)
            z = 0.5 + 0.5 * np.sin(np.pi * t)
            phi = a0 + (a1 - a0) * t
            r = r_in * 1.22 * np.ones_like(t)
            u = u_inflow + z * height + r * np.cos(phi) * obliquity
            v = r * np.sin(phi) + np.tan(tilt) * z * height
            if released[1] >= 0.99:
                p = root.to_image(u, v)
            else:
                p = project(z, phi)
            segs.extend(np.stack([p[:-1], p[1:]], axis=1))
            post = project(np.linspace(0.12, 0.32, 5), np.full(5, a0 - 0.25))
            segs.extend(np.stack([post[:-1], post[1:]], axis=1))
            markers.append(post[0])
    return np.asarray(segs, np.float32), markers


def _delivery_and_valve(rng: np.random.Generator, layer: np.ndarray, root: RootGeometry, lv: Ventricle,
                        ppm: float, opts: DeviceOptions) -> tuple[dict, np.ndarray]:
    """Shaft, capsule, nose cone and (partly) released valve for the stage; returns the wire start."""
    info: dict = {}
    stage, kind = opts.stage, opts.valve
    cap_len = rng.uniform(45.0, 60.0) * ppm
    cap_r = rng.uniform(4.2, 5.2) * ppm
    shaft_r = cap_r * rng.uniform(0.7, 0.85)
    u_inflow = -rng.uniform(3.0, 8.0) * ppm
    height_guess = 65.0 * ppm
    if stage == "positioning":
        cap_u0 = -rng.uniform(0.2, 0.5) * cap_len
        cap_u1 = cap_u0 + cap_len
        nose_u = cap_u0
    elif stage == "deployment":
        frac = opts.deploy_fraction
        if kind == "evolut":  # capsule retracts upwards: inflow first
            cap_u0 = u_inflow + frac * height_guess
            cap_u1 = cap_u0 + cap_len * (1.0 - 0.5 * frac)
            nose_u = u_inflow - rng.uniform(8.0, 20.0) * ppm
        else:  # ACURATE: arches and upper crown first, lower crown last
            cap_u1 = u_inflow + (1.0 - frac) * height_guess * 0.55
            cap_u0 = min(cap_u1 - cap_len * 0.4, u_inflow - 4 * ppm)
            nose_u = cap_u0
    else:  # control with the delivery system still in the aorta
        cap_u0 = u_inflow + height_guess + rng.uniform(5.0, 40.0) * ppm
        cap_u1 = cap_u0 + cap_len * rng.uniform(0.5, 1.0)
        nose_u = cap_u0
    nose_len = rng.uniform(14.0, 22.0) * ppm
    tip_u = nose_u - nose_len
    side = rng.uniform(-0.5, 0.5)
    path, u = _delivery_path(rng, root, lv, layer.shape, ppm, side, tip_u)
    d = opts.density
    shaft = path[u >= cap_u1]
    capsule = path[(u >= cap_u0) & (u <= cap_u1)]
    nose = path[u <= cap_u0]
    raster.draw_tube(layer, shaft, shaft_r, d * rng.uniform(40.0, 65.0), wall=rng.uniform(0.25, 0.45))
    if len(capsule) >= 2:
        raster.draw_tube(layer, capsule, cap_r, d * rng.uniform(70.0, 105.0), wall=0.15)
        raster.draw_tube(layer, capsule[:2], cap_r * 1.05, d * 25.0)
    if len(nose) >= 2:
        radii = np.linspace(cap_r * 0.9, 0.25 * cap_r, len(nose))
        raster.draw_tube(layer, nose, radii, d * rng.uniform(25.0, 40.0))
        raster.draw_tube(layer, nose[: max(2, len(nose) // 6)], cap_r * 0.9, d * 30.0)
    if stage == "deployment":
        h_frac = (cap_u0 - u_inflow) / height_guess if kind == "evolut" else (cap_u1 - u_inflow) / height_guess
        if kind == "evolut":
            released = (0.0, float(np.clip(h_frac, 0.15, 0.9)))
        else:
            released = (float(np.clip(h_frac, 0.1, 0.85)), 1.0)
        segs, markers = _valve_segments(root, kind, ppm, rng, u_inflow=u_inflow, released=released,
                                        r_compressed=cap_r * 0.85, obliquity=opts.view_obliquity,
                                        tilt=rng.normal(0, 0.04))
        _draw_frame(layer, segs, markers, ppm, d, rng)
        info["released"] = released
    return info, nose[-1] if len(nose) else path[-1]


def _draw_frame(layer: np.ndarray, segs: np.ndarray, markers: list[np.ndarray], ppm: float, density: float,
                rng: np.random.Generator) -> None:
    raster.draw_lines(layer, segs, 0.4 * ppm, density * rng.uniform(40.0, 65.0))
    for m in markers:
        raster.draw_tube(layer, np.stack([m - [1.5 * ppm, 0], m + [1.5 * ppm, 0]]), 1.2 * ppm, density * 60.0)


def _guide_wire(rng: np.random.Generator, layer: np.ndarray, root: RootGeometry, lv: Ventricle, ppm: float,
                start: np.ndarray | None, density: float) -> None:
    step = max(1.0, 0.8 * ppm)
    if start is None:
        start = aortic_catheter(rng, root, layer.shape, side=rng.uniform(-0.3, 0.3), u_end=0.0, v_end=0.0, step=step)
        lead = start
        start = start[-1]
    else:
        lead = np.zeros((0, 2), np.float32)
    apex = lv.apex + rng.normal(0, 6 * ppm, 2)
    to_apex = apex - start
    dist = float(np.linalg.norm(to_apex))
    n = max(4, int(dist / step))
    t = np.linspace(0.0, 1.0, n)[:, None]
    sway = np.sin(np.pi * t) * rng.normal(0, 0.15) * dist
    perp = np.array([-to_apex[1], to_apex[0]]) / (dist + 1e-9)
    straight = start + t * to_apex + sway * perp
    radius = rng.uniform(15.0, 24.0) * ppm
    heading = straight[-1] - straight[-2]
    turn = rng.choice([-1.0, 1.0])
    curl = raster.smooth_path(straight[-1], float(np.arctan2(heading[1], heading[0])),
                              2 * np.pi * radius * rng.uniform(1.0, 1.6), step,
                              turn / radius * np.linspace(0.8, 1.3, int(2 * np.pi * radius * 1.6 / step) + 2))
    path = np.concatenate([lead, straight, curl[1:]]).astype(np.float32)
    raster.draw_tube(layer, path, max(0.6, 0.5 * ppm), density * rng.uniform(40.0, 65.0))


def _pacing_lead(rng: np.random.Generator, layer: np.ndarray, lv: Ventricle, ppm: float, density: float) -> None:
    h, w = layer.shape
    step = max(1.0, ppm)
    start = np.array([w * rng.uniform(0.35, 0.65), h + 10.0])
    target = lv.apex + rng.normal(0, 15 * ppm, 2) + np.array([0.0, 10 * ppm])
    mid = np.array([start[0] + rng.normal(0, 0.1) * w, (start[1] + target[1]) / 2 - rng.uniform(0.05, 0.2) * h])
    t = np.linspace(0, 1, 60)[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * mid + t ** 2 * target
    curve = raster.resample_polyline(curve, step)
    raster.draw_tube(layer, curve, rng.uniform(0.9, 1.3) * ppm, density * rng.uniform(30.0, 50.0))
    raster.draw_tube(layer, curve[-max(3, int(4 * ppm / step)):], 1.6 * ppm, density * 60.0)


def _ecg_electrode(rng: np.random.Generator, layer: np.ndarray, ppm: float, density: float) -> None:
    h, w = layer.shape
    edge = rng.integers(4)
    along = rng.uniform(0.05, 0.95)
    depth = rng.uniform(0.04, 0.3)
    x, y = {0: (along * w, depth * h), 1: (along * w, (1 - depth) * h),
            2: (depth * w, along * h), 3: ((1 - depth) * w, along * h)}[int(edge)]
    center = np.array([x, y])
    ring_r = rng.uniform(4.0, 7.0) * ppm
    ring = _loop(center, ring_r, 1.0, 0.0, 0.0, 1.0, max(1.0, ppm))
    raster.draw_tube(layer, ring, 0.6 * ppm, density * rng.uniform(35.0, 60.0), closed=True)
    raster.draw_tube(layer, np.stack([center - [0.3 * ppm, 0], center + [0.3 * ppm, 0]]), 2.2 * ppm,
                     density * rng.uniform(50.0, 80.0))
    heading = rng.uniform(0, 2 * np.pi)
    n = 400
    lead = raster.smooth_path(center, heading, 0.9 * max(h, w), max(1.0, 2 * ppm),
                              np.cumsum(rng.normal(0, 0.0015 / ppm, n))[: n - 1])
    raster.draw_tube(layer, lead, max(0.7, 0.55 * ppm), density * rng.uniform(20.0, 40.0))


def _sternal_wires(rng: np.random.Generator, layer: np.ndarray, count: int, ppm: float, density: float,
                   x: float) -> None:
    h, w = layer.shape
    y = h * rng.uniform(-0.05, 0.2)
    spacing = rng.uniform(18.0, 28.0) * ppm
    tilt = rng.normal(0, 0.15)
    for k in range(count):
        c = np.array([x + np.sin(tilt) * k * spacing, y + np.cos(tilt) * k * spacing]) + rng.normal(0, 2 * ppm, 2)
        loop = _loop(c, rng.uniform(9.0, 16.0) * ppm, rng.uniform(0.12, 0.35), tilt + rng.normal(0, 0.12),
                     rng.uniform(0, 2 * np.pi), rng.uniform(0.85, 1.0), max(1.0, ppm))
        raster.draw_tube(layer, loop, rng.uniform(0.6, 0.9) * ppm, density * rng.uniform(70.0, 110.0))
        knot = loop[0]
        twist = knot + rng.normal(0, 1, 2) * 4 * ppm
        raster.draw_tube(layer, np.stack([knot, twist]), 1.6 * ppm, density * 90.0)


def render_devices(rng: np.random.Generator, shape: tuple[int, int], root: RootGeometry, lv: Ventricle,
                   ppm: float, opts: DeviceOptions) -> DeviceLayers:
    """Draw every device of a run.

    Args:
        rng: Random generator (the run's).
        shape: Frame shape.
        root, lv: The patient's anatomy in this run's projection.
        ppm: Pixels per mm.
        opts: Stage, valve design and optional devices.

    Returns:
        The two device layers (grey levels of darkening) and a JSON-able description.
    """
    heart = np.zeros(shape, np.float32)
    surface = np.zeros(shape, np.float32)
    info: dict = {"stage": opts.stage, "valve": opts.valve}
    d = opts.density
    if opts.pigtail:
        info.update(_pigtail(rng, heart, root, ppm, d))
    wire_start = None
    with_delivery = (opts.stage in ("positioning", "deployment")
                     or (opts.stage == "control" and opts.delivery_in_control))
    if with_delivery:
        extra, wire_start = _delivery_and_valve(rng, heart, root, lv, ppm, opts)
        info.update(extra)
        info["delivery_system"] = True
    if opts.stage == "control":
        segs, markers = _valve_segments(root, opts.valve, ppm, rng, u_inflow=-rng.uniform(3.0, 8.0) * ppm,
                                        released=(0.0, 1.0), r_compressed=root.r_annulus,
                                        obliquity=opts.view_obliquity, tilt=rng.normal(0, 0.05))
        _draw_frame(heart, segs, markers, ppm, d, rng)
    if opts.guide_wire or with_delivery:
        _guide_wire(rng, heart, root, lv, ppm, wire_start, d)
        info["guide_wire"] = True
    if opts.pacing_lead:
        _pacing_lead(rng, heart, lv, ppm, d)
        info["pacing_lead"] = True
    for _ in range(opts.ecg_electrodes):
        _ecg_electrode(rng, surface, ppm, d)
    if opts.sternal_wires:
        _sternal_wires(rng, surface, opts.sternal_wires, ppm, d,
                       x=float(root.annulus[0] + rng.normal(0.0, 0.08) * shape[1]))
    info["ecg_electrodes"] = opts.ecg_electrodes
    info["sternal_wires"] = opts.sternal_wires
    return DeviceLayers(heart=heart, surface=surface, info=info)
