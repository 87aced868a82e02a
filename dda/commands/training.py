"""`dda make-pairs`, `dda train`, `dda export`, `dda eval`, `dda calibrate`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.model.checkpoint import CheckpointError
from engine.model.model_dir import load_model_dir
from engine.process.console import say


def make_pairs_command(args: argparse.Namespace) -> int:
    from training.pairs import make_pairs

    manifest = make_pairs(Path(args.reals), Path(args.output), args.vae, args.device, args.seed, args.batch_size, progress=say)
    say(f"{len(manifest['pairs'])} pairs in {args.output}")
    return 0


def train_command(args: argparse.Namespace) -> int:
    from training.train import TrainConfig, train

    cfg = TrainConfig(init=args.init, pairs=args.pairs, output=args.output, steps=args.steps, pairs_per_step=args.pairs_per_step,
                      accumulation=args.accumulation, lr=args.lr, seed=args.seed, device=args.device,
                      checkpoint_every=args.checkpoint_every)
    try:
        say(f"wrote {train(cfg, log=say)}")
    except CheckpointError as exc:
        say(f"error: {exc}")
        return 2
    return 0


def export_command(args: argparse.Namespace) -> int:
    from training.export import export

    try:
        manifest = export(Path(args.checkpoint), Path(args.output))
    except CheckpointError as exc:
        say(f"error: {exc}")
        return 2
    say(f"wrote {args.output} (model {manifest.version})")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate, markdown

    report = evaluate(load_model_dir(Path(args.model)), Path(args.data), crops=args.crops, jpeg_fakes=args.jpeg_fakes,
                      out_dir=Path(args.output) if args.output else None, progress=say)
    print(json.dumps(report))
    say("\n" + markdown(report))
    return 0


def calibrate_command(args: argparse.Namespace) -> int:
    if args.second:
        return calibrate_ensemble_command(args)
    if not args.reals:
        say("error: --reals (a threshold for one model) or --second with --data (a combiner for two) is needed")
        return 2
    from training.evaluate import calibrate

    model_dir = Path(args.model)
    threshold = calibrate(load_model_dir(model_dir), model_dir, Path(args.reals), args.target_fpr, args.write)
    print(json.dumps({"threshold": threshold, "target_fpr": args.target_fpr, "written": args.write}))
    return 0


def calibrate_ensemble_command(args: argparse.Namespace) -> int:
    from engine.model.combiner import CombinerError
    from training.calibration import calibrate_ensemble, score_images

    if not args.data:
        say("error: --second needs --data, labelled images in <subset>/0_real and <subset>/1_fake")
        return 2
    out = Path(args.out) if args.out else Path(args.model).resolve().parent / "combiner.json"
    try:
        models = [load_model_dir(Path(args.model)), load_model_dir(Path(args.second))]
        scored = score_images(models, Path(args.data), progress=say)
        combiner, report = calibrate_ensemble(models, scored, fpr=args.target_fpr, fnr=args.target_fnr, held_back=args.held_back,
                                              seed=args.seed)
    except (ValueError, CombinerError) as exc:
        say(f"error: {exc}")
        return 2
    combiner.save(out)
    print(json.dumps({"combiner": str(out), **report}))
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("make-pairs", help="VAE-reconstruct real images into DDA training pairs")
    p.add_argument("--reals", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--vae", default="stabilityai/stable-diffusion-2-1", help="hub id (subfolder vae) or local diffusers VAE directory")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="images of equal size reconstructed together")
    p.set_defaults(handler=make_pairs_command)

    p = commands.add_parser("train", help="train LoRA + head on pairs (the DDA recipe)")
    p.add_argument("--init", required=True, help="DDA model directory, or a DINOv2 backbone .pth")
    p.add_argument("--pairs", required=True, help="output of make-pairs")
    p.add_argument("--output", required=True, help="run directory (checkpoint, log); rerun to resume")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--pairs-per-step", type=int, default=2)
    p.add_argument("--accumulation", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.set_defaults(handler=train_command)

    p = commands.add_parser("export", help="training checkpoint -> model directory (LoRA merged)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--output", required=True)
    p.set_defaults(handler=export_command)

    p = commands.add_parser("eval", help="accuracy, AP, ROC AUC, TPR@FPR on <subset>/0_real|1_fake folders")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--jpeg-fakes", type=int, default=None, help="JPEG quality applied to fakes (the paper uses 96)")
    p.add_argument("--crops", type=int, default=1, choices=[1, 5])
    p.add_argument("--output", help="folder for eval.json, eval.md, roc.png")
    p.set_defaults(handler=eval_command)

    p = commands.add_parser("calibrate", help="threshold for a target false-positive rate on real images; with --second, "
                                              "a calibrated combiner of two models")
    p.add_argument("--model", required=True)
    p.add_argument("--reals", help="real images: the one-model threshold")
    p.add_argument("--target-fpr", type=float, default=0.01, help="false positives allowed on real images (above the band, with --second)")
    p.add_argument("--write", action="store_true", help="write the threshold into the model's manifest")
    p.add_argument("--second", help="a second model directory (e.g. Community Forensics): fit a combiner of both models' logits")
    p.add_argument("--data", help="with --second: labelled images, <subset>/0_real and <subset>/1_fake")
    p.add_argument("--target-fnr", type=float, default=0.05, help="with --second: AI images allowed to be labelled real (below the band)")
    p.add_argument("--held-back", type=float, default=0.3, help="with --second: share of each class held back for the report")
    p.add_argument("--seed", type=int, default=0, help="with --second: the held-back split's seed")
    p.add_argument("--out", help="with --second: the combiner file (default: combiner.json beside the model directory)")
    p.set_defaults(handler=calibrate_command)
