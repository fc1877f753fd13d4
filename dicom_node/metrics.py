"""Prometheus text-format metrics of the node, served over HTTP on a loopback port.

A tiny, dependency-free registry: counters and histograms with labels, and gauges read from a
callback at scrape time (queue depth and outbox size come from the journal). ``GET /metrics``
answers the Prometheus text exposition format 0.0.4; ``GET /healthz`` answers ``ok``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dicom_node.errors import NodeError

logger = logging.getLogger(__name__)

#: Latency buckets (seconds) shared by the node's histograms.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)

_Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: _Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _fmt_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> _Labels:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name}: labels {sorted(labels)}; expected {list(self.labelnames)}")
        return tuple((k, str(labels[k])) for k in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, doc, labelnames)
        self._values: dict[_Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0) to the series of ``labels``."""
        if amount < 0:
            raise ValueError(f"counter {self.name}: negative increment {amount}")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """Current value of one series (0 when never incremented)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        return [f"{self.name}_total{_fmt_labels(k)} {_fmt_value(v)}" for k, v in items]


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self, name: str, doc: str, labelnames: Sequence[str] = (), buckets: Iterable[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, doc, labelnames)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[_Labels, list[float]] = {}  # bucket counts..., sum, count

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation."""
        key = self._key(labels)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def count(self, **labels: str) -> int:
        """Number of observations of one series."""
        with self._lock:
            series = self._series.get(self._key(labels))
            return int(series[-1]) if series else 0

    def samples(self) -> list[str]:
        out = []
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for key, series in items:
            for bound, n in zip(self.buckets, series):
                le = (("le", "+Inf" if math.isinf(bound) else repr(bound)),)
                out.append(f"{self.name}_bucket{_fmt_labels(key, le)} {_fmt_value(n)}")
            out.append(f"{self.name}_sum{_fmt_labels(key)} {_fmt_value(series[-2])}")
            out.append(f"{self.name}_count{_fmt_labels(key)} {_fmt_value(series[-1])}")
        return out


class Gauge(_Metric):
    """A value read at scrape time from ``callback`` -> {label values tuple: value}."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        doc: str,
        callback: Callable[[], dict[tuple[str, ...], float]],
        labelnames: Sequence[str] = (),
    ) -> None:
        super().__init__(name, doc, labelnames)
        self.callback = callback

    def samples(self) -> list[str]:
        values = self.callback()
        return [
            f"{self.name}{_fmt_labels(tuple(zip(self.labelnames, k)))} {_fmt_value(v)}"
            for k, v in sorted(values.items())
        ]


class Registry:
    """The node's metrics; :meth:`render` produces the exposition text."""

    def __init__(self, prefix: str = "taviseg_node_") -> None:
        self.prefix = prefix
        self._metrics: list[_Metric] = []
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> _Metric:
        with self._lock:
            if any(m.name == metric.name for m in self._metrics):
                raise ValueError(f"metric {metric.name} registered twice")
            self._metrics.append(metric)
        return metric

    def counter(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> Counter:
        """Register a counter ``<prefix><name>_total``."""
        return self._add(Counter(self.prefix + name, doc, labelnames))  # type: ignore[return-value]

    def histogram(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> Histogram:
        """Register a latency histogram ``<prefix><name>``."""
        return self._add(Histogram(self.prefix + name, doc, labelnames))  # type: ignore[return-value]

    def gauge(
        self, name: str, doc: str, callback: Callable[[], dict[tuple[str, ...], float]], labelnames: Sequence[str] = ()
    ) -> Gauge:
        """Register a gauge computed by ``callback`` at scrape time."""
        return self._add(Gauge(self.prefix + name, doc, callback, labelnames))  # type: ignore[return-value]

    def render(self) -> str:
        """Every metric in Prometheus text format (a failing gauge callback is skipped, logged)."""
        lines: list[str] = []
        with self._lock:
            metrics = list(self._metrics)
        for m in metrics:
            try:
                samples = m.samples()
            except NodeError as exc:  # a gauge reads the journal; one bad read must not break /metrics
                logger.warning("metric %s unavailable: %s", m.name, exc)
                continue
            lines += m.header() + samples
        return "\n".join(lines) + "\n"


class NodeMetrics:
    """The node's named metrics (one instance per node process)."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.associations = r.counter("associations", "associations requested, by result", ("result",))
        self.received = r.counter("received", "instances answered Success, by kind", ("kind",))
        self.refused = r.counter("refused", "C-STORE requests answered with a failure, by status", ("status",))
        self.received_bytes = r.counter("received_bytes", "bytes of instances stored")
        self.processed = r.counter("processed", "instances processed, by result", ("result",))
        self.outputs = r.counter("outputs", "output objects created, by kind", ("kind",))
        self.delivered = r.counter("delivered", "output objects delivered, by destination", ("destination",))
        self.delivery_failures = r.counter(
            "delivery_failures", "failed delivery attempts, by destination", ("destination",)
        )
        self.given_up = r.counter("given_up", "output objects given up, by destination", ("destination",))
        self.store_seconds = r.histogram("store_seconds", "C-STORE handler time (durable store)")
        self.processing_seconds = r.histogram("processing_seconds", "time to process one instance")
        self.queue_seconds = r.histogram("queue_seconds", "time from reception to processing start")
        self.end_to_end_seconds = r.histogram(
            "end_to_end_seconds", "time from reception to delivery of an output", ("destination",)
        )


class MetricsServer:
    """``http.server`` in a daemon thread answering ``/metrics`` and ``/healthz``.

    Args:
        registry: What to serve.
        address: (host, port) to bind (port 0: any free port, see :attr:`port`).

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, registry: Registry, address: tuple[str, int]) -> None:
        reg = registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                if self.path.split("?")[0] == "/metrics":
                    body = reg.render().encode()
                    ctype = "text/plain; version=0.0.4; charset=utf-8"
                elif self.path == "/healthz":
                    body, ctype = b"ok\n", "text/plain"
                else:
                    self.send_error(404, "try /metrics")
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
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
