"""The models a worker process scores with: the served one, a shadow beside it, an ensemble's
second detector and its combiner. Loaded in this process, or, in a pod's consumer
(DDA_ENGINE_SOCKET), the engine process's, reached over its socket with no torch here.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from engine.model.manifest import Manifest, ModelDirError, read_manifest
from engine.process import lifetime
from engine.runners.contract import Runner, warm_up
from engine.serving import wire
from engine.serving.client import RemoteRunner
from worker import config as worker_config
from worker.metrics import Metrics
from worker.pipeline.ensemble import Ensemble, load_ensemble
from worker.pipeline.shadow import Shadow

log = structlog.get_logger("dda.worker")


def progress(message: str) -> None:
    log.info(message)


def served_model(config: worker_config.WorkerConfig, metrics: Metrics) -> tuple[Manifest, Runner, Shadow | None]:
    """The manifest, a runner and the shadow model if one serves: the engine process's when
    DDA_ENGINE_SOCKET is set (a pod's consumer: no torch, no weights in this process), else
    loaded here. A shadow that cannot load is logged and counted, and the worker serves without it."""
    if config.engine_socket:
        if not config.model:
            raise ModelDirError("DDA_ENGINE_SOCKET needs DDA_MODEL: the model directory the engine process loaded")
        lifetime.die_with_parent(os.getppid())
        manifest = read_manifest(Path(config.model)).served_by_crops()
        remote = RemoteRunner(config.engine_socket, manifest.preprocessing, config.max_batch,
                              on_batch=metrics.engine_batch.observe, on_reconnect=metrics.engine_reconnects.inc)
        shadow = None
        if config.shadow_model:
            engine_shadow = remote.shadow()
            if engine_shadow is None:
                metrics.shadow_failures.labels("load").inc()
                log.error("the engine process holds no shadow model (its log says why); serving without it")
            else:
                shadow = Shadow(read_manifest(Path(config.shadow_model)), engine_shadow, config.shadow_fraction)
        return manifest, remote, shadow
    from engine.model.hub import resolve_model
    from engine.model.model_dir import load_model_dir
    from engine.runners.backend import load_shadow, make_runner

    model_dir = resolve_model(config.model, progress=progress)
    loaded = load_model_dir(model_dir)
    loaded.manifest.served_by_crops()
    runner = make_runner(loaded, model_dir, backend=config.backend, device=config.device,
                         engine_dir=Path(config.engine_dir) if config.engine_dir else None, precision=config.precision,
                         max_batch=config.max_batch, compile=config.compile, log=lambda message: log.info(message))
    warm_up(runner, lambda message: log.info(message))
    shadow = None
    if config.shadow_model:
        found = load_shadow(Path(config.shadow_model), runner, device=config.device, precision=config.precision,
                            max_batch=config.max_batch, log=lambda message: log.error(message))
        if found is None:
            metrics.shadow_failures.labels("load").inc()
        else:
            shadow = Shadow(found[0], found[1], config.shadow_fraction)
            log.info("shadow model loaded", shadow=found[0].version, fraction=config.shadow_fraction)
    return loaded.manifest, runner, shadow


def second_model(config: worker_config.WorkerConfig, served: Manifest, metrics: Metrics) -> Ensemble | None:
    """The second model and its combiner (DDA_SECOND_MODEL, DDA_ENSEMBLE), or None: scored by the
    engine process in a pod's consumer (over a connection of its crop size), else loaded here."""
    if not config.ensemble or not config.second_model:
        return None
    runner: Runner
    if config.engine_socket:
        second = read_manifest(Path(config.second_model))
        runner = RemoteRunner(config.engine_socket, second.preprocessing, config.max_batch, on_reconnect=metrics.engine_reconnects.inc,
                              model=wire.SECOND)
    else:
        from engine.model.hub import resolve_model
        from engine.runners.backend import load_second

        second, runner = load_second(resolve_model(config.second_model, progress=progress), device=config.device,
                                     precision=config.precision, max_batch=config.max_batch, log=lambda message: log.info(message))
    ensemble = load_ensemble(Path(config.ensemble), served, second, runner)
    log.info("second model and combiner loaded", second=second.version, combiner=config.ensemble,
             band=[ensemble.combiner.real_at_or_below, ensemble.combiner.ai_above])
    return ensemble
