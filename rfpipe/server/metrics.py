"""Prometheus metrics of one server: requests and errors by route and status, stage latencies, batches, queue.

Each app gets its own registry, so several servers (tests, several apps in one process) never share
counters. Under `rfpipe serve --processes N` (PROMETHEUS_MULTIPROC_DIR set before prometheus_client is
imported) every process writes its values to files there, and any process's render() reads all of
them: /metrics shows the whole server whichever process answers. Routes are labelled by their template (`/{dataset_id}/{version_id}`), never the raw path,
so a client cannot grow the label set.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Seconds: from sub-millisecond decode of a small PNG to multi-second CPU batches.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    """The server's counters, histograms and gauges, in their own registry.

    >>> metrics = Metrics(); metrics.requests.labels("/healthz", "GET", "200").inc()
    """

    def __init__(self) -> None:
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rfpipe_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r)
        self.errors = Counter("rfpipe_http_errors", "HTTP error answers (4xx and 5xx)", ["route", "status", "error_type"], registry=r)
        self.latency = Histogram("rfpipe_http_request_duration_seconds", "Time to answer a request", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("rfpipe_stage_duration_seconds",
                               "Time per stage: decode per image; queue per image from the engine's queue to its answer; "
                               "preprocess, forward, postprocess per call of the engine",
                               ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("rfpipe_batch_size", "Images per forward pass", buckets=_BATCH_BUCKETS, registry=r)
        # multiprocess_mode: how several processes' values combine (ignored in a single process).
        self.queue_depth = Gauge("rfpipe_queue_depth", "Images admitted and not yet answered",
                                 multiprocess_mode="livesum", registry=r)
        self.decodes = Counter("rfpipe_decodes", "Images decoded, by decoder (opencv: the exact CPU decode; "
                               "torchvision: --gpu-decode on the GPU) and format", ["decoder", "format"], registry=r)
        self.images = Counter("rfpipe_images", "Images inferred", ["device"], registry=r)
        self.gpu_peak = Gauge("rfpipe_gpu_memory_peak_bytes", "Peak GPU memory allocated by torch", ["device"],
                              multiprocess_mode="max", registry=r)

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()  # fresh each time, as prometheus_client's multiprocess docs do
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
