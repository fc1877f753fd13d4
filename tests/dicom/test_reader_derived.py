"""The reader on derived inputs no real sample covers: every transfer syntax for multi-frame
cines, 8 and 12 bits, implicit VR and big endian, MONOCHROME1, overlay bits, signed data,
colour JPEG, corrupt and missing frames, fragmented frames, preamble variants."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom import uid

from segmentation.dicom.decode import DECODER_PREFERENCE
from segmentation.dicom.reader import FrameStatus, open_run
from segmentation.errors import DicomDecodeError, NonImageObjectError, UnsupportedObjectError
from tests.dicom import derive

LOSSLESS = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.RLELossless,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEG2000Lossless,
]


def write(tmp_path, ds, ts) -> pydicom.FileDataset:
    path = tmp_path / f"{uid.UID(ts).keyword or 'x'}-{ds.SOPInstanceUID}.dcm"
    if uid.UID(ts).is_encapsulated:
        derive.compressed(ds, ts, tmp_path).save_as(path, enforce_file_format=True)
    else:
        derive.save(ds, path, transfer_syntax=ts)
    return path


def read_all(run) -> np.ndarray:
    return np.stack([frame for _, frame in run.iter_frames()])


@pytest.mark.parametrize("bits", [8, 12])
@pytest.mark.parametrize("ts", LOSSLESS, ids=lambda t: uid.UID(t).keyword)
def test_lossless_multiframe_round_trips_exactly(tmp_path, ts, bits):
    frames = derive.cine(4, 40, 56, bits=bits)
    path = write(tmp_path, derive.xa_dataset(frames, bits_stored=bits), ts)
    run = open_run(path)
    assert run.transfer_syntax == ts and run.number_of_frames == 4
    got = read_all(run)
    assert got.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert np.array_equal(got, frames)
    if uid.UID(ts).is_encapsulated and ts in DECODER_PREFERENCE:
        used = set(run.codec_usage)
        available = [p for p in DECODER_PREFERENCE[ts] if p in run._codec.plugins]
        assert used == {available[0]}, "the fastest available decoder is used first"


@pytest.mark.parametrize("bits", [8, 12])
@pytest.mark.parametrize("ts", [uid.JPEGLSNearLossless, uid.JPEG2000], ids=lambda t: uid.UID(t).keyword)
def test_lossy_multiframe_matches_pydicom_decoding(tmp_path, ts, bits):
    frames = derive.cine(3, 40, 56, bits=bits)
    path = write(tmp_path, derive.xa_dataset(frames, bits_stored=bits), ts)
    got = read_all(open_run(path))
    reference = pydicom.dcmread(path).pixel_array
    assert np.abs(got.astype(int) - reference.astype(int)).max() <= 1
    assert np.corrcoef(got.ravel(), frames.ravel())[0, 1] > 0.95


def test_colour_jpeg_baseline_becomes_luma(tmp_path):
    rgb = derive.colour_cine(3, 48, 64)
    path = write(tmp_path, derive.xa_dataset(rgb), uid.JPEGBaseline8Bit)
    assert pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation == "YBR_FULL_422"
    got = read_all(open_run(path))
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert got.shape == (3, 48, 64) and got.dtype == np.uint8
    assert np.abs(got - luma).mean() < 3.0


def test_native_rgb_becomes_luma(tmp_path):
    rgb = derive.colour_cine(2, 16, 24)
    got = read_all(open_run(write(tmp_path, derive.xa_dataset(rgb), uid.ExplicitVRLittleEndian)))
    luma = np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    assert np.array_equal(got, luma.astype(np.uint8))


def test_monochrome1_is_inverted_to_monochrome2(tmp_path):
    frames = derive.cine(2, 16, 24, bits=12)
    ds = derive.xa_dataset(frames, bits_stored=12, photometric="MONOCHROME1")
    got = read_all(open_run(write(tmp_path, ds, uid.ExplicitVRLittleEndian)))
    assert np.array_equal(got, 4095 - frames)


def test_overlay_bits_above_bits_stored_are_masked(tmp_path):
    frames = derive.cine(3, 16, 24, bits=12)
    dirty = frames | (np.random.default_rng(1).integers(0, 16, frames.shape, dtype=np.uint16) << 12)
    ds = derive.xa_dataset(dirty.astype(np.uint16), bits_stored=12)
    path = write(tmp_path, ds, uid.ExplicitVRLittleEndian)
    assert np.frombuffer(pydicom.dcmread(path).PixelData, "<u2").max() > 4095  # bits really set
    assert np.array_equal(read_all(open_run(path)), frames)


def test_high_bit_above_bits_stored_is_honoured(tmp_path):
    frames = derive.cine(2, 16, 24, bits=12)
    ds = derive.xa_dataset((frames << 4).astype(np.uint16), bits_stored=12)
    ds.HighBit = 15  # values stored in the top 12 bits
    got = read_all(open_run(write(tmp_path, ds, uid.ExplicitVRLittleEndian)))
    assert np.array_equal(got, frames)


def test_signed_data_becomes_offset_binary(tmp_path):
    signed = np.array([[[-2048, -1, 0, 2047]]], dtype=np.int16)
    ds = derive.xa_dataset(signed.view(np.uint16), bits_stored=12)
    ds.PixelRepresentation = 1
    got = open_run(write(tmp_path, ds, uid.ExplicitVRLittleEndian)).read_frame(0)
    assert got.tolist() == [[0, 2047, 2048, 4095]]


def test_missing_number_of_frames_means_one_frame(tmp_path):
    frames = derive.cine(1, 16, 24)
    ds = derive.xa_dataset(frames, sop_class=derive.XA_IMAGE, with_number_of_frames=False)
    run = open_run(write(tmp_path, ds, uid.ExplicitVRLittleEndian))
    assert run.number_of_frames == 1
    assert np.array_equal(run.read_frame(0), frames[0])


def test_corrupt_frame_is_reported_and_the_rest_processed(tmp_path):
    frames = derive.cine(5, 32, 40)
    encoded = derive.compressed(derive.xa_dataset(frames), uid.JPEGLSLossless, tmp_path)
    path = tmp_path / "corrupt.dcm"
    derive.corrupt_frame(encoded, 2).save_as(path, enforce_file_format=True)
    run = open_run(path)
    got = dict(run.iter_frames())
    assert sorted(got) == [0, 1, 3, 4]
    assert all(np.array_equal(got[i], frames[i]) for i in got)
    assert list(run.failures) == [2] and "no decoder could decode" in run.failures[2]
    assert run.frame_status[2] is FrameStatus.FAILED and run.decoded_frames == 4
    with pytest.raises(DicomDecodeError, match="frame 2"):
        run.read_frame(2)
    assert np.array_equal(run.read_frame(3), frames[3])


def test_truncated_native_data_fails_only_the_missing_frames(tmp_path):
    frames = derive.cine(4, 16, 24)
    path = write(tmp_path, derive.xa_dataset(frames), uid.ExplicitVRLittleEndian)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 16 * 24 - 100])  # last frame and a bit of the third
    run = open_run(path)
    got = dict(run.iter_frames())
    assert sorted(got) == [0, 1]
    assert sorted(run.failures) == [2, 3]


@pytest.mark.parametrize("ts", [uid.JPEG2000Lossless, uid.JPEGLSLossless, uid.JPEGLossless],
                         ids=lambda t: uid.UID(t).keyword)
def test_multi_fragment_frames_without_offset_table(tmp_path, ts):
    frames = derive.cine(3, 32, 40, bits=12)
    encoded = derive.compressed(derive.xa_dataset(frames, bits_stored=12), ts, tmp_path)
    path = tmp_path / "fragments.dcm"
    derive.refragment(encoded, fragments_per_frame=3).save_as(path, enforce_file_format=True)
    run = open_run(path)
    assert np.array_equal(read_all(run), frames)
    assert np.array_equal(run.read_frame(2), frames[2])


def test_preamble_variants(tmp_path):
    frames = derive.cine(2, 16, 24)
    ds = derive.xa_dataset(frames)
    odd = tmp_path / "preamble.dcm"
    ds.preamble = b"\x7f" * 128  # non-zero preamble (seen on real files)
    ds.save_as(odd, enforce_file_format=True)
    assert np.array_equal(read_all(open_run(odd)), frames)
    bare = tmp_path / "bare.dcm"
    plain = derive.xa_dataset(frames)
    del plain.file_meta
    plain.save_as(bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    with pytest.raises(DicomDecodeError, match="force=True"):
        open_run(bare)
    assert np.array_equal(read_all(open_run(bare, force=True)), frames)


def test_dataset_input_reads_encapsulated_frames(tmp_path):
    frames = derive.cine(3, 16, 24)
    encoded = derive.compressed(derive.xa_dataset(frames), uid.RLELossless, tmp_path)
    run = open_run(encoded)
    assert run.source is None and np.array_equal(read_all(run), frames)


def test_enhanced_xa_frames_decode(tmp_path):
    frames = derive.cine(3, 16, 24, bits=10)
    ds = derive.enhanced_xa(frames, object_spacing=[(0.2, 0.2)] * 3)
    ds.BitsStored, ds.HighBit = 10, 9
    run = open_run(write(tmp_path, ds, uid.ExplicitVRLittleEndian))
    assert run.sop_class_uid == derive.ENHANCED_XA_IMAGE and run.bits_stored == 10
    assert np.array_equal(read_all(run), frames)


def test_refusals_name_the_object(tmp_path):
    frames = derive.cine(1, 8, 8)
    other = derive.xa_dataset(frames, sop_class="1.2.840.10008.5.1.4.1.1.7", modality="OT")
    with pytest.raises(UnsupportedObjectError, match="Modality OT"):
        open_run(write(tmp_path, other, uid.ExplicitVRLittleEndian))
    report = derive.xa_dataset(frames, sop_class="1.2.840.10008.5.1.4.1.1.88.67", modality="SR")
    del report.PixelData
    with pytest.raises(NonImageObjectError, match="X-Ray Radiation Dose SR"):
        open_run(report)
    no_pixels = derive.xa_dataset(frames)
    del no_pixels.PixelData
    path = tmp_path / "nopixels.dcm"
    no_pixels.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomDecodeError, match="no Pixel Data"):
        open_run(path)
    with pytest.raises(DicomDecodeError, match="no such file"):
        open_run(tmp_path / "missing.dcm")
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(DicomDecodeError):
        open_run(garbage)


def test_derived_inputs_are_valid_objects(tmp_path):
    """The synthetic sources are real IODs, so the writers are tested against valid inputs."""
    from tests.peers import run_dciodvfy

    cases = {
        "xa": derive.xa_dataset(derive.cine(2, 16, 16)),
        "xa-one-frame": derive.xa_dataset(derive.cine(1, 16, 16)),
        "xrf": derive.xa_dataset(derive.cine(1, 16, 16), sop_class=derive.XRF_IMAGE, modality="RF",
                                 with_number_of_frames=False),
        "sc": derive.xa_dataset(derive.cine(1, 16, 16), sop_class="1.2.840.10008.5.1.4.1.1.7",
                                ConversionType="WSD", with_number_of_frames=False),
        "enhanced-xa": derive.enhanced_xa(derive.cine(2, 16, 16), object_spacing=[(0.2, 0.2)] * 2),
    }
    # dciodvfy 1C condition on XRayTubeCurrentInmA/ExposureTimeInms/ExposureInmAs in the XA/XRF
    # Acquisition module contradicts itself (flagged when present and when absent).
    contradictory = ("XRayTubeCurrentInmA", "ExposureTimeInms", "ExposureInmAs")
    for name, ds in cases.items():
        errors, warnings, output = run_dciodvfy(derive.save(ds, tmp_path / f"{name}.dcm"))
        errors = [e for e in errors if not any(c in e for c in contradictory)]
        assert errors == [] and warnings == [], f"{name}:\n{output}"


@pytest.mark.parametrize("damage", ["unknown-vr", "odd-length"])
def test_unparseable_pixel_module_values_are_decode_errors(tmp_path, damage):
    """Regression (bench.reliability): a bit flip turning High Bit's VR into an unknown one made the
    lazily converted value raise NotImplementedError, and a US value of 3 bytes BytesLengthException,
    out of open_run: the node failed the run as an "unexpected" error instead of a decode error."""
    path = write(tmp_path, derive.xa_dataset(derive.cine(2, 16, 16)), uid.ExplicitVRLittleEndian)
    data = bytearray(path.read_bytes())
    at = data.index(b"\x28\x00\x02\x01US\x02\x00")  # (0028,0102) High Bit
    if damage == "unknown-vr":
        data[at + 4:at + 6] = b"\x55\xd3"
    else:
        data[at + 6:at + 10] = b"\x03\x00" + data[at + 8:at + 10] + b"\x00"
    path.write_bytes(bytes(data))
    with pytest.raises(DicomDecodeError, match=f"{path.name}: cannot read the DICOM header: .*0028,0102"):
        open_run(path)  # every header value is converted when the run is opened


def test_a_flipped_vr_outside_the_pixel_module_is_a_decode_error(tmp_path):
    """Regression (bench.reliability): a bit flip turning PatientName's VR into ``PJ`` passed the
    reader (values are converted lazily) and raised NotImplementedError later, while the outputs
    copied the patient module: the node failed the run as "unexpected". Every header value is
    now converted when the run is opened, so it is a decode error that names the tag."""
    path = write(tmp_path, derive.xa_dataset(derive.cine(2, 16, 16), PatientName="Doe^Jane"),
                 uid.ExplicitVRLittleEndian)
    data = bytearray(path.read_bytes())
    at = data.index(b"\x10\x00\x10\x00PN")  # (0010,0010) Patient's Name
    data[at + 4:at + 6] = b"PJ"
    path.write_bytes(bytes(data))
    with pytest.raises(DicomDecodeError, match=r"cannot read the DICOM header: .*'PJ' in tag \(0010,0010\)"):
        open_run(path)
