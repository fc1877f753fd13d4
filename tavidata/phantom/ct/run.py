"""A v2 (CT) cine run: project the run's static layers once, then render each frame fast.

:func:`build_ct_scene` places the C-arm for the run (the annulus lands at a drawn spot in the
upper left of the frame), deforms the CT (affine scaling, smooth elastic field and a radial
scaling of the root, all as one displacement field read by the projector, so the anatomy and
the ground truth move together), turns HU into attenuation at the run's energy with organ-wise
scaling, and projects once: the background (one channel, at ``projection_size``) and the
iodine regions (root sinus part, ascending part, left ventricle, rest of the aorta). It then
draws the devices and coronaries in 3D, sets up the image chain and fits its tone curve on a
noiseless preview.

A frame (:meth:`CTScene.render`) is: the iodine layers weighted by the bolus curves (wash-in,
plateau, wash-out; lag of the ascending part, systolic wash-out, reflux), plus the devices
inside the heart, warped by one smooth cardiac displacement (the same warp moves the mask);
the background and chest-wall devices shifted by breathing; then the image chain
(Beer-Lambert, scatter, blur, noise, log, processing, tone curve). The mask is the projection of
the root region (chord through it > :data:`MASK_CHORD_VOXELS` voxels), warped with the frame.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from tavidata.phantom import raster
from tavidata.phantom.config import PhantomConfig
from tavidata.phantom.ct.devices3d import render_devices_3d
from tavidata.phantom.ct.geometry import CArmGeometry, centred_isocentre
from tavidata.phantom.ct.physics import (
    ImageChain,
    attenuation,
    effective_energy_kev,
    iodine_mu_per_mm,
)
from tavidata.phantom.ct.projector import (
    VoxelGrid,
    crop,
    frustum_crop,
    project,
    warp_volume,
)
from tavidata.phantom.ct.randomise import ORGAN_GROUPS, CTRunCase
from tavidata.phantom.ct.root import RootRegion, find_root
from tavidata.phantom.ct.volume import CTVolume, default_ct_dir, load_ct

logger = logging.getLogger(__name__)

#: A pixel is root when its ray crosses at least this many voxels' length of the root region
#: (with trilinear sampling of the binary label this puts the edge within half a voxel of the
#: label's, tests/phantom/test_ct_geometry.py).
MASK_CHORD_VOXELS = 1.2
#: Root voxels less than this far above the annulus (along the axis) fill first (sinus part).
SINUS_HEIGHT_MM = 25.0
#: Sample step of the background's rays, in voxels (the iodine regions: one voxel).
BACKGROUND_STEP = 1.33
#: Transmission of the collimator blades (they also scatter: not black).
COLLIMATOR_TRANSMISSION = 0.15
#: Grid of the deformation field (points per axis).
DEFORM_GRID = 12
#: Coarse grid step (px) of the cardiac motion field.
MOTION_STEP = 8


@dataclass(frozen=True)
class Anatomy:
    """The CT (cropped to the body) and what is derived from it once per process."""

    ct: CTVolume
    root: RootRegion
    grid: VoxelGrid
    hu: np.ndarray
    labels: np.ndarray
    group_of_label: np.ndarray  # (256,) index into ORGAN_GROUPS, -1 for none
    iodine: torch.Tensor       # (3, ...) root low, root up, ventricle + rest of the aorta (indicators)
    iodine_grid: VoxelGrid


@functools.lru_cache(maxsize=2)
def load_anatomy(ct_dir: str, voxel_mm: float) -> Anatomy:
    """Load the CT, find the root and prepare the iodine channels (cached per process)."""
    ct = load_ct(ct_dir, voxel_mm)
    root = find_root(ct)
    body = ct.hu > -500
    zz, yy, xx = np.nonzero(body.any(axis=(1, 2))), np.nonzero(body.any(axis=(0, 2))), np.nonzero(body.any(axis=(0, 1)))
    lo = np.array([xx[0].min(), yy[0].min(), zz[0].min()]) - 2
    hi = np.array([xx[0].max(), yy[0].max(), zz[0].max()]) + 3
    full = VoxelGrid(ct.origin_mm, ct.voxel_mm, ct.shape_zyx)
    nz, ny, nx = ct.shape_zyx
    lo, hi = np.maximum(lo, 0), np.minimum(hi, [nx, ny, nz])
    sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    grid = VoxelGrid(ct.origin_mm + lo * ct.voxel_mm, ct.voxel_mm, tuple(int(hi[i] - lo[i]) for i in (2, 1, 0)))
    group = np.full(256, -1, np.int16)
    for name, idx in ct.structures.items():
        for g, prefix in enumerate(ORGAN_GROUPS):
            if name.startswith(prefix) and idx < 256:
                group[idx] = g
    # iodine channels: sinus part / ascending part of the root, ventricle, rest of the aorta
    zi, yi, xi = np.indices(ct.shape_zyx, sparse=True)
    pos = [xi * ct.voxel_mm + ct.origin_mm[0], yi * ct.voxel_mm + ct.origin_mm[1], zi * ct.voxel_mm + ct.origin_mm[2]]
    height = sum((pos[i] - root.annulus_mm[i]) * root.axis[i] for i in range(3))
    low = root.mask & (height < SINUS_HEIGHT_MM)
    up = root.mask & ~low
    channels = np.stack([low, up, root.ventricle | root.rest]).astype(np.float32)
    any_iodine = channels.any(0)
    z2, y2, x2 = [np.nonzero(any_iodine.any(axis=a))[0] for a in ((1, 2), (0, 2), (0, 1))]
    ilo = (int(x2.min()) - 3, int(y2.min()) - 3, int(z2.min()) - 3)
    ihi = (int(x2.max()) + 4, int(y2.max()) + 4, int(z2.max()) + 4)
    iodine, igrid = crop(torch.from_numpy(channels), full, ilo, ihi)
    return Anatomy(ct=ct, root=root, grid=grid, hu=np.ascontiguousarray(ct.hu[sl]),
                   labels=np.ascontiguousarray(ct.labels[sl]), group_of_label=group, iodine=iodine, iodine_grid=igrid)


def run_geometry(case: CTRunCase, root: RootRegion, size: int) -> CArmGeometry:
    """The run's C-arm: its angles and distances, the annulus at (annulus_col, annulus_row)."""
    magnification = case.sid_mm / case.sod_mm
    fov_iso = case.detector_fov_mm / magnification
    offset = ((case.annulus_col - 0.5) * fov_iso, (case.annulus_row - 0.5) * fov_iso)
    iso = centred_isocentre(root.annulus_mm, case.lao_deg, case.cranial_deg, offset)
    return CArmGeometry(sid_mm=case.sid_mm, sod_mm=case.sod_mm, lao_deg=case.lao_deg, cranial_deg=case.cranial_deg,
                        isocentre_mm=tuple(float(v) for v in iso), rows=size, cols=size,
                        detector_spacing_mm=case.detector_fov_mm / size)


