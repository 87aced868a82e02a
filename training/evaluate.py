"""`dda eval` and `dda calibrate`: measure a model on labelled folders, set its threshold.

Benchmarks use the common layout `<data>/<subset>/0_real/*` and `<data>/<subset>/1_fake/*`
(or `<data>/0_real`, `<data>/1_fake` for a single set). The paper applies JPEG quality 96
to the fakes of some benchmarks: `--jpeg-fakes 96`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from engine.imaging.decode import decode_folder
from engine.model.labels import sigmoid
from engine.model.model_dir import LoadedModel, write_manifest
from engine.runners.detector import Detector
from engine.runners.torch_runner import TorchRunner
from training import metrics
from training.alignment import jpeg


def subsets(data: Path) -> dict[str, Path]:
    if (data / "0_real").is_dir() or (data / "1_fake").is_dir():
        return {data.name: data}
    found = {p.name: p for p in sorted(data.iterdir()) if (p / "0_real").is_dir() or (p / "1_fake").is_dir()}
    if not found:
        raise ValueError(f"{data} has no <subset>/0_real or <subset>/1_fake folders")
    return found


def score_folder(detector: Detector, folder: Path, jpeg_quality: int | None = None, batch: int = 16) -> np.ndarray:
    """Logits of every decodable image under `folder`, JPEG-compressed first if asked."""
    logits: list[float] = []
    images = decode_folder(folder)
    while chunk := list(islice(images, batch)):
        pixels = [p if jpeg_quality is None else np.asarray(jpeg(Image.fromarray(p), jpeg_quality)) for _, p in chunk]
        logits += [p.logit for p in detector.predict(pixels)]
    return np.array(logits)


def roc_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, size: int = 480) -> None:
    """ROC curves drawn with Pillow (one colour per subset, diagonal for chance)."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    margin = 40
    span = size - 2 * margin

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return margin + fpr * span, size - margin - tpr * span

    draw.rectangle([margin, margin, size - margin, size - margin], outline="black")
    draw.line([xy(0, 0), xy(1, 1)], fill=(180, 180, 180))
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    for i, (name, (fpr, tpr)) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        draw.line([xy(f, t) for f, t in zip(fpr, tpr)], fill=colour, width=2)
        draw.text((margin + 8, margin + 8 + 14 * i), name, fill=colour)
    draw.text((size // 2 - 40, size - margin + 12), "false positive rate", fill="black")
    draw.text((4, margin - 20), "true positive rate", fill="black")
    image.save(path)


def evaluate(loaded: LoadedModel, data: Path, *, crops: int = 1, jpeg_fakes: int | None = None, out_dir: Path | None = None,
             progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    detector = Detector(loaded.manifest, TorchRunner(loaded.network, loaded.manifest.preprocessing), crops=crops)
    threshold = loaded.manifest.threshold_logit
    results: dict[str, Any] = {}
    curves = {}
    for name, folder in subsets(data).items():
        real = score_folder(detector, folder / "0_real")
        fake = score_folder(detector, folder / "1_fake", jpeg_fakes)
        scores = np.r_[real, fake]
        labels = np.r_[np.zeros(len(real), int), np.ones(len(fake), int)]
        results[name] = metrics.summary(scores, labels, threshold)
        if len(real) and len(fake):
            fpr, tpr, _ = metrics.roc_curve(scores, labels)
            curves[name] = (fpr, tpr)
        progress(f"{name}: {results[name]}")
    keys = [k for k in next(iter(results.values())) if k != "images"]
    results["average"] = {k: float(np.nanmean([r.get(k, math.nan) for r in results.values()])) for k in keys}
    report = {"model": loaded.manifest.version, "threshold": loaded.manifest.threshold, "crops": crops,
              "jpeg_fakes": jpeg_fakes, "subsets": results}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.json").write_text(json.dumps(report, indent=2))
        (out_dir / "eval.md").write_text(markdown(report))
        if curves:
            roc_png(curves, out_dir / "roc.png")
    return report


def markdown(report: dict[str, Any]) -> str:
    columns = ["images", "accuracy", "real_accuracy", "fake_accuracy", "average_precision", "roc_auc",
               "tpr_at_1pct_fpr", "tpr_at_5pct_fpr"]
    lines = [f"Model {report['model']}, threshold {report['threshold']}, crops {report['crops']}, "
             f"JPEG on fakes: {report['jpeg_fakes'] or 'none'}", "",
             "| subset | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, r in report["subsets"].items():
        cells = [str(r.get(c, "")) if c == "images" else (f"{r[c]:.4f}" if c in r else "") for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def calibrate(loaded: LoadedModel, model_dir: Path, reals: Path, target_fpr: float, write: bool) -> float:
    """Threshold (as P(AI)) giving at most `target_fpr` false positives on `reals`."""
    if not 0 < target_fpr < 1:
        raise ValueError("target FPR must be between 0 and 1")
    detector = Detector(loaded.manifest, TorchRunner(loaded.network, loaded.manifest.preprocessing))
    logits = score_folder(detector, reals)
    if len(logits) == 0:
        raise ValueError(f"no decodable images in {reals}")
    threshold = min(max(sigmoid(metrics.threshold_for_fpr(logits, target_fpr)), 1e-6), 1 - 1e-6)
    if write:
        from dataclasses import replace

        write_manifest(model_dir, replace(loaded.manifest, threshold=threshold))
    return threshold
