"""Provenance: C2PA, XMP and generator metadata read from real files, hostile metadata bounded,
and what the pipeline does with it (policy, cache, process isolation)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.http_server import LocalServer, Route
from tests.provenance_files import (
    HOSTILE,
    IPTC,
    jpeg_insert,
    jpeg_segment,
    picture,
    png_with_text,
    save,
    sign,
    trust_anchor_pem,
    with_exif,
    with_xmp,
    xmp_packet,
)
from tests.schemas import check
from tests.services import wait_for
from tests.worker.pipeline.test_pipeline import make_pipeline, submit
from worker.cache.verdicts import CachedVerdict
from worker.decode.process import DecodeLimits
from worker.messages import encode_record
from worker.pipeline.pipeline import Pipeline
from worker.provenance.generators import SIGNATURES
from worker.provenance.report import empty, read_provenance

AI = IPTC + "trainedAlgorithmicMedia"
MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff", "AVIF": "image/avif"}


def read(data: bytes) -> dict[str, Any]:
    """read_provenance, checked against the published schema and known to encode into a verdict."""
    record = check("provenance", read_provenance(data))
    encode_record({"provenance": record}, 1 << 20)
    return record


# --- C2PA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(MIME))
def test_a_signed_file_declares_ai_and_names_its_signer(fmt: str) -> None:
    p = read(sign(save(picture(), fmt), MIME[fmt]))
    c2pa = p["c2pa"]
    assert c2pa["validation_state"] == "valid" and c2pa["error"] is None
    assert c2pa["digital_source_type"] == AI and c2pa["declares_ai"] is True and c2pa["actions"] == ["c2pa.created"]
    assert c2pa["signer"] == {"organization": "Throwaway Test CA", "common_name": "Test Signer"}
    assert c2pa["generator"] == "test-generator 1.0" and c2pa["ingredients"] == 0
    assert (p["declared_ai"], p["declared_by"], p["error"]) == (True, "c2pa", None)


PUBLIC = Path(__file__).resolve().parents[2] / "data" / "c2pa-rs"


def test_manifests_written_by_the_c2pa_sdk_itself() -> None:
    """Public sample files signed by another implementation (tests/data/c2pa-rs/README.md)."""
    made = read((PUBLIC / "C.jpg").read_bytes())
    assert made["c2pa"]["validation_state"] == "valid" and made["c2pa"]["generator"].startswith("make_test_images")
    assert made["c2pa"]["signer"]["organization"] == "C2PA Test Signing Cert" and made["c2pa"]["actions"] == ["c2pa.created"]
    assert made["c2pa"]["digital_source_type"] == IPTC + "algorithmicMedia" and made["declared_ai"] is None
    bad = read((PUBLIC / "E-sig-CA.jpg").read_bytes())
    assert bad["c2pa"]["validation_state"] == "invalid" and bad["c2pa"]["ingredients"] == 1 and bad["declared_ai"] is None
    remote = read((PUBLIC / "libpng-test_with_url.png").read_bytes())  # its manifest is at a URL: never fetched
    assert remote["c2pa"] is None and remote["xmp"] is not None and remote["error"] is None


def test_what_each_source_type_declares_and_a_tampered_file_declares_nothing() -> None:
    image = save(picture(), "JPEG")
    for term, declared in [("compositeWithTrainedAlgorithmicMedia", True), ("digitalCapture", False),
                           ("algorithmicMedia", None)]:
        p = read(sign(image, "image/jpeg", source_type=term))
        assert p["c2pa"]["validation_state"] == "valid" and p["declared_ai"] is declared, term
        assert p["declared_by"] == ("c2pa" if declared is not None else None)
    signed = bytearray(sign(image, "image/jpeg"))
    signed[-200] ^= 0xFF  # a pixel byte: the manifest's hash of the asset no longer matches
    p = read(bytes(signed))
    assert p["c2pa"]["validation_state"] == "invalid" and p["c2pa"]["declares_ai"] is True
    assert p["declared_ai"] is None  # an invalid manifest declares nothing


def test_ai_wins_a_conflict_between_signals() -> None:
    """XMP saying AI on a file whose manifest says camera: a forger adds claims, so AI stands."""
    both = sign(with_xmp("JPEG", xmp_packet(AI)), "image/jpeg", source_type="digitalCapture")
    p = read(both)
    assert p["c2pa"]["declares_ai"] is False and p["xmp"]["digital_source_type"] == AI
    assert (p["declared_ai"], p["declared_by"]) == (True, "xmp")


# --- XMP and generator metadata ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("form", ["attribute", "element", "resource"])
def test_xmp_digital_source_type_in_every_form_and_container(fmt: str, form: str) -> None:
    p = read(with_xmp(fmt, xmp_packet(AI, form, creator_tool="Some Tool 2.1")))
    assert p["xmp"] == {"digital_source_type": AI, "creator_tool": "Some Tool 2.1"}
    assert (p["declared_ai"], p["declared_by"], p["c2pa"], p["error"]) == (True, "xmp", None, None)


def test_xmp_capture_and_unknown_terms() -> None:
    assert read(with_xmp("JPEG", xmp_packet(IPTC + "digitalCapture")))["declared_ai"] is False
    p = read(with_xmp("JPEG", xmp_packet("http://example.com/madeUpTerm")))
    assert p["xmp"]["digital_source_type"] == "http://example.com/madeUpTerm" and p["declared_ai"] is None


EXAMPLES = {  # one value per signature row, written where that generator writes it
    ("SwarmUI", "png:parameters"): '{"sui_image_params": {"prompt": "a cat", "seed": 1}}',
    ("Fooocus", "png:fooocus_scheme"): "fooocus",
    ("AUTOMATIC1111", "png:parameters"): "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1",
    ("AUTOMATIC1111", "exif:UserComment"): "a cat\nSteps: 30, Sampler: DPM++ 2M, CFG scale: 5, Seed: 2",
    ("ComfyUI", "png:prompt"): '{"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}',
    ("ComfyUI", "png:workflow"): '{"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}]}',
    ("InvokeAI", "png:invokeai_metadata"): '{"positive_prompt": "a cat", "seed": 1}',
    ("InvokeAI", "png:invokeai_graph"): '{"id": "g", "nodes": {}}',
    ("InvokeAI", "png:sd-metadata"): '{"image": {"prompt": "a cat"}}',
    ("InvokeAI", "png:Dream"): '"a cat" -s 50 -W 512 -H 512 -C 7.5 -A k_lms -S 1',
    ("NovelAI", "png:Software"): "NovelAI",
    ("NovelAI", "png:Source"): "NovelAI Diffusion V4 5BE8C60C",
    ("Midjourney", "png:Description"): "a cat --ar 3:2 --v 6 Job ID: 0c2f0a8e-1f5e-4f6e-9b0e-2b6c8f1a9d11",
    ("imaginAIry", "exif:Software"): "Imaginairy / Stable Diffusion v1.5",
    ("Draw Things", "xmp:CreatorTool"): "Draw Things",
    ("Midjourney", "exif:Software"): "Midjourney",
    ("Stable Diffusion", "exif:Software"): "Stable Diffusion XL",
    ("Stable Diffusion", "png:Software"): "Stable Diffusion",
}


def _written_where(where: str, value: str, fmt: str) -> bytes:
    place, _, key = where.partition(":")
    if place == "png":
        return png_with_text([(key, value)], compressed=len(value) > 40)
    if place == "xmp":
        return with_xmp(fmt, xmp_packet(creator_tool=value))
    if key == "UserComment":
        return with_exif(fmt, {}, user_comment=value)
    return with_exif(fmt, {0x0131: value} if key == "Software" else {})


@pytest.mark.parametrize("row", SIGNATURES, ids=lambda r: f"{r.generator}-{r.where}")
def test_each_generator_signature_on_a_file_written_as_its_generator_writes_it(row: Any) -> None:
    formats = ["JPEG", "WEBP"] if not row.where.startswith("png:") else ["PNG"]
    for fmt in formats:
        p = read(_written_where(row.where, EXAMPLES[(row.generator, row.where)], fmt))
        assert (p["generator"], p["generator_evidence"]) == (row.generator, row.where), fmt
        assert p["declared_ai"] is None  # metadata names a generator; it declares nothing


def test_files_without_metadata_have_an_empty_record() -> None:
    for fmt in ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"]:
        assert read(save(picture(), fmt)) == empty(), fmt
    assert read(b"not an image at all") == empty()


# --- hostile metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_metadata_yields_an_error_never_an_exception(case: str) -> None:
    make, message = HOSTILE[case]
    p = read(make())
    errors = " ".join(filter(None, [p["error"], (p["c2pa"] or {}).get("error")]))
    if message is not None:
        assert message in errors, errors
    assert p["declared_ai"] is not True or case == "entity bomb in XMP"  # the bomb's packet still states AI, unexpanded


def test_hostile_metadata_costs_its_own_provenance_never_the_verdict(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Every hostile case through the real decode processes: a verdict each, status ok, and the next image fine."""
    with running(tiny_model_dir, decode_workers=2) as pipeline:
        names = list(HOSTILE)
        for n, case in enumerate(names):
            (tmp_path / f"h{n}").write_bytes(HOSTILE[case][0]())
        (tmp_path / "after.png").write_bytes(save(picture(seed=5), "PNG"))
        done = [submit(pipeline, str(tmp_path / f"h{n}"), case) for n, case in enumerate(names)]
        done.append(submit(pipeline, str(tmp_path / "after.png"), "after"))
        wait_for(lambda: all(c.done for c in done), 120, "every verdict")
        records = {c.request_id: c.record for c in done}
        failed = {k: (r or {}).get("error") or (r or {}).get("provenance") for k, r in records.items()
                  if r is None or r["status"] != "ok" or r["provenance"] is None}
        assert not failed, failed
        assert records["after"]["provenance"] == empty()  # type: ignore[index]
        assert pipeline.metrics.provenance.labels("error")._value.get() >= 10  # noqa: SLF001


