"""The node's SCP in-process with a real pynetdicom/dcmtk SCU: association policy, statuses,
TLS, concurrency, limits. (End-to-end tests with a separate node process: test_node_e2e.py.)"""

from __future__ import annotations

import copy
import ssl
import subprocess
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.config import load_node_config
from dicom_node.node import Node
from dicom_node.scp import EarlyWriteback
from dicom_node.sop import SharedUidContext, StoreStatus
from testkit.fakes import ThresholdProcessor
from testkit.node import (
    XA,
    associate,
    base_config,
    echo,
    garbage_file,
    journal_counts,
    make_xa,
    send,
    send_raw,
    wait_until,
    write_config,
)
from tests.conftest import require_tool
from tests.node.certs import make_pki

RDSR = "1.2.840.10008.5.1.4.1.1.88.67"
EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture()
def start_node(tmp_path):
    nodes: list[Node] = []

    def start(**extra) -> Node:
        state = tmp_path / f"state{len(nodes)}"
        path = write_config(tmp_path / f"node{len(nodes)}.yaml", base_config(state, **extra))
        cfg = load_node_config(path)
        node = Node(cfg, processors=[ThresholdProcessor(cfg.processing)])
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def _processed(node: Node, n: int) -> None:
    wait_until(lambda: journal_counts(node.cfg.state_dir)["done"] >= n, 30, f"{n} instance(s) processed")


def test_store_echo_process_and_metrics(start_node):
    node = start_node()
    port = node.scp.port
    assert echo(port) == 0x0000
    ds = make_xa(frames=2)
    assert send(port, [ds]) == [0x0000]
    _processed(node, 1)
    out = node.cfg.results_dir / str(ds.StudyInstanceUID)
    files = wait_until(lambda: list(out.glob("*.dcm")), 10, "output delivered to the folder")
    assert pydicom.dcmread(files[0]).StudyInstanceUID == ds.StudyInstanceUID
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_server.port}/metrics", timeout=10) as rsp:
        text = rsp.read().decode()
    assert 'taviseg_node_received_total{kind="image"} 1' in text
    assert 'taviseg_node_processed_total{result="done"} 1' in text
    assert "taviseg_node_processing_seconds_count 1" in text


@pytest.mark.parametrize("fast", [True, False])
def test_pdu_reader_follows_the_configuration(start_node, monkeypatch, fast):
    from dicom_node import pdu_reader

    calls = []
    original = pdu_reader._read_pdu_data
    monkeypatch.setattr(pdu_reader, "_read_pdu_data", lambda dul, *args: (calls.append(1), original(dul, *args))[1])
    counted = []
    count = EarlyWriteback.count
    monkeypatch.setattr(EarlyWriteback, "count", lambda self, n: (counted.append(n), count(self, n))[1])
    node = start_node(limits={"min_free_bytes": 0, "fast_pdu_reader": fast})
    assert send(node.scp.port, [make_xa(frames=20, size=256)]) == [0]
    _processed(node, 1)
    assert (len(calls) > 0) is fast  # every PDU of the association (A-ASSOCIATE-RQ on) when on, none when off
    assert sum(counted) > 20 * 256 * 256  # the early write-back hears of every byte, whichever reader


def test_association_contexts_copy_without_sharing_their_lists(start_node):
    node = start_node(other_objects="keep")
    contexts = node.scp._server.contexts
    assert len(contexts) > 100 and all(isinstance(cx, SharedUidContext) for cx in contexts)
    assert contexts == node.scp.ae.supported_contexts  # the same contexts as the AE's own
    copies = copy.deepcopy(contexts)  # what pynetdicom does for every association
    assert copies == contexts
    copies[1].transfer_syntax.clear()
    copies[1].scp_role = True
    assert contexts[1].transfer_syntax and contexts[1].scp_role is None  # the originals are untouched


