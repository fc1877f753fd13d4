"""Hostile peers and full disks (issue 18), against the real node on free loopback ports.

Each attack runs while an allowed peer must keep getting C-ECHO answered within 2 s; every wait
has a deadline (``wait_until``), no fixed sleep decides an outcome.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.reliability.hostile import Crowd, associate_rq, raw_associate_rq, timed_echo
from dicom_node.config import ConfigError, load_node_config
from dicom_node.journal import DEFERRED_PREFIX, Journal, NewInstance
from dicom_node.node import EscapingFilter, Housekeeper, Node
from dicom_node.scp import ReceiveLimiter
from dicom_node.status import format_status, node_status, requeue_failed
from testkit.fakes import ThresholdProcessor
from testkit.node import (
    VERIFICATION,
    associate,
    base_config,
    echo,
    make_xa,
    send,
    wait_until,
    write_config,
)
from tests.conftest import REPO
from tests.node.certs import make_pki

ECHO_TARGET_S = 2.0


@pytest.fixture()
def start_node(tmp_path):
    nodes: list[Node] = []

    def start(processor_cls=ThresholdProcessor, **extra) -> Node:
        state = tmp_path / f"state{len(nodes)}"
        extra["limits"] = {"min_free_bytes": 0, "handshake_timeout_s": 1.5, **extra.get("limits", {})}
        path = write_config(tmp_path / f"node{len(nodes)}.yaml", base_config(state, **extra))
        cfg = load_node_config(path)
        node = Node(cfg, processors=[processor_cls(cfg.processing)])
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def _rejections(node: Node, reason: str) -> float:
    return node.metrics.value("rejections_total", reason=reason) or 0.0


def _health(node: Node) -> tuple[int, str]:
    url = f"http://127.0.0.1:{node.metrics_server.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=10) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _echo_quickly(port: int, **kw) -> None:
    ok, waited = timed_echo(port, **kw)
    assert ok and waited <= ECHO_TARGET_S, f"C-ECHO ok={ok} after {waited:.2f} s"


def _closed_by_node(s: socket.socket, timeout: float) -> bool:
    """True when the node closes ``s`` within ``timeout`` s (what it sends is read and dropped)."""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not s.recv(4096):
                return True
    except TimeoutError:
        return False
    except OSError:
        return True
    return False


def _incoming(node: Node) -> list[Path]:
    return list((node.cfg.spool_dir / "incoming").iterdir())


# ---- connections before authentication -------------------------------------------------------


def test_silent_connections_on_the_tls_port_neither_block_peers_nor_stay(start_node, tmp_path):
    pki = make_pki(tmp_path / "pki")
    node = start_node(tls={"enabled": True, "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                           "ca_file": str(pki.ca), "require_client_cert": True})
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    ctx.load_cert_chain(pki.client_cert, pki.client_key)
    port = node.scp.port
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        for _ in range(3):  # each answered at once although the silent ones sent no ClientHello
            _echo_quickly(port, tls_args=(ctx, "localhost"))
        assert all(_closed_by_node(s, 1.5 + 3.0) for s in silent)  # closed at the handshake deadline
    finally:
        for s in silent:
            s.close()
    wait_until(lambda: _rejections(node, "tls-handshake") >= 3, 10, "failed handshakes counted")
    _echo_quickly(port, tls_args=(ctx, "localhost"))


def test_partial_headers_drips_and_idle_crowds_do_not_lock_out_allowed_peers(start_node):
    node = start_node()
    port = node.scp.port
    rq = associate_rq("ANGIO")
    crowd = Crowd()
    try:
        partial = [crowd.connect(port) for _ in range(9)]
        for s in partial:
            s.sendall(rq[:3])
        drips = [crowd.connect(port) for _ in range(9)]

        def drip() -> None:
            for i in range(len(rq) - 1):  # bounded: never completes the request
                if crowd.stop_event.wait(0.3):
                    return
                for s in drips:
                    try:
                        s.sendall(rq[i:i + 1])
                    except OSError:
                        pass

        crowd.spawn(drip, "drip")
        idle = [crowd.connect(port) for _ in range(100)]
        assert all(s is not None for s in partial + drips + idle)
        for _ in range(4):
            _echo_quickly(port)
        assert node.scp.guard.pending("127.0.0.1") <= node.cfg.limits.max_pending_per_host
        # every hostile connection is closed (evicted by newcomers, or at the handshake deadline)
        assert all(_closed_by_node(s, 1.5 + 3.0) for s in partial + drips[:3] + idle[-3:])
    finally:
        crowd.stop()
    assert _rejections(node, "pending-evicted") >= 100
    _echo_quickly(port)


@pytest.mark.parametrize("fast", [True, False])
def test_a_declared_huge_pdu_is_refused_from_its_header(start_node, fast):
    node = start_node(limits={"fast_pdu_reader": fast})  # off: the same checks, pynetdicom's decoder
    port = node.scp.port
    for header in (struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF),                     # A-ASSOCIATE-RQ of 4 GiB
                   struct.pack(">BBL", 0x01, 0, 65536 + 1),                       # just over the cap
                   struct.pack(">BBL", 0x04, 0, 1 << 30)):                        # P-DATA-TF before association
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(header + b"\x00" * 4096)
            assert _closed_by_node(s, 3.0)
    assert _rejections(node, "pdu-too-large") == 2
    assert _rejections(node, "data-before-association") == 1
    _echo_quickly(port)
    # an ordinary request of the same type still works (below the cap)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(associate_rq("ANGIO"))
        assert s.recv(1)[0] == 0x02  # A-ASSOCIATE-AC


def test_one_calling_ae_cannot_take_every_slot_and_health_says_so(start_node):
    node = start_node(limits={"max_associations": 6, "caller_quota": 2, "reserved_associations": 2})
    port = node.scp.port
    held = []
    try:
        for _ in range(8):
            assoc = associate(port, [(VERIFICATION, ["1.2.840.10008.1.2"])], calling="ANGIO")
            if not assoc.is_established:
                break
            held.append(assoc)
        assert len(held) == 4  # 6 slots, 2 kept for the others
        assert _rejections(node, "caller-quota") == 1
        assert _health(node)[0] == 200
        _echo_quickly(port, calling="ANGIO2")
        for _ in range(2):
            assoc = associate(port, [(VERIFICATION, ["1.2.840.10008.1.2"])], calling="ANGIO2")
            assert assoc.is_established
            held.append(assoc)
        code, text = _health(node)
        assert code == 503 and "every association slot in use" in text
        assert echo(port, calling="STORESCU") is None
        assert _rejections(node, "local-limit") == 1
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()
    wait_until(lambda: _health(node)[0] == 200, 10, "healthy once the slots are free")
    assert "taviseg_node_association_slots_used 0.0" in node.metrics.render().decode()


def test_every_association_rejection_is_counted_by_reason(start_node):
    node = start_node(allowed_callers=[{"ae_title": "ANGIO", "hosts": ["127.0.0.0/8"]},
                                       {"ae_title": "FAR", "hosts": ["10.20.30.0/24", "192.0.2.7"]}])
    port = node.scp.port
    assert echo(port, calling="ANGIO") == 0x0000                 # CIDR entry matches 127.0.0.1
    assert echo(port, calling="NOBODY") is None
    assert echo(port, calling="FAR") is None                     # allowed AE, wrong host
    assert echo(port, calling="ANGIO", called="OTHER") is None   # require_called_ae_title is the default
    assert [_rejections(node, r) for r in ("calling-ae", "host", "called-ae")] == [1, 1, 1]
    assert node.metrics.value("associations_total", result="rejected") == 3


def test_hosts_entries_are_validated_and_names_checked_by_serve_check(tmp_path):
    base = base_config(tmp_path / "state")
    bad = write_config(tmp_path / "bad.yaml",
                       {**base, "allowed_callers": [{"ae_title": "A", "hosts": ["not an ip at all"]}]})
    with pytest.raises(ConfigError, match="not an ip at all"):
        load_node_config(bad)
    unresolvable = write_config(tmp_path / "name.yaml", {**base, "allowed_callers": [
        {"ae_title": "A", "hosts": ["no-such-host.invalid"]}]})
    load_node_config(unresolvable)  # a name is valid syntax; whether it resolves is --check's job
    proc = subprocess.run([sys.executable, "-m", "taviseg", "serve", "--check", "--config", str(unresolvable)],
                          cwd=REPO, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no-such-host.invalid" in proc.stderr and "does not resolve" in proc.stderr
    assert load_node_config(REPO / "conf" / "node.yaml").require_called_ae_title is True


# ---- receiving against limits and full disks ---------------------------------------------------


def test_an_instance_over_the_size_limit_is_refused_while_it_arrives(start_node):
    node = start_node(limits={"max_instance_bytes": 1 << 20})
    big, small = make_xa(frames=16, size=512, seed=1), make_xa(frames=1, size=64, seed=2)  # 4 MiB, 4 KiB
    assert send(node.scp.port, [big, small]) == [0xA701, 0x0000]  # same association goes on
    assert _incoming(node) == []
    assert node.metrics.value("refused_total", status="0xA701") == 1


def test_the_free_space_floor_refuses_while_it_arrives(start_node, monkeypatch):
    floor = 10 << 30
    monkeypatch.setattr(ReceiveLimiter, "_free", lambda self: floor + (2 << 20))  # 2 MiB above the floor
    node = start_node(limits={"min_free_bytes": floor})
    big, small = make_xa(frames=16, size=512, seed=3), make_xa(frames=1, size=64, seed=4)
    assert send(node.scp.port, [big, small]) == [0xA700, 0x0000]
    assert _incoming(node) == []


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          check=False, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")


@pytest.fixture()
def small_disk(tmp_path):
    mounted: list[Path] = []

    def make(name: str, size: str) -> Path:
        folder = tmp_path / name
        _mount_tmpfs(folder, size)
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True, timeout=30)


def test_a_disk_that_fills_up_during_receive_gets_0xa700_and_no_dead_reactor(start_node, small_disk, monkeypatch):
    disk = small_disk("spool", "8m")
    monkeypatch.setattr(ReceiveLimiter, "_free", lambda self: 1 << 50)  # no floor check: the write itself fails
    node = start_node(spool_folder=str(disk))
    acknowledged = [make_xa(frames=2, size=128, seed=10 + i) for i in range(3)]
    big = make_xa(frames=48, size=512, seed=20)  # 12 MiB on an 8 MiB file system
    assert send(node.scp.port, [*acknowledged, big, make_xa(frames=1, size=64, seed=21)]) == [0, 0, 0, 0xA700, 0]
    assert _incoming(node) == []
    assert shutil.disk_usage(disk).free > 6 << 20  # the partial file is gone
    _echo_quickly(node.scp.port)
    wait_until(lambda: node.journal.instance_counts()["done"] == 4, 30, "acknowledged runs processed")


def test_outputs_that_cannot_be_written_wait_for_space_and_are_delivered(start_node, tmp_path):
    """A full 1 MB tmpfs as outbox (root); without root, an outbox folder the node may not write."""
    box = tmp_path / "outbox" / "box"
    if os.geteuid() == 0:
        _mount_tmpfs(tmp_path / "outbox", "1m")
        filler = tmp_path / "outbox" / "filler"
        with filler.open("wb") as f:
            try:
                for _ in range(32):
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        box.mkdir()

        def make_room() -> None:
            filler.unlink()
    else:
        box.mkdir(parents=True)
        box.chmod(0o500)

        def make_room() -> None:
            box.chmod(0o700)
    try:
        _outputs_wait_then_go(start_node, box, make_room)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(tmp_path / "outbox")], check=False, capture_output=True, timeout=30)


def _outputs_wait_then_go(start_node, box: Path, make_room) -> None:
    node = start_node(outbox_folder=str(box))
    runs = [make_xa(frames=1, size=256, seed=30 + i) for i in range(4)]
    assert send(node.scp.port, runs) == [0] * 4
    journal = node.journal
    wait_until(lambda: len(journal.deferred()) == 4, 30, "runs waiting for disk space")
    assert journal.instance_counts()["failed"] == 0
    assert "waiting for disk space" in _health(node)[1]
    shown = node_status(node.cfg)
    assert len(shown["waiting_for_disk"]) == 4 and "retrying: waiting for disk space" in format_status(shown)
    make_room()
    wait_until(lambda: journal.instance_counts()["done"] == 4, 30, "runs done once space returned")
    wait_until(lambda: journal.outbox_counts().get("folder", {}).get("delivered") == 4, 30, "outputs delivered")
    wait_until(lambda: _health(node)[0] == 200, 10, "healthy again")


class _FailsFirst(ThresholdProcessor):
    """Fails every run until :attr:`healed` is set (a model or decoder problem fixed later)."""

    healed = threading.Event()

    def process(self, instance):
        if not self.healed.is_set():
            from dicom_node.errors import ProcessingError

            raise ProcessingError("simulated processing failure")
        return super().process(instance)


def test_requeue_runs_failed_runs_again_by_uid_or_all(start_node, tmp_path):
    _FailsFirst.healed.clear()
    node = start_node(processor_cls=_FailsFirst)
    runs = [make_xa(frames=1, size=64, seed=40 + i) for i in range(3)]
    assert send(node.scp.port, runs) == [0, 0, 0]
    wait_until(lambda: node.journal.instance_counts()["failed"] == 3, 30, "runs failed")
    _FailsFirst.healed.set()
    first = str(runs[0].SOPInstanceUID)
    result = requeue_failed(node.cfg, sop_instance_uids=[first, "1.2.3.4"])
    assert [r["sop_instance_uid"] for r in result["requeued"]] == [first] and result["unknown"] == ["1.2.3.4"]
    wait_until(lambda: node.journal.instance_counts()["done"] == 1, 30, "the requeued run picked up by the node")
    proc = subprocess.run([sys.executable, "-m", "taviseg", "requeue", "--all", "--config",
                           str(tmp_path / "node0.yaml")],
                          cwd=REPO, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "requeued: 2 run(s)" in proc.stdout, proc.stdout + proc.stderr
    wait_until(lambda: node.journal.instance_counts()["done"] == 3, 30, "every failed run done")


def test_retention_deletes_old_failed_and_kept_spool_files(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    cfg = load_node_config(write_config(tmp_path / "n.yaml", base_config(
        tmp_path / "state", limits={"keep_failed_days": 1, "keep_other_days": 0})))
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()

    class _Spool:
        def discard(self, names):
            for n in names:
                (spool_dir / n).unlink(missing_ok=True)

    ids = {}
    for name, state in (("old_failed", "failed"), ("new_failed", "failed"), ("old_kept", "kept")):
        (spool_dir / name).write_bytes(b"x")
        ids[name], _ = journal.record_received(NewInstance(
            file=name, sop_instance_uid=f"1.2.{len(ids)}", sop_class_uid="1.2", study_instance_uid="1.3",
            series_instance_uid="1.4", transfer_syntax_uid="1.2.840.10008.1.2.1", kind="image",
            calling_aet="ANGIO", size_bytes=1, frames=1), state="received" if state == "failed" else "kept")
        if state == "failed":
            journal.claim(ids[name])
            journal.finish(ids[name], "failed", detail="x")
    old = time.time() - 3 * 86400
    with journal._tx() as db:
        db.execute("UPDATE instances SET finished_at=?, received_at=? WHERE file LIKE 'old_%'", (old, old))
    removed = Housekeeper(journal, _Spool(), lambda i: None, cfg).sweep()
    assert removed == 1  # keep_other_days 0: kept objects stay
    assert sorted(p.name for p in spool_dir.iterdir()) == ["new_failed", "old_kept"]
    assert journal.get_instance(ids["old_failed"]).file == ""


# ---- logs and status ---------------------------------------------------------------------------


def test_received_values_cannot_forge_log_lines_or_reach_the_logs(start_node):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.DEBUG)
    forged = "12:00:00 CRITICAL dicom_node: FORGED PN=DOE^JOHN"
    try:
        node = start_node()
        assert any(isinstance(f, EscapingFilter) for f in handler.filters)
        for i, sep in enumerate(("\n", "\r", "\r\n")):
            ds = make_xa(frames=1, size=64, seed=50 + i)
            ds.SOPInstanceUID = f"1.{i}{sep}{forged}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            assert send(node.scp.port, [ds]) == [0xC210]
        with socket.create_connection(("127.0.0.1", node.scp.port), timeout=5) as s:
            s.sendall(raw_associate_rq(b"AN\nFORGED PN=DOE"))
            _closed_by_node(s, 5)
        _echo_quickly(node.scp.port)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
    lines = stream.getvalue().splitlines()
    assert lines and not [line for line in lines if line.startswith(("12:00:00", "FORGED", "\r"))]
    assert "DOE^JOHN" not in stream.getvalue() and "PN=DOE" not in stream.getvalue()
    assert "<invalid UID, " in stream.getvalue()


def test_escaping_filter_keeps_each_record_on_one_line():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(EscapingFilter())
    log = logging.getLogger("tests.hardening.escape")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("value %s", "a\nb\rc\x1b[31m\u2028d")
        try:
            raise ValueError("bad\nFORGED line")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "value a\\nb\\rc\\x1b[31m\\u2028d"
    assert lines[1] == "failed" and all(line.startswith("  | ") for line in lines[2:])


def test_status_shows_failure_details_without_tracebacks(tmp_path):
    cfg = load_node_config(write_config(tmp_path / "n.yaml", base_config(tmp_path / "state")))
    journal = Journal(cfg.journal_path)
    row, _ = journal.record_received(NewInstance(
        file="f.dcm", sop_instance_uid="1.2.3", sop_class_uid="1.2", study_instance_uid="1.3",
        series_instance_uid="1.4", transfer_syntax_uid="1.2.840.10008.1.2.1", kind="image",
        calling_aet="ANGIO", size_bytes=1, frames=1))
    journal.claim(row)
    journal.finish(row, "failed", detail="unexpected ValueError: boom\nTraceback (most recent call last):\n"
                                         '  File "/x/y.py", line 3, in f\n    raise ValueError("boom")\n'
                                         "ValueError: boom\n")
    deferred, _ = journal.record_received(NewInstance(
        file="g.dcm", sop_instance_uid="1.2.4", sop_class_uid="1.2", study_instance_uid="1.3",
        series_instance_uid="1.4", transfer_syntax_uid="1.2.840.10008.1.2.1", kind="image",
        calling_aet="ANGIO", size_bytes=1, frames=1))
    journal.claim(deferred)
    assert journal.defer(deferred, f"{DEFERRED_PREFIX}: No space left on device")
    journal.close()
    status = node_status(cfg)
    detail = status["problem_instances"][0]["detail"]
    assert "Traceback" not in detail and "File " not in detail and "\n" not in detail
    assert detail.startswith("unexpected ValueError: boom") and detail.endswith("ValueError: boom")
    assert status["waiting_for_disk"][0]["sop_instance_uid"] == "1.2.4"
    text = format_status(status)
    assert "Traceback" not in text and "instance #2 1.2.4 retrying: waiting for disk space" in text


@pytest.mark.slow
def test_hostile_bench_quick_meets_its_targets(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.reliability", "--quick", "--only", "hostile", "--workdir", str(tmp_path / "b")],
        cwd=REPO, check=False, capture_output=True, text=True, timeout=600,
    )
    lines = proc.stdout.strip().splitlines()
    names = sorted(line.split(":", 1)[0] for line in lines)
    assert names == sorted(["tls-stall", "slowloris", "idle-flood", "huge-pdu", "ae-hog", "disk-full-receive",
                            "disk-full-output", "log-injection"]), proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def test_health_is_degraded_while_the_spool_disk_is_under_its_floor(start_node):
    node = start_node(limits={"min_free_bytes": 2**62})
    code, text = _health(node)
    assert code == 503 and "below limits.min_free_bytes" in text
    assert send(node.scp.port, [make_xa(frames=1, size=64)]) == [0xA700]  # and receiving says so too
    assert _incoming(node) == []


def test_the_guard_closes_stalled_connections_first_and_spares_progressing_ones():
    from dicom_node.scp import ConnectionGuard

    closed: list[tuple[str, str]] = []
    guard = ConnectionGuard(per_host=2, total=10, deadline_s=60, on_evicted=lambda r, h: closed.append((r, h)))
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        hurried, stalled, newcomer, last = (p[0] for p in pairs)
        pairs[0][1].sendall(associate_rq("ANGIO"))  # a whole request waits unread: progressing
        pairs[1][1].sendall(associate_rq("ANGIO")[:3])  # 3 bytes of a header: stalled
        assert guard.admit(hurried.fileno(), "h", hurried) and guard.admit(stalled.fileno(), "h", stalled)
        assert guard.admit(newcomer.fileno(), "h", newcomer)  # closes the stalled one, not the older hurried one
        assert closed == [("pending-evicted", "h")] and pairs[1][1].recv(10) == b""
        guard.progress(newcomer.fileno())
        assert not guard.admit(last.fileno(), "h", last)  # both pending ones progress: the newcomer is refused
        assert closed[-1] == ("pending-full", "h") and guard.pending("h") == 2
        guard.deadline_s = 0.0
        assert guard.expire() == 2 and pairs[0][1].recv(10) == b"" and pairs[2][1].recv(10) == b""
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_late_close_of_an_old_connection_spares_a_new_one_on_the_same_descriptor():
    """The guard's keys are file descriptors, which the OS reuses at once: the old connection's
    thread reporting its end after a newcomer got its descriptor must not take the newcomer off
    the guard (it would never be evicted or expired: seen as a flaky crowd test under load)."""
    from dicom_node.scp import ConnectionGuard

    guard = ConnectionGuard(per_host=8, total=10, deadline_s=60)
    old, old_peer = socket.socketpair()
    new, new_peer = socket.socketpair()
    try:
        fd = old.fileno()
        guard.admit(fd, "h", old)
        guard.admit(fd, "h", new)  # the OS gave the newcomer the old one's descriptor
        guard.closed(fd, old)  # the old connection's thread, late
        assert guard.pending("h") == 1
        guard.deadline_s = 0.0
        assert guard.expire() == 1 and new_peer.recv(10) == b""  # still guarded: closed at its deadline
        guard.admit(fd, "h", new)
        guard.authenticated(fd, new)  # the connection's own report removes it
        assert guard.pending("h") == 0
    finally:
        for s in (old, old_peer, new, new_peer):
            s.close()


def test_p_data_longer_than_the_advertised_maximum_is_refused(start_node):
    node = start_node(limits={"max_pdu_size": 16384})
    assert send(node.scp.port, [make_xa(frames=16, size=512, seed=60)]) == [0]  # peers that respect it
    with socket.create_connection(("127.0.0.1", node.scp.port), timeout=5) as s:
        s.sendall(associate_rq("ANGIO"))
        assert s.recv(1)[0] == 0x02  # A-ASSOCIATE-AC
        s.sendall(struct.pack(">BBL", 0x04, 0, 1 << 30) + b"\0" * 4096)
        assert _closed_by_node(s, 3.0)
    assert _rejections(node, "pdu-too-large") == 1
    _echo_quickly(node.scp.port)