def test_metadata_never_makes_the_worker_open_a_connection() -> None:
    """Remote manifests and OCSP are never fetched: a file pointing at a URL costs no request to it."""
    with LocalServer() as server:
        server.routes["/manifest.c2pa"] = Route(body=b"\0" * 64)
        url = f"{server.base}/manifest.c2pa"
        remote = with_xmp("JPEG", xmp_packet(extra=f'<dcterms:provenance xmlns:dcterms="http://purl.org/dc/terms/">{url}</dcterms:provenance>'))
        for data in (remote, jpeg_insert(remote, [jpeg_segment(0xEB, b"JP\x02\x11" + b"\x01" * 64)]),
                     sign(remote, "image/jpeg")):
            read(data)
        assert server.routes["/manifest.c2pa"].hits == 0


# --- in the pipeline: policy, cache, isolation -------------------------------------------------------


@contextmanager
def running(model_dir: Path, child_module: str | None = None, **options: Any) -> Iterator[Pipeline]:
    """A started pipeline (real decode processes), closed with its fetcher afterwards."""
    pipeline, fetcher = make_pipeline(model_dir, **options)
    if child_module is not None:
        pipeline.decoder.child_module = child_module
    pipeline.start()
    try:
        yield pipeline
    finally:
        pipeline.close()
        fetcher.close()


