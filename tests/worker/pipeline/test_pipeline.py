"""The pipeline in-process: decode processes fail alone, a dead stage is seen, children die with the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.model.model_dir import load_model_dir
from engine.runners.torch_runner import TorchRunner
from tests.images import encode, scene
from tests.services import wait_for
from worker.cache.stores import MemoryStore
from worker.cache.verdicts import VerdictCache
from worker.decode.process import DecodeLimits
from worker.fetch.client import Fetcher, FetchPolicy
from worker.messages import Request, Source
from worker.metrics import Metrics
from worker.pipeline.completion import Completion
from worker.pipeline.pipeline import Pipeline
from worker.pipeline.settings import Settings


def make_pipeline(model_dir: Path, runner: Any = None, **options: Any) -> tuple[Pipeline, Fetcher]:
    loaded = load_model_dir(model_dir)
    fetcher = Fetcher(FetchPolicy())
    models = {name: options.pop(name) for name in ("shadow", "ensemble") if name in options}
    settings = Settings(**{"max_batch": 8, "max_wait_ms": 5, "fetch_workers": 4, "decode_workers": 1, "max_pixels": 10_000_000,
                           "allow_paths": True, **options})
    pipeline = Pipeline(manifest=loaded.manifest, runner=runner or TorchRunner(loaded.network, loaded.manifest.preprocessing),
                        cache=VerdictCache(MemoryStore(), "t", 60), fetcher=fetcher, metrics=Metrics(), settings=settings, **models)
    return pipeline, fetcher


@pytest.fixture()
def files(tmp_path: Path) -> Iterator[Any]:
    def write(name: str, data: bytes | None = None, seed: int = 0) -> str:
        path = tmp_path / name
        path.write_bytes(data if data is not None else encode(scene(300, 260, seed=seed), "PNG"))
        return str(path)

    yield write


def submit(pipeline: Pipeline, path: str, rid: str) -> Completion:
    return pipeline.submit(Request(id=rid, url=path, source=Source("t", 0, 0)))


def test_a_crashing_decoder_fails_only_its_own_request(tiny_model_dir: Path, files: Any) -> None:
    pipeline, fetcher = make_pipeline(tiny_model_dir)
    pipeline.decoder.child_module = "tests.crashing_decoder"
    pipeline.start()
    try:
        good = [submit(pipeline, files(f"g{i}.png", seed=i), f"g{i}") for i in range(6)]
        bad = submit(pipeline, files("crash.bin", b"CRASH" + b"\0" * 100), "bad")
        good += [submit(pipeline, files(f"h{i}.png", seed=10 + i), f"h{i}") for i in range(6)]
        wait_for(lambda: all(c.done for c in [*good, bad]), 60, "every verdict")
        assert [c.record["status"] for c in good] == ["ok"] * 12  # type: ignore[index]
        assert bad.record["error"]["code"] == "decode_crashed"  # type: ignore[index]
        assert pipeline.metrics.decode_restarts.labels("crash")._value.get() == 2  # noqa: SLF001 - the try and its retry
        assert pipeline.failure is None and pipeline.in_flight == 0
    finally:
        pipeline.close()
        fetcher.close()


def test_a_decode_process_killed_mid_job_costs_nothing_and_a_slow_one_times_out(tiny_model_dir: Path, files: Any) -> None:
    pipeline, fetcher = make_pipeline(tiny_model_dir, decode_limits=DecodeLimits(timeout_s=2.0))
    pipeline.decoder.child_module = "tests.crashing_decoder"
    pipeline.start()
    try:
        slow = submit(pipeline, files("slow.bin", b"SLOW" + b"\0" * 100), "slow")
        wait_for(lambda: slow.done, 20, "the slow decode to time out")
        assert slow.record["error"]["code"] == "decode_timeout"  # type: ignore[index]
        victim_pid = pipeline.decoder.pids()[0]
        big = [submit(pipeline, files(f"k{i}.png", encode(scene(2400, 1800, seed=i), "PNG")), f"k{i}") for i in range(3)]
        time.sleep(0)  # kill while the first one is being decoded (the OOM killer's timing)
        os.kill(victim_pid, signal.SIGKILL)
        wait_for(lambda: all(c.done for c in big), 60, "verdicts after the kill")
        assert [c.record["status"] for c in big] == ["ok"] * 3, [c.record for c in big]  # type: ignore[index]
        assert victim_pid not in pipeline.decoder.pids()
    finally:
        pipeline.close()
        fetcher.close()


def test_pixels_through_shared_memory_survive_a_lying_or_vanishing_decode_process(tiny_model_dir: Path, files: Any) -> None:
    """The slot holds pixels, the pipe says their shape: a process that claims more than its slot,
    another shape, or dies between writing the slot and answering costs only its own image
    (retried once in a fresh process with a fresh slot, then decode_crashed); the images around it
    keep their exact pixels."""
    pipeline, fetcher = make_pipeline(tiny_model_dir)
    pipeline.decoder.child_module = "tests.crashing_decoder"
    pipeline.start()
    try:
        image = encode(scene(500, 400, seed=3), "PNG")
        liars = {lie: submit(pipeline, files(f"{lie}.bin", lie.encode() + image), lie) for lie in ("LIE-SLOT", "LIE-SHAPE", "VANISH")}
        good = [submit(pipeline, files(f"g{i}.png", seed=i), f"g{i}") for i in range(6)]
        honest = submit(pipeline, files("honest.png", image), "honest")
        wait_for(lambda: all(c.done for c in [*liars.values(), *good, honest]), 60, "every verdict")
        assert {name: c.record["error"]["code"] for name, c in liars.items()} == dict.fromkeys(liars, "decode_crashed")  # type: ignore[index]
        assert [c.record["status"] for c in [*good, honest]] == ["ok"] * 7  # type: ignore[index]
        expected = TorchRunner(load_model_dir(tiny_model_dir).network, pipeline.manifest.preprocessing)
        from engine.imaging.decode import decode_center_crop

        want = float(expected.logits(decode_center_crop(image)[None])[0])
        assert abs(honest.record["logit"] - want) < 1e-4  # type: ignore[index]  # the slot carried the right pixels
        assert pipeline.metrics.decode_restarts.labels("crash")._value.get() == 6  # noqa: SLF001 - each liar and its retry
        assert pipeline.failure is None and pipeline.in_flight == 0
    finally:
        pipeline.close()
        fetcher.close()


class Boom(BaseException):
    """Escapes every `except Exception`: the way a stage thread really dies."""


class DyingRunner:
    def logits(self, crops: Any) -> Any:
        raise Boom("engine thread killed by the test")


def test_a_dead_stage_makes_healthz_fail_within_5_s(tiny_model_dir: Path, files: Any) -> None:
    from tests.services import free_port
    from worker.endpoints import Endpoints
    from worker.service import health_checks

    pipeline, fetcher = make_pipeline(tiny_model_dir, runner=DyingRunner())
    delivery = type("D", (), {"heartbeat": time.monotonic(), "publishing": True})()
    transport = type("T", (), {"connected": lambda self: True})()
    started, stop = threading.Event(), threading.Event()
    alive, ready = health_checks(pipeline, delivery, transport, started, stop)  # type: ignore[arg-type]
    endpoints = Endpoints("127.0.0.1", free_port(), pipeline.metrics.render, alive=alive, ready=ready)
    endpoints.start()
    pipeline.start()
    started.set()
    try:
        import urllib.error
        import urllib.request

        def status(path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{endpoints.port}{path}", timeout=2) as r:
                    return r.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert status("/healthz") == 200 and status("/readyz") == 200
        submit(pipeline, files("a.png"), "a")
        killed = time.monotonic()
        wait_for(lambda: status("/healthz") == 503, 5, "/healthz to report the dead engine stage")
        assert time.monotonic() - killed < 5 and status("/readyz") == 503
        assert "engine" in (pipeline.failure or "")
    finally:
        endpoints.stop()
        pipeline.close()
        fetcher.close()


def test_decodes_past_their_cpu_or_memory_limit_fail_alone_with_decode_limit(tiny_model_dir: Path, files: Any) -> None:
    """The kernel enforces both: SIGXCPU ends a spinning decode; an allocation past RLIMIT_AS fails
    (a 16 MP RGBA PNG needs ~180 MB, the budget here is 64 MB). Each costs only its own request."""
    big = encode(Image.new("RGBA", (4000, 4000), (10, 200, 30, 128)), "PNG")
    pipeline, fetcher = make_pipeline(tiny_model_dir, max_pixels=20_000_000,
                                      decode_limits=DecodeLimits(timeout_s=30.0, cpu_s=1, memory_mb=64))
    pipeline.decoder.child_module = "tests.crashing_decoder"
    pipeline.start()
    try:
        spin = submit(pipeline, files("spin.bin", b"SPIN" + b"\0" * 100), "spin")
        hog = submit(pipeline, files("big.png", big), "hog")
        good = [submit(pipeline, files(f"g{i}.png", seed=i), f"g{i}") for i in range(4)]
        wait_for(lambda: all(c.done for c in [spin, hog, *good]), 60, "every verdict")
        assert spin.record["error"]["code"] == "decode_limit", spin.record  # type: ignore[index]
        assert "CPU" in spin.record["error"]["message"]  # type: ignore[index]
        assert hog.record["error"]["code"] == "decode_limit", hog.record  # type: ignore[index]
        assert "memory" in hog.record["error"]["message"]  # type: ignore[index]
        assert [c.record["status"] for c in good] == ["ok"] * 4  # type: ignore[index]
        assert pipeline.metrics.decode_restarts.labels("limit")._value.get() == 2  # noqa: SLF001 - both processes replaced
        assert pipeline.failure is None and pipeline.in_flight == 0
    finally:
        pipeline.close()
        fetcher.close()


PARENT = """
import sys, time
from worker.supervision import Supervisor
from worker.decode.pool import DecodeLimits, DecodePool
pool = DecodePool(2, Supervisor(), DecodeLimits(timeout_s=10.0))
pool.start()
print(" ".join(map(str, pool.pids())), flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_decode_processes_die_with_a_sigkilled_worker() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        children = [int(p) for p in parent.stdout.readline().split()]
        assert len(children) == 2 and all(alive(p) for p in children)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_for(lambda: not any(alive(p) for p in children), 10, "the decode processes to exit")
    finally:
        parent.kill()
        parent.wait()


class _FailingRunner:
    """A shadow whose every batch raises."""

    def __init__(self, like: TorchRunner) -> None:
        self.preprocessing = like.preprocessing
        self.max_batch = like.max_batch

    def logits(self, crops: Any) -> Any:
        raise RuntimeError("shadow exploded")


def test_a_shadow_answers_for_the_sampled_misses_only_and_its_failure_costs_no_verdict(
    tiny_model_dir: Path, files: Any, tmp_path: Path,
) -> None:
    """Shadow = the served model with its logit shifted by 0.75, on half the misses by SHA-256:
    sampled verdicts carry its answer (logit exactly 0.75 above the served one), the rest none;
    served labels are the plain pipeline's. A shadow that raises leaves every verdict whole."""
    from engine.model.manifest import read_manifest
    from tests.models import shifted_copy
    from worker.cache.hashing import sha256_hex
    from worker.pipeline.shadow import Shadow

    shadow_dir = shifted_copy(tiny_model_dir, tmp_path / "shadow", 0.75)
    shadow_model = load_model_dir(shadow_dir)
    shadow = Shadow(read_manifest(shadow_dir), TorchRunner(shadow_model.network, shadow_model.manifest.preprocessing), 0.5)
    paths = [files(f"s{i}.png", seed=40 + i) for i in range(12)]
    results = {}
    for name, options in (("plain", {}), ("shadowed", {"shadow": shadow}),
                          ("failing", {"shadow": Shadow(shadow.manifest, _FailingRunner(shadow.runner), 1.0)})):  # type: ignore[arg-type]
        pipeline, fetcher = make_pipeline(tiny_model_dir, **options)
        pipeline.start()
        try:
            done = [submit(pipeline, p, f"{name}{i}") for i, p in enumerate(paths)]
            wait_for(lambda done=done: all(c.done for c in done), 60, "every verdict")
            results[name] = [c.record for c in done]
            metrics = pipeline.metrics
        finally:
            pipeline.close()
            fetcher.close()
        if name == "failing":
            assert metrics.shadow_failures.labels("inference")._value.get() >= 1  # noqa: SLF001
    sampled = [int(sha256_hex(Path(p).read_bytes())[:8], 16) < 2**31 for p in paths]
    assert 0 < sum(sampled) < len(paths)  # both kinds present
    for plain, shadowed, failing, in_sample in zip(results["plain"], results["shadowed"], results["failing"], sampled):
        assert plain["label"] == shadowed["label"] == failing["label"] and "shadow" not in plain and "shadow" not in failing
        assert ("shadow" in shadowed) == in_sample
        if in_sample:
            answer = shadowed["shadow"]
            assert answer["version"].endswith("-shift0.75") and abs(answer["logit"] - shadowed["logit"] - 0.75) < 1e-4
            assert answer["label"] == ("ai_generated" if answer["logit"] > 0 else "real")


def test_a_near_duplicate_of_a_listed_hash_is_reported_and_labelled_by_a_trusted_list(tiny_model_dir: Path, files: Any,
                                                                                       tmp_path: Path) -> None:
    """A list holds a hash 2 bits from an image's, which the model (shifted down) calls real: its
    verdict names the list; in trusted mode the label is ai_generated with the list as the reason
    (the score stays the model's), in report mode the label is the model's own."""
    from tests.models import shifted_copy
    from worker.decode.prepare import prepare

    model = shifted_copy(tiny_model_dir, tmp_path / "real", -50.0)

    path = files("listed.png", seed=77)
    pdq = str(prepare(Path(path).read_bytes(), 336, 1, 10_000_000).pdq)
    listed = f"{int(pdq, 16) ^ 0b101:064x}"
    records = {}
    for trusted in (False, True):
        pipeline, fetcher = make_pipeline(model, trust_near_duplicates=trusted)
        pipeline.cache.import_list("partner-a", [listed])
        pipeline.start()
        try:
            done = submit(pipeline, path, f"t{trusted}")
            wait_for(lambda done=done: done.done, 60, "the verdict")
            records[trusted] = done.record
            assert pipeline.metrics.hash_list_matches.labels("partner-a")._value.get() == 1  # noqa: SLF001
        finally:
            pipeline.close()
            fetcher.close()
    plain, trusted_record = records[False], records[True]
    assert plain["hash_list_match"] == trusted_record["hash_list_match"] == {"source": "partner-a", "pdq_distance": 2}
    assert plain["score"] == trusted_record["score"] and plain["label"] == "real" and plain["label_reason"] is None
    assert trusted_record["label"] == "ai_generated"
    assert trusted_record["label_reason"] == "near-duplicate (distance 2) of a hash listed by partner-a"
