"""Scenarios "hostile peers and full disks": the attacks of issue 18 against a real node process.

    .venv/bin/python -m bench.reliability --only hostile [--quick] [--attack-s 20]

One summary line each (``--only`` names them one by one too):

tls-stall
    A TLS node; ``--stall-connections`` plain TCP connections that send nothing (no ClientHello)
    are held open while an allowed peer (trusted client certificate) sends C-ECHO every 0.5 s.
slowloris
    A crowd of connections that send 3 bytes of a PDU header, and of connections that drip an
    A-ASSOCIATE-RQ at one byte per 0.5 s (each reconnecting when the node closes it), while an
    allowed peer sends C-ECHO every 0.5 s.
idle-flood
    ``--flood-connections`` idle TCP connections opened at once and held; C-ECHO probes.
huge-pdu
    Connections sending an A-ASSOCIATE-RQ header that declares 0xFFFFFFFF bytes, then streaming
    data as fast as the node takes it (each at most 64 MiB); C-ECHO probes.
ae-hog
    One allowed calling AE opens associations until the node refuses one and holds them; another
    allowed AE must still get C-ECHO answered; ``/healthz`` must say degraded once every slot is
    taken and ok again after.
disk-full-receive
    Spool and outbox on a 24 MB tmpfs (mounted here; needs root), 8 small runs answered Success,
    then one 63 MB instance: it must be answered 0xA700 (never an abort), leave no partial file,
    and the 8 acknowledged runs must all be processed and delivered.
disk-full-output
    Outbox on a 1 MB tmpfs, filled up; 8 runs answered Success, their outputs cannot be written
    (the runs wait, ``taviseg status`` shows them); space is freed: every run must be delivered.
log-injection
    A C-STORE whose SOP Instance UID carries a newline and a forged log record with a patient
    name, and an A-ASSOCIATE-RQ whose calling AE title carries control characters; the node's
    log must hold no forged line and no trace of the name.

Figures: how long the allowed peer waited for each C-ECHO during the attack (target: every one
answered within 2 s), the node's RSS growth per hostile connection (target <= 1 MB),
acknowledged runs lost (target 0 after space returns), forged log lines (target 0). Every
connection is to 127.0.0.1, every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from bench.reliability.harness import (
    Bench,
    BenchNode,
    journal_rows,
    journal_state_counts,
    logger,
    proc_status_kib,
    send_dataset,
    wait_drained,
)
from testkit.node import VERIFICATION, echo, make_xa, wait_until

HOSTILE_SCENARIOS = ("tls-stall", "slowloris", "idle-flood", "huge-pdu", "ae-hog", "disk-full-receive",
                     "disk-full-output", "log-injection")
#: The target of every C-ECHO an allowed peer sends during an attack.
ECHO_TARGET_S = 2.0
#: The target of the node's RSS growth per hostile connection.
RSS_TARGET_KIB = 1024
PROBE_INTERVAL_S = 0.5
#: Limits the hostile scenarios' nodes run with (the defaults of conf/node.yaml but a shorter
#: handshake deadline, so that a quick run sees it act).
HOSTILE_LIMITS = {"min_free_bytes": 0, "handshake_timeout_s": 3}
FORGED_NAME = "DOE^JOHN"
#: A hostile connection closed by the node reconnects after this pause (about 10 per second
#: per attacker thread: a storm, bounded so that the bench does not starve the node of CPU).
RECONNECT_S = 0.1


# ---- peers ---------------------------------------------------------------------------------


def associate_rq(calling: str = "ANGIO", called: str = "TAVISEG") -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing Verification (what echoscu sends first)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    context = build_context(VERIFICATION)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.0"
    primitive.user_information = [length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def raw_associate_rq(calling_field: bytes, called: str = "TAVISEG") -> bytes:
    """An A-ASSOCIATE-RQ whose 16-byte calling AE title field is ``calling_field`` as it is
    (control characters included: what pynetdicom's encoder would refuse to send)."""
    pdu = bytearray(associate_rq("XXXXXXXXXXXXXXXX", called))
    pdu[26:42] = calling_field[:16].ljust(16, b" ")  # PS3.8 9.3.2: calling AE title at offset 26
    return bytes(pdu)


def timed_echo(port: int, *, calling: str = "ANGIO", tls_args: Any = None, timeout: float = 10.0) -> tuple[bool, float]:
    """(answered Success, seconds the peer waited) for one C-ECHO on a new association."""
    t0 = time.monotonic()
    try:
        status = echo(port, calling=calling, tls_args=tls_args)
    except (OSError, RuntimeError) as exc:
        logger.debug("C-ECHO failed: %s", exc)
        status = None
    return status == 0x0000, time.monotonic() - t0


@dataclass
class Probes:
    """C-ECHO probes of an allowed peer during an attack."""

    waits: list[float] = field(default_factory=list)
    failed: int = 0

    def run(self, port: int, duration: float, *, calling: str = "ANGIO", tls_args: Any = None,
            stop: threading.Event | None = None) -> Probes:
        """Probe every PROBE_INTERVAL_S for ``duration`` seconds (bounded count)."""
        deadline = time.monotonic() + duration
        for _ in range(int(duration / PROBE_INTERVAL_S) + 1):
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                break
            ok, waited = timed_echo(port, calling=calling, tls_args=tls_args)
            self.waits.append(waited)
            self.failed += not ok
            time.sleep(max(PROBE_INTERVAL_S - waited, 0.0))
        return self

    @property
    def ok(self) -> bool:
        return bool(self.waits) and self.failed == 0 and max(self.waits) <= ECHO_TARGET_S

    def describe(self) -> str:
        if not self.waits:
            return "no C-ECHO probe ran"
        answered = len(self.waits) - self.failed
        return (f"allowed peer's C-ECHO answered {answered} of {len(self.waits)} within "
                f"{max(self.waits):.2f} s at most (median {sorted(self.waits)[len(self.waits) // 2]:.2f} s, "
                f"target {ECHO_TARGET_S:g} s)")


class Crowd:
    """Hostile connections held by threads until :meth:`stop` (each bounded in time and count)."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []
        self.opened = 0
        self.closed_by_node = 0
        self._lock = threading.Lock()

    def spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self.threads.append(t)
        t.start()

    def connect(self, port: int) -> socket.socket | None:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError as exc:
            logger.debug("hostile connect failed: %s", exc)
            return None
        with self._lock:
            self.sockets.append(s)
            self.opened += 1
        return s

    def reconnecting(self, port: int) -> Iterator[socket.socket]:
        """Connections to ``port`` one after another until :meth:`stop` (at most 1000): the next
        is opened RECONNECT_S after the caller is done with one, 0.2 s after a failed connect."""
        for _ in range(1000):
            if self.stop_event.is_set():
                return
            s = self.connect(port)
            if s is None:
                time.sleep(0.2)
                continue
            yield s
            time.sleep(RECONNECT_S)

    def node_closed(self, s: socket.socket, wait: float) -> bool:
        """True when the node closes ``s`` within ``wait`` s (reading and dropping what it sends)."""
        s.settimeout(0.2)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not self.stop_event.is_set():
            try:
                data = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                self.count_closed()
                return True
        return False

    def count_closed(self) -> None:
        """Count one hostile connection the node closed (threads call it)."""
        with self._lock:
            self.closed_by_node += 1

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(10)
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


def metrics_text(node: BenchNode) -> str:
    """The node's ``/metrics`` text ('' when unreachable)."""
    port = node.cfg["metrics"]["port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as rsp:
            return rsp.read().decode()
    except OSError:
        return ""


def rejections(node: BenchNode) -> dict[str, int]:
    """``taviseg_node_rejections_total`` by reason."""
    found: dict[str, int] = {}
    for line in metrics_text(node).splitlines():
        if line.startswith("taviseg_node_rejections_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = int(float(line.rsplit(" ", 1)[1]))
    return found


def health(node: BenchNode) -> tuple[int, str]:
    """(HTTP status, body) of ``/healthz``."""
    port = node.cfg["metrics"]["port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as rsp:
            return rsp.status, rsp.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()
    except OSError as exc:
        return 0, str(exc)


def rss_kib(node: BenchNode) -> int:
    """The node process's resident set now (KiB)."""
    return proc_status_kib(node.proc.pid, "VmRSS") or 0 if node.alive() else 0


class RssPeak:
    """Samples the node's RSS every 0.5 s in a thread (bounded count) while a ``with`` block runs."""

    def __init__(self, node: BenchNode, max_s: float) -> None:
        self.node, self.max_s = node, max_s
        self.start = rss_kib(node)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        for _ in range(int(self.max_s * 2) + 4):
            self.peak = max(self.peak, rss_kib(self.node))
            if self._stop.wait(0.5):
                return

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_kib(self.node))

    @property
    def growth_kib(self) -> int:
        return max(self.peak - self.start, 0)


def _fmt_rejections(found: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(found.items())) or "none"


@contextlib.contextmanager
def running(node: BenchNode) -> Iterator[BenchNode]:
    """The node started, then stopped; ``node.crashes`` is 1 when it had exited by itself."""
    node.start()
    node.crashes = 0
    try:
        yield node
    finally:
        node.crashes = 0 if node.alive() else 1
        node.terminate()


def attack_s(bench: Bench) -> float:
    return float(bench.args.attack_s)


# ---- TLS ------------------------------------------------------------------------------------


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: Any, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("bench CA")).issuer_name(name("bench CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": folder / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, san in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(f"bench {role}")).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2)))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        out[f"{role}_cert"] = folder / f"{role}.pem"
        out[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{role}_key"] = write_key(key, folder / f"{role}.key")
    return out


def client_tls(pki: dict[str, Path]) -> tuple[ssl.SSLContext, str]:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
    ctx.load_cert_chain(pki["client_cert"], pki["client_key"])
    return ctx, "localhost"


# ---- scenarios -------------------------------------------------------------------------------


def scenario_tls_stall(bench: Bench) -> tuple[str, bool]:
    """Plain TCP connections that never start the TLS handshake, held during the attack."""
    pki = make_pki(bench.workdir / "tls-stall" / "pki")
    tls = {"enabled": True, "cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"]),
           "ca_file": str(pki["ca"]), "require_client_cert": True}
    node = bench.node("tls-stall", bench.processor("fake"), tls=tls, limits=HOSTILE_LIMITS)
    tls_args = client_tls(pki)
    node.ready_echo = lambda: echo(node.port, tls_args=tls_args) == 0x0000
    n = bench.args.stall_connections
    crowd = Crowd()
    with running(node):
        def stall() -> None:
            # reconnect whenever the node closes one: the attack lasts the whole probe window
            for s in crowd.reconnecting(node.port):
                crowd.node_closed(s, attack_s(bench) + 10)

        with RssPeak(node, attack_s(bench) + 2) as rss:
            for i in range(n):
                crowd.spawn(stall, f"tls-stall-{i}")
            time.sleep(0.5)
            probes = Probes().run(node.port, attack_s(bench), tls_args=tls_args)
            crowd.stop()
        found = rejections(node)
    growth = rss.growth_kib / max(crowd.opened, 1)
    ok = probes.ok and crowd.closed_by_node >= n and growth <= RSS_TARGET_KIB
    line = (f"tls-stall: {n} silent plain-TCP connections on a TLS port (reconnecting), {attack_s(bench):g} s: "
            f"{probes.describe()}; {crowd.closed_by_node} of {crowd.opened} stalled connections closed by the node "
            f"(handshake_timeout_s {HOSTILE_LIMITS['handshake_timeout_s']}); "
            f"RSS growth {rss.growth_kib / 1024:.1f} MiB in all, {growth:.0f} KiB per hostile connection "
            f"(target <= {RSS_TARGET_KIB} KiB); "
            f"rejections: {_fmt_rejections(found)}")
    return f"{line}; {node.crashes} crashes", ok and node.crashes == 0


