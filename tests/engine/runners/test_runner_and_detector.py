from __future__ import annotations

import numpy as np
import pytest

from engine.imaging.preprocess import center_crop, five_crops
from engine.model.labels import sigmoid
from engine.model.model_dir import LoadedModel, load_model_dir
from engine.runners.detector import AI_GENERATED, REAL, Detector, label_for
from engine.runners.torch_runner import TorchRunner, buckets_for
from tests.images import photo


def crops(n: int) -> np.ndarray:
    return np.stack([center_crop(np.asarray(photo(400 + 7 * i, 380, seed=i))) for i in range(n)])


def test_batched_logits_equal_batch_one(tiny_model: LoadedModel) -> None:
    batch = crops(7)
    one = TorchRunner(tiny_model.network, tiny_model.manifest.preprocessing, max_batch=1).logits(batch)
    chunked = TorchRunner(tiny_model.network, tiny_model.manifest.preprocessing, max_batch=3).logits(batch)
    assert one.shape == (7,) and one.dtype == np.float32
    assert np.allclose(one, chunked, atol=1e-5)
    assert np.ptp(one) > 1e-3  # different images, different logits


def test_bf16_is_close_to_fp32(tiny_model_dir) -> None:
    batch = crops(4)
    fp32 = load_model_dir(tiny_model_dir)
    bf16 = load_model_dir(tiny_model_dir)
    ref = TorchRunner(fp32.network, fp32.manifest.preprocessing).logits(batch)
    fast = TorchRunner(bf16.network, bf16.manifest.preprocessing, precision="bf16").logits(batch)
    assert np.abs(ref - fast).max() < 0.1
    assert not np.array_equal(ref, fast)  # really ran in another precision


def test_runner_rejects_bad_input_and_settings(tiny_model: LoadedModel) -> None:
    runner = TorchRunner(tiny_model.network, tiny_model.manifest.preprocessing)
    with pytest.raises(ValueError, match=r"expected uint8 \[N, 336, 336, 3\]"):
        runner.logits(np.zeros((1, 224, 224, 3), np.uint8))
    with pytest.raises(ValueError, match="precision"):
        TorchRunner(tiny_model.network, tiny_model.manifest.preprocessing, precision="int4")  # type: ignore[arg-type]


def test_five_crop_mode_averages_crop_logits(tiny_model: LoadedModel) -> None:
    image = np.asarray(photo(1200, 900, seed=5))
    runner = TorchRunner(tiny_model.network, tiny_model.manifest.preprocessing)
    per_crop = runner.logits(five_crops(image)).astype(np.float64)
    [single] = Detector(tiny_model.manifest, runner, crops=1).predict([image])
    [multi] = Detector(tiny_model.manifest, runner, crops=5).predict([image])
    assert multi.logit == pytest.approx(per_crop.mean(), abs=1e-5)
    assert single.logit == pytest.approx(per_crop[0], abs=1e-5)
    assert abs(multi.logit - single.logit) > 1e-3


def test_labels_follow_the_threshold_in_logit_space(tiny_model: LoadedModel) -> None:
    manifest = tiny_model.manifest
    assert label_for(1e-9, manifest) == AI_GENERATED
    assert label_for(0.0, manifest) == REAL  # score exactly 0.5 is not above the threshold
    assert sigmoid(0.0) == 0.5 and sigmoid(-800.0) == 0.0 and sigmoid(800.0) == 1.0
    image = np.asarray(photo(500, 500))
    [p] = Detector(manifest, TorchRunner(tiny_model.network, manifest.preprocessing)).predict([image])
    assert p.score == pytest.approx(sigmoid(p.logit)) and p.label == label_for(p.logit, manifest)


def test_compiled_runner_pads_to_its_buckets_and_matches_eager(tiny_model_dir) -> None:
    """torch.compile path (CUDA graphs on GPU; inductor on CPU here): 5 crops at max_batch 4
    run as 4 + 1 padded to 4, so one shape is compiled, and logits match eager execution."""
    batch = crops(5)
    eager = load_model_dir(tiny_model_dir)
    compiled = load_model_dir(tiny_model_dir)
    ref = TorchRunner(eager.network, eager.manifest.preprocessing, max_batch=4).logits(batch)
    runner = TorchRunner(compiled.network, compiled.manifest.preprocessing, max_batch=4, compile=True)
    assert runner.buckets == (4,)
    assert np.abs(runner.logits(batch) - ref).max() < 1e-4


def test_compile_buckets_double_from_8_to_max_batch() -> None:
    assert buckets_for(128) == (8, 16, 32, 64, 128)
    assert buckets_for(20) == (8, 16, 20)
    assert buckets_for(1) == (1,)
