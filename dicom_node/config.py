"""Typed configuration of the DICOM node (``conf/node.yaml``), validated at start-up.

Relative paths in the file are resolved against the folder holding the file, and ``~`` is
expanded, so a configuration can travel with its state folder. The state folder holds the spool
(received instances), the outbox (output objects waiting for delivery) and the SQLite journal.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from segmentation.inference.config import InferenceConfig, check_inference_section
from tavicore.config import ConfigError, apply_overrides, from_dict, read_yaml, setting

#: Output kinds a worker can produce for each segmented run.
OUTPUT_KINDS = ("seg", "sr", "gsps", "sc")

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: no backslash, 16 chars
_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
GIB = 1024**3


def _check_ae_title(value: str, where: str) -> None:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(
            f"{where}: invalid AE title {value!r} (1-16 printable ASCII characters, "
            "not all spaces, no backslash)"
        )


@dataclass(frozen=True)
class TLSServerConfig:
    """DICOM TLS on the node's listening port (server certificate, client certificates)."""

    enabled: bool = setting(False, doc="accept only TLS associations")
    cert_file: Path | None = setting(None, doc="PEM server certificate (chain)")
    key_file: Path | None = setting(None, doc="PEM private key of the server certificate")
    ca_file: Path | None = setting(None, doc="PEM CA bundle that signs client certificates")
    require_client_cert: bool = setting(True, doc="reject peers without a valid client certificate")

    def __post_init__(self) -> None:
        if self.enabled:
            missing = [n for n in ("cert_file", "key_file") if getattr(self, n) is None]
            if self.require_client_cert and self.ca_file is None:
                missing.append("ca_file")
            if missing:
                raise ValueError(f"tls is enabled but {', '.join(missing)} is not set")


@dataclass(frozen=True)
class TLSClientConfig:
    """TLS towards one destination (the node is the client)."""

    ca_file: Path | None = setting(None, doc="PEM CA bundle to verify the destination (None: system CAs)")
    cert_file: Path | None = setting(None, doc="PEM client certificate presented to the destination")
    key_file: Path | None = setting(None, doc="PEM private key of the client certificate")
    server_hostname: str | None = setting(None, doc="name checked against the server certificate")
    check_hostname: bool = setting(True, doc="verify that the certificate names server_hostname/host")

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls: cert_file and key_file must be given together")


@dataclass(frozen=True)
class CallerConfig:
    """A calling AE allowed to associate (optionally only from some hosts)."""

    ae_title: str = setting(doc="calling AE title of the peer (case-sensitive, as DICOM)")
    hosts: tuple[str, ...] = setting(
        (), doc="IP addresses, CIDR networks or host names allowed for this AE title (empty: any)"
    )

    def __post_init__(self) -> None:
        _check_ae_title(self.ae_title, "ae_title")
        for host in self.hosts:
            check_host_entry(host, f"allowed_callers {self.ae_title.strip()}: hosts")


def check_host_entry(value: str, where: str) -> str:
    """Validate one ``hosts`` entry: an IP address, a CIDR network or a DNS host name.

    Returns:
        ``"ip"``, ``"network"`` or ``"name"``.

    Raises:
        ValueError: none of the three (e.g. ``"not an ip at all"``), naming ``where``.
    """
    text = str(value).strip()
    try:
        ipaddress.ip_address(text)
        return "ip"
    except ValueError:
        pass
    if "/" in text:
        try:
            ipaddress.ip_network(text, strict=False)
            return "network"
        except ValueError as exc:
            raise ValueError(f"{where}: {value!r} is not a valid CIDR network ({exc})") from None
    name = text.removesuffix(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels) \
            or labels[-1].isdigit():
        raise ValueError(
            f"{where}: {value!r} is neither an IP address, a CIDR network (10.0.0.0/24) nor a host name"
        )
    return "name"


def resolve_host_entry(value: str) -> tuple[str, ...]:
    """The IP addresses a host name resolves to (an IP or a network is returned as it is).

    Raises:
        ValueError: a name that does not resolve.
    """
    kind = check_host_entry(value, "hosts")
    if kind != "name":
        return (str(value).strip(),)
    try:
        infos = socket.getaddrinfo(str(value).strip(), None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"hosts: {value!r} does not resolve ({exc})") from None
    return tuple(sorted({str(info[4][0]) for info in infos}))


@dataclass(frozen=True)
class DestinationConfig:
    """A C-STORE destination for output objects (PACS, viewer, archive)."""

    name: str = setting(doc="short name used in logs, metrics and the journal")
    ae_title: str = setting(doc="called AE title of the destination")
    host: str = setting(doc="host name or IP address")
    port: int = setting(ge=1, le=65535, doc="DICOM port")
    tls: TLSClientConfig | None = setting(None, doc="TLS settings (None: plain TCP)")
    timeout_s: float = setting(30.0, gt=0, le=3600, doc="connection/ACSE/DIMSE timeout")

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z0-9_.-]{1,32}$", self.name):
            raise ValueError(f"destination name {self.name!r}: use 1-32 of A-Z a-z 0-9 _ . -")
        _check_ae_title(self.ae_title, f"destination {self.name}: ae_title")


