"""A second detector beside DDA in the worker (DDA_SECOND_MODEL, DDA_ENSEMBLE): its own crop cut by
the decode processes, both models scored per miss, the combiner's verdict on misses and hits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.imaging.decode import decode_rgb
from engine.imaging.preprocess import center_crop, resize_shorter
from engine.model.combiner import Combiner
from engine.model.model_dir import load_model_dir
from engine.runners.detector import Detector
from engine.runners.torch_runner import TorchRunner
from tests.images import encode, scene
from tests.schemas import verdict_lines
from tests.services import wait_for
from worker.decode.pool import DecodePool
from worker.decode.prepare import Prepared
from worker.decode.process import DecodeJob, DecodeLimits
from worker.supervision import Supervisor


def test_a_decode_process_cuts_the_second_models_scaled_crop_beside_ddas(tmp_path: Path) -> None:
    supervisor = Supervisor()
    pool = DecodePool(1, supervisor, DecodeLimits())
    pool.start()
    try:
        for i, (width, height, fmt) in enumerate([(640, 480, "JPEG"), (300, 500, "PNG"), (1200, 900, "JPEG")]):
            data = encode(scene(width, height, seed=i), fmt)
            done = threading.Event()
            answers: list[Prepared] = []
            pool.submit(DecodeJob(data, 336, 1, 50_000_000, done=lambda p: (answers.append(p), done.set()), second=(440, 384)))  # noqa: B023
            assert done.wait(60)
            [prepared] = answers
            whole = decode_rgb(data)
            assert prepared.error is None and prepared.crops is not None and prepared.second is not None
            assert np.array_equal(prepared.crops[0], center_crop(whole, 336))
            assert np.array_equal(prepared.second, center_crop(resize_shorter(whole, 440), 384))
    finally:
        supervisor.stop(5.0)
        pool.close()


def test_the_worker_answers_with_both_models_and_the_combiners_band(tiny_model_dir: Path, tiny_commfor_dir: Path, tmp_path: Path) -> None:
    served, second = load_model_dir(tiny_model_dir), load_model_dir(tiny_commfor_dir)
    images = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        path.write_bytes(encode(scene(420 + 40 * i, 400 + 10 * i, seed=50 + i), "PNG"))
        images.append(path)
    rgb = [decode_rgb(p.read_bytes()) for p in images]
    dda = [p.logit for p in Detector(served.manifest, TorchRunner(served.network, served.manifest.preprocessing)).predict(rgb)]
    commfor = [p.logit for p in Detector(second.manifest, TorchRunner(second.network, second.manifest.preprocessing)).predict(rgb)]
    weights = (1.0, 2.0)
    fused = sorted(weights[0] * a + weights[1] * b for a, b in zip(dda, commfor))
    # a band around the middle images, so the eight answers hold all three assessments
    low, high = 1 / (1 + np.exp(-fused[2])), 1 / (1 + np.exp(-fused[5]))
    combiner = Combiner((served.manifest.version, second.manifest.version), weights, 0.0, float(low), float(high))
    combiner.save(tmp_path / "combiner.json")
    env = {**os.environ, "DDA_MODEL": str(tiny_model_dir), "DDA_SECOND_MODEL": str(tiny_commfor_dir), "DDA_ENSEMBLE": str(tmp_path / "combiner.json"),
           "DDA_METRICS_PORT": "0", "DDA_DECODE_WORKERS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dda", "worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("\n".join(str(p) for p in images) + "\n")
        proc.stdin.flush()
        answered = [proc.stdout.readline() for _ in images]  # all cached before the same files come again: hits
        proc.stdin.write("\n".join(str(p) for p in images) + "\n")
        proc.stdin.close()
        answered += proc.stdout.readlines()
        assert proc.wait(120) == 0, proc.stderr.read()[-3000:] if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    records = verdict_lines("".join(answered))
    assert len(records) == 16 and all(r["status"] == "ok" and r["schema_version"] == 4 for r in records)
    by_path: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for r in records:
        by_path.setdefault(r["url"], []).append(r)
    for path, a, b in zip(images, dda, commfor):
        first, again = sorted(by_path[str(path)], key=lambda r: r["cache"] != "miss")
        assert (first["cache"], again["cache"]) == ("miss", "exact")
        models = first["models"]
        assert [m["version"] for m in models] == [served.manifest.version, second.manifest.version]
        assert models[0]["logit"] == pytest.approx(a, abs=1e-4) and models[1]["logit"] == pytest.approx(b, abs=1e-4)
        assert first["score"] == pytest.approx(combiner.score([a, b]), abs=1e-4) and first["threshold"] == high
        assert first["assessment"] == combiner.label(first["score"])
        assert first["label"] == ("ai_generated" if first["assessment"] == "ai_generated" else "real")
        assert (again["models"], again["assessment"], again["score"]) == (models, first["assessment"], first["score"])
    assert {r["assessment"] for r in records} == {"real", "suspicious", "ai_generated"}


def test_a_combiner_for_other_models_or_without_its_second_model_is_refused(tiny_model_dir: Path, tiny_commfor_dir: Path,
                                                                            tmp_path: Path) -> None:
    Combiner(("dda-other", "commfor-other"), (1.0, 1.0), 0.0, 0.4, 0.6).save(tmp_path / "c.json")
    base = {**os.environ, "DDA_MODEL": str(tiny_model_dir), "DDA_METRICS_PORT": "0", "DDA_DECODE_WORKERS": "1"}
    for extra, said in (({"DDA_SECOND_MODEL": str(tiny_commfor_dir), "DDA_ENSEMBLE": str(tmp_path / "c.json")}, "refit it with dda calibrate --second"),
                        ({"DDA_ENSEMBLE": str(tmp_path / "c.json")}, "go together")):
        proc = subprocess.run([sys.executable, "-m", "dda", "worker"], input="", text=True, capture_output=True, env={**base, **extra},
                              timeout=120)
        assert proc.returncode != 0 and said in proc.stderr and proc.stdout == "", proc.stderr[-2000:]
        assert all(json.loads(line) for line in proc.stderr.splitlines())


def test_published_verdicts_are_counted_by_assessment() -> None:
    from worker.consume.ledger import Entry
    from worker.consume.outcomes import published
    from worker.metrics import Metrics
    from worker.pipeline.completion import Completion

    metrics = Metrics()
    for i, assessment in enumerate(["suspicious", "suspicious", "ai_generated", None]):
        completion = Completion(f"r{i}")
        completion.resolve({"status": "ok", "label": "real", "error": None, **({"assessment": assessment} if assessment else {})})
        published(Entry(("in", 0), i, "verdict", completion), metrics)  # type: ignore[arg-type]
    counts = {s.labels["assessment"]: s.value for m in metrics.registry.collect() if m.name == "dda_assessments" for s in m.samples
              if s.name == "dda_assessments_total"}
    assert counts == {"suspicious": 2.0, "ai_generated": 1.0}


class _Breaking:
    """A model's runner that answers `value` for every crop of one flat colour (`pixel`)."""

    def __init__(self, runner: TorchRunner, pixel: int, value: float) -> None:
        self.runner, self.pixel, self.value = runner, pixel, value
        self.preprocessing, self.max_batch = runner.preprocessing, runner.max_batch

    def logits(self, crops: np.ndarray) -> np.ndarray:
        out = self.runner.logits(crops)
        out[(crops == self.pixel).all(axis=(1, 2, 3))] = self.value
        return out