class FixedRunner:
    """The model's answer fixed (logic under test is the policy, not the network)."""

    def __init__(self, logit: float) -> None:
        self.logit = logit

    def logits(self, crops: np.ndarray) -> np.ndarray:
        return np.full(len(crops), self.logit, dtype=np.float32)


def _files(tmp_path: Path, items: dict[str, bytes]) -> dict[str, str]:
    paths = {}
    for name, data in items.items():
        (tmp_path / name).write_bytes(data)
        paths[name] = str(tmp_path / name)
    return paths


def _verdicts(pipeline: Any, paths: dict[str, str]) -> dict[str, dict[str, Any]]:
    done = [submit(pipeline, path, name) for name, path in paths.items()]
    wait_for(lambda: all(c.done for c in done), 60, "every verdict")
    return {c.request_id: c.record for c in done}


@pytest.mark.parametrize("policy", ["report", "declared_ai", "off"])
def test_policy_moves_a_real_verdict_only_on_a_valid_declaration(tiny_model_dir: Path, tmp_path: Path, policy: str) -> None:
    paths = _files(tmp_path, {
        "c2pa_ai.png": sign(save(picture(seed=1), "PNG"), "image/png"),
        "xmp_ai.jpg": with_xmp("JPEG", xmp_packet(AI), seed=2),
        "c2pa_camera.jpg": sign(save(picture(seed=3), "JPEG"), "image/jpeg", source_type="digitalCapture"),
        "comfyui.png": png_with_text([("prompt", EXAMPLES[("ComfyUI", "png:prompt")])], seed=4),
        "tampered.jpg": (lambda b: b[:-200] + bytes([b[-200] ^ 0xFF]) + b[-199:])(sign(save(picture(seed=6), "JPEG"), "image/jpeg")),
    })
    real_logit = -3.0
    with running(tiny_model_dir, runner=FixedRunner(real_logit), provenance_policy=policy) as pipeline:
        got = _verdicts(pipeline, paths)
    for name, v in got.items():
        assert v["score"] == pytest.approx(1 / (1 + math.exp(-real_logit))) and v["logit"] == pytest.approx(real_logit), name
        assert (v["provenance"] is None) == (policy == "off"), name
    moved = {name for name, v in got.items() if v["label"] == "ai_generated"}
    assert moved == ({"c2pa_ai.png", "xmp_ai.jpg"} if policy == "declared_ai" else set())
    if policy == "declared_ai":
        assert got["c2pa_ai.png"]["label_reason"] == f"c2pa declares {AI}"
        assert got["xmp_ai.jpg"]["label_reason"] == f"xmp declares {AI}"
    assert all(got[n]["label"] == "real" and got[n]["label_reason"] is None for n in ("c2pa_camera.jpg", "comfyui.png", "tampered.jpg"))
    if policy != "off":
        assert got["comfyui.png"]["provenance"]["generator"] == "ComfyUI"


