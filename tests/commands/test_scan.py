"""`dda scan` and `dda import-checkpoint` as a user runs them: subprocesses, real files, a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.imaging.decode import decode_rgb
from engine.model.model_dir import load_model_dir
from engine.runners.detector import Detector
from engine.runners.torch_runner import TorchRunner
from tests.http_server import LocalServer, Route, serve
from tests.images import encode, photo
from tests.provenance_files import IPTC, png_with_text, sign, with_xmp, xmp_packet
from tests.schemas import check

server = pytest.fixture(serve)


def dda(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dda", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    base = photo(801, 613, seed=11)
    made = {
        "odd.png": encode(base, "PNG"),
        "rgba.png": encode(base.convert("RGBA"), "PNG"),
        "palette.png": encode(base.convert("P"), "PNG"),
        "gray.png": encode(base.convert("L"), "PNG"),
        "cmyk.jpg": encode(base.convert("CMYK"), "JPEG", quality=92),
        "narrow.jpg": encode(photo(200, 500, seed=2), "JPEG", quality=90),
        "tiny.webp": encode(photo(40, 30, seed=3), "WEBP", lossless=True),
        "notes.txt": b"hello, not an image",
    }
    for name, data in made.items():
        (root / name).write_bytes(data)
    return {name: root / name for name in made}


def records(proc: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_scan_prints_provenance_and_applies_its_policy(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A model copy whose threshold makes every label "real": only a valid declaration moves one."""
    model = tmp_path / "strict"
    shutil.copytree(tiny_model_dir, model)
    manifest = json.loads((model / "manifest.json").read_text())
    (model / "manifest.json").write_text(json.dumps({**manifest, "threshold": 0.999}))
    files = {"signed.png": sign(encode(photo(400, 300, seed=4), "PNG"), "image/png"),
             "xmp.jpg": with_xmp("JPEG", xmp_packet(IPTC + "trainedAlgorithmicMedia")),
             "a1111.png": png_with_text([("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7")]),
             "plain.jpg": encode(photo(400, 300, seed=5), "JPEG")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    inputs = [str(tmp_path / name) for name in files]
    proc = dda("scan", "--model", str(model), "--provenance-policy", "declared_ai", *inputs)  # report: test_provenance.py
    assert proc.returncode == 0, proc.stderr
    out = {Path(r["input"]).name: r for r in records(proc)}
    for r in out.values():
        check("provenance", r["provenance"])
    assert out["signed.png"]["provenance"]["c2pa"]["validation_state"] == "valid"
    assert out["xmp.jpg"]["provenance"]["declared_by"] == "xmp"
    assert out["a1111.png"]["provenance"]["generator"] == "AUTOMATIC1111"
    assert out["plain.jpg"]["provenance"]["declared_ai"] is None
    moved = {name for name, r in out.items() if r["label"] == "ai_generated"}
    assert moved == {"signed.png", "xmp.jpg"}
    assert all((r["label_reason"] is not None) == (name in moved) for name, r in out.items())


def test_scan_prints_one_verdict_per_input_in_order(tiny_model_dir: Path, images: dict[str, Path], server: LocalServer) -> None:
    server.routes["/img.png"] = Route(body=images["odd.png"].read_bytes())
    server.routes["/moved"] = Route(status=302, headers=(("Location", "/img.png"),))
    inputs = [str(images[n]) for n in ("odd.png", "rgba.png", "palette.png", "gray.png", "cmyk.jpg", "narrow.jpg", "tiny.webp")]
    inputs += [str(images["notes.txt"]), str(images["odd.png"].parent / "missing.jpg"),
               f"{server.base}/img.png", f"{server.base}/moved", f"{server.base}/absent.png", "gopher://example.com/x"]
    folder = images["odd.png"].parent
    proc = dda("scan", "--model", str(tiny_model_dir), "--batch-size", "3", "--allow-networks", "127.0.0.0/8", *inputs, str(folder))
    assert proc.returncode == 0, proc.stderr
    out = records(proc)
    # A folder is every file below it, in path order, each answered as if named on its own.
    files = sorted(str(p) for p in folder.iterdir())
    assert [r["input"] for r in out] == inputs + files
    by_input = {r["input"]: r for r in out[: len(inputs)]}
    for record in out[len(inputs):]:  # another batch: the same logit within float noise
        twin = by_input[record["input"]]
        assert record["status"] == twin["status"] and (record["logit"] is None) == (twin["logit"] is None)
        assert record["logit"] is None or record["logit"] == pytest.approx(twin["logit"], abs=1e-5)

    version = json.loads((tiny_model_dir / "manifest.json").read_text())["version"]
    loaded = load_model_dir(tiny_model_dir)
    detector = Detector(loaded.manifest, TorchRunner(loaded.network, loaded.manifest.preprocessing))
    expected = detector.predict([decode_rgb(Path(p).read_bytes()) for p in inputs[:7]])
    for record, want in zip(out[:7], expected):
        assert record["status"] == "ok" and record["error"] is None and record["model"] == version
        assert record["logit"] == pytest.approx(want.logit, abs=1e-5)
        assert record["score"] == pytest.approx(1 / (1 + np.exp(-record["logit"])))
        assert record["label"] == ("ai_generated" if record["logit"] > 0 else "real")
    assert out[9]["logit"] == pytest.approx(out[0]["logit"], abs=1e-5)  # same bytes over HTTP
    assert out[10]["logit"] == pytest.approx(out[0]["logit"], abs=1e-5)  # through a redirect
    codes = [r["error"]["code"] for r in out[7:9]] + [out[11]["error"]["code"], out[12]["error"]["code"]]
    assert codes == ["unsupported_format", "file_not_found", "fetch_http_status", "url_invalid"]
    assert all(r["status"] == "error" and r["logit"] is None for r in (out[7], out[8], out[11], out[12]))


def test_loopback_urls_are_blocked_without_an_allow_list(tiny_model_dir: Path, images: dict[str, Path], server: LocalServer) -> None:
    server.routes["/img.png"] = Route(body=images["odd.png"].read_bytes())
    proc = dda("scan", "--model", str(tiny_model_dir), f"{server.base}/img.png")
    assert proc.returncode == 0
    [record] = records(proc)
    assert record["error"]["code"] == "url_blocked"


def test_model_errors_exit_non_zero(tmp_path: Path, images: dict[str, Path]) -> None:
    proc = dda("scan", "--model", str(tmp_path), str(images["odd.png"]))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "not a model directory" in proc.stderr


def test_usage_errors_exit_non_zero(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert dda("scan", "--model", str(tiny_model_dir)).returncode == 2  # no INPUT
    assert dda("scan", "--model", str(tiny_model_dir), "--crops", "3", "x.jpg").returncode == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = dda("scan", "--model", str(tiny_model_dir), str(empty))
    assert nothing.returncode == 2 and "no files in" in nothing.stderr
    zero = dda("scan", "--model", str(tiny_model_dir), "--batch-size", "0", "x.jpg")
    assert zero.returncode == 2 and "must be at least 1" in zero.stderr


def test_five_crop_option_changes_large_image_logits(tiny_model_dir: Path, images: dict[str, Path]) -> None:
    one = records(dda("scan", "--model", str(tiny_model_dir), str(images["odd.png"])))[0]
    five = records(dda("scan", "--model", str(tiny_model_dir), "--crops", "5", str(images["odd.png"])))[0]
    assert one["status"] == five["status"] == "ok"
    assert abs(one["logit"] - five["logit"]) > 1e-4


def test_import_checkpoint_cli(tiny_checkpoint: Path, tmp_path: Path) -> None:
    proc = dda("import-checkpoint", str(tiny_checkpoint), str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    assert "LoRA rank 8 merged" in proc.stderr
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["format"] == "dda-model/1"
    missing = dda("import-checkpoint", str(tmp_path / "nope.pth"), str(tmp_path / "m2"))
    assert missing.returncode == 2 and "nope.pth" in missing.stderr


def test_compare_models_reports_exactly_the_inputs_whose_label_flips(tiny_model_dir: Path, tmp_path: Path, server: LocalServer) -> None:
    """B is A with its logit moved just enough to carry the three images nearest the threshold
    (on the side more images are) across it: those three, and only they, are reported as flips
    that way, whether they came from a folder or from a JSONL of past requests (URLs on a local
    server); a bad request line is refused with its line number."""
    from tests.images import scene
    from tests.models import shifted_copy

    folder = tmp_path / "in"
    folder.mkdir()
    data = {f"s{i:02d}.png": encode(scene(260, 240, seed=200 + i), "PNG") for i in range(14)}
    for name, body in data.items():
        (folder / name).write_bytes(body)
    loaded = load_model_dir(tiny_model_dir)
    detector = Detector(loaded.manifest, TorchRunner(loaded.network, loaded.manifest.preprocessing))
    logits = dict(zip(data, (p.logit for p in detector.predict([decode_rgb(b) for b in data.values()]))))
    ai = sorted((v, k) for k, v in logits.items() if v > 0)
    real = sorted(((-v, k) for k, v in logits.items() if v <= 0))
    nearest, direction, flip = (ai, -1.0, "ai_to_real") if len(ai) >= len(real) else (real, 1.0, "real_to_ai")
    assert len(nearest) >= 4 and nearest[3][0] - nearest[2][0] > 2e-3
    shift = direction * (nearest[2][0] + 1e-3)  # the three nearest cross; the fourth stays
    expected = {name for _, name in nearest[:3]}
    b_dir = shifted_copy(tiny_model_dir, tmp_path / "b", shift)

    for name in ("s00.png", "s01.png"):
        server.routes[f"/u/{name}"] = Route(body=data[name])
    requests = tmp_path / "past.jsonl"
    requests.write_text("".join(json.dumps({"id": n, "url": f"{server.base}/u/{n}"}) + "\n" for n in ("s00.png", "s01.png")))
    out = dda("compare-models", "--model", str(tiny_model_dir), "--model", str(b_dir), str(folder), str(requests),
              "--fetch-allow-networks", "127.0.0.0/8", "--json", str(tmp_path / "r.jsonl"))
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[-1])["summary"]
    via_urls = expected & {"s00.png", "s01.png"}
    other = "real_to_ai" if flip == "ai_to_real" else "ai_to_real"
    assert summary == {**summary, "inputs": 16, "scored": 16, "errors": 0, flip: 3 + len(via_urls), other: 0}
    flipped = [line.split(" | ")[0].removeprefix("| ") for line in out.stdout.splitlines() if line.startswith("| ") and "label" not in line]
    assert sorted(Path(f).name for f in flipped) == sorted([*expected, *via_urls])

    requests.write_text(json.dumps({"url": "http://x/a"}) + "\n" + "not json\n")
    bad = dda("compare-models", "--model", str(tiny_model_dir), "--model", str(b_dir), str(requests))
    assert bad.returncode == 2 and "past.jsonl:2: not a request" in bad.stderr
