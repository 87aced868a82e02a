"""`dda worker`: assemble configuration, model, cache, fetcher, pipeline and transport, and run.

With DDA_KAFKA_BOOTSTRAP set it consumes Kafka; without, it reads stdin and writes
stdout through the same pipeline and delivery loop (the embedded default the README runs).
Exit status: 0 drained and committed; 1 a stage died, publishing stalled with the broker
reachable, the transactional producer was fenced or could not go on (exactly_once), or no
broker answered at start (what was safe was committed); 2 bad configuration or
model; 3 stopped with work abandoned or uncommitted (redelivered); 128 + N a signal N before
the worker started (nothing consumed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import structlog

from engine.model.manifest import ModelDirError, read_manifest
from engine.process.logs import configure_logging
from worker import config as worker_config
from worker.cache.keys import namespace_for
from worker.cache.stores import MemoryStore, RedisStore, Store
from worker.cache.verdicts import VerdictCache
from worker.consume.delivery import Delivery
from worker.consume.stdin_transport import StdinTransport
from worker.consume.terms import EXIT_ABANDONED, EXIT_CONFIG, EXIT_FATAL, Limits
from worker.consume.transport import Transport
from worker.decode.process import DecodeLimits
from worker.endpoints import Endpoints
from worker.fetch.client import Fetcher, FetchPolicy
from worker.metrics import Metrics
from worker.models import second_model, served_model
from worker.pipeline.ensemble import combiner_for
from worker.pipeline.pipeline import Pipeline
from worker.pipeline.settings import Settings

log = structlog.get_logger("dda.worker")
STALL_AFTER_S = 60.0
HARD_EXIT_AFTER_DRAIN_S = 8.0  # the process is gone within DDA_DRAIN_TIMEOUT_S + 10 s, whatever hangs
POD_GRACE_S = 4.0  # a pod's parent outlasts its consumers' own hard exit


def worker_command(args: argparse.Namespace) -> int:
    """Runs the worker; a process that served ends here without interpreter finalisation
    (see `_end_process`). Every line on stderr is JSON (engine.process.logs)."""
    configure_logging()
    stop_while_starting()
    try:
        config = worker_config.load(os.environ, vars(args))
    except worker_config.ConfigError as exc:
        log.error(f"invalid configuration: {exc}", exit_status=EXIT_CONFIG)
        return EXIT_CONFIG
    # a pod's consumer says which process it is, as the engine process does (pod logs interleave)
    configure_logging(config.log_level, **({"process": "consumer", "pid": os.getpid()} if config.engine_socket else {}))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a first model download's bars are not JSON lines
    if config.fetch_allow_networks:
        log.warning("fetch allow-list is set: image URLs may reach these private networks",
                    networks=[str(n) for n in config.fetch_allow_networks])
    metrics = Metrics()
    checks: dict[str, Callable[[], bool]] = {"alive": lambda: False, "ready": lambda: False}
    scrape: list[Callable[[], bytes]] = [metrics.render]  # a pod's parent shows its consumers' metrics instead
    endpoints = None
    if config.metrics_port:
        # Bound now, before minutes of model loading, so a busy port is a configuration error at once.
        # The embedded (stdin) mode listens on loopback unless told otherwise.
        explicit_host = "DDA_METRICS_HOST" in os.environ or getattr(args, "metrics_host", None) is not None
        host = config.metrics_host if explicit_host or config.kafka_bootstrap else "127.0.0.1"
        try:
            endpoints = Endpoints(host, config.metrics_port, lambda: scrape[0](), alive=lambda: checks["alive"](), ready=lambda: checks["ready"]())
        except OSError as exc:
            log.error(f"cannot listen on {host}:{config.metrics_port} for /metrics, /healthz and /readyz: "
                      f"{exc.strerror or exc}. Choose another port with DDA_METRICS_PORT (or --metrics-port); 0 turns them off.",
                      exit_status=EXIT_CONFIG)
            return EXIT_CONFIG
    try:
        if config.consumers > 1:
            status = _serve_pod(config, checks, scrape, endpoints)
        else:
            status = _serve(config, metrics, checks, endpoints)
    finally:
        if endpoints is not None:
            endpoints.stop()
    _end_process(status)


def _end_process(status: int) -> NoReturn:
    """The worker's own shutdown has committed, flushed and closed what matters; interpreter
    finalisation adds nothing but risk. A CPU batch still running at the drain deadline is a
    thread inside libtorch, and finalising under it aborted the process (SIGABRT, "terminate
    called without an active exception") after it had logged exit status 3; kafka-python's
    finalisers print plain tracebacks when the broker is gone. So: flush, and exit now."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said there
            pass
    os._exit(status)


def _serve_pod(config: worker_config.WorkerConfig, checks: dict[str, Callable[[], bool]], scrape: list[Callable[[], bytes]],
               endpoints: Endpoints | None) -> int:
    from engine.model.hub import resolve_model
    from worker.models import progress
    from worker.pod import Pod, serve_pod

    try:
        model_dir = resolve_model(config.model, progress=progress)
        served = read_manifest(model_dir).served_by_crops()
        if config.ensemble and config.second_model:  # refused now, not after the engine process loaded both models
            second_dir = resolve_model(config.second_model, progress=progress)
            combiner_for(Path(config.ensemble), served, read_manifest(second_dir))
            config = dataclasses.replace(config, second_model=str(second_dir))
    except (ModelDirError, ValueError, RuntimeError, OSError) as exc:  # CombinerError is a ValueError
        log.error(f"cannot load the model: {exc}", exit_status=EXIT_CONFIG)
        return EXIT_CONFIG
    stop = threading.Event()
    install_stop_signals(stop, config.drain_timeout_s + HARD_EXIT_AFTER_DRAIN_S + POD_GRACE_S)

    def show(pod: Pod) -> None:
        checks["alive"], checks["ready"], scrape[0] = pod.alive, pod.ready, pod.scrape
        if endpoints is not None:
            endpoints.start()

    return serve_pod(config, model_dir, stop, config.drain_timeout_s + HARD_EXIT_AFTER_DRAIN_S, show)


def _serve(config: worker_config.WorkerConfig, metrics: Metrics, checks: dict[str, Callable[[], bool]],
           endpoints: Endpoints | None) -> int:
    try:
        manifest, runner, shadow = served_model(config, metrics)
        ensemble = second_model(config, manifest, metrics)
    except (ModelDirError, ValueError, RuntimeError, OSError, ImportError) as exc:  # EngineLost is a RuntimeError; CombinerError a ValueError
        log.error(f"cannot load the model: {exc}", exit_status=EXIT_CONFIG)
        return EXIT_CONFIG

    store: Store = RedisStore(config.redis_url, cluster=config.redis_cluster) if config.redis_url else MemoryStore()
    namespace = namespace_for(manifest.version, manifest.threshold)
    cache = VerdictCache(store, ensemble.namespace(namespace) if ensemble else namespace, config.cache_ttl_s,
                         on_error=lambda _e: metrics.redis_errors.inc(),
                         on_capped=lambda where, n: metrics.cache_index_capped.labels(where).inc(n),
                         index_capacity=config.near_index_max_hashes)
    metrics.near_index_hashes.set_function(lambda: len(cache.index.index))
    metrics.near_index_bytes.set_function(lambda: cache.index.index.nbytes)
    metrics.near_index_ready.set_function(lambda: float(cache.index.ready))
    metrics.watch_lists(cache.list_counts)
    fetcher = Fetcher(FetchPolicy(
        max_bytes=config.fetch_max_bytes, total_timeout_s=config.fetch_timeout_s, retries=config.fetch_retries,
        allow_networks=config.fetch_allow_networks,
    ), max_connections=config.fetch_workers)
    if config.kafka_bootstrap:
        from worker.consume.kafka_transport import BrokerUnavailable, KafkaTransport

        try:
            transport: Transport = KafkaTransport(config)
        except BrokerUnavailable as exc:
            log.error(str(exc), exit_status=EXIT_FATAL)
            return EXIT_FATAL
    else:
        transport = StdinTransport(sys.stdin.buffer, sys.stdout)
    pipeline = Pipeline(manifest=manifest, runner=runner, cache=cache, fetcher=fetcher, metrics=metrics, shadow=shadow, ensemble=ensemble,
                        settings=Settings(
        max_batch=config.max_batch, max_wait_ms=config.max_wait_ms, fetch_workers=config.fetch_workers,
        decode_workers=config.decode_workers, max_pixels=config.max_pixels, max_in_flight_bytes=config.max_in_flight_bytes,
        decode_limits=DecodeLimits(config.decode_timeout_s, config.decode_cpu_s, config.decode_memory_mb), allow_paths=transport.allows_paths,
        trust_near_duplicates=config.near_duplicates == "trusted", provenance_policy=config.provenance_policy,
        c2pa_trust_anchors=config.c2pa_trust_anchors))
    delivery = Delivery(transport, pipeline, metrics, Limits(
        max_in_flight=config.max_in_flight, max_message_bytes=config.max_message_bytes,
        revoke_timeout_s=config.revoke_timeout_s, drain_timeout_s=config.drain_timeout_s, lag_every_s=config.lag_every_s,
        publish_stall_s=config.publish_stall_s, transaction_interval_s=config.transaction_interval_ms / 1000))
    stop = threading.Event()
    install_stop_signals(stop, config.drain_timeout_s + HARD_EXIT_AFTER_DRAIN_S)
    started = threading.Event()
    checks["alive"], checks["ready"] = health_checks(pipeline, delivery, transport, started, stop)
    if endpoints is not None:
        endpoints.start()
    try:
        try:
            pipeline.start()
            cache.index.start()
        except RuntimeError as exc:
            log.error(f"cannot start the decode processes: {exc}", exit_status=EXIT_FATAL)
            return EXIT_FATAL
        started.set()
        if manifest.warning:
            log.warning(f"model {manifest.version}: {manifest.warning}")
        log.info("worker started", model=manifest.version, mode="kafka" if config.kafka_bootstrap else "stdin",
                 input_topic=config.input_topic if config.kafka_bootstrap else None,
                 cache=("redis cluster" if config.redis_cluster else "redis") if config.redis_url else "memory", delivery=config.delivery,
                 member_slot=config.member_slot() if config.delivery == "exactly_once" else None)
        return delivery.run(stop, stop_stages=lambda: pipeline.close(timeout_s=1.0))
    finally:
        pipeline.close(timeout_s=0.5)
        cache.index.close()
        fetcher.close()


def health_checks(pipeline: Pipeline, delivery: Delivery, transport: Transport, started: threading.Event,
                  stop: threading.Event) -> tuple[Callable[[], bool], Callable[[], bool]]:
    """/healthz: every stage alive and the consume loop turning. /readyz: that, started, not
    stopping, the broker reachable now (checked continuously, not once at join), and records
    being acknowledged (a broker that lost its state accepts connections but not records)."""

    def alive() -> bool:
        return pipeline.failure is None and time.monotonic() - delivery.heartbeat < STALL_AFTER_S

    def ready() -> bool:
        return started.is_set() and not stop.is_set() and alive() and transport.connected() and delivery.publishing

    return alive, ready


def stop_while_starting() -> None:
    """SIGTERM or Ctrl-C before the orderly shutdown exists (loading the model, waiting up to
    DDA_KAFKA_CONNECT_TIMEOUT_S for a broker): nothing was consumed, so the process ends at
    once, with one JSON line and no interpreter finalisation (kafka-python's half-made clients
    printed tracebacks from their finalisers). `install_stop_signals` replaces this."""

    def on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        log.info("stopped while starting: nothing was consumed", signal=name, exit_status=128 + signum)
        _end_process(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)


def install_stop_signals(stop: threading.Event, hard_deadline_s: float) -> None:
    """SIGTERM and Ctrl-C start the orderly shutdown; if it is not over by `hard_deadline_s`
    (a hung broker call, say), the process exits anyway with EXIT_ABANDONED: nothing past
    unfinished work was committed, so it is redelivered."""

    def hard_exit() -> None:
        log.error("shutdown deadline passed; exiting now", exit_status=EXIT_ABANDONED, deadline_s=hard_deadline_s)
        os._exit(EXIT_ABANDONED)

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            return
        log.info("stopping: draining in-flight work", signal=signal.Signals(signum).name, hard_deadline_s=hard_deadline_s)
        stop.set()
        timer = threading.Timer(hard_deadline_s, hard_exit)
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("worker", help="run the moderation worker (Kafka, or stdin/stdout when no broker is set)",
                            description="Kafka in, one verdict per request out; with no DDA_KAFKA_BOOTSTRAP, JSON lines or URLs "
                                        "on stdin and verdicts on stdout. Every setting is an environment variable (in "
                                        "brackets) and a flag; the flag wins. Exit status: 0 drained and committed, 1 a stage "
                                        "died or no broker answered, 2 bad configuration or model, 3 stopped with work "
                                        "abandoned (redelivered), 128+N signal N before it started.")
    worker_config.add_arguments(p)
    p.set_defaults(handler=worker_command)


def consumer_main() -> int:
    """A pod's consumer process (`python -m worker.service`), configured by its environment alone:
    started without the CLI root, whose other sub-commands would load torch into every consumer."""
    parser = argparse.ArgumentParser(prog="dda worker")
    worker_config.add_arguments(parser)
    return worker_command(parser.parse_args([]))


if __name__ == "__main__":
    sys.exit(consumer_main())
