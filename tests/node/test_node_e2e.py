"""End to end with real peers: the node as a separate process (``python -m taviseg serve``),
dcmtk storescu/echoscu as the angiography system, a real Orthanc as the PACS."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
from pynetdicom import evt

from testkit.node import (
    NodeProcess,
    associate,
    base_config,
    echo,
    garbage_file,
    journal_counts,
    make_xa,
    outbox_counts,
    send,
    send_raw,
    wait_until,
    write_config,
)
from tests.conftest import REPO, free_port, require_tool
from tests.node.certs import make_pki
from tests.peers import orthanc_server, run_dciodvfy, start_orthanc

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
OUTPUT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "seg",
    "1.2.840.10008.5.1.4.1.1.88.34": "sr",  # Comprehensive 3D SR (TID 1500)
    "1.2.840.10008.5.1.4.1.1.11.1": "gsps",
    "1.2.840.10008.5.1.4.1.1.7.2": "sc",  # multi-frame grayscale byte SC, outline burned in
}
# storescu proposes a compressed transfer syntax only when told which one (-x? option).
STORESCU_TS_OPTION = {
    "1.2.840.10008.1.2.1": "-x=", "1.2.840.10008.1.2": "-x=", "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}


def _model_processing(model: Path, outputs: tuple[str, ...] = ("seg", "sr")) -> dict:
    return {"processor_factory": None, "model_folder": str(model),
            "inference": {"backend": "eager", "device": "cpu", "batch_size": 4}, "outputs": list(outputs)}


def _storescu(port: int, path: Path, *, calling: str = "ANGIO", called: str = "TAVISEG") -> str:
    """Send one file with dcmtk storescu; returns the Store Response text ('Success', ...)."""
    storescu = require_tool("storescu")
    ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    proc = subprocess.run(
        [storescu, "-v", STORESCU_TS_OPTION[ts], "-aet", calling, "-aec", called, "127.0.0.1", str(port), str(path)],
        capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    for line in out.splitlines():
        if "Received Store Response" in line:
            return line.split("(", 1)[1].rstrip(")") if "(" in line else line
    return f"no response (rc={proc.returncode}): {out[-500:]}"


def test_run_routed_by_orthanc_comes_back_as_valid_seg(tmp_path, tiny_model):
    """Angio -> Orthanc (Lua auto-routing of deploy/) -> node -> SEG, SR, GSPS, SC in the study."""
    node_port = free_port()
    lua = REPO / "deploy" / "route-to-taviseg.lua"
    state = tmp_path / "state"
    with orthanc_server(tmp_path, known_modalities={"taviseg": ("TAVISEG", "127.0.0.1", node_port)},
                        lua_scripts=[lua]) as pacs:
        cfg = base_config(
            state, port=node_port,
            allowed_callers=[{"ae_title": "ORTHANC", "hosts": ["127.0.0.1"]}, {"ae_title": "ANGIO"}],
            destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}],
            processing=_model_processing(tiny_model, ("seg", "sr", "gsps", "sc")),
        )
        with NodeProcess(write_config(tmp_path / "node.yaml", cfg)).start() as node:
            run = make_xa(tmp_path / "run.dcm", frames=4, size=96)
            assert _storescu(pacs.dicom_port, tmp_path / "run.dcm", called=pacs.aet) == "Success"
            ids = pacs.wait_for_instances(5, timeout=90, StudyInstanceUID=str(run.StudyInstanceUID))
            by_kind = {}
            for orthanc_id in ids:
                tags = pacs.instance_tags(orthanc_id)
                if tags["SOPInstanceUID"] != run.SOPInstanceUID:
                    by_kind[OUTPUT_CLASSES[tags["SOPClassUID"]]] = orthanc_id
            assert sorted(by_kind) == ["gsps", "sc", "seg", "sr"]
            assert sum(journal_counts(state).values()) == 1  # the node's own outputs are not routed back
            for kind, orthanc_id in by_kind.items():
                path = tmp_path / f"{kind}.dcm"
                path.write_bytes(pacs.get_bytes(f"/instances/{orthanc_id}/file"))
                if kind == "seg":
                    errors, _, output = run_dciodvfy(path)
                    assert errors == [], output
            seg = pydicom.dcmread(tmp_path / "seg.dcm")
            assert int(seg.NumberOfFrames) == 4
            referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
            assert referenced.ReferencedSOPInstanceUID == run.SOPInstanceUID
            # The angiography system re-sends the run to the node: same output UIDs, no duplicate.
            assert _storescu(node.port, tmp_path / "run.dcm") == "Success"
            wait_until(lambda: journal_counts(state)["done"] == 2, 60, "re-sent run processed")
            wait_until(lambda: outbox_counts(state)["pacs"]["delivered"] == 8, 60, "re-delivered")
            assert sorted(pacs.find_instances(StudyInstanceUID=str(run.StudyInstanceUID))) == sorted(ids)
            assert node.terminate() == 0


def test_every_sample_file_is_answered_and_processed(tmp_path, tiny_model, samples_dir):
    files = sorted(samples_dir.glob("*.dcm"))
    cfg = base_config(tmp_path / "state", processing=_model_processing(tiny_model))
    with NodeProcess(write_config(tmp_path / "node.yaml", cfg)).start() as node:
        answers = {f.name: _storescu(node.port, f) for f in files}
        assert answers == {f.name: "Success" for f in files}
        images = [f for f in files if "RDSR" not in f.name]
        wait_until(lambda: journal_counts(tmp_path / "state")["done"] == len(images), 240, "all images processed")
        counts = journal_counts(tmp_path / "state")
        assert counts["kept"] == len(files) - len(images)
        assert counts["failed"] == counts["skipped"] == counts["received"] == 0
        results = node.cfg["state_dir"]
        segs = [p for p in Path(results, "results").rglob("*.dcm")
                if pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID == SEG_CLASS]
        assert len(segs) == len(images)
        echoscu = require_tool("echoscu")
        rejected = subprocess.run([echoscu, "-aet", "NOT_ALLOWED", "-aec", "TAVISEG", "127.0.0.1", str(node.port)],
                                  capture_output=True, text=True, timeout=30)
        assert "Calling AE Title Not Recognized" in rejected.stdout + rejected.stderr
        assert "Unbekannt" not in node.log() and "Rubo DEMO" not in node.log()  # no patient names logged


def _send_and_kill_mid_transfer(port: int, ds: pydicom.Dataset, node: NodeProcess, incoming: Path,
                                after_pdus: int) -> None:
    """C-STORE ``ds``; after ``after_pdus`` P-DATA PDUs, once the node has written part of the
    data set into ``incoming``, SIGKILL the node (the rest of the data set is never sent)."""
    sent = []

    def partially_received() -> bool:
        return any(p.stat().st_size > 0 for p in incoming.iterdir())

    def on_pdu_sent(event) -> None:
        if type(event.pdu).__name__ == "P_DATA_TF":
            sent.append(1)
            if len(sent) == after_pdus:  # sending pauses here until the node has caught up
                wait_until(partially_received, 20, "node writing the data set to disk")
                os.kill(node.proc.pid, signal.SIGKILL)

    assoc = associate(port, [(str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)])])
    assoc.bind(evt.EVT_PDU_SENT, on_pdu_sent)
    try:
        rsp = assoc.send_c_store(ds)
        assert "Status" not in rsp  # never answered
    except (ConnectionError, OSError, RuntimeError):
        pass  # the peer vanished mid-message: that is the point
    finally:
        if assoc.is_established:
            assoc.abort()
    node.proc.wait(timeout=30)
    assert len(sent) >= after_pdus


def test_kill9_mid_run_loses_nothing_and_duplicates_nothing(tmp_path):
    runs = [make_xa(frames=2, seed=i) for i in range(6)]
    state = tmp_path / "state"
    with orthanc_server(tmp_path) as pacs:
        cfg = base_config(
            state,
            destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}],
            limits={"min_free_bytes": 0, "max_pdu_size": 16384},  # many PDUs: a kill lands mid-transfer
        )
        path = write_config(tmp_path / "node.yaml", cfg)
        slow = {"TAVISEG_TEST_PROCESS_DELAY_S": "0.5"}
        node = NodeProcess(path, env=slow).start()
        assert send(node.port, runs) == [0x0000] * 6  # all answered Success...
        wait_until(lambda: journal_counts(state)["processing"] == 1, 30, "a run in processing")
        # ...then the node dies while processing one run AND receiving another one
        big = make_xa(frames=40, size=256, seed=99)
        _send_and_kill_mid_transfer(node.port, big, node, state / "spool" / "incoming", after_pdus=30)
        assert list((state / "spool" / "incoming").iterdir()), "a partial reception is left behind"
        assert journal_counts(state)["done"] < 6
        with NodeProcess(path, env=slow).start() as node:
            wait_until(lambda: journal_counts(state)["done"] == 6, 60, "all runs processed after restart")
            outputs = pacs.wait_for_instances(6, timeout=60, Modality="OT")
            assert list((state / "spool" / "incoming").iterdir()) == []  # the partial reception is gone
            # the angiography system re-sends two runs: their outputs are replaced, not duplicated
            assert send(node.port, runs[:2]) == [0x0000, 0x0000]
            wait_until(lambda: journal_counts(state)["done"] == 8, 60, "re-sent runs processed")
            wait_until(lambda: outbox_counts(state)["pacs"]["delivered"] == 8, 60, "re-delivered")
            assert sorted(pacs.find_instances(Modality="OT")) == sorted(outputs)
            sources = {pacs.instance_tags(i)["StudyInstanceUID"] for i in outputs}
            assert sources == {str(r.StudyInstanceUID) for r in runs}
            counts = journal_counts(state)
            assert counts["failed"] == counts["received"] == counts["processing"] == 0
            assert sum(counts.values()) == 8  # the interrupted reception was never journaled
            assert "recovered 1 interrupted run" in node.log()


def test_pacs_down_then_back_delivers_and_status_shows_the_outbox(tmp_path):
    pacs = start_orthanc(tmp_path / "pacs")
    dicom_port, http_port = pacs.dicom_port, pacs.http_port
    pacs.stop()  # the PACS is down while the node processes
    cfg = base_config(
        tmp_path / "state",
        destinations=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom_port,
                       "timeout_s": 5}],
    )
    path = write_config(tmp_path / "node.yaml", cfg)
    with NodeProcess(path).start() as node:
        assert send(node.port, [make_xa(seed=1), make_xa(seed=2)]) == [0, 0]
        wait_until(lambda: outbox_counts(tmp_path / "state").get("pacs", {}).get("pending") == 2
                   and journal_counts(tmp_path / "state")["done"] == 2, 30, "outputs pending")
        status = subprocess.run(
            [sys.executable, "-m", "taviseg", "status", "--config", str(path), "--json"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
        )
        shown = json.loads(status.stdout)
        assert shown["running"]["pid"] == node.proc.pid
        assert shown["instances"]["done"] == 2 and shown["outbox"]["pacs"]["pending"] == 2
        wait_until(lambda: any(p["attempts"] > 0 for p in json.loads(subprocess.run(
            [sys.executable, "-m", "taviseg", "status", "--config", str(path), "--json"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout)["problem_outputs"]),
            30, "a failed delivery attempt shown")
        pacs = start_orthanc(tmp_path / "pacs", dicom_port=dicom_port, http_port=http_port)  # back up
        try:
            pacs.wait_for_instances(2, timeout=60)
            wait_until(lambda: outbox_counts(tmp_path / "state")["pacs"]["delivered"] == 2, 30, "delivered")
        finally:
            pacs.stop()
        text = subprocess.run([sys.executable, "-m", "taviseg", "status", "--config", str(path)],
                              cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
        assert "pacs: pending 0, delivered 2" in text
        assert node.terminate() == 0  # SIGTERM: graceful
        assert "stopped" in node.log()
        assert not (tmp_path / "state" / "ready.json").exists()
    assert echo(node.port) is None  # stopped: nobody answers


def test_tls_node_process_with_concurrent_senders_and_corrupt_data(tmp_path):
    """The node process with DICOM TLS: dcmtk and pynetdicom senders at once, a corrupt data set."""
    pki = make_pki(tmp_path / "pki")
    cfg = base_config(tmp_path / "state", tls={"enabled": True, "cert_file": str(pki.server_cert),
                                              "key_file": str(pki.server_key), "ca_file": str(pki.ca)})
    node = NodeProcess(write_config(tmp_path / "node.yaml", cfg))
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    client.load_cert_chain(pki.client_cert, pki.client_key)
    tls_args = (client, "localhost")
    node.ready_echo = lambda: echo(node.port, tls_args=tls_args) == 0x0000
    with node.start():
        assert echo(node.port) is None  # plain TCP is not served
        results: dict[int, list] = {}

        def sender(i: int) -> None:
            results[i] = send(node.port, [make_xa(seed=10 * i + k) for k in range(3)], tls_args=tls_args)

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        storescu = require_tool("storescu")
        make_xa(tmp_path / "run.dcm", seed=99)
        dcmtk = subprocess.run([storescu, "-v", "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca),
                                "-aet", "STORESCU", "-aec", "TAVISEG", "127.0.0.1", str(node.port),
                                str(tmp_path / "run.dcm")], capture_output=True, text=True, timeout=60)
        for t in threads:
            t.join(60)
        assert "Received Store Response (Success)" in dcmtk.stdout + dcmtk.stderr
        assert results == {i: [0x0000] * 3 for i in range(4)}
        garbage = garbage_file(tmp_path / "garbage.dcm", "1.2.3.4.5")
        assert send_raw(node.port, garbage, tls_args=tls_args) == 0xC210
        assert echo(node.port, tls_args=tls_args) == 0x0000  # still answering
        wait_until(lambda: journal_counts(tmp_path / "state")["done"] == 13, 60, "13 runs processed")
        assert sum(journal_counts(tmp_path / "state").values()) == 13