def deformation_field(rng: np.random.Generator, case: CTRunCase, grid: VoxelGrid, root: RootRegion) -> torch.Tensor:
    """Displacement (3, G, G, G) in mm over ``grid``'s box: affine scaling about the annulus,
    a smooth random elastic field, and a radial scaling of the root about its axis."""
    lo, hi = grid.box_mm
    lin = [np.linspace(lo[i], hi[i], DEFORM_GRID) for i in range(3)]
    z, y, x = np.meshgrid(lin[2], lin[1], lin[0], indexing="ij")
    p = np.stack([x, y, z])  # (3, G, G, G) world
    c = root.annulus_mm.reshape(3, 1, 1, 1)
    q = p - c
    scale = np.asarray(case.affine, np.float64).reshape(3, 1, 1, 1)
    disp = q * (1.0 / scale - 1.0)
    if case.elastic_mm > 0:
        cells = np.maximum(2, np.round((hi - lo) / case.elastic_cell_mm).astype(int) + 1)
        for i in range(3):
            coarse = rng.standard_normal((cells[2], cells[1], cells[0])).astype(np.float32)
            t = torch.from_numpy(coarse)[None, None]
            fine = torch.nn.functional.interpolate(t, size=(DEFORM_GRID,) * 3, mode="trilinear", align_corners=True)
            disp[i] += case.elastic_mm * fine[0, 0].numpy()
    a = root.axis.reshape(3, 1, 1, 1)
    along = (q * a).sum(0)
    radial = q - along * a
    dist = np.sqrt((radial ** 2).sum(0))
    weight = np.exp(-(dist / 35.0) ** 2) * np.exp(-(np.maximum(along - root.length_mm, 0) / 30.0) ** 2) \
        * np.exp(-(np.minimum(along, 0) / 20.0) ** 2)
    disp += radial * (1.0 / case.root_scale - 1.0) * weight
    return torch.from_numpy(disp.astype(np.float32))


