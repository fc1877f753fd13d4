"""The aortic root region of the CT: where the iodine goes and what the ground truth is.

The TotalSegmentator label map has one ``aorta`` label for the whole vessel. In axial slices
the ascending and descending aorta are two separate components below the arch; the ascending
one is the more anterior. :func:`find_root` takes the ascending components from the lowest
slice (the valve plane: sinuses and annulus) upwards while the two are apart (below the arch),
which gives the root region (sinuses, sino-tubular junction, ascending aorta), its centre line,
the annulus point and the root axis. It also gives the centre line of the whole aorta (for the
catheters, which come down the descending aorta, over the arch and into the root), the rest of
the aorta (arch and descending: contrast but not ground truth) and a left-ventricle region
(reflux of contrast through a leaking valve).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from tavidata.phantom.ct.volume import CTVolume

logger = logging.getLogger(__name__)

#: An ascending component is at least this far (mm) anterior of the descending one.
MIN_SEPARATION_MM = 25.0


class RootNotFoundError(ValueError):
    """The label map has no ascending aorta that can serve as the root region."""


@dataclass(frozen=True)
class RootRegion:
    """The root region and the aorta's centre lines, in the CT's voxels and world mm.

    Attributes:
        mask: bool [z, y, x] ascending aorta from the valve plane up to the arch.
        rest: bool [z, y, x] the rest of the aorta (arch, descending).
        ventricle: bool [z, y, x] the part of the heart below the annulus towards the apex.
        centreline_mm: (K, 3) ascending centre line, from the annulus upwards (RAS mm).
        radius_mm: (K,) equivalent radius of the lumen along it.
        annulus_mm: (3,) centre of the lowest slice (valve plane).
        axis: (3,) unit root axis (upwards along the lowest 40 mm).
        catheter_mm: (M, 3) route of a catheter: down the descending aorta from the bottom of
            the CT, over the arch, down the ascending aorta to the annulus.
        length_mm: length of the ascending centre line.
    """

    mask: np.ndarray
    rest: np.ndarray
    ventricle: np.ndarray
    centreline_mm: np.ndarray
    radius_mm: np.ndarray
    annulus_mm: np.ndarray
    axis: np.ndarray
    catheter_mm: np.ndarray
    length_mm: float

    def bbox_index(self, mask: np.ndarray, margin: int = 3) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(lo, hi) x, y, z voxel index box of ``mask`` (hi exclusive), with a margin."""
        zz, yy, xx = np.nonzero(mask)
        lo = (int(xx.min()) - margin, int(yy.min()) - margin, int(zz.min()) - margin)
        hi = (int(xx.max()) + margin + 1, int(yy.max()) + margin + 1, int(zz.max()) + margin + 1)
        return lo, hi


