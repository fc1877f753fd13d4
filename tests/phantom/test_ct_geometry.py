"""v2 phantom geometry and projector on synthetic volumes: analytic widths, magnification, orientation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tavidata.phantom.ct.geometry import CArmGeometry, centred_isocentre
from tavidata.phantom.ct.projector import (
    VoxelGrid,
    crop,
    frustum_crop,
    project,
    warp_volume,
)
from tavidata.phantom.ct.run import MASK_CHORD_VOXELS

SID, SOD, PITCH = 1100.0, 750.0, 0.4


def ap(rows: int = 200, cols: int = 200, lao: float = 0.0, cranial: float = 0.0) -> CArmGeometry:
    return CArmGeometry(SID, SOD, lao, cranial, (0.0, 0.0, 0.0), rows, cols, PITCH)


def cylinder(radius: float, voxel: float = 1.0, half: float = 60.0) -> tuple[torch.Tensor, VoxelGrid]:
    """A binary label (like the CT's) of a cylinder of ``radius`` along z (the body axis), at the origin."""
    n = int(2 * half / voxel) + 1
    c = (np.arange(n) - (n - 1) / 2) * voxel
    _, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = torch.from_numpy((x ** 2 + y ** 2 <= radius ** 2).astype(np.float32))[None]
    return vol, VoxelGrid(np.array([c[0], c[0], c[0]]), voxel, (n, n, n))


def test_isocentre_magnification_and_spacing() -> None:
    g = ap()
    assert g.magnification == pytest.approx(SID / SOD)
    assert g.isocentre_spacing_mm == pytest.approx(PITCH * SOD / SID)
    px, mag = g.project(np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]]))
    assert px[0] == pytest.approx([99.5, 99.5])  # the isocentre is the image centre
    # 10 mm at the isocentre spans 10 * M / pitch pixels; RAS +x (patient's right) is the image's left
    assert px[0][0] - px[1][0] == pytest.approx(10.0 * SID / SOD / PITCH)
    assert mag[1] == pytest.approx(SID / SOD)


def test_frontal_view_orientation_and_lao() -> None:
    g = ap()
    d, u, r = g.basis()
    assert np.allclose(d, [0, 1, 0]) and np.allclose(u, [-1, 0, 0]) and np.allclose(r, [0, 0, -1])
    px, _ = g.project(np.array([[-20.0, 0, 0], [0, 0, 30.0]]))
    assert px[0][0] > 99.5  # patient's left on the image's right
    assert px[1][1] < 99.5  # head at the top
    g2 = ap(lao=30.0, cranial=15.0)
    d2, u2, r2 = g2.basis()
    assert np.allclose(np.stack([d2, u2, r2]) @ np.stack([d2, u2, r2]).T, np.eye(3), atol=1e-12)
    assert d2[0] < 0 and d2[2] > 0  # the detector moves to the patient's left and towards the head
    assert np.dot(g2.source_mm, d2) == pytest.approx(-SOD)


def test_centred_isocentre_puts_the_target_where_asked() -> None:
    target = np.array([12.0, -30.0, 40.0])
    iso = centred_isocentre(target, 25.0, -10.0, (-20.0, 15.0))
    g = CArmGeometry(SID, SOD, 25.0, -10.0, tuple(iso), 300, 300, PITCH)
    px, _ = g.project(target[None])
    step = g.isocentre_spacing_mm
    assert px[0][0] == pytest.approx(149.5 - 20.0 / step, abs=1e-6)
    assert px[0][1] == pytest.approx(149.5 + 15.0 / step, abs=1e-6)


@pytest.mark.parametrize(("radius", "voxel"), [(8.0, 1.0), (15.0, 1.5), (25.0, 1.0)])
def test_cylinder_mask_has_the_analytic_projected_width(radius: float, voxel: float) -> None:
    vol, grid = cylinder(radius, voxel)
    g = ap(rows=64, cols=400)
    row = project(vol, grid, g)[0][32]
    # tangent rays from the source: half-width on the detector SID * R / sqrt(SOD^2 - R^2)
    width_px = 2 * SID * radius / np.sqrt(SOD ** 2 - radius ** 2) / PITCH
    measured = float((row > MASK_CHORD_VOXELS * voxel).sum())
    # the label is voxelised: its edge is known to half a voxel on each side
    assert measured == pytest.approx(width_px, abs=voxel * SID / SOD / PITCH)
    assert float(row[:5].max()) == 0.0


def test_cylinder_line_integral_is_its_chord() -> None:
    radius = 20.0
    vol, grid = cylinder(radius)
    g = ap(rows=64, cols=400)
    row = project(vol, grid, g)[0][32]
    # the central ray crosses the full diameter (the row is a hair off the centre: 2 % slack)
    assert float(row[199:201].max()) == pytest.approx(2 * radius, rel=0.02)
    assert float(row[:5].max()) == 0.0


def test_cropping_does_not_change_the_projection() -> None:
    vol, grid = cylinder(15.0)
    g = ap(rows=48, cols=96, lao=20.0, cranial=10.0)
    full = project(vol, grid, g)
    sub, sg = frustum_crop(vol, grid, g)
    assert sub.shape[1] * sub.shape[2] * sub.shape[3] < vol.shape[1] * vol.shape[2] * vol.shape[3]
    assert np.allclose(project(sub, sg, g), full, atol=1e-3)
    box, bg = crop(vol, grid, (30, 30, 30), (91, 91, 91))
    assert box.shape[1:] == (61, 61, 61) and np.allclose(bg.origin_mm, grid.origin_mm + 30.0)


def test_displacement_moves_the_projection_the_right_way() -> None:
    vol, grid = cylinder(10.0)
    g = ap(rows=32, cols=300)
    base = project(vol, grid, g)[0][16]
    disp = torch.zeros((3, 6, 6, 6), dtype=torch.float32)
    disp[0] = 10.0  # read the volume 10 mm to the patient's right: the content moves 10 mm left
    moved = project(vol, grid, g, displacement=disp)[0][16]
    def centre(profile: np.ndarray) -> float:
        return float((profile * np.arange(profile.size)).sum() / profile.sum())

    shift = centre(moved) - centre(base)
    assert shift == pytest.approx(10.0 * SID / SOD / PITCH, rel=0.03)
    assert moved.sum() == pytest.approx(base.sum(), rel=0.01)
    # deforming the volume once gives the same projection
    warped = project(warp_volume(vol, grid, disp), grid, g)[0][16]
    assert np.allclose(warped, moved, atol=0.05 * float(moved.max()))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="sod_mm"):
        CArmGeometry(700.0, 800.0, 0, 0, (0, 0, 0), 10, 10, 0.4)
    vol, grid = cylinder(5.0, half=10.0)
    with pytest.raises(ValueError, match="does not match"):
        project(vol[:, :-1], grid, ap())