def test_unknown_calling_ae_and_host_are_rejected(start_node):
    node = start_node(allowed_callers=[{"ae_title": "ANGIO"}, {"ae_title": "FARAWAY", "hosts": ["10.9.9.9"]}])
    port = node.scp.port
    for calling in ("INTRUDER", "FARAWAY"):
        assoc = associate(port, [("1.2.840.10008.1.1", [EXPLICIT])], calling=calling)
        assert assoc.is_rejected
        assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.result_source,
                assoc.acceptor.primitive.diagnostic) == (0x01, 0x01, 0x03)
    echoscu = require_tool("echoscu")
    proc = subprocess.run([echoscu, "-aet", "INTRUDER", "-aec", "TAVISEG", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "Calling AE Title Not Recognized" in proc.stdout + proc.stderr
    assert echo(port, calling="ANGIO") == 0x0000


def test_corrupt_and_mismatched_instances_get_failure_statuses(start_node, tmp_path):
    node = start_node()
    port = node.scp.port
    assert send(port, [make_xa()]) == [0x0000]
    assert send_raw(port, garbage_file(tmp_path / "garbage.dcm", "1.2.3.4.5")) == StoreStatus.CANNOT_UNDERSTAND
    mismatched = make_xa()
    mismatched.SOPClassUID = "1.2.840.10008.5.1.4.1.1.12.2"  # the data set says XRF...
    mismatched.save_as(tmp_path / "mismatch.dcm", enforce_file_format=True)
    raw = pydicom.dcmread(tmp_path / "mismatch.dcm")
    raw.file_meta.MediaStorageSOPClassUID = XA  # ...the C-STORE command says XA
    raw.save_as(tmp_path / "mismatch.dcm")
    assert send_raw(port, tmp_path / "mismatch.dcm") == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert echo(port) == 0x0000  # still answering
    _processed(node, 1)
    counts = journal_counts(node.cfg.state_dir)
    assert counts["done"] == 1 and sum(counts.values()) == 1
    assert list(node.scp.spool.incoming_dir.iterdir()) == []


def _rdsr() -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    ds.SOPClassUID, ds.SOPInstanceUID = RDSR, pydicom.uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.Modality = "SR"
    return ds


def test_dose_report_kept_or_refused_by_configuration(start_node):
    keep = start_node(other_objects="keep")
    assert send(keep.scp.port, [_rdsr()]) == [0x0000]
    assert journal_counts(keep.cfg.state_dir)["kept"] == 1
    refuse = start_node(other_objects="refuse")
    assoc = associate(refuse.scp.port, [(RDSR, [EXPLICIT]), (XA, [EXPLICIT])])
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert accepted == {XA}
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(_rdsr())
        assert assoc.send_c_store(make_xa()).Status == 0x0000
    finally:
        assoc.release()
    assert journal_counts(refuse.cfg.state_dir)["kept"] == 0


def test_several_senders_at_once(start_node):
    node = start_node(limits={"min_free_bytes": 0, "max_associations": 8})
    port = node.scp.port
    results: dict[str, list] = {}

    def sender(name: str, seed: int) -> None:
        results[name] = send(port, [make_xa(seed=seed + i, frames=2) for i in range(3)],
                             calling="ANGIO" if seed % 2 else "ANGIO2")

    threads = [threading.Thread(target=sender, args=(f"s{i}", i * 10 + 1)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["s0", "s1", "s2", "s3"]
    assert all(r == [0x0000] * 3 for r in results.values())
    _processed(node, 12)


def test_association_limit_and_free_space_floor(start_node):
    node = start_node(limits={"max_associations": 1, "min_free_bytes": 2**62})
    port = node.scp.port
    held = associate(port, [(XA, [EXPLICIT])])
    try:
        assert held.is_established
        second = associate(port, [(XA, [EXPLICIT])])
        assert second.is_rejected and second.acceptor.primitive.result == 0x02  # transient
        rsp = held.send_c_store(make_xa())
        assert rsp.Status == StoreStatus.OUT_OF_RESOURCES
    finally:
        held.release()
    assert journal_counts(node.cfg.state_dir)["received"] == 0


def test_tls_requires_a_trusted_client_certificate(start_node, tmp_path):
    pki = make_pki(tmp_path / "pki")
    node = start_node(tls={"enabled": True, "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                           "ca_file": str(pki.ca), "require_client_cert": True})
    port = node.scp.port

    def client(cert: Path | None, key: Path | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
        if cert is not None:
            ctx.load_cert_chain(cert, key)
        return ctx

    assert echo(port, tls_args=(client(pki.client_cert, pki.client_key), "localhost")) == 0x0000
    assert send(port, [make_xa()], tls_args=(client(pki.client_cert, pki.client_key), "localhost")) == [0]
    assert echo(port, tls_args=(client(None, None), "localhost")) is None
    assert echo(port, tls_args=(client(pki.other_client_cert, pki.other_client_key), "localhost")) is None
    assert echo(port) is None  # plain TCP to a TLS port
    storescu = require_tool("storescu")  # dcmtk as the angiography system, over DICOM TLS
    path = tmp_path / "run.dcm"
    make_xa(path)
    proc = subprocess.run([storescu, "-v", "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca),
                           "-aet", "ANGIO", "-aec", "TAVISEG", "127.0.0.1", str(port), str(path)],
                          capture_output=True, text=True, timeout=60)
    assert "Received Store Response (Success)" in proc.stdout + proc.stderr
    _processed(node, 2)


def test_stop_and_restart_processes_what_was_left(tmp_path):
    path = write_config(tmp_path / "n.yaml", base_config(tmp_path / "state"))
    cfg = load_node_config(path)

    node = Node(cfg, processors=[ThresholdProcessor(cfg.processing)])
    node.start()
    node.workers.stop(5)  # workers gone: received runs stay queued in the journal
    assert send(node.scp.port, [make_xa(seed=i) for i in range(3)]) == [0, 0, 0]
    node.stop()
    assert journal_counts(cfg.state_dir)["received"] == 3
    node = Node(cfg, processors=[ThresholdProcessor(cfg.processing)])
    node.start()
    try:
        _processed(node, 3)
    finally:
        node.stop()


def test_overlapping_nodes_restore_the_process_temp_folder(start_node):
    """Receiving to disk points tempfile at the spool while a node runs; whatever the order in
    which overlapping nodes stop, the process's own temp folder comes back after the last."""
    import tempfile

    before = tempfile.tempdir
    first, second = start_node(), start_node()
    assert tempfile.tempdir == str(second.scp.spool.incoming_dir)
    first.stop()
    assert tempfile.tempdir == str(second.scp.spool.incoming_dir)
    assert send(second.scp.port, [make_xa(seed=5)]) == [0x0000]
    second.stop()
    assert tempfile.tempdir == before


def test_overlapping_nodes_restore_pydicom_validation(start_node):
    """A node silences pydicom's reading validation (its warnings quote received values) while
    it runs; overlapping nodes give the process its own mode back after the last one stops."""
    import pydicom.config

    before = pydicom.config.settings.reading_validation_mode
    first, second = start_node(), start_node()
    assert pydicom.config.settings.reading_validation_mode == pydicom.config.IGNORE
    first.stop()
    assert pydicom.config.settings.reading_validation_mode == pydicom.config.IGNORE
    second.stop()
    assert pydicom.config.settings.reading_validation_mode == before


def test_sop_class_table_and_scp_agree():
    """One table: every storage SOP class pynetdicom knows is queued by the node exactly when the
    reader would segment it (with Modality XA), Multi-frame True Color SC included; the rest is
    kept or refused as other_objects says, and nothing the SCP accepts is outside that."""
    from pynetdicom import AllStoragePresentationContexts

    from dicom_node.sop import (
        IMAGE_SOP_CLASSES,
        accepted_sop_classes,
        is_image_sop_class,
    )
    from segmentation.dicom.sop_classes import (
        INPUT_IMAGE_SOP_CLASSES,
        MULTIFRAME_TRUE_COLOR_SC,
        InputKind,
        NodeRoute,
        classify,
        node_route,
    )

    storage = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    for uid in storage | set(INPUT_IMAGE_SOP_CLASSES):
        header = pydicom.Dataset()
        header.SOPClassUID, header.Modality, header.Rows, header.Columns = uid, "XA", 8, 8
        segmented = classify(header) is InputKind.IMAGE
        assert is_image_sop_class(uid) is segmented, uid
        assert (uid in accepted_sop_classes("refuse")) is segmented, uid
        assert node_route(uid, "refuse") is (NodeRoute.QUEUE if segmented else NodeRoute.REFUSE), uid
        assert node_route(uid, "keep") is (NodeRoute.QUEUE if segmented else NodeRoute.KEEP), uid
    assert set(accepted_sop_classes("refuse")) == set(IMAGE_SOP_CLASSES) == INPUT_IMAGE_SOP_CLASSES
    assert set(accepted_sop_classes("keep")) == storage | INPUT_IMAGE_SOP_CLASSES
    assert MULTIFRAME_TRUE_COLOR_SC in accepted_sop_classes("refuse")
    with pytest.raises(ValueError, match="other_objects 'drop'"):
        accepted_sop_classes("drop")


def _true_color_sc(frames: int = 2, size: int = 64) -> pydicom.Dataset:
    """make_xa's run as a Multi-frame True Color Secondary Capture (RGB) with Modality XA."""
    from pydicom.uid import MultiFrameTrueColorSecondaryCaptureImageStorage

    ds = make_xa(frames=frames, size=size)
    gray = np.frombuffer(ds.PixelData, np.uint8).reshape(frames, size, size)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MultiFrameTrueColorSecondaryCaptureImageStorage
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = np.repeat(gray[..., None], 3, axis=-1).tobytes()
    for kw in ("PixelIntensityRelationship", "PositionerMotion", "KVP", "RadiationSetting"):
        delattr(ds, kw)
    ds.ConversionType = "WSD"
    return ds


def test_multiframe_true_color_sc_is_queued_and_segmented(tmp_path, tiny_model):
    """The object both tables used to disagree on: accepted with other_objects: refuse, queued as
    an image and segmented by the real pipeline (a SEG for each of its frames)."""
    from dicom_node.pipeline import load_processor

    data = base_config(tmp_path / "state", other_objects="refuse",
                       processing={"processor_factory": None, "model_folder": str(tiny_model), "outputs": ["seg"],
                                   "inference": {"backend": "eager", "device": "cpu", "host_threads": 0}})
    cfg = load_node_config(write_config(tmp_path / "node.yaml", data))
    node = Node(cfg, processors=[load_processor(cfg.processing)])
    node.start()
    try:
        ds = _true_color_sc()
        assert send(node.scp.port, [ds]) == [0x0000]
        _processed(node, 1)
        counts = journal_counts(node.cfg.state_dir)
        assert counts["done"] == 1 and counts["kept"] == 0
        out = node.cfg.results_dir / str(ds.StudyInstanceUID)
        files = wait_until(lambda: list(out.glob("*.dcm")), 10, "SEG delivered to the folder")
        seg = pydicom.dcmread(files[0])
        assert seg.SOPClassUID == pydicom.uid.SegmentationStorage and int(seg.NumberOfFrames) == 2
    finally:
        node.stop()
