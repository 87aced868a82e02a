"""The serving loop: a request in, a Completion back, resolved once with its verdict record.

    submit -> fair fetch slots (threads: I/O) + SHA-256 -> exact cache lookup (batched)
      -> decode + PDQ (supervised processes) -> near-duplicate lookup (batched)
      -> micro-batch -> engine (one thread) -> cache write -> resolve

An exact hit needs only the bytes' SHA-256, so it is answered before any decoding.

The pipeline publishes nothing: every record is built whole, then resolves the request's
Completion (`worker.pipeline.completion`), and the transport's delivery loop publishes it. Work
whose Completion was cancelled (its partition was revoked) is dropped at the next stage.
Every stage thread runs under a Supervisor: a stage that dies is a failed pipeline, not a
silent stall. Fetch slots are shared fairly across partitions and stop taking work while
the fetched bodies held reach DDA_MAX_IN_FLIGHT_BYTES.
"""

from __future__ import annotations

import functools
import queue
import time
from collections.abc import Hashable, Iterable
from typing import Any

import structlog

from engine.model.manifest import Manifest
from engine.runners.contract import EngineLost, Runner
from worker.cache.hashing import sha256_hex
from worker.cache.verdicts import Lookup, VerdictCache
from worker.decode.pool import DecodePool
from worker.decode.prepare import Prepared
from worker.decode.process import DecodeJob
from worker.errors import INFERENCE_FAILED, INTERNAL_ERROR, URL_INVALID, InputError
from worker.fetch.client import Fetcher
from worker.fetch.local_files import read_path
from worker.messages import Request
from worker.metrics import Metrics
from worker.pipeline.answers import Answers
from worker.pipeline.completion import Completion
from worker.pipeline.ensemble import Ensemble
from worker.pipeline.fair_queue import FairQueue
from worker.pipeline.lookups import LookupStage
from worker.pipeline.scoring import Scorer
from worker.pipeline.settings import Settings
from worker.pipeline.shadow import Shadow
from worker.pipeline.window import gather
from worker.pipeline.work import OpenRequests, Work
from worker.provenance import report
from worker.records import Hashes, NearMatch
from worker.supervision import Supervisor

log = structlog.get_logger("dda.pipeline")
LOOKUP_BATCH = 64
STAGE_POLL_S = 0.1