def test_metadata_never_turns_an_ai_verdict_real(tiny_model_dir: Path, tmp_path: Path) -> None:
    paths = _files(tmp_path, {"camera.jpg": sign(save(picture(seed=3), "JPEG"), "image/jpeg", source_type="digitalCapture"),
                              "xmp_camera.jpg": with_xmp("JPEG", xmp_packet(IPTC + "digitalCapture"), seed=4)})
    with running(tiny_model_dir, runner=FixedRunner(3.0), provenance_policy="declared_ai") as pipeline:
        got = _verdicts(pipeline, paths)
    for v in got.values():
        assert v["provenance"]["declared_ai"] is False and v["label"] == "ai_generated" and v["label_reason"] is None


def test_exact_hits_carry_provenance_and_near_duplicates_never_inherit_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    signed = sign(save(picture((480, 400), seed=8), "PNG"), "image/png")
    twin = save(picture((480, 400), seed=8), "JPEG", quality=90)  # the same picture, no metadata
    paths = _files(tmp_path, {"signed.png": signed, "twin.jpg": twin})
    with running(tiny_model_dir, runner=FixedRunner(3.0), trust_near_duplicates=True) as pipeline:
        first = _verdicts(pipeline, {"first": paths["signed.png"]})["first"]
        again = _verdicts(pipeline, {"again": paths["signed.png"]})["again"]
        assert again["cache"] == "exact" and again["provenance"] == first["provenance"]
        assert first["provenance"]["c2pa"]["validation_state"] == "valid"
        assert pipeline.cache.trust([first["hashes"]["sha256"]]) == {first["hashes"]["sha256"]: "trusted"}
        near = _verdicts(pipeline, {"twin": paths["twin.jpg"]})["twin"]
        assert near["cache"] == "near_duplicate" and near["cache_match"]["sha256"] == first["hashes"]["sha256"]
        assert near["provenance"] == empty()  # the twin's own metadata: none


def test_trust_anchors_make_a_signer_trusted_and_bad_ones_stop_the_start(tiny_model_dir: Path, tmp_path: Path) -> None:
    from worker.config import ConfigError, load

    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(trust_anchor_pem())
    paths = _files(tmp_path, {"signed.png": sign(save(picture(seed=1), "PNG"), "image/png")})
    with running(tiny_model_dir, c2pa_trust_anchors=load({"DDA_C2PA_TRUST_ANCHORS": str(anchors)}).c2pa_trust_anchors) as pipeline:
        got = _verdicts(pipeline, paths)["signed.png"]
    assert got["provenance"]["c2pa"]["validation_state"] == "trusted" and got["provenance"]["declared_ai"] is True
    (tmp_path / "notes.txt").write_text("not a certificate")
    for path, message in ((tmp_path / "missing.pem", "cannot read"), (tmp_path / "notes.txt", "no PEM certificate")):
        with pytest.raises(ConfigError, match=message):
            load({"DDA_C2PA_TRUST_ANCHORS": str(path)})


def test_cache_entries_of_older_and_newer_versions_decode() -> None:
    from worker.cache.verdicts import _decode

    old = {"logit": 1.0, "score": 0.73, "label": "ai_generated", "sha256": "a" * 64, "pdq": None, "pdq_quality": None,
           "trusted": False}
    assert _decode(json.dumps(old).encode()) == CachedVerdict(1.0, 0.73, "ai_generated", "a" * 64, None, None, False, None)
    newer = {**old, "provenance": {"c2pa": None}, "field_of_a_later_version": 1}
    assert _decode(json.dumps(newer).encode()).provenance == {"c2pa": None}


def test_a_metadata_reader_that_crashes_or_stalls_costs_only_the_provenance(tiny_model_dir: Path, tmp_path: Path) -> None:
    paths = _files(tmp_path, {
        "crash.png": png_with_text([("Comment", "CRASH-IN-METADATA")], seed=1),
        "slow.png": png_with_text([("Comment", "SLOW-IN-METADATA")], seed=2),
        "fine.png": sign(save(picture(seed=3), "PNG"), "image/png"),
    })
    with running(tiny_model_dir, decode_limits=DecodeLimits(provenance_timeout_s=1.0), child_module="tests.crashing_decoder") as pipeline:
        got = _verdicts(pipeline, paths)
        assert all(v["status"] == "ok" for v in got.values()), got
        assert "crashed" in got["crash.png"]["provenance"]["error"]
        assert "longer than 1 s" in got["slow.png"]["provenance"]["error"]
        assert got["fine.png"]["provenance"]["declared_ai"] is True
        restarts = pipeline.metrics.decode_restarts
        assert restarts.labels("crash")._value.get() == 1 and restarts.labels("timeout")._value.get() == 1  # noqa: SLF001