def _open_field(case: CTRunCase, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(open-field bool mask, transmission of collimators and wedge) at the output size."""
    left, right, top, bottom = case.shutters
    t = np.ones((size, size), np.float32)
    x0, x1 = round(left * size), size - round(right * size)
    y0, y1 = round(top * size), size - round(bottom * size)
    open_field = np.zeros((size, size), bool)
    open_field[y0:y1, x0:x1] = True
    t[~open_field] = COLLIMATOR_TRANSMISSION
    if case.wedge > 0:
        xx = np.linspace(0.0, 1.0, size, dtype=np.float32)
        ramp = np.clip((xx - 0.75) / 0.25, 0.0, 1.0)
        t *= (1.0 - case.wedge * ramp)[None, :]
    t = cv2.GaussianBlur(t, (0, 0), max(1.0, size / 400.0))
    return open_field, t


@dataclass
class CTScene:
    """The static part of a v2 run; :meth:`render` makes its frames."""

    case: CTRunCase
    geometry: CArmGeometry
    background: np.ndarray          # line integral (output size)
    iodine: dict[str, np.ndarray]   # name -> line integral at full fill (output size)
    heart_devices: np.ndarray
    surface_devices: np.ndarray
    mask: np.ndarray                # uint8 0/255, the root's projection
    open_field: np.ndarray
    chain: ImageChain
    axis_2d: np.ndarray
    annulus_px: np.ndarray
    info: dict = field(default_factory=dict)
    _motion: tuple | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """Frame shape (H, W)."""
        return self.background.shape  # type: ignore[return-value]

    def gains(self, t: float) -> dict[str, float]:
        """Weights of the iodine layers at time ``t``."""
        tm, c = self.case.timing, self.case
        systole = float(tm.systole(t))
        return {
            "root_low": float(tm.fill(t)) * (1.0 - tm.systolic_washout * systole),
            "root_up": float(tm.fill(t - tm.lag_ascending)),
            # left ventricle (reflux) and the arch/descending aorta share one layer
            "other": max(c.regurgitation, c.rest_fraction) * float(tm.fill(t - 0.25)) * (0.7 + 0.3 * (1.0 - systole)),
            "coronary": c.coronary * float(tm.fill(t - 0.15)),
        }

    def line_integral(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Total line integral and the mask at time ``t`` (before the image chain)."""
        h, w = self.shape
        layer = self.heart_devices.copy()
        for name, gain in self.gains(t).items():
            if gain > 1e-4 and name in self.iodine:
                cv2.scaleAdd(self.iodine[name], gain, layer, dst=layer)
        c, tm = self.case, self.case.timing
        ppm = 1.0 / self.geometry.isocentre_spacing_mm
        ph = float(tm.cardiac(t))
        long = c.cardiac_mm * ppm * (np.sin(np.pi * min(ph / 0.4, 1.0)) ** 2 if ph < 0.4 else
                                     -0.15 * np.sin(np.pi * (ph - 0.4) / 0.6))
        swing = c.cardiac_swing_mm * ppm * np.sin(2 * np.pi * ph)
        resp = c.resp_mm * ppm * float(tm.breathing(t))
        normal = np.array([-self.axis_2d[1], self.axis_2d[0]])
        if self._motion is None:
            gh, gw = h // MOTION_STEP + 2, w // MOTION_STEP + 2
            cx = (np.arange(gw, dtype=np.float32) + 0.5) * (w / gw) - 0.5
            cy = (np.arange(gh, dtype=np.float32) + 0.5) * (h / gh) - 0.5
            X, Y = np.meshgrid(cx, cy)
            d2 = (X - self.annulus_px[0]) ** 2 + (Y - self.annulus_px[1]) ** 2
            self._motion = (np.exp(-d2 / (2 * (0.45 * w) ** 2)).astype(np.float32), *raster.grid((h, w)))
        wgt, gx, gy = self._motion
        dx = wgt * np.float32(-long * self.axis_2d[0] + swing * normal[0])
        dy = wgt * np.float32(-long * self.axis_2d[1] + swing * normal[1]) + np.float32(resp)
        map_x = gx - cv2.resize(dx.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        map_y = gy - cv2.resize(dy.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        moved = cv2.remap(layer, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mask = cv2.remap(self.mask, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) > 127
        shift = np.float32([[1, 0, 0], [0, 1, 0.6 * resp]])
        bg = cv2.warpAffine(self.background, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        surf = cv2.warpAffine(self.surface_devices, shift, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        return bg + moved + surf, mask & self.open_field

    def render(self, t: float, noise_rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One frame at time ``t``: (uint8 image, bool mask)."""
        total, mask = self.line_integral(t)
        return self.chain.to_uint8(self.chain.processed(total, noise_rng), noise_rng), mask


def _resize(img: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    if img.shape == (size, size):
        return img.astype(np.float32)
    return cv2.resize(img.astype(np.float32), (size, size), interpolation=interpolation)


def lung_markings(rng: np.random.Generator, background: np.ndarray, case: CTRunCase, ppm: float) -> np.ndarray:
    """Fine anatomical clutter the resampled CT is too coarse to hold, as line integrals.

    Band-limited mottling at 1x, 2x and 4x ``clutter_cell_mm`` (overlapping small pulmonary
    vessels and interstitium), weighted by how bright the background is (the lung fields), plus a
    fainter mottling everywhere (soft tissue, fat, trabecular bone), drawn once per run and
    moving with the background.
    """
    shape = background.shape
    t = np.exp(-background)
    lung = np.clip((t / float(np.median(t)) - 0.9) / 1.2, 0.0, 1.0).astype(np.float32)
    lung = cv2.GaussianBlur(lung, (0, 0), max(1.0, 4.0 * ppm))
    markings = np.zeros(shape, np.float32)
    for scale, weight in ((1.0, 0.5), (2.0, 0.35), (4.0, 0.25)):
        cell = max(2.0, scale * case.clutter_cell_mm * ppm)
        markings += np.float32(weight) * raster.smooth_noise(rng, shape, cell, octaves=1)
    mottle = raster.smooth_noise(rng, shape, max(2.0, 2.5 * case.clutter_cell_mm * ppm), octaves=3)
    return (case.clutter_lung * (0.2 + 0.8 * lung) * markings + case.clutter_soft * mottle).astype(np.float32)


def build_ct_scene(rng: np.random.Generator, case: CTRunCase, anatomy: Anatomy, *, projection_size: int) -> CTScene:
    """Project and compose the static layers of a v2 run (see the module docstring).

    Args:
        rng: The run's generator (after :func:`~tavidata.phantom.ct.randomise.sample_ct_run`).
        case: The run's settings.
        anatomy: The CT and its root region (:func:`load_anatomy`).
        projection_size: Size of the projected grid (upsampled to the frame size).
    """
    started = time.perf_counter()
    size = case.size
    geometry = run_geometry(case, anatomy.root, size)
    proj = min(size, projection_size)
    kev = effective_energy_kev(case.kvp)
    # --- background: attenuation of the cropped, deformed CT
    full = torch.from_numpy(anatomy.hu)[None]
    hu_t, sub_grid = frustum_crop(full, anatomy.grid, geometry, margin_mm=20.0)
    lab_t, _ = frustum_crop(torch.from_numpy(anatomy.labels)[None], anatomy.grid, geometry, margin_mm=20.0)
    scale_lut = np.ones(256, np.float32)
    for g, name in enumerate(ORGAN_GROUPS):
        scale_lut[anatomy.group_of_label == g] = case.organ_scale[name]
    mu = attenuation(hu_t[0].numpy(), lab_t[0].numpy(), kev=kev, bone_excess=case.bone_excess, label_scale=scale_lut)
    disp = deformation_field(rng, case, sub_grid, anatomy.root)
    mu_t = warp_volume(torch.from_numpy(mu)[None], sub_grid, disp)
    bg = project(mu_t, sub_grid, geometry, rows=proj, cols=proj, step_mm=BACKGROUND_STEP * anatomy.grid.voxel_mm)[0]
    # --- iodine regions, same rays and the same deformation
    iod_t, iod_grid = frustum_crop(anatomy.iodine, anatomy.iodine_grid, geometry, margin_mm=20.0)
    disp_i = _regrid_displacement(disp, sub_grid, iod_grid)
    iod = project(warp_volume(iod_t, iod_grid, disp_i), iod_grid, geometry, rows=proj, cols=proj)
    t_proj = time.perf_counter() - started
    mu_i = iodine_mu_per_mm(kev, case.iodine_mg_ml)
    chord_root = _resize(iod[0] + iod[1], size)
    mask = ((chord_root > MASK_CHORD_VOXELS * anatomy.grid.voxel_mm).astype(np.uint8) * 255)
    tex = 1.0 + case.texture * raster.smooth_noise(rng, (size, size), size / 20.0, octaves=3)
    tex = np.clip(tex, 0.2, 2.0).astype(np.float32)
    iodine = {
        "root_low": _resize(iod[0], size) * np.float32(mu_i) * tex,
        "root_up": _resize(iod[1], size) * np.float32(mu_i) * tex,
        "other": _resize(iod[2], size) * np.float32(mu_i),
    }
    devices = render_devices_3d(rng, geometry, anatomy.ct, anatomy.root, case.devices,
                                coronary_mu_per_mm=mu_i if case.coronary > 0 else 0.0)
    iodine["coronary"] = devices.coronary
    open_field, transmission = _open_field(case, size)
    chain = ImageChain(case.chain, (size, size), open_field, wedge=transmission)
    px, _ = geometry.project(np.stack([anatomy.root.annulus_mm, anatomy.root.annulus_mm + 30.0 * anatomy.root.axis]))
    axis_2d = px[1] - px[0]
    axis_2d = axis_2d / (np.linalg.norm(axis_2d) + 1e-9)
    background = _resize(bg, size, cv2.INTER_CUBIC)
    background += lung_markings(rng, background, case, size / (case.detector_fov_mm / geometry.magnification))
    scene = CTScene(case=case, geometry=geometry, background=background, iodine=iodine,
                    heart_devices=devices.heart, surface_devices=devices.surface, mask=mask, open_field=open_field,
                    chain=chain, axis_2d=axis_2d.astype(np.float32), annulus_px=px[0].astype(np.float32),
                    info={"devices": devices.info, "projection_s": round(t_proj, 3), "projection_size": proj,
                          "iodine_mu_per_mm": round(mu_i, 5), "effective_kev": round(kev, 2)})
    t_mid = case.timing.frame_times[len(case.timing.frame_times) // 2]
    preview, _ = scene.line_integral(t_mid)
    chain.set_reference(preview)
    chain.fit_tone(chain.processed(preview, None))
    scene.info["static_s"] = round(time.perf_counter() - started, 3)
    return scene


def _regrid_displacement(disp: torch.Tensor, src: VoxelGrid, dst: VoxelGrid) -> torch.Tensor:
    """Resample a displacement field defined over ``src``'s box onto ``dst``'s box."""
    slo, shi = src.box_mm
    dlo, dhi = dst.box_mm
    lin = [np.linspace(dlo[i], dhi[i], DEFORM_GRID) for i in range(3)]
    z, y, x = np.meshgrid(lin[2], lin[1], lin[0], indexing="ij")
    pts = np.stack([x, y, z], -1)
    norm = (pts - slo) / (shi - slo) * 2.0 - 1.0
    g = torch.from_numpy(norm.astype(np.float32))[None]
    out = torch.nn.functional.grid_sample(disp[None], g, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0]


def ct_dir_of(config: PhantomConfig) -> str:
    """The CT folder of a configuration: ``config.ct_dir`` or the default cache folder."""
    return str(config.ct_dir) if config.ct_dir else str(default_ct_dir())


__all__ = [
    "MASK_CHORD_VOXELS",
    "Anatomy",
    "CTScene",
    "build_ct_scene",
    "ct_dir_of",
    "deformation_field",
    "load_anatomy",
    "run_geometry",
]


def generate_ct_run(config: PhantomConfig, patient_seed: int, run_index: int, *, n_frames: int | None = None,
                    stage: str | None = None, time_shift_s: float = 0.0):
    """Generate one v2 cine run (the v2 counterpart of :func:`tavidata.phantom.cohort.generate_run`).

    ``time_shift_s`` renders the same scene that many seconds later (negative: before the
    injection, e.g. -60 s for a run without contrast; frames without a contrast-filled root get
    empty masks, :data:`~tavidata.phantom.run.VISIBLE_FILL`). ``config.pre_injection`` adds a
    shift of its own to some runs (:func:`~tavidata.phantom.run.bolus_shift_s`).

    Returns:
        A :class:`~tavidata.phantom.cohort.PhantomRun` whose ``spacing_mm`` is the isocentre
        pixel spacing of the run's geometry and whose meta holds the geometry (SID, SOD,
        angles, detector spacing, magnification) for the DICOM calibration attributes.

    Raises:
        CTDataMissingError: the CT is not fetched.
        ValueError: bad ``run_index``/``n_frames``/``stage``.
    """
    from tavidata.phantom.case import sample_patient
    from tavidata.phantom.ct.randomise import sample_ct_run
    from tavidata.phantom.run import PhantomRun, bolus_shift_s, render_frames, run_rng

    rng, n_frames = run_rng(config, patient_seed, run_index, n_frames)
    patient = sample_patient(np.random.default_rng([patient_seed, 1]), config)
    anatomy = load_anatomy(ct_dir_of(config), float(config.ct_voxel_mm))
    case = sample_ct_run(rng, config, valve=patient.valve, n_frames=n_frames, stage=stage,
                         sternal_wires=patient.sternal_wires)
    scene = build_ct_scene(rng, case, anatomy, projection_size=config.projection_size)
    shift = time_shift_s + bolus_shift_s(config, patient_seed, run_index, case.timing.frame_times)
    times = tuple(t + shift for t in case.timing.frame_times)
    frames, masks = render_frames(scene, times, n_frames, (config.size, config.size),
                                  np.random.default_rng([patient_seed, 3, run_index]))
    meta = case.describe()
    meta.update(scene.info)
    meta.update(scene.geometry.describe())
    meta.update({"generator": "ct", "patient_seed": int(patient_seed), "run_index": int(run_index),
                 "ct_sha256": anatomy.ct.sha256["cxr.nii.gz"][:16]})
    if shift:
        meta["bolus_shift_s"] = round(shift, 4)
    spacing = float(scene.geometry.isocentre_spacing_mm)
    return PhantomRun(frames=frames, masks=masks, spacing_mm=(spacing, spacing), stage=case.stage, meta=meta)


__all__ += ["generate_ct_run"]