@dataclass(frozen=True)
class LimitsConfig:
    """What one association or instance may cost the node."""

    max_associations: int = setting(8, ge=1, le=256, doc="concurrent associations accepted")
    max_instance_bytes: int = setting(4 * GIB, ge=1024, doc="largest instance accepted (bytes)")
    max_frames: int = setting(5000, ge=1, doc="most frames in one instance")
    max_frame_pixels: int = setting(4096 * 4096, ge=1, doc="largest Rows x Columns of a frame")
    min_free_bytes: int = setting(GIB, ge=0, doc="free-space floor on the spool's disk")
    max_pdu_size: int = setting(0, ge=0, doc="advertised max PDU (0: unlimited, fastest)")
    fast_pdu_reader: bool = setting(True, doc="read PDUs with fewer copies (False: pynetdicom's reader)")
    network_timeout_s: float = setting(60.0, gt=0, doc="idle network timeout")
    acse_timeout_s: float = setting(30.0, gt=0, doc="association negotiation timeout")
    dimse_timeout_s: float = setting(120.0, gt=0, doc="DIMSE message timeout")
    handshake_timeout_s: float = setting(
        5.0, gt=0, le=600,
        doc="time from TCP accept until the whole A-ASSOCIATE-RQ has arrived (TLS handshake included)",
    )
    max_control_pdu_bytes: int = setting(
        65536, ge=1024, le=16 << 20, doc="largest PDU other than P-DATA-TF (A-ASSOCIATE-RQ...) accepted"
    )
    max_pending_per_host: int = setting(
        8, ge=1, le=1024,
        doc="connections one host may hold before its association is accepted (the oldest is closed)",
    )
    max_pending_connections: int = setting(
        64, ge=1, le=4096, doc="connections before association acceptance, all hosts together"
    )
    caller_quota: int = setting(
        2, ge=1, le=256, doc="associations every calling AE title may hold even when slots are scarce"
    )
    reserved_associations: int = setting(
        2, ge=0, le=256,
        doc="slots a calling AE above its caller_quota cannot take (kept for the other callers)",
    )
    keep_failed_days: float = setting(
        30.0, ge=0, doc="spool files of failed runs are deleted after this many days (0: kept forever)"
    )
    keep_other_days: float = setting(
        30.0, ge=0, doc="kept non-image objects are deleted from the spool after this many days (0: never)"
    )


@dataclass(frozen=True)
class ProcessingConfig:
    """How received runs are segmented and what is written.

    The model's own settings (device, backend, batch size, folds, TTA, post-processing,
    confidence, threads) are the ``inference`` section: an
    :class:`~segmentation.inference.config.InferenceConfig`, the schema ``taviseg predict``
    and ``taviseg evaluate`` read too.
    """

    model_folder: Path | None = setting(None, doc="model folder (config.json + fold weights)")
    chunk_frames: int = setting(64, ge=1, le=100000, doc="frames decoded and predicted at once")
    workers: int = setting(1, ge=1, le=64, doc="runs processed concurrently")
    outputs: tuple[str, ...] = setting(("seg", "sr", "sc"), doc="output kinds: seg, sr, gsps, sc")
    series_number: int = setting(9100, ge=1, le=2**31 - 1, doc="first series number of outputs")
    uid_root: str | None = setting(None, doc="UID root of output objects, ending with '.'")
    keep_processed: bool = setting(False, doc="keep received instances after processing")
    processor_factory: str | None = setting(
        None, doc="module:function returning a RunProcessor (integrations/tests; None: the model)"
    )
    inference: InferenceConfig = setting(
        default_factory=InferenceConfig,
        doc="how the model runs: the schema of conf/inference.yaml (onnx_cache_dir null: <state_dir>/onnx-cache)",
    )
    qc: Literal["mark", "withhold", "off"] = setting(
        "mark",
        doc="per-frame quality control (docs/qc.md): mark = segment every frame, list the uncertain ones "
            "in the SR and the SEG's descriptions; withhold = no outline on uncertain frames, no SEG for a "
            "failed run; off = no quality control",
    )

    def __post_init__(self) -> None:
        bad = [k for k in self.outputs if k not in OUTPUT_KINDS]
        if bad or not self.outputs:
            raise ValueError(
                f"processing.outputs: invalid kind(s) {bad or '[]'}; allowed: {', '.join(OUTPUT_KINDS)}"
            )
        if "seg" not in self.outputs:
            raise ValueError("processing.outputs must include 'seg' (the other kinds reference it)")
        if self.uid_root is not None and (len(self.uid_root) > 40 or not _UID_ROOT.match(self.uid_root)):
            raise ValueError(
                f"processing.uid_root {self.uid_root!r}: expected digits and dots ending with '.', "
                "at most 40 characters (e.g. '1.2.826.0.1.3680043.10.54.')"
            )
        if self.processor_factory is not None and not re.match(
            r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", self.processor_factory
        ):
            raise ValueError(
                f"processing.processor_factory {self.processor_factory!r}: expected 'module.path:function'"
            )


