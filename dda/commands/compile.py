"""`dda export-onnx`, `dda build-engine`, `dda verify-engine`: from model directory to GPU engine."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from engine.compile.verify import compare
from engine.model.manifest import ModelDirError
from engine.model.model_dir import load_model_dir
from engine.process.console import say
from engine.runners.contract import Runner
from engine.runners.engine_file import engine_directories, find_engine, publish_engine
from engine.runners.torch_runner import TorchRunner

ONNX_TOLERANCE = 1e-4
ENGINE_TOLERANCE = 0.1  # half-precision engines drift by ~1e-2 in logits; flips are reported separately


def export_command(args: argparse.Namespace) -> int:
    from engine.compile.onnx_export import export_onnx

    try:
        loaded = load_model_dir(Path(args.model))
    except ModelDirError as exc:
        say(f"error: {exc}")
        return 2
    export_onnx(loaded, Path(args.output), uint8_input=args.uint8_input)
    say(f"wrote {args.output} (model {loaded.manifest.version}, input {'uint8 NHWC' if args.uint8_input else 'float32 NCHW'}); onnx checker passed")
    return 0


def build_command(args: argparse.Namespace) -> int:
    from engine.compile.tensorrt_build import BuildError, BuildOptions, build_engine

    options = BuildOptions(
        precision=args.precision, min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch,
        calibration_dir=Path(args.calibration_dir) if args.calibration_dir else None,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None, workspace_gib=args.workspace_gib,
    )
    # --output-dir: a shared engine cache; build under a temporary name, then publish it whole.
    output = Path(args.output) if args.output else Path(args.output_dir) / f".building-{os.getpid()}.engine"
    try:
        info = build_engine(Path(args.onnx), output, options, log=say)
    except (BuildError, ImportError, FileNotFoundError) as exc:
        say(f"error: {exc}")
        return 2
    if args.output_dir:
        output = publish_engine(output, Path(args.output_dir), info)
    say(f"wrote {output} and its sidecar: {json.dumps(info.to_json())}")
    return 0


def find_command(args: argparse.Namespace) -> int:
    """Exit 0 (and print it) when an engine for this GPU, TensorRT and model exists: the chart's
    init container builds only when this fails, so one build serves every pod of a GPU type."""
    try:
        from engine.runners.engine_file import gpu_identity

        manifest = load_model_dir(Path(args.model)).manifest
        engine = find_engine(engine_directories(Path(args.model), Path(args.engine_dir) if args.engine_dir else None),
                             gpu_identity(), manifest.version)
    except (ModelDirError, ImportError, RuntimeError) as exc:
        say(f"error: {exc}")
        return 2
    if engine is None:
        say("no engine for this GPU, TensorRT version and model yet")
        return 1
    print(engine)
    return 0


def verify_command(args: argparse.Namespace) -> int:
    from engine.imaging.decode import decode_folder

    try:
        loaded = load_model_dir(Path(args.model))
        if args.onnx:
            from engine.runners.onnx_runner import OnnxRunner

            candidate: Runner = OnnxRunner(Path(args.onnx), max_batch=args.batch_size)
            tolerance = ONNX_TOLERANCE if args.tolerance is None else args.tolerance
        else:
            from engine.runners.tensorrt_runner import TensorRTRunner

            candidate = TensorRTRunner(Path(args.engine), loaded.manifest)
            tolerance = ENGINE_TOLERANCE if args.tolerance is None else args.tolerance
    except (ModelDirError, ImportError, RuntimeError, ValueError, OSError) as exc:
        say(f"error: {exc}")
        return 2
    reference = TorchRunner(loaded.network, loaded.manifest.preprocessing, max_batch=args.batch_size)
    decoded = list(decode_folder(Path(args.images), on_skip=lambda path, exc: say(f"skipping {path}: {exc.code}")))
    names, pixels = [str(path) for path, _ in decoded], [image for _, image in decoded]
    if not pixels:
        say(f"error: no decodable images in {args.images}")
        return 2
    report = compare(reference, candidate, names, pixels, loaded.manifest.threshold_logit)
    print(json.dumps({**report.to_json(), "tolerance": tolerance, "passed": report.max_abs_diff <= tolerance}))
    return 0 if report.max_abs_diff <= tolerance else 1


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("export-onnx", help="export a model directory to ONNX (opset 18, dynamic batch)")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--output", required=True, help="ONNX file to write")
    p.add_argument("--uint8-input", action="store_true", help="take uint8 NHWC crops and normalise inside the graph")
    p.set_defaults(handler=export_command)

    p = commands.add_parser("build-engine", help="build a TensorRT engine for this GPU from an exported ONNX file")
    p.add_argument("--onnx", required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", help="engine file; put it in MODEL_DIR/engines/ for the worker to find")
    where.add_argument("--output-dir", help="a shared engine directory (DDA_ENGINE_DIR): named per GPU, TensorRT and model")
    p.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp8", "int8"])
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=128)
    p.add_argument("--calibration-dir", help="images for int8 calibration")
    p.add_argument("--timing-cache", help="timing cache file to read and update (speeds up rebuilds)")
    p.add_argument("--workspace-gib", type=float, default=8.0)
    p.set_defaults(handler=build_command)

    p = commands.add_parser("find-engine", help="print the engine for this GPU, TensorRT and model (exit 1 when none)")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--engine-dir", default=None, help="engine directory searched before MODEL/engines/")
    p.set_defaults(handler=find_command)

    p = commands.add_parser("verify-engine", help="compare an ONNX file or engine with the fp32 torch model")
    p.add_argument("--model", required=True, help="model directory (the fp32 reference)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--engine", help="TensorRT engine file")
    target.add_argument("--onnx", help="ONNX file (run with onnxruntime)")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tolerance", type=float, default=None,
                   help=f"max |logit difference| allowed (default {ONNX_TOLERANCE} for ONNX, {ENGINE_TOLERANCE} for engines)")
    p.set_defaults(handler=verify_command)
