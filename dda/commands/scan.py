"""`dda scan`: verdicts for files and URLs given on the command line, one JSON line each."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.imaging.decode import DEFAULT_MAX_PIXELS, image_files
from engine.model.hub import resolve_model
from engine.model.manifest import ModelDirError
from engine.model.model_dir import load_model_dir
from engine.process.console import say
from engine.runners.backend import make_runner
from engine.runners.contract import PRECISION_CHOICES
from engine.runners.detector import Detector
from worker.decode.pool import DecodePool
from worker.decode.prepare import Prepared
from worker.decode.process import DecodeJob, DecodeLimits
from worker.errors import INFERENCE_FAILED, INTERNAL_ERROR, InputError
from worker.fetch.client import Fetcher, FetchPolicy, parse_networks
from worker.fetch.local_files import read_path
from worker.provenance import policy
from worker.setting_values import pem_certificates, positive_float, positive_int
from worker.supervision import Supervisor

PROGRESS_EVERY_S = 2.0


def read_input(spec: str, fetcher: Callable[[], Fetcher], max_bytes: int) -> bytes:
    """Bytes of a local path or an http(s) URL (either at most `max_bytes`); anything with '://' is a URL."""
    if "://" in spec:
        return fetcher().get(spec)
    return read_path(spec, max_bytes)


def expand_inputs(specs: Sequence[str]) -> list[str]:
    """Folders replaced by the files below them (`image_files`: a file that is no image gets its
    error line, as any input does); URLs and other paths as given."""
    out: list[str] = []
    for spec in specs:
        out += [str(p) for p in image_files(Path(spec))] if "://" not in spec and Path(spec).is_dir() else [spec]
    return out


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Decoder:
    """The worker's decode processes, for scan: a hostile file's crash, CPU or memory use stays in
    its process and costs only its own line (same limits and codes as `dda worker`)."""

    def __init__(self, workers: int, limits: DecodeLimits, c2pa_trust_anchors: str | None) -> None:
        self.supervisor = Supervisor()
        self.pool = DecodePool(workers, self.supervisor, limits, c2pa_trust_anchors=c2pa_trust_anchors)
        self.pool.start()

    def crops(self, payloads: dict[int, bytes], size: int, crops: int, max_pixels: int, provenance: bool) -> dict[int, Prepared]:
        results: dict[int, Prepared] = {}
        finished = threading.Condition()

        def done(i: int, prepared: Prepared) -> None:
            with finished:
                results[i] = prepared
                finished.notify()

        for i, data in payloads.items():
            self.pool.submit(DecodeJob(data, size, crops, max_pixels, done=functools.partial(done, i), hash_pdq=False,
                                       provenance=provenance))
        with finished:
            while not finished.wait_for(lambda: len(results) == len(payloads), timeout=1.0):
                failure = self.supervisor.failure
                if failure is not None:  # a decode slot died (its process would not start): answer, never hang
                    for i in payloads.keys() - results.keys():
                        results[i] = Prepared(None, None, None, (INTERNAL_ERROR, failure), 0.0)
        return results

    def close(self) -> None:
        self.supervisor.stop(5.0)
        self.pool.close()


def scan(detector: Detector, inputs: Sequence[str], batch_size: int, fetch_policy: FetchPolicy, max_pixels: int,
         decode_limits: DecodeLimits | None = None, on_stage: Callable[[str], None] = lambda _s: None,
         provenance_policy: str = "report", c2pa_trust_anchors: str | None = None,
         also: Sequence[Detector] = ()) -> Iterator[dict[str, Any]]:
    """Results in input order; a bad input yields an error record and never stops the run.

    In the reference's single-crop mode only the centre crop is decoded where the format
    allows (bit-identical); five crops need the whole image. `also`: more detectors scored on
    the same crops, their answers under "also" (`dda compare-models`)."""
    size = detector.manifest.preprocessing.crop_size
    shared: list[Fetcher] = []

    def fetcher() -> Fetcher:
        if not shared:
            shared.append(Fetcher(fetch_policy))
        return shared[0]

    version = detector.manifest.version
    warning = {"model_warning": detector.manifest.warning} if detector.manifest.warning else {}
    decoder = _Decoder(max(1, min(batch_size, os.cpu_count() or 1)), decode_limits or DecodeLimits(), c2pa_trust_anchors)
    try:
        for chunk in _chunks(inputs, batch_size):
            errors: dict[int, InputError] = {}
            payloads: dict[int, bytes] = {}
            for i, spec in enumerate(chunk):
                on_stage(f"reading {i + 1}/{len(chunk)} of this batch")
                try:
                    payloads[i] = read_input(spec, fetcher, fetch_policy.max_bytes)
                except Exception as exc:  # noqa: BLE001 - one input's failure is its own line
                    errors[i] = exc if isinstance(exc, InputError) else InputError(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            images: dict[int, np.ndarray] = {}
            provenance: dict[int, dict[str, Any] | None] = {}
            on_stage(f"decoding {len(payloads)} images")
            decoded = decoder.crops(payloads, size, detector.crops, max_pixels, provenance_policy != "off")
            for i, prepared in sorted(decoded.items()):
                if prepared.error is not None:
                    errors[i] = InputError(*prepared.error)
                else:
                    assert prepared.crops is not None
                    images[i], provenance[i] = prepared.crops, prepared.provenance
            on_stage(f"scoring {len(images)} images")
            try:
                predictions = dict(zip(images, detector.predict_views(list(images.values()))))
                others = [dict(zip(images, other.predict_views(list(images.values())))) for other in also]
            except Exception as exc:  # noqa: BLE001 - the batch's inputs get the error, the run goes on
                failure = InputError(INFERENCE_FAILED, f"{type(exc).__name__}: {exc}")
                predictions, others, errors = {}, [], {**errors, **dict.fromkeys(images, failure)}
            for i, spec in enumerate(chunk):
                if i in predictions:
                    p = predictions[i]
                    label, reason = policy.label(p.label, provenance[i], provenance_policy)
                    compared = {"also": [{"model": other.manifest.version, "logit": answers[i].logit, "score": answers[i].score,
                                          "label": answers[i].label} for other, answers in zip(also, others)]} if also else {}
                    yield {"input": spec, "status": "ok", "logit": p.logit, "score": p.score, "label": label,
                           "label_reason": reason, "model": version, **warning, "error": None, "provenance": provenance[i], **compared}
                else:
                    yield {"input": spec, "status": "error", "logit": None, "score": None, "label": None, "label_reason": None,
                           "model": version, **warning, "error": errors[i].to_json(), "provenance": None}
    finally:
        decoder.close()
        for f in shared:
            f.close()


def scan_command(args: argparse.Namespace) -> int:
    inputs = expand_inputs(args.inputs)
    if not inputs:
        say(f"error: no files in {', '.join(args.inputs)}")
        return 2
    try:
        fetch_policy = FetchPolicy(allow_networks=parse_networks(args.allow_networks), max_bytes=args.fetch_max_bytes,
                             total_timeout_s=args.fetch_timeout)
        model_dir = resolve_model(args.model, progress=say)
        loaded = load_model_dir(model_dir)
        loaded.manifest.served_by_crops()
        runner = make_runner(loaded, model_dir, backend=args.backend, device=args.device,
                             precision=args.precision, max_batch=args.batch_size, compile=args.compile, log=say)
    except (ModelDirError, ValueError, RuntimeError, OSError, ImportError) as exc:
        say(f"error: {exc}")
        return 2
    detector = Detector(loaded.manifest, runner, crops=args.crops)
    total = len(inputs)
    if sys.stderr.isatty():  # a person watching: a bar per image with rate and ETA, and what is running now
        from tqdm import tqdm

        with tqdm(total=total, unit="image", file=sys.stderr, dynamic_ncols=True) as bar:
            for record in scan(detector, inputs, args.batch_size, fetch_policy, args.max_pixels, on_stage=bar.set_postfix_str,
                               provenance_policy=args.provenance_policy, c2pa_trust_anchors=args.c2pa_trust_anchors):
                bar.write(json.dumps(record), file=sys.stdout)
                bar.update(1)
        return 0
    started = last_report = time.monotonic()  # a log: a line every few seconds
    for done, record in enumerate(scan(detector, inputs, args.batch_size, fetch_policy, args.max_pixels,
                                       provenance_policy=args.provenance_policy, c2pa_trust_anchors=args.c2pa_trust_anchors),
                                  start=1):
        print(json.dumps(record), flush=True)
        now = time.monotonic()
        if now - last_report >= PROGRESS_EVERY_S and done < total:
            say(f"scanned {done}/{total} ({done / (now - started):.2f} images/s)")
            last_report = now
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("scan", help="score image files or URLs; one JSON line per input on stdout")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder (every file below it, in path order) or http(s) URL")
    p.add_argument("--model", default=None, help="model directory or hf:// checkpoint (default: the official DDA checkpoint)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="torch backend precision; auto: bf16 on cuda, fp32 on cpu")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "tensorrt"],
                   help="auto: a TensorRT engine from MODEL/engines/ when one matches this GPU, else torch")
    p.add_argument("--crops", type=int, default=1, choices=[1, 5], help="1: reference centre crop; 5: centre + corners, mean logit")
    # One name per setting across commands (the worker's); the older scan names stay as hidden aliases.
    p.add_argument("--max-batch", dest="batch_size", metavar="N", type=positive_int, default=16, help="images per forward pass")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network for the batch size (CUDA graphs on GPU); slow first batch")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help="refuse images with more pixels than this")
    p.add_argument("--fetch-allow-networks", dest="allow_networks", metavar="CIDRS", default="",
                   help="comma-separated CIDRs that URLs may reach despite being private (default: none)")
    p.add_argument("--fetch-timeout-s", dest="fetch_timeout", metavar="SECONDS", type=positive_float, default=30.0,
                   help="whole-request deadline per URL, seconds")
    p.add_argument("--provenance-policy", choices=policy.POLICIES, default="report",
                   help="report: provenance beside the model's label; declared_ai: a valid C2PA manifest or XMP declaring AI "
                        "sets label ai_generated (never the reverse); off: metadata not read")
    p.add_argument("--c2pa-trust-anchors", metavar="PEM", type=pem_certificates, default=None,
                   help="root certificates whose C2PA signers count as trusted (as DDA_C2PA_TRUST_ANCHORS)")
    p.add_argument("--fetch-max-bytes", type=positive_int, default=50 * 1024 * 1024, help="refuse bodies larger than this")
    for alias, dest, kind in (("--batch-size", "batch_size", positive_int), ("--allow-networks", "allow_networks", str),
                              ("--fetch-timeout", "fetch_timeout", positive_float)):
        p.add_argument(alias, dest=dest, type=kind, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(handler=scan_command)
