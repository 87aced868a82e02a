"""Prometheus metrics of one worker (own registry, so several can live in one process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.provenance import report


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter("dda_messages_consumed", "Input messages consumed", registry=r)
        self.dead_letters = Counter("dda_dead_letters", "Malformed messages sent to the dead-letter topic", ["reason"], registry=r)
        self.verdicts = Counter("dda_verdicts", "Verdicts published", ["status", "label"], registry=r)
        self.errors = Counter("dda_request_errors", "Requests that ended with an error verdict", ["code"], registry=r)
        self.cache_hits = Counter("dda_cache_lookups", "Cache lookups by result", ["kind"], registry=r)
        self.engine_images = Counter("dda_engine_images", "Images scored by the model (cache misses)", registry=r)
        self.cache_index_capped = Counter("dda_cache_index_capped", "PDQ index bounds applied: hashes not indexed, the index full (write); lookups cut short in a flooded region (read)",
                                          ["where"], registry=r)
        self.near_index_hashes = Gauge("dda_near_index_hashes", "PDQ hashes in this process's near-duplicate index", registry=r)
        self.near_index_bytes = Gauge("dda_near_index_bytes", "Memory of this process's near-duplicate index", registry=r)
        self.near_index_ready = Gauge("dda_near_index_ready", "1 once the near-duplicate index has replayed the shared log (before: lookups are not_searched)", registry=r)
        self.redis_errors = Counter("dda_cache_errors", "Cache store failures (the worker continues uncached)", registry=r)
        self.engine_batch = Histogram("dda_engine_batch_images", "Images in the engine process's batch that carried each of this worker's batches (pods only)",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.engine_non_finite = Counter("dda_engine_non_finite", "Images answered inference_failed because a model gave a NaN or infinite logit", registry=r)
        self.engine_reconnects = Counter("dda_engine_reconnects", "Batches resent because the engine process's connection ended (pods only: the engine was restarted)", registry=r)
        self.batch_size = Histogram("dda_batch_size", "Images per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.stage_seconds = Histogram("dda_stage_seconds", "Time per request in each stage", ["stage"],
                                       buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.in_flight = Gauge("dda_in_flight", "Requests inside the pipeline", registry=r)
        self.queue_depth = Gauge("dda_queue_depth", "Items waiting per internal queue", ["queue"], registry=r)
        self.in_flight_bytes = Gauge("dda_in_flight_bytes", "Bytes of fetched image bodies held by the pipeline", registry=r)
        self.decode_restarts = Counter("dda_decode_restarts", "Decode processes replaced, by reason (crash, timeout)", ["reason"], registry=r)
        self.duplicate_resolutions = Counter("dda_duplicate_resolutions", "Second verdicts for one request, dropped (a bug if ever non-zero)", registry=r)
        self.cancelled = Counter("dda_requests_cancelled", "Requests dropped unfinished (partition revoked or lost, shutdown); redone by the partition's owner", registry=r)
        self.publish_failures = Counter("dda_publish_failures", "Records the broker refused or timed out, by kind (verdict, dead_letter); retried", ["kind"], registry=r)
        self.dead_letters_dropped = Counter("dda_dead_letters_dropped", "Dead letters given up after their retries (logged with source, size and SHA-256)", registry=r)
        self.producer_renewals = Counter("dda_producer_renewals", "Producers replaced because no record was acknowledged for DDA publish-stall time with the broker reachable (it lost its state)", registry=r)
        self.rebalances = Counter("dda_rebalances", "Partition events, by kind (assigned, revoked, lost)", ["kind"], registry=r)
        self.transactions = Counter("dda_transactions", "Transactions (DDA_DELIVERY=exactly_once) by outcome (committed, aborted)", ["outcome"], registry=r)
        for outcome in ("committed", "aborted"):
            self.transactions.labels(outcome)
        self.transaction_seconds = Histogram("dda_transaction_seconds", "Time from a transaction's start to its commit or abort",
                                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.transaction_open = Gauge("dda_transaction_open_seconds", "Age of the transaction open now (0: none)", registry=r)
        self.commit_failures = Counter("dda_commit_failures", "Offset commits that failed (retried on the next commit)", registry=r)
        self.consumer_lag = Gauge("dda_consumer_lag", "Input messages not yet committed: the partition's end offset minus the group's committed offset (refreshed every DDA_LAG_EVERY_S)",
                                  ["topic", "partition"], registry=r)
        self.provenance = Counter("dda_provenance_signals", "Decoded images carrying each provenance signal (c2pa_valid, c2pa_invalid, xmp_source_type, generator, declared_ai, error)",
                                  ["signal"], registry=r)
        for signal in report.SIGNALS:  # every series exists from the start, at 0
            self.provenance.labels(signal)
        self.shadow_verdicts = Counter("dda_shadow_verdicts", "Misses the shadow model scored, by the served label and the shadow's (equal: agreement; unequal: a flip that way)",
                                       ["served", "shadow"], registry=r)
        self.shadow_score_delta = Histogram("dda_shadow_score_delta", "Shadow score minus served score, by served label", ["served"],
                                            buckets=(-0.5, -0.25, -0.1, -0.05, -0.01, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0), registry=r)
        self.shadow_seconds = Histogram("dda_shadow_seconds", "Time the shadow model took per batch", registry=r,
                                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.assessments = Counter("dda_assessments", "Verdicts published with a second detector (DDA_ENSEMBLE), by the combiner's assessment "
                                   "(suspicious: inside its band, published with label real)", ["assessment"], registry=r)
        self.shadow_failures = Counter("dda_shadow_failures", "Shadow model failures (load, inference); served verdicts are unaffected", ["reason"], registry=r)
        for reason in ("load", "inference"):
            self.shadow_failures.labels(reason)
        self.hash_list_matches = Counter("dda_hash_list_matches", "Lookups that matched a hash of an imported list (dda import-hashes), by list", ["source"], registry=r)
        self.paused = Gauge("dda_partitions_paused", "1 while input partitions are paused for backpressure", registry=r)

    def watch_lists(self, counts: Callable[[], dict[str, int]]) -> None:
        """dda_hash_list_entries{source}: read from the cache's registry of imported lists at each scrape."""
        self.registry.register(_ListEntries(counts))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ListEntries(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("dda_hash_list_entries", "Entries each imported hash list holds (dda import-hashes); absent while the store cannot be read",
                                   labels=["source"])
        try:
            counts = self.counts()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the store does
            counts = {}
        for source, n in sorted(counts.items()):
            family.add_metric([source], n)
        yield family
