"""The ``kdiqa`` command line: one subcommand per stage, plus ``run`` to chain a recipe's stages.

This module only parses; what a command does is :mod:`kdiqa.cli.commands` (and :mod:`kdiqa.cli.predict`),
how its errors are reported (one line, exit 2) :mod:`kdiqa.cli.outcome`.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kdiqa import __version__


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--verbose", action="store_true", help="show every library's messages and warnings")


def _common(parser: argparse.ArgumentParser, recipe: bool = True) -> None:
    if recipe:
        parser.add_argument("recipe", help="recipe YAML path, or a name under recipes/ (e.g. quickstart)")
        parser.add_argument("overrides", nargs="*", metavar="key=value",
                            help="recipe overrides, e.g. trainer.max_epochs=2; ~key removes a key (~data.options.n_train)")
        parser.add_argument("-o", "--out", help="run folder (default: the recipe's `out`)")
        parser.add_argument("--seed", type=int, help="seed for every RNG (default: the recipe's `seed`)")
    _flags(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdiqa", description="Knowledge distillation for blind image quality assessment.")
    parser.add_argument("--version", action="version", version=f"kdiqa {__version__}")
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the stages a recipe names, in order")
    _common(p)
    p.add_argument("--stages", help="comma-separated stages instead of the recipe's `stages`")
    p.set_defaults(command="run")

    p = sub.add_parser("fit-teacher", help="train the recipe's teacher on MOS (validation picks the checkpoint)")
    _common(p)
    p.set_defaults(command="stage", stage="fit_teacher")

    p = sub.add_parser("cache", help="precompute teacher targets per view into HDF5; `cache info PATH`, `cache merge PATH`")
    p.add_argument("target", nargs="+", metavar="RECIPE|info|merge", help="a recipe (then key=value overrides), or info/merge and a cache path")
    p.add_argument("-o", "--out", help="run folder (default: the recipe's `out`)")
    p.add_argument("--seed", type=int, help="seed (default: the recipe's `seed`)")
    p.add_argument("--shard", help="write only shard i of n (i/n) by hand; join with `cache merge` (under torchrun or "
                   "SLURM each process takes its shard from RANK/WORLD_SIZE and rank 0 merges: no --shard)")
    p.add_argument("--timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="under torchrun/SLURM: give up when a shard another process writes shows no progress for this long (default: 1800)")
    p.add_argument("--force", action="store_true", help="rebuild a cache whose fingerprints do not match (merge: replace the merged file)")
    _flags(p)
    p.set_defaults(command="cache", overrides=[])

    p = sub.add_parser("distill", help="train the student on labels + teacher targets (cached or online)")
    _common(p)
    p.set_defaults(command="stage", stage="distill")

    p = sub.add_parser("baseline", help="train the same student on labels only, for comparison")
    _common(p)
    p.set_defaults(command="stage", stage="baseline")

    p = sub.add_parser("report", help="write report.md, plots and the summary table of a run folder")
    _common(p)
    p.set_defaults(command="stage", stage="report")

    p = sub.add_parser("predict", help="score images (files, folders or a CSV with a `path` column) with a saved model")
    p.add_argument("paths", nargs="+", help="image files, folders, or CSV files")
    p.add_argument("--model", required=True, help="a saved student or teacher folder, or an exported .onnx / TorchScript .pt file")
    p.add_argument("--output", help="write results to this .csv or .json as they come, complete when it has this name "
                   "(meanwhile OUTPUT.partial; default: print CSV)")
    p.add_argument("--resume", action="store_true", help="continue the OUTPUT.partial an interrupted run left, scoring only images without a row")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, help="decoding processes (default: one per core, at most 8; 0: decode in the main process)")
    p.add_argument("--no-draft", dest="draft", action="store_false",
                   help="decode JPEGs at full size (default: the JPEG decoder downscales 2-8x, keeping at least twice the model's input)")
    p.add_argument("--size", type=int, help="input side in pixels (default: the model's image_size)")
    _flags(p)
    p.set_defaults(command="predict")

    p = sub.add_parser("export", help="export a saved student to ONNX or TorchScript, verified against PyTorch")
    p.add_argument("checkpoint", help="a saved student folder (model.safetensors + config.json)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--dynamic-batch", action="store_true", help="let the batch axis vary (checked at batch 1 and 7)")
    p.add_argument("--batch-size", type=int, default=1, help="the fixed batch size without --dynamic-batch (default: 1)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: 17 legacy, 18 dynamo)")
    p.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy", help="torch ONNX exporter (default: legacy)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |exported - PyTorch| allowed (default: 1e-4)")
    p.add_argument("--out", help="output file (default: CHECKPOINT/model.onnx, model.int8.onnx, model.fp16.onnx or model.torchscript.pt)")
    p.add_argument("--quantize", metavar="int8", help="ONNX Runtime static int8 quantization, calibrated on the recipe's training views")
    p.add_argument("--precision", metavar="fp32|fp16", help="float precision of the ONNX file (default fp32; inputs and outputs stay float32)")
    p.add_argument("--recipe", help="int8/fp16: the recipe naming calibration and held-out data (default: the run folder's recipe.yaml)")
    p.add_argument("--calibration", type=int, default=256, help="int8: training views to calibrate on (default: 256)")
    p.add_argument("--check-split", default="test", help="int8/fp16: held-out split of the accuracy check, test or val (default: test)")
    p.add_argument("--max-srcc-drop", type=float, default=0.01, help="int8/fp16: largest |SRCC change| vs the float student accepted (default: 0.01)")
    p.add_argument("--force", action="store_true", help="int8/fp16: write the file even if its accuracy check fails (flagged in the sidecar)")
    _flags(p)
    p.set_defaults(command="export")

    p = sub.add_parser("convert", help="convert a released DP-IQA teacher or student .pth into a kdiqa folder")
    p.add_argument("kind", choices=["dpiqa-official", "dpiqa-official-student"], help="dpiqa-official: a teacher ({dataset}_model_plcc_best.pth); dpiqa-official-student: {dataset}_student_model_plcc_best.pth")
    p.add_argument("file", help="the released state dict (.pth)")
    p.add_argument("-o", "--out", required=True, help="the kdiqa folder to write (model.safetensors + config.json)")
    p.add_argument("--prompt-embeddings", help="teacher: the official quality_embeddings.pth (1485 x 768)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--preset", help="teacher: architecture preset (default sd15)")
    p.add_argument("--latent", choices=["mean", "sample"], help="teacher: VAE latent (default mean: deterministic)")
    p.add_argument("--backbone", help="student: torchvision EfficientNet variant (default efficientnet_b7)")
    p.add_argument("--image-size", type=int, help="student: input side in pixels (default 512)")
    _flags(p)
    p.set_defaults(command="convert")

    p = sub.add_parser("bench", help="compare student backbones: parameters, FLOPs, latency, throughput, memory, SRCC")
    _common(p)
    p.add_argument("--students", required=True, help="comma-separated timm backbones or registered students, e.g. efficientnet_b0,mobilenetv3_large_100,dpiqa_official")
    p.add_argument("--teacher", default="sd15", help="the teacher row: none, tiny, sd15, sd21 (DP-IQA, random weights), trained (the recipe's fitted teacher) or a saved teacher folder (default: sd15)")
    p.add_argument("--distill", action="store_true", help="distil each student from the recipe's complete cache with its schedule, for SRCC/PLCC")
    p.add_argument("--repeats", type=int, default=10, help="timed forwards per student and batch size (default: 10)")
    p.add_argument("--teacher-repeats", type=int, default=2, help="timed forwards of the teacher (default: 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards per student before timing (default: 2)")
    p.add_argument("--batch", type=int, default=32, help="batch size of the students' throughput and memory (default: 32)")
    p.add_argument("--teacher-batch", type=int, default=4, help="batch size of the teacher's throughput and memory (default: 4)")
    p.add_argument("--threads", type=int, help="torch CPU threads, i.e. the recipe's `threads` (1 is often faster on a busy machine)")
    p.set_defaults(command="bench")

    p = sub.add_parser("eval", help="evaluate a saved model on each split (SRCC, KRCC, PLCC raw and fitted, RMSE)")
    _common(p)
    p.add_argument("--checkpoint", help="saved model folder (default: the run folder's teacher)")
    p.set_defaults(command="stage", stage="eval")

    data = sub.add_parser("data", help="datasets: summary, embedded mini dataset").add_subparsers(dest="data_cmd", required=True, metavar="ACTION")
    p = data.add_parser("info", help="count, MOS range and splits of the recipe's dataset")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(command="data info")
    p = data.add_parser("make-mini", help="build the embedded mini dataset from scikit-image's photographs")
    _common(p, recipe=False)
    p.add_argument("--root", default="data/mini", help="output folder (default: data/mini)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--n-val", type=int, default=600)
    p.add_argument("--n-test", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(command="data make-mini")

    p = sub.add_parser("info", help="list registered components, or describe one")
    _common(p, recipe=False)
    p.add_argument("what", choices=["teachers", "students", "datasets", "losses", "teacher"])
    p.add_argument("name", nargs="?", help="component name (for `info teacher`)")
    p.add_argument("--preset", help="architecture preset (e.g. tiny, sd15)")
    p.add_argument("--metric", help="for `info teacher pyiqa`: a pyiqa metric to describe (e.g. topiq_nr)")
    p.set_defaults(command="info")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # overrides may follow options (`kdiqa run quickstart -o out key=value`): argparse stops
    # collecting positionals at the first option, so gather the key=value strings it left over
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if not _is_override(e) or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command == "predict":
        # scoring imports torch and the model only, not the stages' Lightning: the first score comes seconds sooner
        from kdiqa.cli.predict import run_predict

        return run_predict(args)
    from kdiqa.cli.commands import run_command  # torch + Lightning take seconds: --help and usage errors skip them

    return run_command(args)


def _is_override(arg: str) -> bool:
    """``key=value``, or ``~key`` (remove a key), as left over after the options."""
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


if __name__ == "__main__":
    sys.exit(main())
