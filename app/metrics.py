"""Prometheus collectors, named after the pipeline stages, in a registry owned by one app."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5,
    0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0,
)
_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
_RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST
C = TypeVar("C", Counter, Gauge, Histogram)


class Metrics:
    """All collectors of one service instance (a fresh registry, so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "reranker_request_duration_seconds",
            "Time from request received to response ready, by route.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.tokenization_duration = Histogram(
            "reranker_tokenization_duration_seconds",
            "Time to tokenize one request and cut its documents into windows.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "reranker_queue_wait_seconds",
            "Time a scoring item waited in the queue before its forward pass started.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.inference_duration = Histogram(
            "reranker_inference_duration_seconds",
            "Duration of one forward pass (one batch), by device.",
            ["model", "device"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "reranker_batch_size",
            "Query-document pairs per forward pass.",
            ["model"], buckets=_COUNT_BUCKETS, registry=r,
        )
        self.batch_requests = Histogram(
            "reranker_batch_requests",
            "Distinct requests whose items share one forward pass (dynamic batching at work).",
            ["model"], buckets=_COUNT_BUCKETS, registry=r,
        )
        self.batch_tokens = Histogram(
            "reranker_batch_tokens",
            "Tokens computed per forward pass (padded tokens when the backend pads).",
            ["model"], buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.padding_efficiency = Histogram(
            "reranker_padding_efficiency",
            "Real tokens divided by computed tokens, per forward pass.",
            ["model"], buckets=_RATIO_BUCKETS, registry=r,
        )
        self.requests = Counter(
            "reranker_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"], registry=r,
        )
        self.documents_scored = Counter(
            "reranker_documents_scored", "Documents scored.", ["model"], registry=r
        )
        self.tokens_scored = Counter(
            "reranker_tokens_scored", "Tokens fed to the model for scored requests.", ["model"],
            registry=r,
        )
        self.failures = Counter(
            "reranker_failures",
            "Requests or items that failed, by reason.",
            ["reason"], registry=r,
        )
        self.items_dropped = Counter(
            "reranker_items_dropped",
            "Scoring items skipped before their forward pass because their request was gone.",
            ["model"], registry=r,
        )
        self.queue_items = Gauge(
            "reranker_queue_items", "Scoring items waiting in the queue.", ["model"], registry=r
        )
        self.queue_tokens = Gauge(
            "reranker_queue_tokens", "Tokens of the scoring items waiting in the queue.",
            ["model"], registry=r,
        )
        self.in_flight = Gauge(
            "reranker_in_flight_requests", "Rerank requests being processed.", registry=r
        )
        self.batch_token_budget = Gauge(
            "reranker_batch_token_budget",
            "Token budget of a forward pass now (halved for a while after out-of-memory).",
            ["model"], registry=r,
        )
        self.out_of_memory = Counter(
            "reranker_out_of_memory",
            "Forward passes that ran out of device memory (the batch is split and retried).",
            ["model"], registry=r,
        )
        self.worker_restarts = Counter(
            "reranker_worker_restarts", "Device worker threads restarted after dying.",
            ["model"], registry=r,
        )
        self.devices_out_of_service = Counter(
            "reranker_devices_out_of_service",
            "Devices taken out of service after an error that breaks them (a sticky CUDA error).",
            ["model"], registry=r,
        )
        self.queue_capacity = Gauge(
            "reranker_queue_capacity", "Items the queue holds before answering 429 (max_queue).",
            ["model"], registry=r,
        )
        self.device_memory = Gauge(
            "reranker_device_memory_bytes",
            "Accelerator memory held by the model replica, by device and kind (allocated,"
            " reserved).",
            ["device", "kind"], registry=r,
        )
        self.requests_shed = Counter(
            "reranker_requests_shed",
            "Rerank requests refused at admission, before any tokenizing, by reason: queue_time"
            " (would wait past --max-queue-time), deadline (would finish after its deadline, or"
            " push an admitted request past its own), too_large (cannot finish in time even on"
            " an idle server: 413), queue_full (--max-queue items).",
            ["model", "reason"], registry=r,
        )
        self.predicted_queue_time = Histogram(
            "reranker_predicted_queue_seconds",
            "Predicted wait before an admitted request's own work starts.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.throughput = Gauge(
            "reranker_throughput_tokens_per_second",
            "Measured tokens scored per second by all devices (moving estimate; admission"
            " predicts with it).",
            ["model"], registry=r,
        )
        self.deadline_misses = Counter(
            "reranker_deadline_misses",
            "Admitted requests that still ran past their deadline (504): prediction failures.",
            ["model"], registry=r,
        )
        self.ready = Gauge(
            "reranker_ready", "1 when the model is loaded, warmed up and serving.", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def for_model(self, model: str) -> ModelMetrics:
        return ModelMetrics(self, model)


class Labelled(Generic[C]):
    """A collector with a `model` label and others: `labels(...)` fills the model in."""

    def __init__(self, collector: C, model: str) -> None:
        self._collector: C = collector
        self._model = model

    def labels(self, **labels: str) -> C:
        child: C = self._collector.labels(model=self._model, **labels)
        return child


class ModelMetrics:
    """What one served model's scheduler, workers and service record into: the collectors with
    its `model` label filled in (and the process-wide `failures`)."""

    def __init__(self, m: Metrics, model: str) -> None:
        self.model = model
        self.tokenization_duration = m.tokenization_duration.labels(model=model)
        self.queue_wait = m.queue_wait.labels(model=model)
        self.inference_duration = Labelled(m.inference_duration, model)
        self.batch_size = m.batch_size.labels(model=model)
        self.batch_requests = m.batch_requests.labels(model=model)
        self.batch_tokens = m.batch_tokens.labels(model=model)
        self.padding_efficiency = m.padding_efficiency.labels(model=model)
        self.documents_scored = m.documents_scored.labels(model=model)
        self.tokens_scored = m.tokens_scored.labels(model=model)
        self.items_dropped = m.items_dropped.labels(model=model)
        self.queue_items = m.queue_items.labels(model=model)
        self.queue_tokens = m.queue_tokens.labels(model=model)
        self.batch_token_budget = m.batch_token_budget.labels(model=model)
        self.out_of_memory = m.out_of_memory.labels(model=model)
        self.queue_capacity = m.queue_capacity.labels(model=model)
        self.requests_shed = Labelled(m.requests_shed, model)
        self.predicted_queue_time = m.predicted_queue_time.labels(model=model)
        self.throughput = m.throughput.labels(model=model)
        self.deadline_misses = m.deadline_misses.labels(model=model)
        self.worker_restarts = m.worker_restarts.labels(model=model)
        self.devices_out_of_service = m.devices_out_of_service.labels(model=model)
        self.failures = m.failures
