"""The serving loop: a request in, a Completion back, resolved once with its verdict record.

    submit -> fair fetch slots (threads: I/O) + SHA-256 -> exact cache lookup (batched)
      -> decode + PDQ (supervised processes) -> near-duplicate lookup (batched)
      -> micro-batch -> engine (one thread) -> cache write -> resolve

An exact hit needs only the bytes' SHA-256, so it is answered before any decoding.

The pipeline publishes nothing: every record is built whole, then resolves the request's
Completion (`worker.completion`), and the transport's delivery loop publishes it. Work
whose Completion was cancelled (its partition was revoked) is dropped at the next stage.
Every stage thread runs under a Supervisor: a stage that dies is a failed pipeline, not a
silent stall. Fetch slots are shared fairly across partitions and stop taking work while
the fetched bodies held reach DDA_MAX_IN_FLIGHT_BYTES.
"""

from __future__ import annotations

import functools
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from engine.contract import EngineLost, Runner
from engine.detector import label_for, sigmoid
from engine.labels import AI_GENERATED
from engine.manifest import Manifest
from worker.cache import CachedVerdict, Key, Lookup, VerdictCache
from worker.completion import Completion, Record
from worker.decode_pool import DecodeJob, DecodeLimits, DecodePool
from worker.ensemble import Ensemble
from worker.errors import INFERENCE_FAILED, INTERNAL_ERROR, URL_INVALID, InputError
from worker.fair_queue import FairQueue
from worker.fetch import Fetcher
from worker.hashing import sha256_hex
from worker.local_files import read_path
from worker.messages import Request, verdict
from worker.metrics import Metrics
from worker.prepare import Prepared
from worker.provenance import policy, report
from worker.shadow import Shadow
from worker.supervision import Supervisor

log = structlog.get_logger("dda.pipeline")
LOOKUP_BATCH = 64
STAGE_POLL_S = 0.1


@dataclass
class _Work:
    """One request on its way through the stages."""

    request: Request
    completion: Completion
    data: bytes | None = None
    sha256: str = ""
    prepared: Prepared | None = None
    queued_at: float = 0.0
    held: int = 0
    release: Callable[[], None] = field(default=lambda: None)
    match: dict[str, Any] | None = None  # a near-duplicate reported beside the model's own verdict
    near_unsearched: bool = False  # the near-duplicate index was still loading: say so rather than "no match"
    shadow: dict[str, Any] | None = None  # the shadow model's answer (sampled misses only)
    list_match: dict[str, Any] | None = None  # a near-duplicate of a hash an imported list holds

    @property
    def provenance(self) -> dict[str, Any] | None:
        """This request's own bytes' provenance (never another file's)."""
        return self.prepared.provenance if self.prepared is not None else None

    @property
    def key(self) -> Key:
        assert self.prepared is not None
        return Key(self.sha256, self.prepared.pdq, self.prepared.pdq_quality)

    @property
    def hashes(self) -> dict[str, Any]:
        prepared = self.prepared
        out: dict[str, Any] = {"sha256": self.sha256 or None, "pdq": prepared.pdq if prepared else None,
                               "pdq_quality": prepared.pdq_quality if prepared else None}
        if prepared is not None and prepared.pdq_error is not None:
            out["pdq_error"] = prepared.pdq_error
        return out


