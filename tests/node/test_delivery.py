"""Outbox and delivery: C-STORE to a real SCP (plain and TLS), folder output, back-off, give-up."""

from __future__ import annotations

import ssl
import time

import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicom_node.config import DeliveryConfig, DestinationConfig, TLSClientConfig
from dicom_node.journal import Journal, NewInstance
from dicom_node.metrics import NodeMetrics
from dicom_node.outbox import Outbox
from dicom_node.pipeline import OutputObject
from dicom_node.sender import DeliveryLoop, DicomDestination, FolderDestination, SendResult, retry_delay
from testkit.node import make_xa, wait_until
from tests.conftest import free_port
from tests.node.certs import make_pki


class StoreSCP:
    """An in-process pynetdicom Storage SCP answering ``status``; keeps what it received."""

    def __init__(self, status: int = 0x0000, ssl_context: ssl.SSLContext | None = None) -> None:
        self.received: list[pydicom.Dataset] = []
        self.status = status
        self.ae = AE(ae_title="PACS")
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.port = free_port()
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, ssl_context=ssl_context,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )

    def _on_store(self, event):
        self.received.append(event.dataset)
        return self.status

    def stop(self):
        self.server.shutdown()


def _outbox(tmp_path, destinations=("pacs",)):
    journal = Journal(tmp_path / "j.sqlite")
    outbox = Outbox(tmp_path / "outbox", journal, destinations, keep_delivered=False)
    outbox.prepare()
    row_id, _ = journal.record_received(NewInstance(
        "in.dcm", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.12.1", "1.2.3", "1.2.3.1",
        "1.2.840.10008.1.2.1", "image", "ANGIO", 1, 1))
    journal.claim(row_id)
    ds = make_xa(frames=1, size=16)
    rows = outbox.write([OutputObject("seg", ds)])
    journal.finish(row_id, "done", outputs=rows)
    return journal, outbox, ds


class Flaky:
    name = "pacs"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def send(self, paths):
        self.calls += 1
        if self.calls <= self.failures:
            return [SendResult(False, "association-failed", "PACS down")] * len(paths)
        return [SendResult(True, "0x0000")] * len(paths)


def test_retry_delay_grows_and_is_capped():
    cfg = DeliveryConfig(initial_retry_s=5, backoff_factor=2, max_retry_s=30)
    assert [retry_delay(n, cfg) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 30, 30]


def test_failed_deliveries_are_retried_with_backoff_until_delivered(tmp_path):
    journal, outbox, _ = _outbox(tmp_path)
    cfg = DeliveryConfig(initial_retry_s=0.05, backoff_factor=2.0, max_retry_s=1.0)
    dest = Flaky(failures=2)
    loop = DeliveryLoop(journal, outbox, [dest], cfg, NodeMetrics())
    t0 = time.time()
    assert loop.deliver_due() == 0
    row = journal.outputs()[0]
    assert row.state == "pending" and row.attempts == 1 and row.detail == "PACS down"
    assert row.next_attempt_at >= t0 + 0.05
    assert loop.deliver_due() == 0  # not due yet: no attempt
    assert dest.calls == 1
    wait_until(lambda: loop.deliver_due() or journal.outputs()[0].state == "delivered", 10, "delivered")
    row = journal.outputs()[0]
    assert (row.state, row.attempts, dest.calls) == ("delivered", 3, 3)
    assert list(outbox.root.iterdir()) == []  # released after delivery


def test_delivery_gives_up_after_the_configured_time_with_the_reason(tmp_path):
    journal, outbox, _ = _outbox(tmp_path)
    cfg = DeliveryConfig(initial_retry_s=0.01, give_up_after_s=0.05)
    metrics = NodeMetrics()
    loop = DeliveryLoop(journal, outbox, [Flaky(failures=10**6)], cfg, metrics)
    wait_until(lambda: loop.deliver_due() == 0 and journal.outputs()[0].state == "failed", 10, "given up")
    row = journal.outputs()[0]
    assert "given up after" in row.detail and "PACS down" in row.detail
    assert metrics.value("given_up_total", destination="pacs") == 1


def test_dicom_destination_plain_refused_and_down(tmp_path):
    journal, outbox, ds = _outbox(tmp_path)
    path = outbox.path_of(journal.outputs()[0].file)
    scp = StoreSCP()
    try:
        cfg = DestinationConfig(name="pacs", ae_title="PACS", host="127.0.0.1", port=scp.port)
        dest = DicomDestination(cfg, "TAVISEG")
        assert dest.send([path]) == [SendResult(True, "0x0000")]
        assert scp.received[0].SOPInstanceUID == ds.SOPInstanceUID
        scp.status = 0xA700
        res = dest.send([path])[0]
        assert not res.ok and res.status == "0xA700"
    finally:
        scp.stop()
    down = DicomDestination(DestinationConfig(name="pacs", ae_title="PACS", host="127.0.0.1", port=free_port(),
                                              timeout_s=5), "TAVISEG")
    res = down.send([path])[0]
    assert not res.ok and res.status == "association-failed"


def test_dicom_destination_over_tls_with_client_certificate(tmp_path):
    pki = make_pki(tmp_path / "pki")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    server_ctx.load_verify_locations(pki.ca)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    journal, outbox, ds = _outbox(tmp_path)
    path = outbox.path_of(journal.outputs()[0].file)
    scp = StoreSCP(ssl_context=server_ctx)
    try:
        tls = TLSClientConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
        dest = DicomDestination(DestinationConfig(name="pacs", ae_title="PACS", host="127.0.0.1", port=scp.port,
                                                  tls=tls, timeout_s=10), "TAVISEG")
        assert dest.send([path])[0].ok
        assert scp.received[0].SOPInstanceUID == ds.SOPInstanceUID
        no_cert = DicomDestination(DestinationConfig(name="pacs", ae_title="PACS", host="127.0.0.1", port=scp.port,
                                                     tls=TLSClientConfig(ca_file=pki.ca), timeout_s=10), "TAVISEG")
        assert not no_cert.send([path])[0].ok
        assert len(scp.received) == 1
    finally:
        scp.stop()


def test_folder_destination_writes_study_folders(tmp_path):
    journal, outbox, ds = _outbox(tmp_path, destinations=("folder",))
    dest = FolderDestination(tmp_path / "results")
    loop = DeliveryLoop(journal, outbox, [dest], DeliveryConfig(), NodeMetrics())
    assert loop.deliver_due() == 1
    out = tmp_path / "results" / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(out).SOPInstanceUID == ds.SOPInstanceUID


def test_outbox_prepare_removes_uncommitted_files(tmp_path):
    journal, outbox, _ = _outbox(tmp_path)
    pending = journal.outputs()[0].file
    (outbox.root / "crashed-before-commit.dcm").write_bytes(b"x")
    outbox.prepare()
    assert sorted(p.name for p in outbox.root.iterdir()) == [pending]


@pytest.mark.parametrize("keep", [True, False])
def test_release_respects_keep_delivered(tmp_path, keep):
    journal, outbox, _ = _outbox(tmp_path)
    outbox.keep_delivered = keep
    loop = DeliveryLoop(journal, outbox, [Flaky(failures=0)], DeliveryConfig(), NodeMetrics())
    assert loop.deliver_due() == 1
    assert bool(list(outbox.root.iterdir())) is keep
