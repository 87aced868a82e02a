"""`dda calibrate --second`: the combiner of two detectors, fitted, saved, loaded and applied; its
metrics and its fit checked against scikit-learn's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFilter
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

from engine.model.combiner import SUSPICIOUS, Combiner, CombinerError
from engine.model.model_dir import load_model_dir
from tests.images import scene
from training import metrics
from training.calibration import band, calibrate_ensemble, fit_logistic, score_images, split


@pytest.mark.parametrize("seed", range(5))
def test_the_fit_is_scikit_learns_logistic_regression(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    x = np.c_[rng.normal(y * 1.5, 1.0), rng.normal(y * rng.uniform(0, 2), 2.0)]
    weights, bias = fit_logistic(x, y, c=1.0)
    reference = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(x, y)
    assert np.allclose(weights, reference.coef_[0], atol=1e-6) and bias == pytest.approx(reference.intercept_[0], abs=1e-6)


@pytest.mark.parametrize("seed", range(10))
def test_expected_calibration_error_is_scikit_learns_reliability_gap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = np.clip(rng.beta(0.7, 0.7, 500), 0, 1)
    p[:3] = [0.0, 0.1, 1.0]  # edges land where scikit-learn puts them
    y = (rng.random(500) < p**1.5).astype(int)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], p), minlength=10)
    expected = float(np.sum(counts[counts > 0] / len(p) * np.abs(prob_true - prob_pred)))
    assert metrics.expected_calibration_error(p, y) == pytest.approx(expected, abs=1e-12)


def test_the_band_holds_its_rates_on_the_scores_it_was_set_on() -> None:
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(400, int), np.ones(400, int)]
    scores = 1 / (1 + np.exp(-rng.normal(labels * 2.0 - 1.0, 1.0)))
    real_at_or_below, ai_above = band(scores, labels, fpr=0.01, fnr=0.05)
    assert real_at_or_below < ai_above
    assert np.mean(scores[labels == 0] > ai_above) <= 0.01 and np.mean(scores[labels == 1] <= real_at_or_below) <= 0.05
    separable = np.r_[np.full(10, 0.1), np.full(10, 0.9)]
    assert band(separable, np.r_[np.zeros(10, int), np.ones(10, int)], 0.01, 0.05) == (0.1, 0.1)  # one threshold: no band


def test_a_combiner_labels_by_its_band_and_refuses_bad_files(tmp_path: Path) -> None:
    combiner = Combiner(("dda-x", "commfor-y"), (1.0, 0.5), -0.2, 0.2, 0.8)
    assert [combiner.label(s) for s in (0.1, 0.2, 0.5, 0.8, 0.9)] == ["real", "real", SUSPICIOUS, SUSPICIOUS, "ai_generated"]
    combiner.save(tmp_path / "c.json")
    assert Combiner.load(tmp_path / "c.json") == combiner
    assert combiner.score([2.0, -1.0]) == pytest.approx(1 / (1 + np.exp(-1.3)))
    (tmp_path / "bad.json").write_text(json.dumps({**combiner.to_json(), "ai_above": 0.1}))
    with pytest.raises(CombinerError, match="real_at_or_below"):
        Combiner.load(tmp_path / "bad.json")
    (tmp_path / "worse.json").write_text("{")
    with pytest.raises(CombinerError, match="not a readable combiner"):
        Combiner.load(tmp_path / "worse.json")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated scenes as real images; the same kind of scenes blurred as the "AI" ones, so even
    random models' logits move with the label."""
    root = tmp_path_factory.mktemp("labelled") / "set"
    for label, sub in ((0, "0_real"), (1, "1_fake")):
        (root / sub).mkdir(parents=True)
        for i in range(24):
            image = scene(480 + 16 * (i % 5), 400 + 8 * (i % 3), seed=100 * label + i)
            (image.filter(ImageFilter.GaussianBlur(3)) if label else image).save(root / sub / f"{i}.png")
    return root


def test_calibration_end_to_end_reports_what_scikit_learn_computes(tiny_model_dir: Path, tiny_commfor_dir: Path, labelled: Path,
                                                                   tmp_path: Path) -> None:
    models = [load_model_dir(tiny_model_dir), load_model_dir(tiny_commfor_dir)]
    scored = score_images(models, labelled)
    assert scored.logits.shape == (48, 2) and scored.labels.sum() == 24
    combiner, report = calibrate_ensemble(models, scored, held_back=0.25, seed=3)
    out = tmp_path / "combiner.json"
    combiner.save(out)
    loaded = Combiner.load(out)
    assert loaded.models == (models[0].manifest.version, models[1].manifest.version)
    fused = np.array([loaded.score(list(row)) for row in scored.logits])
    _, test = split(scored.labels, 0.25, 3)
    y = scored.labels[test]
    assert report["held_back"] == len(test) == 12
    assert report["fused"]["roc_auc"] == pytest.approx(roc_auc_score(y, fused[test]), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, fused[test], drop_intermediate=False)
    assert report["fused"]["tpr_at_1pct_fpr"] == pytest.approx(tpr[fpr <= 0.01].max(), abs=1e-12)
    for i, m in enumerate(models):
        alone = 1 / (1 + np.exp(-scored.logits[test, i]))
        assert report["models"][m.manifest.version]["roc_auc"] == pytest.approx(roc_auc_score(y, alone), abs=1e-12)
    labels = [loaded.label(float(s)) for s in fused[test]]
    assert report["band"]["suspicious_share"] == pytest.approx(labels.count(SUSPICIOUS) / len(labels))


def test_dda_calibrate_second_writes_a_combiner_beside_the_models(tiny_model_dir: Path, tiny_commfor_dir: Path, labelled: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "combiner.json"
    proc = subprocess.run([sys.executable, "-m", "dda", "calibrate", "--model", str(tiny_model_dir), "--second", str(tiny_commfor_dir),
                           "--data", str(labelled), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["combiner"] == str(out) and Combiner.load(out).models[1].startswith("commfor-")
    assert set(report["fused"]) == {"roc_auc", "tpr_at_1pct_fpr", "ece"} and report["images"] == 48
    proc = subprocess.run([sys.executable, "-m", "dda", "calibrate", "--model", str(tiny_model_dir), "--second", str(tiny_commfor_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--second needs --data" in proc.stderr