class Pipeline:
    def __init__(
        self,
        *,
        manifest: Manifest,
        runner: Runner,
        cache: VerdictCache,
        fetcher: Fetcher,
        metrics: Metrics,
        max_batch: int,
        max_wait_ms: int,
        fetch_workers: int,
        decode_workers: int,
        max_pixels: int,
        max_in_flight_bytes: int = 1 << 30,
        decode_limits: DecodeLimits | None = None,
        crops: int = 1,
        allow_paths: bool = False,
        trust_near_duplicates: bool = False,
        provenance_policy: str = "report",
        c2pa_trust_anchors: str | None = None,
        shadow: Shadow | None = None,
        ensemble: Ensemble | None = None,
    ) -> None:
        self.manifest = manifest
        self.runner = runner
        self.shadow = shadow
        self.ensemble = ensemble
        self.threshold = ensemble.combiner.ai_above if ensemble else manifest.threshold  # what `label` is decided at
        self.cache = cache
        self.fetcher = fetcher
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_pixels = max_pixels
        self.crops = crops
        self.allow_paths = allow_paths
        self.trust_near_duplicates = trust_near_duplicates
        self.provenance_policy = provenance_policy
        self.fetch_workers = fetch_workers
        self.model_info = manifest.describe()
        self.supervisor = Supervisor()
        self._fetch_q: FairQueue[_Work] = FairQueue(fetch_workers, max_in_flight_bytes)
        self.decoder = DecodePool(decode_workers, self.supervisor, decode_limits or DecodeLimits(),
                                  on_restart=lambda reason: metrics.decode_restarts.labels(reason).inc(),
                                  c2pa_trust_anchors=c2pa_trust_anchors)
        self._exact_q: queue.Queue[_Work] = queue.Queue()
        self._near_q: queue.Queue[_Work] = queue.Queue()
        self._batch_q: queue.Queue[_Work] = queue.Queue()
        self._open: set[Completion] = set()
        self._open_lock = threading.Lock()

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the decode processes (and wait for them), then every stage thread."""
        self.decoder.start()
        for n in range(self.fetch_workers):
            self.supervisor.spawn(f"fetch-{n}", self._fetch_loop)
        self.supervisor.spawn("exact-lookup", lambda: self._lookup_stage(
            self._exact_q, "exact_lookup", lambda batch: self.cache.lookup_exact_many([w.sha256 for w in batch]), self._on_exact))
        self.supervisor.spawn("near-lookup", lambda: self._lookup_stage(
            self._near_q, "near_lookup", lambda batch: self.cache.lookup_near_many([w.key for w in batch]), self._on_near))
        self.supervisor.spawn("engine", self._engine_loop)

    @property
    def failure(self) -> str | None:
        """Why a stage died, or None: the worker is healthy only while this is None."""
        return self.supervisor.failure

    @property
    def in_flight(self) -> int:
        with self._open_lock:
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
        with self._open_lock:
            left = list(self._open)
        for completion in left:
            completion.cancel()

    # --- intake -----------------------------------------------------------------------------

    def submit(self, request: Request) -> Completion:
        completion = Completion(request.id, on_duplicate=lambda _id: self.metrics.duplicate_resolutions.inc())
        work = _Work(request, completion)
        with self._open_lock:
            self._open.add(completion)
            self.metrics.in_flight.set(len(self._open))
        completion.add_done_callback(functools.partial(self._ended_work, work))
        self._fetch_q.put(_lane(request), work)
        return completion

    def _ended_work(self, work: _Work, completion: Completion) -> None:
        work.release()
        work.data = None
        with self._open_lock:
            self._open.discard(completion)
            self.metrics.in_flight.set(len(self._open))
        if completion.cancelled:
            self.metrics.cancelled.inc()

    def _finish(self, work: _Work, record: Record) -> None:
        request = work.request
        request.timings_ms["total"] = (time.monotonic() - request.received) * 1000
        record["timings_ms"]["total"] = round(request.timings_ms["total"], 3)
        if work.completion.resolve(record):
            for stage, ms in request.timings_ms.items():
                self.metrics.stage_seconds.labels(stage).observe(ms / 1000)
            log.debug("verdict", request_id=request.id, status=record["status"], label=record["label"],
                      cache=record["cache"], error=record["error"]["code"] if record["error"] else None,
                      total_ms=record["timings_ms"]["total"])

    def _error(self, work: _Work, code: str, message: str) -> None:
        self._finish(work, verdict(work.request, model=self.model_info, threshold=self.threshold, status="error",
                                   hashes=work.hashes if work.sha256 else None, error={"code": code, "message": message}))

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
                self._error(work, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            finally:
                self._fetch_q.done(lane)

    def _read(self, request: Request) -> bytes:
        if "://" in request.url:
            return self.fetcher.get(request.url)
        if not self.allow_paths:
            raise InputError(URL_INVALID, "not an http(s) URL")
        return read_path(request.url, self.fetcher.policy.max_bytes)

    def _fetch(self, work: _Work) -> None:
        if work.completion.done:
            return
        started = time.monotonic()
        try:
            data = self._read(work.request)
        except InputError as exc:
            self._error(work, exc.code, exc.message)
            return
        work.request.timings_ms["fetch"] = (time.monotonic() - started) * 1000
        self._hold(work, data)
        if work.completion.done:  # cancelled while fetching
            work.release()
            return
        work.data, work.sha256 = data, sha256_hex(data)
        self._put(self._exact_q, "exact_lookup", work)

    def _hold(self, work: _Work, data: bytes) -> None:
        size = len(data)
        self._fetch_q.hold(size)
        released: list[bool] = []

        def release() -> None:
            if not released:
                released.append(True)
                self._fetch_q.release(size)
                self.metrics.in_flight_bytes.set(self._fetch_q.held_bytes)

        work.release = release
        self.metrics.in_flight_bytes.set(self._fetch_q.held_bytes)

    # --- lookups and decode --------------------------------------------------------------------

    def _put(self, q: queue.Queue[_Work], name: str, work: _Work) -> None:
        q.put(work)
        self.metrics.queue_depth.labels(name).set(q.qsize())

    def _take(self, q: queue.Queue[_Work], name: str, limit: int, window_s: float) -> list[_Work]:
        """Block for a first item, then gather more until `limit` or `window_s` has passed; skip cancelled work."""
        try:
            items = [q.get(timeout=STAGE_POLL_S)]
        except queue.Empty:
            self.metrics.queue_depth.labels(name).set(q.qsize())
            return []
        deadline = time.monotonic() + window_s
        while len(items) < limit:
            left = deadline - time.monotonic()
            try:
                items.append(q.get(timeout=left) if left > 0 else q.get_nowait())
            except queue.Empty:
                break
        self.metrics.queue_depth.labels(name).set(q.qsize())
        return [w for w in items if not w.completion.done]

    def _lookup_stage(self, q: queue.Queue[_Work], name: str, lookup: Callable[[list[_Work]], list[Lookup]],
                      handle: Callable[[_Work, Lookup, float], None]) -> None:
        """Drain `q` in batches of up to LOOKUP_BATCH, one store round trip per batch."""
        while not self.supervisor.stopping.is_set():
            batch = self._take(q, name, LOOKUP_BATCH, 0.0)
            if not batch:
                continue
            started = time.monotonic()
            try:
                results = lookup(batch)
            except Exception as exc:  # a bug here must not stop the stage: fail the batch
                log.exception("cache lookup failed")
                for work in batch:
                    self._error(work, INTERNAL_ERROR, f"cache lookup failed: {type(exc).__name__}: {exc}")
                continue
            spent = (time.monotonic() - started) * 1000
            for work, found in zip(batch, results):
                try:
                    handle(work, found, spent)
                except Exception as exc:  # one request's failure is its own error verdict
                    log.exception("request failed unexpectedly", request_id=work.request.id)
                    self._error(work, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def _on_exact(self, work: _Work, found: Lookup, spent_ms: float) -> None:
        work.request.timings_ms["cache"] = spent_ms
        if found.verdict is None:
            assert work.data is not None
            self.decoder.submit(DecodeJob(work.data, self.manifest.preprocessing.crop_size, self.crops, self.max_pixels,
                                          done=functools.partial(self._decoded, work),
                                          cancelled=functools.partial(_is_done, work),
                                          provenance=self.provenance_policy != "off",
                                          second=self.ensemble.crop_spec if self.ensemble else None))
            return
        self.metrics.cache_hits.labels("exact").inc()
        hit = found.verdict
        work.release()
        hashes = {"sha256": work.sha256, "pdq": hit.pdq, "pdq_quality": hit.pdq_quality}
        self._scored(work, hit, hashes, "exact", None, hit.provenance)

    def _decoded(self, work: _Work, prepared: Prepared) -> None:
        """Runs on a decode slot thread: never raises, whatever the answer."""
        try:
            work.release()
            work.data = None
            work.prepared = prepared
            work.request.timings_ms["decode"] = prepared.decode_ms
            if prepared.error is not None:
                self._error(work, *prepared.error)
                return
            if prepared.provenance is not None:
                work.request.timings_ms["provenance"] = prepared.provenance_ms
                self._count_signals(prepared.provenance)
            self._put(self._near_q, "near_lookup", work)
        except Exception as exc:  # one request's failure is its own error verdict
            log.exception("request failed unexpectedly", request_id=work.request.id)
            self._error(work, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def _on_near(self, work: _Work, found: Lookup, spent_ms: float) -> None:
        work.request.timings_ms["cache"] = work.request.timings_ms.get("cache", 0.0) + spent_ms
        self.metrics.cache_hits.labels(found.kind).inc()
        work.near_unsearched = found.kind == "not_searched"
        if found.kind == "hash_list" and found.source is not None:
            work.list_match = {"source": found.source, "pdq_distance": found.distance}
            self.metrics.hash_list_matches.labels(found.source).inc()
        if found.verdict is not None:
            match = {"sha256": found.verdict.sha256, "pdq_distance": found.distance, "trusted": found.verdict.trusted}
            if found.verdict.trusted and self.trust_near_duplicates:
                self._scored(work, found.verdict, work.hashes, "near_duplicate", match, work.provenance)
                return
            work.match = match  # reported, never answered from: see worker.cache on planted entries
        work.queued_at = time.monotonic()
        self._put(self._batch_q, "batch", work)

    def _scored(self, work: _Work, v: CachedVerdict, hashes: dict[str, Any], kind: str, match: dict[str, Any] | None,
                provenance: dict[str, Any] | None) -> None:
        """The model's verdict (fresh or cached) with the request's provenance, under the provenance policy."""
        if self.provenance_policy == "off":  # not read, so not reported either (a cached entry may hold some)
            provenance = None
        label, reason = policy.label(v.label, provenance, self.provenance_policy)
        listed = work.list_match
        if listed is not None and self.trust_near_duplicates and label != AI_GENERATED:  # a trusted list's word, the score the model's
            label, reason = AI_GENERATED, f"near-duplicate (distance {listed['pdq_distance']}) of a hash listed by {listed['source']}"
        self._finish(work, verdict(
            work.request, model=self.model_info, threshold=self.threshold, status="ok", logit=v.logit,
            score=v.score, label=label, label_reason=reason, hashes=hashes, cache=kind, cache_match=match,
            provenance=provenance, near_duplicate_search="not_searched" if work.near_unsearched else None, shadow=work.shadow,
            hash_list_match=listed, models=v.models, assessment=v.assessment))

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
                        self._error(work, INFERENCE_FAILED, f"{type(exc).__name__}: {exc}")

    def _verdicts(self, items: list[_Work], logits: np.ndarray) -> list[CachedVerdict]:
        """DDA's verdict on each image, or with an ensemble the combiner's over both models (the second on its own crops)."""
        if self.ensemble is None:
            return [CachedVerdict(v, sigmoid(v), label_for(v, self.manifest), w.sha256, w.key.pdq, w.key.pdq_quality, provenance=w.provenance)
                    for w, v in zip(items, logits.tolist())]
        answers = self.ensemble.score(logits, np.stack([_second_crop(w) for w in items]))
        return [CachedVerdict(a.logit, a.score, a.label, w.sha256, w.key.pdq, w.key.pdq_quality, provenance=w.provenance, models=a.models,
                              assessment=a.assessment) for w, a in zip(items, answers)]

    def _score(self, items: list[_Work]) -> None:
        started = time.monotonic()
        for work in items:
            work.request.timings_ms["queue"] = (started - work.queued_at) * 1000
        batch = np.concatenate([w.prepared.crops for w in items if w.prepared is not None])
        logits = self.runner.logits(batch).astype(np.float64).reshape(len(items), self.crops).mean(axis=1)
        scored = []
        for work, v in zip(items, self._verdicts(items, logits)):
            broken = _non_finite(v, self.manifest.name)
            if broken:  # broken weights or an overflow: no NaN in a verdict's JSON, nothing cached
                self.metrics.engine_non_finite.inc()
                self._error(work, INFERENCE_FAILED, f"{broken} gave a non-finite logit for this image")
            else:
                scored.append((work, v))
        spent = (time.monotonic() - started) * 1000
        self.metrics.batch_size.observe(len(batch))
        self.metrics.engine_images.inc(len(items))
        log.info("batch scored", batch=len(items), images=len(batch), inference_ms=round(spent, 1),
                 request_ids=[w.request.id for w in items])
        for work in items:
            work.request.timings_ms["inference"] = spent
        self.cache.store_many([(work.key, v) for work, v in scored])  # before resolving: a repeat right behind hits it
        if self.shadow is not None:  # on the very crops just scored
            sampled = [i for i, (w, _) in enumerate(scored) if self.shadow.sampled(w.sha256)]
            answers = self.shadow.score([batch[i * self.crops : (i + 1) * self.crops] for i in sampled],
                                        [(scored[i][1].logit, scored[i][1].label) for i in sampled], self.metrics)
            for i, answer in zip(sampled, answers):
                scored[i][0].shadow = answer
        for work, v in scored:
            self._scored(work, v, work.hashes, "miss", work.match, work.provenance)


def _non_finite(v: CachedVerdict, served: str) -> str:
    """Who answered NaN or infinity (the model by name, or the combiner); empty when all is finite."""
    answers = [(str(m["name"]), float(m["logit"])) for m in v.models] if v.models is not None else [(served, v.logit)]
    names = [name for name, logit in answers if not math.isfinite(logit)]
    if not names and not math.isfinite(v.logit):
        names = ["the combiner"]
    return ", ".join(names)


def _second_crop(work: _Work) -> np.ndarray:
    assert work.prepared is not None and work.prepared.second is not None  # with an ensemble every decode job asks for it
    return work.prepared.second


def _is_done(work: _Work) -> bool:
    return work.completion.done


def _lane(request: Request) -> Hashable:
    return (request.source.topic, request.source.partition)
