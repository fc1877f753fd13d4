"""Every writer's output accepted by a real Orthanc over C-STORE and visible in the source's
study; the SEG fetched back from Orthanc still reads back exactly. One Orthanc per module."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pynetdicom import AE

from segmentation.dicom.overlay import build_burned_in_capture, build_presentation_state
from segmentation.dicom.reader import open_run
from segmentation.dicom.seg import build_segmentation
from segmentation.dicom.sr import build_measurement_report, measure_frames
from tests.dicom import derive
from tests.peers import orthanc_server

ALGORITHM = {"algorithm_name": "taviseg-test", "algorithm_version": "1.2.3"}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def c_store(server, datasets) -> list[int]:
    """Send ``datasets`` in one association; return each C-STORE status."""
    ae = AE(ae_title="TAVISEG")
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    for sop_class, ts in sorted(contexts):
        ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet)
    assert assoc.is_established, "Orthanc refused the association"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def outputs_for(run, masks, numbers):
    header = run.dataset
    seg = build_segmentation(header, masks, frame_numbers=numbers, series_number=901,
                             series_description="Aortic root (AI)", **ALGORITHM)
    sr = build_measurement_report(header, seg, measure_frames(masks, numbers, [0.9] * len(numbers)),
                                  calibration=run.calibration, series_number=902,
                                  series_description="Aortic root area", **ALGORITHM)
    gsps = build_presentation_state(header, masks, frame_numbers=numbers, series_number=903,
                                    series_description="Aortic root outline", **ALGORITHM)
    sc = build_burned_in_capture(header, (run.read_frame(n - 1) for n in numbers), masks,
                                 frame_numbers=numbers, bits_stored=run.bits_stored,
                                 series_number=904, series_description="Aortic root burned in",
                                 **ALGORITHM)
    return seg, sr, gsps, sc


def check_study(server, source, outputs):
    uids = {str(ds.SOPInstanceUID) for ds in [source, *outputs]}
    found = server.wait_for_instances(len(uids), timeout=30, StudyInstanceUID=source.StudyInstanceUID)
    stored = {server.instance_tags(i)["SOPInstanceUID"]: i for i in found}
    assert uids <= set(stored)
    studies = {server.get_json(f"/instances/{stored[u]}/study")["ID"] for u in uids}
    assert len(studies) == 1, "every output lands in the source's study"
    series = server.get_json(f"/studies/{studies.pop()}/series")
    modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series
                        if any(i in stored.values() for i in s["Instances"]))
    assert modalities == sorted([source.Modality, "SEG", "SR", "PR", "OT"])
    return stored


def test_synthetic_cine_and_outputs_stored_in_one_study(orthanc, tmp_path):
    frames = derive.cine(4, 64, 80, bits=12)
    source = derive.compressed(derive.xa_dataset(frames, bits_stored=12),
                               pydicom.uid.JPEGLSLossless, tmp_path)
    path = tmp_path / "source.dcm"
    source.save_as(path, enforce_file_format=True)
    run = open_run(path)
    masks = derive.disc_masks(4, 64, 80)
    outputs = outputs_for(run, masks, [1, 2, 3, 4])
    assert c_store(orthanc, [source, *outputs]) == [0x0000] * 5
    stored = check_study(orthanc, source, outputs)
    seg_bytes = orthanc.get_bytes(f"/instances/{stored[str(outputs[0].SOPInstanceUID)]}/file")
    back = hd.seg.segread(io.BytesIO(seg_bytes))
    pixels = back.get_pixels_by_source_frame(source.SOPInstanceUID, [1, 2, 3, 4],
                                             ignore_spatial_locations=True)
    assert np.array_equal(pixels[..., 0].astype(bool), masks)


@pytest.mark.samples
def test_real_cine_and_outputs_stored_in_one_study(orthanc, samples_dir):
    path = samples_dir / "rubo_0002_XA_jpegbaseline_96f.dcm"
    run = open_run(path)
    numbers = [1, 2, 3]
    yy, xx = np.mgrid[: run.rows, : run.columns]
    masks = np.stack([(yy - 200) ** 2 + (xx - 250) ** 2 < 70**2] * 3)
    outputs = outputs_for(run, masks, numbers)
    source = pydicom.dcmread(path)
    assert c_store(orthanc, [source, *outputs]) == [0x0000] * 5
    check_study(orthanc, source, outputs)