def scenario_slowloris(bench: Bench) -> tuple[str, bool]:
    """Connections sending 3 header bytes, and connections dripping an A-ASSOCIATE-RQ."""
    node = bench.node("slowloris", bench.processor("fake"), limits=HOSTILE_LIMITS)
    n = bench.args.slowloris_connections
    rq = associate_rq("ANGIO")
    crowd = Crowd()
    with running(node):
        def partial_header() -> None:
            for s in crowd.reconnecting(node.port):
                with contextlib.suppress(OSError):
                    s.sendall(rq[:3])
                crowd.node_closed(s, attack_s(bench) + 10)

        def drip() -> None:
            for s in crowd.reconnecting(node.port):
                for byte in rq[:-1]:  # never completes the request
                    if crowd.stop_event.is_set():
                        return
                    try:
                        s.sendall(bytes([byte]))
                    except OSError:
                        crowd.count_closed()
                        break
                    time.sleep(0.5)

        with RssPeak(node, attack_s(bench) + 2) as rss:
            for i in range(n):
                crowd.spawn(partial_header, f"slowloris-header-{i}")
                crowd.spawn(drip, f"slowloris-drip-{i}")
            time.sleep(0.5)
            probes = Probes().run(node.port, attack_s(bench))
            crowd.stop()
        found = rejections(node)
    total = rss.growth_kib
    growth = total / max(crowd.opened, 1)
    ok = probes.ok and growth <= RSS_TARGET_KIB
    line = (f"slowloris: {n} connections sending 3 header bytes + {n} dripping an A-ASSOCIATE-RQ at 2 bytes/s "
            f"(all reconnecting, {crowd.opened} connections in {attack_s(bench):g} s): {probes.describe()}; "
            f"RSS growth {total / 1024:.1f} MiB in all, {growth:.0f} KiB per hostile connection "
            f"(target <= {RSS_TARGET_KIB} KiB); "
            f"{crowd.closed_by_node} closed by the node; rejections: {_fmt_rejections(found)}")
    return f"{line}; {node.crashes} crashes", ok and node.crashes == 0


