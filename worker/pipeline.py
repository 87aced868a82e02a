"""The serving loop: requests in, one verdict per request out, whatever the transport.

    submit -> fetch + SHA-256 (threads: I/O) -> exact cache lookup (batched)
      -> decode + PDQ (processes: CPU) -> near-duplicate lookup (batched)
      -> micro-batch -> engine (one thread) -> cache write -> emit

An exact hit needs only the bytes' SHA-256, so it is answered before any decoding.

Kafka and stdin drive the same Pipeline; they decide when to call `submit` (bounded by
`in_flight`, which they compare with the configured maximum) and what `emit` does with
a verdict. Every request ends in exactly one `emit` call: a model verdict, a cache hit or
an error verdict with a specific code. Queues between stages hold at most the in-flight
requests, so memory is bounded by the in-flight limit and the fetch concurrency.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import structlog

from engine.detector import label_for, sigmoid
from engine.model_dir import Manifest
from engine.runner import Runner
from worker.cache import CachedVerdict, Key, Lookup, VerdictCache
from worker.errors import FILE_NOT_FOUND, INFERENCE_FAILED, INTERNAL_ERROR, URL_INVALID, InputError
from worker.fetch import Fetcher
from worker.hashing import sha256_hex
from worker.messages import Request, verdict
from worker.metrics import Metrics
from worker.prepare import Prepared, prepare

log = structlog.get_logger("dda.pipeline")
Emit = Callable[[Request, dict[str, Any]], None]
LOOKUP_BATCH = 64


@dataclass
class _Fetched:
    request: Request
    data: bytes
    sha256: str


@dataclass
class _Item:
    request: Request
    sha256: str
    prepared: Prepared
    queued_at: float = 0.0

    @property
    def key(self) -> Key:
        return Key(self.sha256, self.prepared.pdq, self.prepared.pdq_quality)


class Pipeline:
    def __init__(
        self,
        *,
        manifest: Manifest,
        runner: Runner,
        cache: VerdictCache,
        fetcher: Fetcher,
        metrics: Metrics,
        emit: Emit,
        max_batch: int,
        max_wait_ms: int,
        fetch_workers: int,
        decode_workers: int,
        max_pixels: int,
        crops: int = 1,
        allow_paths: bool = False,
    ) -> None:
        self.manifest = manifest
        self.runner = runner
        self.cache = cache
        self.fetcher = fetcher
        self.metrics = metrics
        self._emit = emit
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_pixels = max_pixels
        self.crops = crops
        self.allow_paths = allow_paths
        self.model_info = {"name": manifest.name, "version": manifest.version}
        self._fetch_pool = ThreadPoolExecutor(fetch_workers, thread_name_prefix="fetch")
        self._decode_workers = decode_workers
        self._decode_pool = self._new_decode_pool()
        self._exact_q: queue.Queue[_Fetched] = queue.Queue()
        self._near_q: queue.Queue[_Item] = queue.Queue()
        self._batch_q: queue.Queue[_Item] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        exact = (self._exact_q, lambda batch: self.cache.lookup_exact_many([f.sha256 for f in batch]), self._on_exact)
        near = (self._near_q, lambda batch: self.cache.lookup_near_many([i.key for i in batch]), self._on_near)
        self._threads = [threading.Thread(target=self._lookup_stage, args=exact, name="exact-lookup", daemon=True),
                         threading.Thread(target=self._lookup_stage, args=near, name="near-lookup", daemon=True),
                         threading.Thread(target=self._engine_loop, name="engine", daemon=True)]

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._decode_pool.submit(int).result()  # spawn the decode processes before reporting ready
        for thread in self._threads:
            thread.start()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted request has been emitted, up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.in_flight == 0

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    # --- stages -----------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        with self._lock:
            self._in_flight += 1
            self.metrics.in_flight.set(self._in_flight)
        self._fetch_pool.submit(self._fetch_and_prepare, request)

    def _emit_verdict(self, request: Request, out: dict[str, Any]) -> None:
        request.timings_ms["total"] = (time.monotonic() - request.received) * 1000
        out["timings_ms"]["total"] = round(request.timings_ms["total"], 3)
        for stage, ms in request.timings_ms.items():
            self.metrics.stage_seconds.labels(stage).observe(ms / 1000)
        self.metrics.verdicts.labels(out["status"], out["label"] or "none").inc()
        if out["error"]:
            self.metrics.errors.labels(out["error"]["code"]).inc()
        log.debug("verdict", request_id=request.id, status=out["status"], label=out["label"], cache=out["cache"],
                  error=out["error"]["code"] if out["error"] else None, total_ms=out["timings_ms"]["total"])
        try:
            self._emit(request, out)
        finally:
            with self._lock:
                self._in_flight -= 1
                self.metrics.in_flight.set(self._in_flight)

    def _error(self, request: Request, code: str, message: str, sha256: str | None = None) -> None:
        hashes = {"sha256": sha256, "pdq": None, "pdq_quality": None} if sha256 else None
        self._emit_verdict(request, verdict(request, model=self.model_info, threshold=self.manifest.threshold, status="error",
                                            hashes=hashes, error={"code": code, "message": message}))

    def _read(self, request: Request) -> bytes:
        if "://" in request.url:
            return self.fetcher.get(request.url)
        if not self.allow_paths:
            raise InputError(URL_INVALID, "not an http(s) URL")
        try:
            return Path(request.url).read_bytes()
        except OSError as exc:
            raise InputError(FILE_NOT_FOUND, f"cannot read {request.url}: {exc.strerror or exc}") from exc

    def _fetch_and_prepare(self, request: Request) -> None:
        try:
            started = time.monotonic()
            try:
                data = self._read(request)
            except InputError as exc:
                self._error(request, exc.code, exc.message)
                return
            request.timings_ms["fetch"] = (time.monotonic() - started) * 1000
            self._exact_q.put(_Fetched(request, data, sha256_hex(data)))
            self.metrics.queue_depth.labels("exact_lookup").set(self._exact_q.qsize())
        except Exception as exc:  # noqa: BLE001 - still one verdict, whatever went wrong
            log.exception("request failed unexpectedly", request_id=request.id)
            self._error(request, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def _new_decode_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self._decode_workers, mp_context=multiprocessing.get_context("spawn"))

    def _replace_broken(self, broken: ProcessPoolExecutor) -> None:
        """A decode process died (a decoder crash on a hostile file, the OOM killer): the pool is
        unusable from then on, so start a new one; requests it held get error verdicts."""
        with self._lock:
            if self._decode_pool is not broken:
                return
            log.error("a decode process died; starting a new decode pool")
            self._decode_pool = self._new_decode_pool()
        broken.shutdown(wait=False, cancel_futures=True)

    def _decode(self, fetched: _Fetched) -> None:
        args = (prepare, fetched.data, self.manifest.preprocessing.crop_size, self.crops, self.max_pixels)
        pool = self._decode_pool
        try:
            future: Future[Prepared] = pool.submit(*args)
        except BrokenProcessPool:
            self._replace_broken(pool)
            pool = self._decode_pool
            future = pool.submit(*args)
        future.add_done_callback(lambda f, r=fetched.request, sha=fetched.sha256, p=pool: self._decoded(r, sha, f, p))

    def _decoded(self, request: Request, sha256: str, future: Future[Prepared], pool: ProcessPoolExecutor) -> None:
        try:
            prepared = future.result()
        except Exception as exc:  # noqa: BLE001 - the decode process was killed, or the pool is shutting down
            if isinstance(exc, BrokenProcessPool):
                self._replace_broken(pool)
            self._error(request, INTERNAL_ERROR, f"decode process failed: {type(exc).__name__}: {exc}", sha256)
            return
        request.timings_ms["decode"] = prepared.decode_ms
        if prepared.error is not None:
            self._error(request, *prepared.error, sha256=sha256)
            return
        self._near_q.put(_Item(request, sha256, prepared))
        self.metrics.queue_depth.labels("near_lookup").set(self._near_q.qsize())

    def _take(self, q: queue.Queue[_Item], first_timeout: float, limit: int, window_s: float) -> list[_Item]:
        """Block for a first item, then gather more until `limit` or `window_s` has passed."""
        try:
            items = [q.get(timeout=first_timeout)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + window_s
        while len(items) < limit:
            left = deadline - time.monotonic()
            try:
                items.append(q.get(timeout=left) if left > 0 else q.get_nowait())
            except queue.Empty:
                break
        return items

    def _lookup_stage(self, q: queue.Queue[Any], lookup: Callable[[list[Any]], list[Lookup]],
                      handle: Callable[[Any, Lookup, float], None]) -> None:
        """Drain `q` in batches of up to LOOKUP_BATCH, one store round trip per batch."""
        while not self._stop.is_set():
            batch = self._take(q, 0.1, LOOKUP_BATCH, 0.0)
            if not batch:
                continue
            started = time.monotonic()
            try:
                results = lookup(batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop the stage: fail the batch
                log.exception("cache lookup failed")
                for entry in batch:
                    self._error(entry.request, INTERNAL_ERROR, f"cache lookup failed: {type(exc).__name__}: {exc}")
                continue
            spent = (time.monotonic() - started) * 1000
            for entry, found in zip(batch, results):
                try:
                    handle(entry, found, spent)
                except Exception as exc:  # noqa: BLE001 - one request's failure is its own error verdict
                    log.exception("request failed unexpectedly", request_id=entry.request.id)
                    self._error(entry.request, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def _on_exact(self, fetched: _Fetched, found: Lookup, spent_ms: float) -> None:
        fetched.request.timings_ms["cache"] = spent_ms
        if found.verdict is None:
            self._decode(fetched)
            return
        self.metrics.cache_hits.labels("exact").inc()
        hit = found.verdict
        hashes = {"sha256": fetched.sha256, "pdq": hit.pdq, "pdq_quality": hit.pdq_quality}
        self._emit_hit(fetched.request, hit, hashes, "exact", None)

    def _on_near(self, item: _Item, found: Lookup, spent_ms: float) -> None:
        item.request.timings_ms["cache"] = item.request.timings_ms.get("cache", 0.0) + spent_ms
        self.metrics.cache_hits.labels(found.kind).inc()
        if found.verdict is None:
            item.queued_at = time.monotonic()
            self._batch_q.put(item)
            self.metrics.queue_depth.labels("batch").set(self._batch_q.qsize())
            return
        match = {"sha256": found.verdict.sha256, "pdq_distance": found.distance}
        self._emit_hit(item.request, found.verdict, self._hashes(item), "near_duplicate", match)

    def _emit_hit(self, request: Request, hit: CachedVerdict, hashes: dict[str, Any], kind: str, match: dict[str, Any] | None) -> None:
        self._emit_verdict(request, verdict(
            request, model=self.model_info, threshold=self.manifest.threshold, status="ok", logit=hit.logit,
            score=hit.score, label=hit.label, hashes=hashes, cache=kind, cache_match=match))

    def _engine_loop(self) -> None:
        per_batch = max(1, self.max_batch // self.crops)
        while not self._stop.is_set():
            items = self._take(self._batch_q, 0.1, per_batch, self.max_wait_s)
            if items:
                try:
                    self._score(items)
                except Exception as exc:  # noqa: BLE001 - a failed batch gets error verdicts, the loop goes on
                    log.exception("inference failed", batch=len(items))
                    for item in items:
                        self._error(item.request, INFERENCE_FAILED, f"{type(exc).__name__}: {exc}")

    def _score(self, items: list[_Item]) -> None:
        started = time.monotonic()
        for item in items:
            item.request.timings_ms["queue"] = (started - item.queued_at) * 1000
        batch = np.concatenate([i.prepared.crops for i in items])  # type: ignore[misc]
        logits = self.runner.logits(batch).astype(np.float64).reshape(len(items), self.crops).mean(axis=1)
        spent = (time.monotonic() - started) * 1000
        self.metrics.batch_size.observe(len(batch))
        self.metrics.engine_images.inc(len(items))
        log.info("batch scored", batch=len(items), images=len(batch), inference_ms=round(spent, 1),
                 request_ids=[i.request.id for i in items])
        scored = []
        for item, value in zip(items, logits):
            logit = float(value)
            item.request.timings_ms["inference"] = spent
            scored.append((item, CachedVerdict(logit, sigmoid(logit), label_for(logit, self.manifest), item.key.sha256,
                                               item.key.pdq, item.key.pdq_quality)))
        self.cache.store_many([(item.key, v) for item, v in scored])  # before emitting: a repeat right behind hits it
        for item, v in scored:
            self._emit_verdict(item.request, verdict(
                item.request, model=self.model_info, threshold=self.manifest.threshold, status="ok", logit=v.logit,
                score=v.score, label=v.label, hashes=self._hashes(item), cache="miss"))

    @staticmethod
    def _hashes(item: _Item) -> dict[str, Any]:
        return {"sha256": item.sha256, "pdq": item.prepared.pdq, "pdq_quality": item.prepared.pdq_quality}
