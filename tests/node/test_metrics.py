"""Metrics: prometheus_client with a private registry per node, served over HTTP."""

from __future__ import annotations

import math
import urllib.request

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicom_node.errors import JournalError
from dicom_node.metrics import MetricsServer, NodeMetrics


def _families(m: NodeMetrics) -> dict[str, prometheus_client.Metric]:
    return {f.name: f for f in text_string_to_metric_families(m.render().decode())}


def test_text_format_counters_histograms_gauges():
    m = NodeMetrics()
    m.received.labels(kind="image").inc()
    m.received.labels(kind="image").inc(2)
    m.received_bytes.inc(1000)
    m.store_seconds.observe(0.2)
    m.store_seconds.observe(7.0)
    m.end_to_end_seconds.labels(destination="pacs").observe(1.5)
    m.gauge("instances", "journaled instances by state", lambda: {("received",): 3.0, ("done",): 1.0}, ("state",))
    text = m.render().decode()
    assert "# TYPE taviseg_node_received_total counter" in text  # prometheus_client names the family so in 0.0.4
    assert 'taviseg_node_received_total{kind="image"} 3.0' in text
    assert "taviseg_node_received_bytes_total 1000.0" in text
    assert 'taviseg_node_store_seconds_bucket{le="0.25"} 1.0' in text
    assert 'taviseg_node_store_seconds_bucket{le="10.0"} 2.0' in text
    assert 'taviseg_node_store_seconds_bucket{le="+Inf"} 2.0' in text
    assert "taviseg_node_store_seconds_count 2.0" in text
    assert "taviseg_node_store_seconds_sum 7.2" in text
    assert 'taviseg_node_end_to_end_seconds_count{destination="pacs"} 1.0' in text
    assert 'taviseg_node_instances{state="received"} 3.0' in text
    assert "_created" not in text  # the same series as the node exposed before prometheus_client
    # the text parses back as the exposition format, with every metric the node declares
    names = set(_families(m))
    assert {"taviseg_node_associations", "taviseg_node_refused", "taviseg_node_processed", "taviseg_node_outputs",
            "taviseg_node_delivered", "taviseg_node_delivery_failures", "taviseg_node_given_up",
            "taviseg_node_processing_seconds", "taviseg_node_queue_seconds", "taviseg_node_instances"} <= names
    assert m.value("received_total", kind="image") == 3
    assert m.value("store_seconds_count") == 2
    assert m.value("received_total", kind="other") is None
    with pytest.raises(ValueError, match="label"):
        m.received.labels(other="x")
    with pytest.raises(ValueError, match="non-negative"):
        m.received.labels(kind="image").inc(-1)


def test_nan_and_infinite_gauges_use_the_exposition_spelling():
    m = NodeMetrics()
    m.gauge("odd", "odd values", lambda: {("a",): math.nan, ("b",): math.inf, ("c",): -math.inf}, ("k",))
    text = m.render().decode()
    assert 'taviseg_node_odd{k="a"} NaN' in text
    assert 'taviseg_node_odd{k="b"} +Inf' in text
    assert 'taviseg_node_odd{k="c"} -Inf' in text


def test_each_node_has_its_own_registry_and_the_global_one_is_untouched():
    a, b = NodeMetrics(), NodeMetrics()  # the global registry would refuse the second set of names
    a.given_up.labels(destination="pacs").inc()
    assert a.value("given_up_total", destination="pacs") == 1
    assert b.value("given_up_total", destination="pacs") is None
    assert prometheus_client.REGISTRY.get_sample_value("taviseg_node_given_up_total", {"destination": "pacs"}) is None
    a.gauge("busy_workers", "runs", lambda: {(): 1.0})
    with pytest.raises(ValueError, match="busy_workers"):
        a.gauge("busy_workers", "runs", lambda: {(): 1.0})


def test_a_failing_journal_gauge_is_left_out_of_that_scrape_only(caplog):
    m = NodeMetrics()
    fail = [True]

    def outbox() -> dict[tuple[str, ...], float]:
        if fail[0]:
            raise JournalError("journal locked")
        return {("pacs", "pending"): 2.0}

    m.gauge("outbox", "outbox objects", outbox, ("destination", "state"))
    m.processed.labels(result="done").inc()
    text = m.render().decode()
    assert "taviseg_node_outbox" not in text
    assert 'taviseg_node_processed_total{result="done"} 1.0' in text
    assert "metric taviseg_node_outbox unavailable: journal locked" in caplog.text
    fail[0] = False
    assert 'taviseg_node_outbox{destination="pacs",state="pending"} 2.0' in m.render().decode()


def test_http_endpoint_serves_metrics():
    m = NodeMetrics()
    m.received.labels(kind="image").inc()
    server = MetricsServer(m.registry, ("127.0.0.1", 0))
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as rsp:
            assert rsp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = rsp.read().decode()
        assert 'taviseg_node_received_total{kind="image"} 1.0' in body
        assert body == m.render().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as rsp:
            assert rsp.read() == b"ok\n"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=10)
    finally:
        server.stop()