def _components(slice_mask: np.ndarray, min_voxels: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(component mask, centroid (y, x)) of every component of at least ``min_voxels``."""
    lab, n = ndi.label(slice_mask)
    out = []
    for i in range(1, n + 1):
        comp = lab == i
        if int(comp.sum()) >= min_voxels:
            out.append((comp, np.asarray(ndi.center_of_mass(comp))))
    return out


def find_root(ct: CTVolume, *, max_length_mm: float = 200.0) -> RootRegion:
    """Find the root region and the aorta's centre lines in ``ct``.

    Args:
        ct: The CT with its labels.
        max_length_mm: Keep the ascending aorta up to this far above the valve plane.

    Raises:
        RootNotFoundError: no aorta label, or no slice with a separate ascending component.
    """
    (aorta_id,) = ct.label_ids("aorta")
    (heart_id,) = ct.label_ids("heart")
    aorta = ct.labels == aorta_id
    if not aorta.any():
        raise RootNotFoundError("the CT's label map has no aorta voxels")
    vox = ct.voxel_mm
    min_vox = max(4, int(20.0 / vox ** 2))
    sep = MIN_SEPARATION_MM / vox
    nz = aorta.shape[0]
    asc = np.zeros_like(aorta)
    desc_pts, asc_pts, asc_area = [], [], []
    started = False
    for z in range(nz):
        comps = _components(aorta[z], min_vox)
        if not comps:
            if started:
                break
            continue
        comps.sort(key=lambda c: c[1][0])  # by y (posterior first)
        if len(comps) >= 2 and comps[-1][1][0] - comps[0][1][0] > sep:
            started = True
            comp, cen = comps[-1]
            asc[z] = comp
            asc_pts.append((z, cen))
            asc_area.append(float(comp.sum()) * vox ** 2)
            desc_pts.append((z, comps[0][1]))
        elif started:
            break  # the arch: the two have joined
        else:
            desc_pts.append((z, comps[0][1]))
    if not asc_pts:
        raise RootNotFoundError("no axial slice shows an ascending aorta separate from the descending one")
    z_top = asc_pts[-1][0]

    def world(z: int, cen: np.ndarray) -> np.ndarray:
        return ct.index_to_world(np.array([cen[1], cen[0], z], np.float64))

    centre = np.array([world(z, c) for z, c in asc_pts])
    seg = np.linalg.norm(np.diff(centre, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    keep = arc <= max_length_mm
    for (z, _), k in zip(asc_pts, keep):
        if not k:
            asc[z] = False
    centre, arc = centre[keep], arc[keep]
    radius = np.sqrt(np.asarray(asc_area)[keep] / np.pi)
    low = arc <= min(40.0, arc[-1])
    if low.sum() >= 3:
        _, _, vt = np.linalg.svd(centre[low] - centre[low].mean(0))
        axis = vt[0] * np.sign(vt[0][2] or 1.0)
    else:
        axis = np.array([0.0, 0.0, 1.0])
    # arch: aorta slices above the ascending part; its centre line runs over the top
    arch_pts = []
    for z in range(z_top + 1, nz):
        if aorta[z].any():
            zz_y, zz_x = np.nonzero(aorta[z])
            arch_pts.append(ct.index_to_world(np.array([zz_x.mean(), zz_y.mean(), z], np.float64)))
    desc = np.array([world(z, c) for z, c in desc_pts])[::-1] if desc_pts else np.zeros((0, 3))
    route = [desc[::-1]]  # from the bottom of the CT upwards
    if arch_pts:
        route.append(np.array(arch_pts[-1:]))  # the arch's top
    route.append(centre[::-1])  # down the ascending aorta to the annulus
    catheter = np.concatenate([r for r in route if len(r)])
    rest = aorta & ~asc
    # left ventricle: heart voxels in a ball below the annulus, towards the apex (left, anterior, down)
    heart = ct.labels == heart_id
    apex_dir = np.array([-0.55, 0.45, -0.7])
    apex_dir /= np.linalg.norm(apex_dir)
    lv_centre = centre[0] + 40.0 * apex_dir
    zz, yy, xx = np.indices(heart.shape, sparse=True)
    dist2 = ((xx * vox + ct.origin_mm[0] - lv_centre[0]) ** 2 + (yy * vox + ct.origin_mm[1] - lv_centre[1]) ** 2
             + (zz * vox + ct.origin_mm[2] - lv_centre[2]) ** 2)
    ventricle = heart & (dist2 < 38.0 ** 2) & ~asc
    logger.info("root region: %d voxels, ascending %.0f mm, annulus %s, axis %s", int(asc.sum()), arc[-1],
                np.round(centre[0], 1), np.round(axis, 2))
    return RootRegion(mask=asc, rest=rest, ventricle=ventricle, centreline_mm=centre, radius_mm=radius,
                      annulus_mm=centre[0], axis=axis, catheter_mm=catheter, length_mm=float(arc[-1]))


__all__ = ["RootNotFoundError", "RootRegion", "find_root"]
