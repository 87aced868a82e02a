"""The pipeline in-process: a dead decode process costs the requests it held, not the worker."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

from engine.model_dir import load_model_dir
from engine.runner import TorchRunner
from tests.conftest import encode, scene
from tests.services import wait_for
from worker.cache import VerdictCache
from worker.cache_store import MemoryStore
from worker.fetch import Fetcher, FetchPolicy
from worker.messages import Request, Source
from worker.metrics import Metrics
from worker.pipeline import Pipeline


def test_a_killed_decode_process_is_replaced(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model_dir(tiny_model_dir)
    verdicts: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def emit(request: Request, record: dict[str, Any]) -> None:
        with lock:
            verdicts[request.id] = record

    fetcher = Fetcher(FetchPolicy())
    pipeline = Pipeline(
        manifest=loaded.manifest, runner=TorchRunner(loaded.network, loaded.manifest.preprocessing),
        cache=VerdictCache(MemoryStore(), "t", 60), fetcher=fetcher, metrics=Metrics(), emit=emit,
        max_batch=8, max_wait_ms=5, fetch_workers=4, decode_workers=1, max_pixels=10_000_000, allow_paths=True,
    )
    pipeline.start()
    try:
        def submit(tag: str) -> None:
            """Six images never seen before (a cache hit would skip the decode processes)."""
            for i in range(6):
                path = tmp_path / f"{tag}{i}.png"
                path.write_bytes(encode(scene(300, 260, seed=hash((tag, i)) % 10_000), "PNG"))
                pipeline.submit(Request(id=f"{tag}{i}", url=str(path), source=Source("t", 0, i)))

        submit("before")
        wait_for(lambda: len(verdicts) == 6, 60, "first verdicts")
        pool = pipeline._decode_pool  # noqa: SLF001 - the test plays the OOM killer
        for pid in list(pool._processes):  # noqa: SLF001
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: pool._broken, 10, "the pool to notice the dead process")  # noqa: SLF001
        submit("after")
        wait_for(lambda: len(verdicts) == 12 and pipeline.in_flight == 0, 60, "verdicts after the kill")
        after = [verdicts[f"after{i}"] for i in range(6)]
        # Every request got exactly one verdict, from a replacement pool.
        assert all(v["status"] == "ok" for v in after), after
        assert pipeline._decode_pool is not pool  # noqa: SLF001
        submit("later")
        wait_for(lambda: len(verdicts) == 18, 60, "verdicts from the new pool")
        assert all(verdicts[f"later{i}"]["status"] == "ok" for i in range(6)), [verdicts[f"later{i}"] for i in range(6)]
    finally:
        pipeline.close()
        fetcher.close()
