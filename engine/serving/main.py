"""The engine process of a pod: load the model(s), serve the workers (`engine.serving.server`), stop
on SIGTERM after the batch it is on, die with the pod.

    python -m engine.serving.main MODEL_DIR SOCKET PARENT_PID [options]

prints one JSON line on stdout when it listens ({"ready": ..., "backend": ...}); exit 2 means
the model or the options were refused (reason on stderr). Its log lines are JSON on stderr, in the
worker's format (`engine.process.logs`), with `"process": "engine"`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.process.logs import LEVELS
from engine.runners.contract import BACKENDS, DEVICES, PRECISION_CHOICES, Backend, Precision


@dataclass(frozen=True)
class EngineSettings:
    """What an engine process is started with, owned here: a pod builds one from its configuration
    and starts `command()`; `parse` reads it back from that command line."""

    model: Path
    socket: str
    parent_pid: int
    backend: Backend = "auto"
    device: str = "cpu"
    precision: Precision | Literal["auto"] = "auto"
    max_batch: int = 32
    engine_dir: Path | None = None
    compile: bool = False
    shadow_model: Path | None = None  # a candidate scored on request beside the served model (torch)
    second_model: Path | None = None  # an ensemble's second detector, scored on its own crops (torch)
    log_level: str = "info"

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "engine.serving.main", str(self.model), self.socket, str(self.parent_pid),
                "--backend", self.backend, "--device", self.device, "--precision", self.precision,
                "--max-batch", str(self.max_batch), "--log-level", self.log_level]
        for flag, value in (("--engine-dir", self.engine_dir), ("--shadow-model", self.shadow_model), ("--second-model", self.second_model)):
            if value is not None:
                argv += [flag, str(value)]
        return argv + (["--compile"] if self.compile else [])

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> EngineSettings:
        parser = argparse.ArgumentParser(prog="python -m engine.serving.main", description=__doc__.splitlines()[0])
        parser.add_argument("model", type=Path)
        parser.add_argument("socket")
        parser.add_argument("parent_pid", type=int)
        parser.add_argument("--backend", default="auto", choices=BACKENDS)
        parser.add_argument("--device", default="cpu", choices=DEVICES)
        parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
        parser.add_argument("--max-batch", type=int, default=32)
        parser.add_argument("--engine-dir", type=Path)
        parser.add_argument("--compile", action="store_true", help="torch.compile per batch bucket, each compiled before ready")
        parser.add_argument("--shadow-model", type=Path, help="a candidate scored on request beside the served model (torch)")
        parser.add_argument("--second-model", type=Path, help="an ensemble's second detector, scored on its own crops (torch)")
        parser.add_argument("--log-level", default="info", choices=LEVELS)
        return cls(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    import structlog

    from engine.model.model_dir import load_model_dir
    from engine.process import lifetime
    from engine.process.logs import configure_logging
    from engine.runners.backend import load_second, load_shadow, make_runner
    from engine.runners.contract import warm_up
    from engine.serving.server import EngineServer

    args = EngineSettings.parse(argv)
    lifetime.die_with_parent(args.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the pod decides
    configure_logging(args.log_level, process="engine", pid=os.getpid())
    logger = structlog.get_logger("dda.engine")

    def log(message: str) -> None:
        logger.info(message)

    chosen: list[str] = []
    try:
        runner = make_runner(load_model_dir(args.model), args.model, backend=args.backend, device=args.device,
                             precision=args.precision, max_batch=args.max_batch, engine_dir=args.engine_dir,
                             compile=args.compile, log=chosen.append)
        warm_up(runner, log)
        shadow = None
        if args.shadow_model is not None:
            shadow = load_shadow(args.shadow_model, runner, device=args.device, precision=args.precision, max_batch=args.max_batch,
                                 log=log)
        second = None
        if args.second_model is not None:
            second = load_second(args.second_model, device=args.device, precision=args.precision, max_batch=args.max_batch, log=log)[1]
        server = EngineServer(runner, args.socket, log, shadow=shadow[1] if shadow else None, second=second)
    except (ValueError, RuntimeError, OSError, ImportError) as exc:
        logger.error(f"cannot start the engine: {exc}", exit_status=2)
        return 2
    signal.signal(signal.SIGTERM, lambda _s, _f: server.stop())
    print(json.dumps({"ready": True, "backend": chosen[-1] if chosen else "", "max_batch": args.max_batch}), flush=True)
    server.serve()
    server.close()
    log(f"engine stopped after {server.batches} batches, {server.images} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
