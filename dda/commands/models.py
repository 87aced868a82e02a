"""`dda import-checkpoint` (DDA or Community Forensics), `dda make-test-model`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from engine.model.checkpoint import DEFAULT_LORA_ALPHA, DEFAULT_THRESHOLD, CheckpointError, import_checkpoint
from engine.model.commfor import import_commfor
from engine.model.hub import resolve_checkpoint
from engine.process.console import say


def import_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        src = resolve_checkpoint(args.src)
        if args.layout == "commfor":
            manifest = import_commfor(src, Path(args.dest), threshold=args.threshold, source_uri=args.src, progress=say)
        else:
            manifest = import_checkpoint(
                src, Path(args.dest), lora_alpha=args.lora_alpha, threshold=args.threshold,
                source_uri=args.src, progress=say,
            )
    except (CheckpointError, FileNotFoundError, IsADirectoryError, ValueError) as exc:
        say(f"error: {exc}")
        return 2
    a = manifest.architecture
    lora = manifest.source.get("lora")
    say(
        f"wrote {args.dest}: model {manifest.version}, ViT width {a.width} depth {a.depth} heads {a.heads}"
        + (f", LoRA rank {lora['rank']} merged" if lora else "") + f", in {time.monotonic() - started:.1f} s"
    )
    return 0


def make_test_model_command(args: argparse.Namespace) -> int:
    from engine.model.synthetic import write_test_model

    dest = Path(args.dest)
    if dest.exists() and any(dest.iterdir()):
        say(f"error: {dest} exists and is not empty")
        return 2
    manifest = write_test_model(dest, seed=args.seed)
    say(f"wrote {dest}: model {manifest.version}, RANDOM WEIGHTS ({manifest.warning}). "
        f"Use it to try the worker: DDA_MODEL={dest} dda worker")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("import-checkpoint", help="convert an official DDA (or Community Forensics) checkpoint into a model directory")
    p.add_argument("src", help="DDA_ckpt.pth path, or hf://OWNER/REPO/FILE (hf://OwensLab/commfor-model-384/model.safetensors with --layout commfor)")
    p.add_argument("dest", help="model directory to write")
    p.add_argument("--layout", choices=("dda", "commfor"), default="dda",
                   help="dda: the DDA authors' LoRA checkpoint; commfor: the Community Forensics ViT-S/16 at 384 px")
    p.add_argument("--lora-alpha", type=float, default=DEFAULT_LORA_ALPHA, help="LoRA alpha of the training run (default 1)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="P(AI) decision threshold (default 0.5)")
    p.set_defaults(handler=import_command)
    p = commands.add_parser("make-test-model", help="write a small random model to try the worker offline (not a detector: every verdict says so)")
    p.add_argument("dest", help="model directory to write")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    p.set_defaults(handler=make_test_model_command)