@pytest.mark.parametrize("ensemble", [False, True])
def test_a_non_finite_logit_fails_its_image_alone_and_is_not_cached(tiny_model_dir: Path, tiny_commfor_dir: Path, tmp_path: Path,
                                                                    ensemble: bool) -> None:
    """NaN from DDA on a white image, +inf from the second model on a black one: each of those gets
    inference_failed naming the model, twice (nothing was cached), the images around them their verdicts."""
    from tests.worker.pipeline.test_pipeline import make_pipeline, submit
    from worker.pipeline.ensemble import load_ensemble

    served, second = load_model_dir(tiny_model_dir), load_model_dir(tiny_commfor_dir)
    options = {}
    if ensemble:
        Combiner((served.manifest.version, second.manifest.version), (1.0, 1.0), 0.0, 0.4, 0.6).save(tmp_path / "c.json")
        second_runner = _Breaking(TorchRunner(second.network, second.manifest.preprocessing), 0, float("inf"))
        options["ensemble"] = load_ensemble(tmp_path / "c.json", served.manifest, second.manifest, second_runner)  # type: ignore[arg-type]
    pipeline, fetcher = make_pipeline(tiny_model_dir, _Breaking(TorchRunner(served.network, served.manifest.preprocessing), 255, float("nan")),
                                      **options)
    paths = {name: tmp_path / f"{name}.png" for name in ("white", "black", "a", "b", "c")}
    for n, (name, path) in enumerate(paths.items()):
        flat = {"white": (255,) * 3, "black": (0,) * 3}.get(name)
        path.write_bytes(encode(Image.new("RGB", (600, 500), flat) if flat else scene(600, 500, seed=n), "PNG"))
    pipeline.start()
    try:
        for attempt in range(2):
            done = {name: submit(pipeline, str(path), f"{name}{attempt}") for name, path in paths.items()}
            wait_for(lambda: all(c.done for c in done.values()), 60, "every verdict")  # noqa: B023
            records = {name: c.record for name, c in done.items()}
            assert records["white"]["error"] == {"code": "inference_failed", "message": f"{served.manifest.name} gave a non-finite logit for this image"}
            black = records["black"]
            if ensemble:
                assert black["error"]["message"] == f"{second.manifest.name} gave a non-finite logit for this image"
            else:
                assert black["status"] == "ok"
            for name in ("a", "b", "c"):
                assert records[name]["status"] == "ok" and records[name]["cache"] == ("miss" if attempt == 0 else "exact")
                assert ("models" in records[name]) == ensemble
        broken = 2 if ensemble else 1
        assert pipeline.metrics.engine_non_finite._value.get() == 2 * broken  # noqa: SLF001
    finally:
        pipeline.close()
        fetcher.close()
