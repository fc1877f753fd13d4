"""Prometheus metrics of the node (prometheus_client), served over HTTP on a loopback port.

Each :class:`NodeMetrics` owns a private ``CollectorRegistry`` (never the process-global one), so
several nodes or tests in one process do not collide. Counters and histograms are
prometheus_client's; callers use its API (``m.received.labels(kind="image").inc()``,
``m.store_seconds.observe(s)``). Gauges whose values come from the journal are read at scrape
time by :meth:`NodeMetrics.gauge`. ``GET /metrics`` answers the text exposition format 0.0.4
(``generate_latest``); ``GET /healthz`` answers ``ok`` (200), or ``degraded: <reasons>`` (503)
while the node's health callback reports a problem (no association slot free, the spool disk
under its free-space floor, outputs waiting for disk space).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from dicom_node.errors import NodeError

logger = logging.getLogger(__name__)

#: Latency buckets (seconds) shared by the node's histograms.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)

#: ``{label values: value}`` read from the journal at scrape time.
GaugeCallback = Callable[[], dict[tuple[str, ...], float]]


class _CallbackGauge(Collector):
    """A gauge family computed by ``callback`` at each scrape.

    A :class:`NodeError` from the callback (the journal could not be read) drops this family
    from that scrape, logged, instead of failing the whole ``/metrics`` answer.
    """

    def __init__(self, name: str, doc: str, callback: GaugeCallback, labelnames: Sequence[str]) -> None:
        self.name, self.doc, self.callback, self.labelnames = name, doc, callback, list(labelnames)

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        try:
            values = self.callback()
        except NodeError as exc:
            logger.warning("metric %s unavailable: %s", self.name, exc)
            return
        family = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        for key, value in sorted(values.items()):
            family.add_metric(list(key), value)
        yield family


class _WithoutCreated(Collector):
    """``registry`` without the ``*_created`` series prometheus_client adds to counters and
    histograms, so that the endpoint exposes the same series as before the library was used
    (without touching the library's process-global switch ``disable_created_metrics``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():  # fresh Metric objects at every call
            family.samples = [s for s in family.samples if s.name != family.name + "_created"]
            yield family


def render(registry: CollectorRegistry) -> bytes:
    """The exposition text (format 0.0.4) of ``registry``, without ``*_created`` series."""
    return generate_latest(_WithoutCreated(registry))


class NodeMetrics:
    """The node's named metrics (one instance per node, each with its own registry).

    Attributes:
        registry: The private ``CollectorRegistry`` that :class:`MetricsServer` serves.
        namespace: Prefix of every name (``taviseg_node_``; counters end in ``_total``).
    """

    namespace = "taviseg_node"

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

        def counter(name: str, doc: str, labelnames: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, labelnames, namespace=self.namespace, registry=self.registry)

        def histogram(name: str, doc: str, labelnames: Sequence[str] = ()) -> Histogram:
            return Histogram(
                name, doc, labelnames, namespace=self.namespace, registry=self.registry, buckets=LATENCY_BUCKETS
            )

        self.associations = counter("associations", "associations requested, by result", ("result",))
        self.rejections = counter(
            "rejections",
            "connections and associations refused, by reason (calling-ae, host, called-ae, local-limit, "
            "caller-quota, tls-handshake, handshake-timeout, pending-evicted, pdu-too-large, "
            "data-before-association)",
            ("reason",),
        )
        self.received = counter("received", "instances answered Success, by kind", ("kind",))
        self.refused = counter("refused", "C-STORE requests answered with a failure, by status", ("status",))
        self.received_bytes = counter("received_bytes", "bytes of instances stored")
        self.processed = counter("processed", "instances processed, by result", ("result",))
        self.outputs = counter("outputs", "output objects created, by kind", ("kind",))
        self.qc_frames = counter(
            "qc_frames", "frames of segmented runs by QC outcome (accepted, marked, withheld, no_root)", ("outcome",)
        )
        self.qc_runs = counter("qc_runs", "runs assessed by QC, by verdict (pass, fail, unknown)", ("verdict",))
        self.delivered = counter("delivered", "output objects delivered, by destination", ("destination",))
        self.delivery_failures = counter(
            "delivery_failures", "failed delivery attempts, by destination", ("destination",)
        )
        self.given_up = counter("given_up", "output objects given up, by destination", ("destination",))
        self.store_seconds = histogram("store_seconds", "C-STORE handler time (durable store)")
        self.processing_seconds = histogram("processing_seconds", "time to process one instance")
        self.queue_seconds = histogram("queue_seconds", "time from reception to processing start")
        self.end_to_end_seconds = histogram(
            "end_to_end_seconds", "time from reception to delivery of an output", ("destination",)
        )

    def gauge(self, name: str, doc: str, callback: GaugeCallback, labelnames: Sequence[str] = ()) -> None:
        """Register a gauge ``taviseg_node_<name>`` whose samples ``callback`` returns at each scrape.

        Raises:
            ValueError: the name is already registered.
        """
        self.registry.register(_CallbackGauge(f"{self.namespace}_{name}", doc, callback, labelnames))

    def value(self, name: str, **labels: str) -> float | None:
        """Current value of one sample, by full sample name without the prefix (e.g.
        ``given_up_total``, ``store_seconds_count``); None when the series does not exist."""
        return self.registry.get_sample_value(f"{self.namespace}_{name}", labels)

    def render(self) -> bytes:
        """What ``GET /metrics`` answers."""
        return render(self.registry)


class MetricsServer:
    """``http.server`` in a daemon thread answering ``/metrics`` and ``/healthz``.

    Args:
        registry: What to serve.
        address: (host, port) to bind (port 0: any free port, see :attr:`port`).
        health: Returns the node's current problems (empty: healthy) for ``/healthz``.

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, registry: CollectorRegistry, address: tuple[str, int],
                 health: Callable[[], list[str]] | None = None) -> None:
        reg = registry
        check = health or (list)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's API name
                if self.path.split("?")[0] == "/metrics":
                    body, ctype = render(reg), CONTENT_TYPE_PLAIN_0_0_4
                elif self.path == "/healthz":
                    try:
                        problems = check()
                    except Exception as exc:  # noqa: BLE001 - a failing check is a problem, not a crash
                        problems = [f"health check failed: {type(exc).__name__}"]
                    text = "ok" if not problems else "degraded: " + "; ".join(problems)
                    body, ctype, code = (text + "\n").encode(), "text/plain", 503 if problems else 200
                else:
                    self.send_error(404, "try /metrics")
                    return
                self.send_response(code if self.path == "/healthz" else 200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("metrics http: " + format, *args)

        self._server = ThreadingHTTPServer(address, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()
        logger.info("metrics on http://%s:%d/metrics", self._server.server_address[0], self.port)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