@dataclass(frozen=True)
class DeliveryConfig:
    """Retry policy of the outbox."""

    initial_retry_s: float = setting(5.0, gt=0, le=3600, doc="first retry delay")
    max_retry_s: float = setting(300.0, gt=0, le=86400, doc="longest retry delay")
    backoff_factor: float = setting(2.0, ge=1.0, le=10.0, doc="delay multiplier per failure")
    give_up_after_s: float = setting(7 * 86400.0, gt=0, doc="give up this long after the first try")
    keep_delivered: bool = setting(False, doc="keep output files after delivery")
    max_per_association: int = setting(64, ge=1, le=10000, doc="objects sent per association")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus text endpoint (``GET /metrics``)."""

    enabled: bool = setting(True, doc="serve metrics over HTTP")
    bind_address: str = setting("127.0.0.1", doc="address of the metrics endpoint")
    port: int = setting(9108, ge=0, le=65535,
                        doc="port of the metrics endpoint (0: any free port, written to the ready file)")


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``taviseg serve`` needs."""

    ae_title: str = setting("TAVISEG", doc="the node's own (called) AE title")
    bind_address: str = setting("127.0.0.1", doc="listening address (0.0.0.0: all interfaces)")
    port: int = setting(11112, ge=1, le=65535, doc="listening DICOM port")
    require_called_ae_title: bool = setting(True, doc="reject associations to another AE title")
    allowed_callers: tuple[CallerConfig, ...] = setting((), doc="calling AEs allowed (empty: none)")
    allow_any_caller: bool = setting(False, doc="accept every calling AE title (test benches only)")
    other_objects: Literal["keep", "refuse"] = setting(
        "keep", doc="non-image objects (dose SR, PR...): keep without segmenting, or refuse"
    )
    state_dir: Path = setting(Path("~/.local/state/taviseg/node"), doc="spool, outbox, journal")
    spool_folder: Path | None = setting(None, doc="received instances (default: <state_dir>/spool)")
    outbox_folder: Path | None = setting(None, doc="outputs awaiting delivery (default: <state_dir>/outbox)")
    output_folder: Path | None = setting(None, doc="folder destination (default: <state_dir>/results)")
    ready_file: Path | None = setting(None, doc="JSON file written once the node accepts associations")
    shutdown_timeout_s: float = setting(30.0, gt=0, le=3600, doc="grace period on SIGTERM")
    tls: TLSServerConfig = field(default_factory=TLSServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    destinations: tuple[DestinationConfig, ...] = setting((), doc="C-STORE destinations (empty: output_folder)")
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        _check_ae_title(self.ae_title, "ae_title")
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destinations: duplicate name(s) {dupes}")
        if not self.allowed_callers and not self.allow_any_caller:
            raise ValueError(
                "allowed_callers is empty: list the calling AE titles of the angiography "
                "systems (or set allow_any_caller: true on a test bench)"
            )

    @property
    def spool_dir(self) -> Path:
        """Received instances (``instances/``) and in-flight receptions (``incoming/``)."""
        return self.spool_folder if self.spool_folder is not None else self.state_dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        """Output objects waiting for delivery."""
        return self.outbox_folder if self.outbox_folder is not None else self.state_dir / "outbox"

    @property
    def journal_path(self) -> Path:
        """The SQLite journal (WAL mode)."""
        return self.state_dir / "journal.sqlite"

    @property
    def results_dir(self) -> Path:
        """The folder destination used when no C-STORE destination is configured."""
        return self.output_folder if self.output_folder is not None else self.state_dir / "results"


def _resolve(value: Any, base: Path) -> Any:
    """Return ``value`` with every Path expanded (``~``) and made absolute against ``base``."""
    if isinstance(value, Path):
        value = value.expanduser()
        return value if value.is_absolute() else (base / value).resolve()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _resolve(getattr(value, f.name), base) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple):
        return tuple(_resolve(v, base) for v in value)
    return value


def load_node_config(path: str | Path, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """Load and validate a node configuration file.

    Args:
        path: YAML file (``conf/node.yaml`` or a deployment copy).
        overrides: Dotted-key overrides (``{"port": 11113}``).

    Returns:
        The configuration with absolute paths (relative ones resolved against the file's folder).

    Raises:
        ConfigError: unknown/mistyped key, out-of-range value or inconsistent settings.
    """
    path = Path(path)
    data = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        check_inference_section(data.get("processing"), "processing")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    cfg = from_dict(NodeConfig, data, source=str(path))
    return _resolve(cfg, path.resolve().parent)


__all__ = [
    "CallerConfig",
    "ConfigError",
    "DeliveryConfig",
    "DestinationConfig",
    "InferenceConfig",
    "LimitsConfig",
    "MetricsConfig",
    "NodeConfig",
    "OUTPUT_KINDS",
    "ProcessingConfig",
    "TLSClientConfig",
    "TLSServerConfig",
    "check_host_entry",
    "load_node_config",
    "resolve_host_entry",
]