def scenario_idle_flood(bench: Bench) -> tuple[str, bool]:
    """Many idle TCP connections opened at once and held."""
    node = bench.node("idle-flood", bench.processor("fake"), limits=HOSTILE_LIMITS)
    n = bench.args.flood_connections
    crowd = Crowd()
    with running(node):
        rss0 = rss_kib(node)
        for _ in range(n):
            crowd.connect(node.port)
        after_open = rss_kib(node)
        probes = Probes().run(node.port, min(attack_s(bench), 6.0))
        peak = max(after_open, rss_kib(node))
        found = rejections(node)
        crowd.stop()
    growth = max(peak - rss0, 0) / max(n, 1)
    ok = probes.ok and growth <= RSS_TARGET_KIB
    line = (f"idle-flood: {crowd.opened} idle TCP connections at once: {probes.describe()}; RSS growth "
            f"{growth:.0f} KiB per hostile connection (target <= {RSS_TARGET_KIB} KiB); "
            f"rejections: {_fmt_rejections(found)}")
    return f"{line}; {node.crashes} crashes", ok and node.crashes == 0


def scenario_huge_pdu(bench: Bench) -> tuple[str, bool]:
    """A-ASSOCIATE-RQ headers declaring 0xFFFFFFFF bytes, followed by as much data as accepted."""
    node = bench.node("huge-pdu", bench.processor("fake"), limits=HOSTILE_LIMITS)
    n = bench.args.huge_connections
    crowd = Crowd()
    sent: list[int] = []
    with running(node):
        rss0 = rss_kib(node)
        peak = [rss0]

        def flood() -> None:
            s = crowd.connect(node.port)
            if s is None:
                return
            total, chunk = 0, b"\x00" * (1 << 20)
            deadline = time.monotonic() + attack_s(bench)
            try:
                s.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
                s.settimeout(2)
                while total < 64 << 20 and time.monotonic() < deadline and not crowd.stop_event.is_set():
                    s.sendall(chunk)
                    total += len(chunk)
            except OSError:
                crowd.count_closed()
            sent.append(total)

        for i in range(n):
            crowd.spawn(flood, f"huge-pdu-{i}")
        probes = Probes().run(node.port, min(attack_s(bench), 5.0))
        peak.append(rss_kib(node))
        crowd.stop()
        peak.append(rss_kib(node))
        found = rejections(node)
    growth = max(max(peak) - rss0, 0) / max(n, 1)
    ok = probes.ok and growth <= RSS_TARGET_KIB and found.get("pdu-too-large", 0) >= n
    line = (f"huge-pdu: {n} A-ASSOCIATE-RQ headers declaring 0xFFFFFFFF bytes: {found.get('pdu-too-large', 0)} "
            f"refused from the header, {crowd.closed_by_node} connections closed by the node, "
            f"{max(sent or [0]) / 2**20:.0f} MiB at most pushed into socket buffers before the close; "
            f"RSS growth {growth:.0f} KiB per hostile connection (target <= {RSS_TARGET_KIB} KiB); {probes.describe()}")
    return f"{line}; {node.crashes} crashes", ok and node.crashes == 0


