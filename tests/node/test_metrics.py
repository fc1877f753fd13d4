"""Metrics: Prometheus text format, served over HTTP."""

from __future__ import annotations

import urllib.request

import pytest

from dicom_node.metrics import MetricsServer, NodeMetrics, Registry


def test_text_format_counters_histograms_gauges():
    reg = Registry(prefix="t_")
    c = reg.counter("received", "instances", ("kind",))
    h = reg.histogram("latency_seconds", "latency")
    reg.gauge("queue", "depth", lambda: {("received",): 3.0}, ("state",))
    c.inc(kind="image")
    c.inc(2, kind="image")
    h.observe(0.2)
    h.observe(7.0)
    text = reg.render()
    assert "# TYPE t_received counter" in text
    assert 't_received_total{kind="image"} 3' in text
    assert 't_latency_seconds_bucket{le="0.25"} 1' in text
    assert 't_latency_seconds_bucket{le="10.0"} 2' in text
    assert 't_latency_seconds_bucket{le="+Inf"} 2' in text
    assert "t_latency_seconds_count 2" in text
    assert "t_latency_seconds_sum 7.2" in text
    assert 't_queue{state="received"} 3' in text
    with pytest.raises(ValueError, match="labels"):
        c.inc(other="x")
    with pytest.raises(ValueError, match="negative"):
        c.inc(-1, kind="image")


def test_http_endpoint_serves_metrics():
    m = NodeMetrics()
    m.received.inc(kind="image")
    server = MetricsServer(m.registry, ("127.0.0.1", 0))
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as rsp:
            assert rsp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = rsp.read().decode()
        assert 'taviseg_node_received_total{kind="image"} 1' in body
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as rsp:
            assert rsp.read() == b"ok\n"
    finally:
        server.stop()
