"""The Supervisely importer: bitmap and polygon objects rasterised exactly."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from tavidata.errors import DatasetError
from tavidata.format import Dataset
from tests.dataset.synthetic import box_mask, frame
from training.importers import SuperviselyImportConfig, import_supervisely
from training.importers.supervisely import decode_bitmap, rasterize_polygon


def encode_bitmap(patch: np.ndarray) -> str:
    """Supervisely's encoding: RGBA PNG whose alpha is the mask, zlib-compressed, base64."""
    rgba = np.zeros(patch.shape + (4,), np.uint8)
    rgba[patch] = (255, 255, 255, 255)
    ok, png = cv2.imencode(".png", rgba)
    assert ok
    return base64.b64encode(zlib.compress(png.tobytes())).decode("ascii")


def _obj(cls: str, kind: str, **geometry) -> dict:
    return {"classTitle": cls, "geometryType": kind, "tags": [], "description": "", **geometry}


def _project(tmp_path: Path, annotations: dict[str, list[dict]], *, dataset: str = "ds1",
             classes=("aortic_root", "catheter")) -> Path:
    src = tmp_path / "sly"
    (src / dataset / "img").mkdir(parents=True, exist_ok=True)
    (src / dataset / "ann").mkdir(parents=True, exist_ok=True)
    (src / "meta.json").write_text(json.dumps(
        {"classes": [{"title": c, "shape": "bitmap", "color": "#FF0000"} for c in classes], "tags": []}))
    for i, (name, objects) in enumerate(annotations.items()):
        cv2.imwrite(str(src / dataset / "img" / name), frame(i))
        ann = {"description": "", "tags": [], "size": {"height": 32, "width": 32}, "objects": objects}
        (src / dataset / "ann" / f"{name}.json").write_text(json.dumps(ann))
    return src


def test_bitmap_polygon_and_empty_frames(tmp_path):
    patch = box_mask(0, 4, 0, 6, size=(4, 6))
    patch[1, 2] = False
    poly_ext = [[2, 3], [10, 3], [10, 12], [2, 12]]  # x = column, y = row
    poly_hole = [[5, 6], [7, 6], [7, 8], [5, 8]]
    src = _project(tmp_path, {
        "P001_0000.png": [_obj("Aortic Root", "bitmap", bitmap={"data": encode_bitmap(patch), "origin": [20, 7]}),
                          _obj("catheter", "polygon",
                               points={"exterior": [[0, 0], [31, 0], [31, 31]], "interior": []})],
        "P001_0001.png": [_obj("aortic_root", "polygon", points={"exterior": poly_ext, "interior": [poly_hole]})],
        "P002_0000.png": [],
    })
    result = import_supervisely(src, tmp_path / "out")
    assert (result.frames, result.patients) == (3, 2)
    assert result.notes and "1 frames without" in result.notes[0]
    ds = Dataset.load(tmp_path / "out")
    masks = {(r.patient_id, r.frame_index): Dataset.read_mask(r) for r in ds}
    expected_bitmap = np.zeros((32, 32), bool)
    expected_bitmap[7:11, 20:26] = patch  # origin [x=20, y=7]
    np.testing.assert_array_equal(masks[("P001", 0)], expected_bitmap)
    expected_poly = box_mask(3, 13, 2, 11)  # outline included: rows 3..12, cols 2..10
    expected_poly[6:9, 5:8] = False  # hole with its outline removed
    np.testing.assert_array_equal(masks[("P001", 1)], expected_poly)
    assert not masks[("P002", 0)].any()
    images = {(r.patient_id, r.frame_index): Dataset.read_image(r) for r in ds}
    np.testing.assert_array_equal(images[("P001", 1)], frame(1))


def test_bitmap_is_clipped_at_the_border():
    mask = np.zeros((32, 32), bool)
    from training.importers.supervisely import paste_bitmap
    paste_bitmap(mask, np.ones((5, 5), bool), [29, -2], "test")
    np.testing.assert_array_equal(mask, box_mask(0, 3, 29, 32))


def test_decode_bitmap_round_trip_and_garbage():
    patch = box_mask(1, 3, 0, 2, size=(4, 4))
    np.testing.assert_array_equal(decode_bitmap(encode_bitmap(patch)), patch)
    with pytest.raises(DatasetError, match="zlib"):
        decode_bitmap(base64.b64encode(b"not zlib").decode())


def test_polygon_needs_three_points():
    with pytest.raises(DatasetError, match="at least 3"):
        rasterize_polygon([[0, 0], [3, 3]], [], (8, 8))


def test_project_without_the_class_lists_its_classes(tmp_path):
    src = _project(tmp_path, {"P001_0000.png": []}, classes=("vessel", "wire"))
    with pytest.raises(DatasetError, match=r"classes in the project: \['vessel', 'wire'\]"):
        import_supervisely(src, tmp_path / "out")
    cfg = SuperviselyImportConfig(class_names=("vessel",))
    assert import_supervisely(src, tmp_path / "out", cfg).frames == 1


def test_unsupported_geometry_and_size_mismatch_name_the_annotation(tmp_path):
    src = _project(tmp_path, {"P001_0000.png": [_obj("aorta", "rectangle", points={"exterior": [[0, 0], [4, 4]]})]},
                   classes=("aorta",))
    with pytest.raises(DatasetError, match=r"P001_0000\.png\.json.*'rectangle'.*not supported"):
        import_supervisely(src, tmp_path / "out")
    ann = src / "ds1" / "ann" / "P001_0000.png.json"
    ann.write_text(json.dumps({"size": {"height": 30, "width": 32}, "objects": []}))
    with pytest.raises(DatasetError, match=r"annotation size 32x30 differs"):
        import_supervisely(src, tmp_path / "out")


def test_missing_annotation_error_or_skip_and_patient_from_dataset(tmp_path):
    src = _project(tmp_path, {"a.png": [], "b.png": []}, dataset="patient7", classes=("aorta",))
    (src / "patient7" / "ann" / "b.png.json").unlink()
    with pytest.raises(DatasetError, match=r"b\.png: no annotation"):
        import_supervisely(src, tmp_path / "out", SuperviselyImportConfig(patient_from="dataset"))
    cfg = SuperviselyImportConfig(patient_from="dataset", skip_unmatched=True)
    result = import_supervisely(src, tmp_path / "out", cfg)
    assert result.skipped == (src / "patient7" / "img" / "b.png",)
    assert Dataset.load(tmp_path / "out").patients == ["patient7"]