def scenario_ae_hog(bench: Bench) -> tuple[str, bool]:
    """One allowed AE takes every association slot it can and holds it."""
    from testkit.node import associate

    limits = {**HOSTILE_LIMITS, "max_associations": 8}
    node = bench.node("ae-hog", bench.processor("fake"), limits=limits)
    held: list[Any] = []
    with running(node):
        try:
            for _ in range(limits["max_associations"] + 2):
                assoc = associate(node.port, [(VERIFICATION, ["1.2.840.10008.1.2"])], calling="ANGIO")
                if not assoc.is_established:
                    break
                held.append(assoc)
            hog = len(held)
            probes = Probes().run(node.port, min(attack_s(bench), 5.0), calling="ANGIO2")
            others = []
            for _ in range(limits["max_associations"]):
                assoc = associate(node.port, [(VERIFICATION, ["1.2.840.10008.1.2"])], calling="ANGIO2")
                if not assoc.is_established:
                    break
                others.append(assoc)
            full = health(node)
            for assoc in others:
                assoc.release()
            wait_until(lambda: health(node)[0] == 200, 10, "healthy again")
            after = health(node)
        finally:
            for assoc in held:
                if assoc.is_established:
                    assoc.release()
        found = rejections(node)
    ok = (probes.ok and hog < limits["max_associations"] and full[0] == 503 and after[0] == 200)
    line = (f"ae-hog: one calling AE took {hog} of {limits['max_associations']} slots (caller_quota 2, "
            f"reserved_associations 2); another allowed AE: {probes.describe()}; /healthz with every slot "
            f"taken: {full[0]} '{full[1]}', after: {after[0]}; rejections: {_fmt_rejections(found)}")
    return f"{line}; {node.crashes} crashes", ok and node.crashes == 0


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path | None]:
    """A tmpfs of ``size`` mounted at ``folder`` (None when it cannot be mounted: not root)."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        logger.warning("cannot mount a tmpfs at %s: %s", folder, proc.stderr.strip())
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30, check=False)


def _runs(count: int, seed: int, frames: int = 4, size: int = 128) -> list:
    return [make_xa(frames=frames, size=size, seed=seed + i) for i in range(count)]


def _delivered_runs(state: Path, uids: set[str]) -> int:
    """Runs among ``uids`` whose every output was delivered."""
    rows = {r["id"]: r for r in journal_rows(state, "instances") if r["sop_instance_uid"] in uids}
    outs = journal_rows(state, "outbox")
    done = 0
    for row in rows.values():
        mine = [o for o in outs if o["instance_id"] == row["id"]]
        done += row["state"] == "done" and bool(mine) and all(o["state"] == "delivered" for o in mine)
    return done


def scenario_disk_full_receive(bench: Bench) -> tuple[str, bool]:
    """Spool and outbox on a 24 MB tmpfs; 8 small runs, then one 63 MB instance."""
    root = bench.workdir / "disk-full-receive"
    with tmpfs(root / "small", "24m") as disk:
        if disk is None:
            return "disk-full-receive: SKIPPED (mounting a tmpfs needs root); node not started, 0 crashes", True
        node = bench.node("disk-full-receive", bench.processor("fake"), limits=HOSTILE_LIMITS,
                          spool_folder=str(disk / "spool"), outbox_folder=str(disk / "outbox"),
                          output_folder=str(root / "results"))
        state = Path(node.cfg["state_dir"])
        runs = _runs(8, 30_000)
        big = make_xa(frames=250, size=512, seed=30_100)  # 63 MB: larger than the file system
        with running(node):
            statuses = [send_dataset(node.port, r) for r in runs]
            acknowledged = {str(r.SOPInstanceUID) for r, s in zip(runs, statuses) if s == 0}
            t0 = time.monotonic()
            big_status = send_dataset(node.port, big)
            answer_s = time.monotonic() - t0
            partial = sum(1 for _ in (disk / "spool" / "incoming").iterdir())
            free_after = shutil.disk_usage(disk).free
            echo_ok, _ = timed_echo(node.port)
            wait_drained(state, 120)
            delivered = _delivered_runs(state, acknowledged)
            alive = node.alive()
    lost = len(acknowledged) - delivered
    ok = big_status == 0xA700 and partial == 0 and lost == 0 and echo_ok and alive and len(acknowledged) == 8
    status_text = "no answer" if big_status is None else f"0x{big_status:04X}"
    line = (f"disk-full-receive: 24 MB tmpfs spool+outbox, {len(acknowledged)} runs answered Success, then a "
            f"63 MB instance answered {status_text} in {answer_s:.1f} s (target 0xA700, no abort); "
            f"{partial} partial files left, {free_after / 2**20:.1f} MiB free after; node alive: {alive}, "
            f"C-ECHO after: {'ok' if echo_ok else 'FAILED'}; acknowledged runs lost: {lost} (target 0)")
    return f"{line}; {node.crashes} crashes", ok and node.crashes == 0


def scenario_disk_full_output(bench: Bench) -> tuple[str, bool]:
    """Outbox on a full 1 MB tmpfs; space returns after the runs were acknowledged."""
    root = bench.workdir / "disk-full-output"
    with tmpfs(root / "outbox", "1m") as disk:
        if disk is None:
            return "disk-full-output: SKIPPED (mounting a tmpfs needs root); node not started, 0 crashes", True
        filler = disk / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:
            for _ in range(64):
                f.write(b"\x00" * 65536)
        node = bench.node("disk-full-output", bench.processor("fake"), limits=HOSTILE_LIMITS,
                          outbox_folder=str(disk / "box"), output_folder=str(root / "results"))
        state = Path(node.cfg["state_dir"])
        runs = _runs(8, 31_000, frames=2, size=256)
        with running(node):
            statuses = [send_dataset(node.port, r) for r in runs]
            acknowledged = {str(r.SOPInstanceUID) for r, s in zip(runs, statuses) if s == 0}

            def waiting() -> int:
                return sum(1 for r in journal_rows(state, "instances")
                           if r["state"] == "received" and r["detail"].startswith("waiting for disk space"))
            try:
                most = wait_until(lambda: waiting() >= len(acknowledged) and waiting(), 60, "runs waiting for space")
            except TimeoutError:
                most = waiting()
            degraded = health(node)
            failed_while_full = journal_state_counts(state)["failed"]
            status_out = subprocess.run(
                [sys.executable, "-m", "taviseg", "status", "--config", str(node.config_path)],
                capture_output=True, text=True, timeout=120, env=node.env, check=False).stdout
            shown = status_out.count("retrying: waiting for disk space")
            t0 = time.monotonic()
            filler.unlink()
            wait_drained(state, 120)
            recovered_s = time.monotonic() - t0
            delivered = _delivered_runs(state, acknowledged)
    lost = len(acknowledged) - delivered
    ok = lost == 0 and failed_while_full == 0 and len(acknowledged) == 8 and degraded[0] == 503
    line = (f"disk-full-output: outbox on a full 1 MB tmpfs, {len(acknowledged)} runs answered Success: "
            f"{most} waited for space (0 failed, {shown} shown by taviseg status, /healthz {degraded[0]}); "
            f"space freed: all delivered {recovered_s:.1f} s later; acknowledged runs lost: {lost} (target 0)")
    return f"{line}; {node.crashes} crashes", ok and node.crashes == 0


def scenario_log_injection(bench: Bench) -> tuple[str, bool]:
    """Control characters in a SOP Instance UID and in a calling AE title."""
    node = bench.node("log-injection", bench.processor("fake"), limits=HOSTILE_LIMITS)
    stamp = time.strftime("%H:%M:%S")
    forged = f"{stamp} CRITICAL dicom_node: FORGED PN={FORGED_NAME}"
    with running(node):
        statuses = []
        for i, sep in enumerate(("\n", "\r\n", "\r")):  # one forged record per UID (64 characters at most)
            ds = make_xa(seed=32_000 + i)
            ds.SOPInstanceUID = f"1.{i}{sep}{forged}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            statuses.append(send_dataset(node.port, ds))
        for field_bytes in (b"ANGIO\n" + forged.encode()[:9], b"\x1b[2J\rFORGED"):
            crowd = Crowd()
            s = crowd.connect(node.port)
            if s is not None:
                with contextlib.suppress(OSError):
                    s.sendall(raw_associate_rq(field_bytes))
                crowd.node_closed(s, 5)
            crowd.stop()
        echo_ok, _ = timed_echo(node.port)
        time.sleep(0.5)  # let the node write its last records
    text = node.log()
    lines = text.splitlines()
    forged_lines = sum(1 for line in lines if line.startswith((forged, "FORGED")) or "FORGED" in line.split(":", 1)[0])
    names = text.count(FORGED_NAME)
    ok = forged_lines == 0 and names == 0 and echo_ok and all(s is not None and s != 0 for s in statuses)
    status_text = ", ".join("no answer" if s is None else f"0x{s:04X}" for s in statuses)
    line = (f"log-injection: 3 SOP Instance UIDs carrying a forged record after LF, CR LF, CR "
            f"answered {status_text}; "
            f"2 calling AE titles with control characters: forged log lines {forged_lines} (target 0), "
            f"patient name in the log {names} time(s) (target 0), C-ECHO after: {'ok' if echo_ok else 'FAILED'}")
    return f"{line}; {node.crashes} crashes", ok and node.crashes == 0


SCENARIO_FUNCTIONS: dict[str, Callable[[Bench], tuple[str, bool]]] = {
    "tls-stall": scenario_tls_stall,
    "slowloris": scenario_slowloris,
    "idle-flood": scenario_idle_flood,
    "huge-pdu": scenario_huge_pdu,
    "ae-hog": scenario_ae_hog,
    "disk-full-receive": scenario_disk_full_receive,
    "disk-full-output": scenario_disk_full_output,
    "log-injection": scenario_log_injection,
}

#: Sizes of the hostile scenarios (``--quick`` and full), merged into the bench's defaults.
QUICK = {"attack_s": 6.0, "stall_connections": 10, "slowloris_connections": 9, "flood_connections": 200,
         "huge_connections": 4}
FULL = {"attack_s": 20.0, "stall_connections": 10, "slowloris_connections": 9, "flood_connections": 200,
        "huge_connections": 8}


def add_arguments(parser: Any) -> None:
    """The hostile scenarios' options of ``python -m bench.reliability``."""
    parser.add_argument("--attack-s", type=float, help="hostile: how long each attack lasts (default 20, quick 6)")
    parser.add_argument("--stall-connections", type=int, help="tls-stall: silent connections (default 10)")
    parser.add_argument("--slowloris-connections", type=int, help="slowloris: connections of each kind (default 9)")
    parser.add_argument("--flood-connections", type=int, help="idle-flood: idle connections (default 200)")
    parser.add_argument("--huge-connections", type=int, help="huge-pdu: connections (default 8, quick 4)")


__all__ = [
    "HOSTILE_SCENARIOS",
    "SCENARIO_FUNCTIONS",
    "Crowd",
    "Probes",
    "associate_rq",
    "client_tls",
    "make_pki",
    "raw_associate_rq",
    "timed_echo",
]
