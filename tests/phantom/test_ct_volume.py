"""v2 phantom CT data: fetched files checked by sha256, named error when missing, root region found."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tavidata.errors import DatasetError
from tavidata.phantom import PhantomConfig, generate_run
from tavidata.phantom.ct.root import find_root
from tavidata.phantom.ct.volume import (
    CT_FILES,
    FETCH_COMMAND,
    CTDataMissingError,
    check_ct_dir,
    default_ct_dir,
    load_ct,
)


def test_missing_ct_names_the_file_and_the_set_up_command(tmp_path) -> None:
    with pytest.raises(CTDataMissingError) as info:
        check_ct_dir(tmp_path)
    assert isinstance(info.value, DatasetError)
    assert "cxr.nii.gz" in str(info.value) and FETCH_COMMAND in str(info.value)
    # the generator raises the same error, before drawing anything
    config = PhantomConfig(generator="ct", size=64, ct_dir=str(tmp_path))
    with pytest.raises(CTDataMissingError, match="fetch_ct.sh"):
        generate_run(config, 1, 0, n_frames=1)


def test_altered_ct_file_is_refused(tmp_path) -> None:
    src = default_ct_dir()
    for name in CT_FILES:
        shutil.copy(src / name, tmp_path / name)
    with (tmp_path / "structures.csv").open("a", encoding="utf-8") as fh:
        fh.write("extra,1,line,999\n")
    with pytest.raises(CTDataMissingError, match="sha256"):
        check_ct_dir(tmp_path)


def test_fetched_ct_loads_resampled_and_its_root_is_found() -> None:
    # setup.sh fetches the CT: it must be here (no skip), the test fails loudly otherwise
    ct = load_ct(str(default_ct_dir()), 1.5)
    nz, ny, nx = ct.shape_zyx
    assert ct.voxel_mm == 1.5 and (nx, ny) == (240, 240) and 215 <= nz <= 225
    assert ct.hu.dtype == np.float32 and ct.labels.dtype == np.uint8
    assert ct.structures["aorta"] == 52 and ct.structures["heart"] == 51
    assert float(ct.hu.min()) >= -2048 and float(ct.hu.max()) > 1000  # -2048: outside the scan circle
    root = find_root(ct)
    assert 60.0 < root.length_mm < 160.0
    assert root.mask.sum() > 5000 and not (root.mask & root.rest).any()
    assert 14.0 < float(np.median(root.radius_mm)) < 22.0  # ascending aorta, 28-44 mm wide
    assert root.axis[2] > 0.8  # the root axis points upwards
    heart_z = np.nonzero((ct.labels == 51).any(axis=(1, 2)))[0] * ct.voxel_mm + ct.origin_mm[2]
    assert heart_z.min() <= root.annulus_mm[2] <= heart_z.max()  # the valve plane lies in the heart
    assert np.linalg.norm(root.catheter_mm[-1] - root.annulus_mm) < 1e-6