class Pipeline:
    def __init__(
        self,
        *,
        manifest: Manifest,
        runner: Runner,
        cache: VerdictCache,
        fetcher: Fetcher,
        metrics: Metrics,
        settings: Settings,
        shadow: Shadow | None = None,
        ensemble: Ensemble | None = None,
    ) -> None:
        self.manifest = manifest
        self.ensemble = ensemble
        self.scorer = Scorer(manifest, runner, settings.crops, metrics, ensemble, shadow)
        self.cache = cache
        self.fetcher = fetcher
        self.metrics = metrics
        self.max_batch, self.max_wait_s, self.max_pixels = settings.max_batch, settings.max_wait_ms / 1000, settings.max_pixels
        self.crops, self.allow_paths, self.provenance_policy = settings.crops, settings.allow_paths, settings.provenance_policy
        self.trust_near_duplicates = settings.trust_near_duplicates
        self.answers = Answers(metrics, manifest.describe(), ensemble.combiner.ai_above if ensemble else manifest.threshold,
                               settings.provenance_policy, settings.trust_near_duplicates)
        self.fetch_workers = settings.fetch_workers
        self.supervisor = Supervisor()
        self._fetch_q: FairQueue[Work] = FairQueue(settings.fetch_workers, settings.max_in_flight_bytes)
        self.decoder = DecodePool(settings.decode_workers, self.supervisor, settings.decode_limits,
                                  on_restart=lambda reason: metrics.decode_restarts.labels(reason).inc(),
                                  c2pa_trust_anchors=settings.c2pa_trust_anchors)
        self._exact_q: queue.Queue[Work] = queue.Queue()
        self._near_q: queue.Queue[Work] = queue.Queue()
        self._batch_q: queue.Queue[Work] = queue.Queue()
        self._open = OpenRequests(metrics.in_flight.set)

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the decode processes (and wait for them), then every stage thread."""
        self.decoder.start()
        for n in range(self.fetch_workers):
            self.supervisor.spawn(f"fetch-{n}", self._fetch_loop)
        exact = LookupStage(functools.partial(self._take, self._exact_q, "exact_lookup", LOOKUP_BATCH, 0.0),
                            lambda batch: self.cache.lookup_exact_many([w.sha256 for w in batch]), self._on_exact, self.answers.error)
        near = LookupStage(functools.partial(self._take, self._near_q, "near_lookup", LOOKUP_BATCH, 0.0),
                           lambda batch: self.cache.lookup_near_many([w.key for w in batch]), self._on_near, self.answers.error)
        self.supervisor.spawn("exact-lookup", functools.partial(exact.run, self.supervisor.stopping))
        self.supervisor.spawn("near-lookup", functools.partial(near.run, self.supervisor.stopping))
        self.supervisor.spawn("engine", self._engine_loop)

    @property
    def failure(self) -> str | None:
        """Why a stage died, or None: the worker is healthy only while this is None."""
        return self.supervisor.failure

    @property
    def in_flight(self) -> int:
        return len(self._open)

    @property
    def held_bytes(self) -> int:
        return self._fetch_q.held_bytes

    def set_partitions(self, lanes: Iterable[Hashable]) -> None:
        """The partitions this worker owns: fetch slots are shared fairly among them."""
        self._fetch_q.set_lanes(set(lanes))

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop every stage, end the decode processes, cancel whatever was left."""
        self._fetch_q.close()
        self.supervisor.stop(timeout_s)
        self.decoder.close()
        self._open.cancel_all()

    # --- intake -----------------------------------------------------------------------------

    def submit(self, request: Request) -> Completion:
        completion = Completion(request.id, on_duplicate=lambda _id: self.metrics.duplicate_resolutions.inc())
        work = Work(request, completion)
        self._open.add(completion)
        completion.add_done_callback(functools.partial(self._ended_work, work))
        self._fetch_q.put(work.lane, work)
        return completion

    def _ended_work(self, work: Work, completion: Completion) -> None:
        work.release()
        work.data = None
        self._open.discard(completion)
        if completion.cancelled:
            self.metrics.cancelled.inc()

    # --- fetch ------------------------------------------------------------------------------

    def _fetch_loop(self) -> None:
        while not self.supervisor.stopping.is_set():
            got = self._fetch_q.get(STAGE_POLL_S)
            if got is None:
                continue
            lane, work = got
            try:
                self._fetch(work)
            except Exception as exc:  # still one verdict, whatever went wrong
                log.exception("request failed unexpectedly", request_id=work.request.id)
                self.answers.error(work, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            finally:
                self._fetch_q.done(lane)

    def _read(self, request: Request) -> bytes:
        if "://" in request.url:
            return self.fetcher.get(request.url)
        if not self.allow_paths:
            raise InputError(URL_INVALID, "not an http(s) URL")
        return read_path(request.url, self.fetcher.policy.max_bytes)

    def _fetch(self, work: Work) -> None:
        if work.completion.done:
            return
        started = time.monotonic()
        try:
            data = self._read(work.request)
        except InputError as exc:
            self.answers.error(work, exc.code, exc.message)
            return
        work.request.timings_ms["fetch"] = (time.monotonic() - started) * 1000
        work.release = self._fetch_q.hold(len(data), self.metrics.in_flight_bytes.set)
        if work.completion.done:  # cancelled while fetching
            work.release()
            return
        work.data, work.sha256 = data, sha256_hex(data)
        self._put(self._exact_q, "exact_lookup", work)

    # --- lookups and decode --------------------------------------------------------------------

    def _put(self, q: queue.Queue[Work], name: str, work: Work) -> None:
        q.put(work)
        self.metrics.queue_depth.labels(name).set(q.qsize())

    def _take(self, q: queue.Queue[Work], name: str, limit: int, window_s: float) -> list[Work]:
        """A micro-batch (`worker.pipeline.window`) less the work cancelled meanwhile."""
        items = gather(q, limit, window_s, STAGE_POLL_S)
        self.metrics.queue_depth.labels(name).set(q.qsize())
        return [w for w in items if not w.done]

    def _on_exact(self, work: Work, found: Lookup, spent_ms: float) -> None:
        work.request.timings_ms["cache"] = spent_ms
        if found.verdict is None:
            assert work.data is not None
            self.decoder.submit(DecodeJob(work.data, self.manifest.preprocessing.crop_size, self.crops, self.max_pixels,
                                          done=functools.partial(self._decoded, work),
                                          cancelled=lambda: work.done,
                                          provenance=self.provenance_policy != "off",
                                          second=self.ensemble.crop_spec if self.ensemble else None))
            return
        self.metrics.cache_hits.labels("exact").inc()
        hit = found.verdict
        work.release()
        hashes: Hashes = {"sha256": work.sha256, "pdq": hit.pdq, "pdq_quality": hit.pdq_quality}
        self.answers.scored(work, hit, hashes, "exact", None, hit.provenance)

    def _decoded(self, work: Work, prepared: Prepared) -> None:
        """Runs on a decode slot thread: never raises, whatever the answer."""
        try:
            work.release()
            work.data = None
            work.prepared = prepared
            work.request.timings_ms["decode"] = prepared.decode_ms
            if prepared.error is not None:
                self.answers.error(work, *prepared.error)
                return
            if prepared.provenance is not None:
                work.request.timings_ms["provenance"] = prepared.provenance_ms
                self._count_signals(prepared.provenance)
            self._put(self._near_q, "near_lookup", work)
        except Exception as exc:  # one request's failure is its own error verdict
            log.exception("request failed unexpectedly", request_id=work.request.id)
            self.answers.error(work, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def _on_near(self, work: Work, found: Lookup, spent_ms: float) -> None:
        work.request.timings_ms["cache"] = work.request.timings_ms.get("cache", 0.0) + spent_ms
        self.metrics.cache_hits.labels(found.kind).inc()
        work.near_unsearched = found.kind == "not_searched"
        if found.kind == "hash_list" and found.source is not None:
            work.list_match = {"source": found.source, "pdq_distance": found.distance}
            self.metrics.hash_list_matches.labels(found.source).inc()
        if found.verdict is not None:
            match: NearMatch = {"sha256": found.verdict.sha256, "pdq_distance": found.distance, "trusted": found.verdict.trusted}
            if found.verdict.trusted and self.trust_near_duplicates:
                self.answers.scored(work, found.verdict, work.hashes, "near_duplicate", match, work.provenance)
                return
            work.match = match  # reported, never answered from: see worker.cache.verdicts on planted entries
        work.queued_at = time.monotonic()
        self._put(self._batch_q, "batch", work)

    def _count_signals(self, provenance: dict[str, Any]) -> None:
        for signal in report.signals(provenance):
            self.metrics.provenance.labels(signal).inc()

    # --- engine -----------------------------------------------------------------------------

    def _engine_loop(self) -> None:
        per_batch = max(1, self.max_batch // self.crops)
        while not self.supervisor.stopping.is_set():
            items = self._take(self._batch_q, "batch", per_batch, self.max_wait_s)
            if items:
                try:
                    self._score(items)
                except EngineLost:  # no batch can be scored now: the stage dies, the work stays unanswered
                    raise
                except Exception as exc:  # a failed batch gets error verdicts, the loop goes on
                    log.exception("inference failed", batch=len(items))
                    for work in items:
                        self.answers.error(work, INFERENCE_FAILED, f"{type(exc).__name__}: {exc}")

    def _score(self, items: list[Work]) -> None:
        started = time.monotonic()
        for work in items:
            work.request.timings_ms["queue"] = (started - work.queued_at) * 1000
        scored = self.scorer.score(items)
        for work, models in scored.broken:
            self.metrics.engine_non_finite.inc()
            self.answers.error(work, INFERENCE_FAILED, f"{models} gave a non-finite logit for this image")
        spent = (time.monotonic() - started) * 1000
        self.metrics.batch_size.observe(scored.views)
        self.metrics.engine_images.inc(len(items))
        log.info("batch scored", batch=len(items), images=scored.views, inference_ms=round(spent, 1),
                 request_ids=[w.request.id for w in items])
        for work in items:
            work.request.timings_ms["inference"] = spent
        self.cache.store_many([(work.key, v) for work, v in scored.verdicts])  # before resolving: a repeat right behind hits it
        for work, v in scored.verdicts:
            self.answers.scored(work, v, work.hashes, "miss", work.match, work.provenance)
