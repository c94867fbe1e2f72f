"""The ``kdiqa`` command line: one subcommand per stage, plus ``run`` to chain a recipe's stages.

Expected user errors (KdiqaError) print one line, ``kdiqa: error: ...``, and exit 2; so does an
OSError that says the machine cannot take a file (a full disk, a read-only folder, a missing path),
wherever it comes from. ``--debug`` shows the traceback instead. Third-party chatter is silenced
unless ``--verbose`` (:mod:`kdiqa.console`).
"""
from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from kdiqa import __version__
from kdiqa.errors import KdiqaError

EXIT_USER_ERROR = 2
# OSErrors that describe the machine, not a bug: reported in one line like user errors
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                      errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG, errno.EIO}


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


def _recipe(args: argparse.Namespace, needs: tuple[str, ...] | None = None):
    from kdiqa.config import load_recipe

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return load_recipe(args.recipe, overrides, needs=needs)


def _print_table(rows: dict[str, dict[str, Any]]) -> None:
    keys = ["srcc", "krcc", "plcc", "plcc_fitted", "rmse", "n"]
    print(f"{'split':<8}" + "".join(f"{k:>12}" for k in keys))
    for split, m in rows.items():
        if isinstance(m, dict) and "srcc" in m:
            print(f"{split:<8}" + "".join(f"{m[k]:>12.4f}" if isinstance(m[k], float) else f"{m[k]:>12}" for k in keys))


def cmd_run(args: argparse.Namespace) -> int:
    from kdiqa.run import prepare_run
    from kdiqa.stages import STAGES, check_stages

    recipe = _recipe(args)
    stages = list(args.stages.split(",")) if args.stages else list(recipe.stages)
    if not stages:
        raise KdiqaError(f"{args.recipe}: the recipe names no stages (set `stages: [...]` or pass --stages)")
    check_stages(stages)
    run_dir = prepare_run(recipe)
    for name in stages:
        print(f"== stage {name} ({run_dir})", flush=True)
        result = STAGES[name](recipe, run_dir)
        if isinstance(result, dict) and any(isinstance(v, dict) and "srcc" in v for v in result.values()):
            _print_table(result)
    print(f"run folder: {run_dir}")
    return 0


def cmd_stage(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from kdiqa.run import prepare_run
        from kdiqa.stages import STAGES

        recipe = _recipe(args)
        run_dir = prepare_run(recipe)
        kwargs = {"checkpoint": args.checkpoint} if getattr(args, "checkpoint", None) else {}
        result = STAGES[name](recipe, run_dir, **kwargs)
        if isinstance(result, dict) and any(isinstance(v, dict) and "srcc" in v for v in result.values()):
            _print_table(result)
        print(f"run folder: {run_dir}")
        return 0

    return run


def cmd_cache(args: argparse.Namespace) -> int:
    """``kdiqa cache RECIPE [k=v ...]``, ``kdiqa cache info PATH``, ``kdiqa cache merge PATH``."""
    from kdiqa.cache import cache_info, format_cache_info, merge_shards

    action, rest = args.target[0], args.target[1:]
    if action in ("info", "merge"):
        if len(rest) != 1:
            raise KdiqaError(f"cache {action}: expected one cache path, e.g. `kdiqa cache {action} runs/x/cache/teacher.h5`")
        if action == "merge":
            merge_shards(rest[0], force=args.force)
        print(format_cache_info(cache_info(rest[0])))
        return 0
    from kdiqa.run import prepare_run
    from kdiqa.stages import STAGES

    # overrides may come before or after the options (`kdiqa cache RECIPE -o OUT key=value`)
    args.recipe, args.overrides = action, [*rest, *args.overrides]
    shard = None
    if args.shard:
        try:
            i, n = (int(v) for v in args.shard.split("/"))
            if not 0 <= i < n:
                raise ValueError
        except ValueError:
            raise KdiqaError(f"--shard {args.shard!r}: expected i/n with 0 <= i < n, e.g. --shard 0/2") from None
        shard = (i, n)
    recipe = _recipe(args)
    run_dir = prepare_run(recipe)
    summary = STAGES["cache"](recipe, run_dir, shard=shard, force=args.force)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from kdiqa.predict import predict_paths

    rows = predict_paths(args.model, args.paths, out=args.output, batch_size=args.batch_size, size=args.size)
    scored = sum(1 for r in rows if r["score"] is not None)
    if not scored:
        first = next((f"; the first: {r['error']}" for r in rows if r["error"]), "")
        raise KdiqaError(f"predict: none of the {len(rows)} images could be scored{first}" if rows
                         else f"predict: no images found in {' '.join(args.paths)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kdiqa.export import export_student

    meta = export_student(
        args.checkpoint, args.format, out=args.out, dynamic_batch=args.dynamic_batch, batch_size=args.batch_size,
        opset=args.opset, exporter=args.exporter, tolerance=args.tolerance,
    )
    parity = meta["parity"]
    checked = f"max |diff| {parity['max_abs_diff']:.2e} <= {parity['tolerance']:g}" if parity["checked"] else "parity NOT checked"
    print(f"exported {meta['format']}: {meta['path']} (input {meta['input']['size']}, {checked})")
    print(f"input convention: {meta['path']}.json")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """``kdiqa convert dpiqa-official TEACHER.pth --prompt-embeddings E.pth -o DIR`` (or ``dpiqa-official-student``)."""
    from kdiqa.convert import convert

    teacher_options = {k: v for k, v in (("preset", args.preset), ("latent", args.latent)) if v is not None}
    student_options = {k: v for k, v in (("backbone", args.backbone), ("image_size", args.image_size)) if v is not None}
    summary = convert(
        args.kind, args.file, args.out, prompt_embeddings=args.prompt_embeddings, force=args.force,
        teacher_options=teacher_options, student_options=student_options,
    )
    print(f"converted {summary['source']} ({summary['parameters'] / 1e6:.1f}M parameters) into the kdiqa {summary['model']} folder {summary['out']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``kdiqa bench RECIPE --students a,b``: size, FLOPs, speed, memory (and SRCC with --distill) per backbone."""
    from kdiqa.bench import run_bench, write_bench
    from kdiqa.run import prepare_run

    if args.threads is not None:
        if args.threads < 1:
            raise KdiqaError(f"bench --threads: must be >= 1, got {args.threads}")
        args.overrides = [*args.overrides, f"threads={args.threads}"]  # prepare_run applies it (and each --distill run)
    recipe = _recipe(args)
    run_dir = prepare_run(recipe)
    rows = run_bench(
        recipe, run_dir, [s.strip() for s in args.students.split(",") if s.strip()], teacher=args.teacher,
        distill=args.distill, repeats=args.repeats, teacher_repeats=args.teacher_repeats, warmup=args.warmup,
        batch=args.batch, teacher_batch=args.teacher_batch,
    )
    print(write_bench(run_dir, rows, recipe.name))
    print(f"wrote {run_dir / 'bench.csv'}, {run_dir / 'bench.md'}, {run_dir / 'bench_pareto.png'}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from kdiqa.data.datamodule import IQADataModule

    recipe = _recipe(args, needs=("data", "views"))  # a `???` teacher or student does not matter here
    summary = IQADataModule(recipe.data, recipe.views).summary()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(f"dataset {summary['name']} ({recipe.data.root or 'default root'}), skipped rows: {summary['skipped']}")
    print(f"{'split':<12}{'labelled':>9}{'MOS min':>12}{'MOS max':>12}")
    for split, row in summary.items():
        if isinstance(row, dict) and "mos_raw_min" in row:  # an empty split has no MOS range: shown as -
            low, high = (f"{row[k]:>12.4g}" if row[k] is not None else f"{'-':>12}" for k in ("mos_raw_min", "mos_raw_max"))
            print(f"{split:<12}{row['count']:>9}{low}{high}")
    pool = summary.get("unlabelled")
    if pool:
        print(f"unlabelled pool: {pool['count']} images for distillation ({pool['source']}), {pool['left_out']} left out")
    return 0


def cmd_data_make_mini(args: argparse.Namespace) -> int:
    from kdiqa.data.mini import make_mini

    csv = make_mini(args.root, size=args.size, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, seed=args.seed)
    print(f"mini dataset: {csv}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from kdiqa.registry import DATASETS, LOSSES, STUDENTS, TEACHERS

    registries = {"teachers": TEACHERS, "students": STUDENTS, "datasets": DATASETS, "losses": LOSSES}
    if args.what in registries:
        print("\n".join(registries[args.what].names()))
        return 0
    if args.what == "teacher":
        if not args.name:
            raise KdiqaError("info teacher: name a teacher, e.g. `kdiqa info teacher dpiqa --preset tiny`")
        builder = TEACHERS.get(args.name)
        describe = getattr(builder, "describe", None)
        if describe is None:
            raise KdiqaError(f"teacher {args.name!r} cannot describe itself without being built")
        if args.metric:  # pyiqa: one of its metrics
            print(json.dumps(describe(metric=args.metric), indent=2, default=str))
            return 0
        print(json.dumps(describe(args.preset) if args.preset else describe(), indent=2))
        return 0
    raise KdiqaError(f"info: unknown topic {args.what!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdiqa", description="Knowledge distillation for blind image quality assessment.")
    parser.add_argument("--version", action="version", version=f"kdiqa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the stages a recipe names, in order")
    _common(p)
    p.add_argument("--stages", help="comma-separated stages instead of the recipe's `stages`")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("fit-teacher", help="train the recipe's teacher on MOS (validation picks the checkpoint)")
    _common(p)
    p.set_defaults(func=cmd_stage("fit_teacher"))

    p = sub.add_parser("cache", help="precompute teacher targets per view into HDF5; `cache info PATH`, `cache merge PATH`")
    p.add_argument("target", nargs="+", metavar="RECIPE|info|merge", help="a recipe (then key=value overrides), or info/merge and a cache path")
    p.add_argument("-o", "--out", help="run folder (default: the recipe's `out`)")
    p.add_argument("--seed", type=int, help="seed (default: the recipe's `seed`)")
    p.add_argument("--shard", help="write only shard i of n (i/n), e.g. one per process or GPU; join with `cache merge`")
    p.add_argument("--force", action="store_true", help="rebuild a cache whose fingerprints do not match (merge: replace the merged file)")
    _flags(p)
    p.set_defaults(func=cmd_cache, overrides=[])

    p = sub.add_parser("distill", help="train the student on labels + teacher targets (cached or online)")
    _common(p)
    p.set_defaults(func=cmd_stage("distill"))

    p = sub.add_parser("baseline", help="train the same student on labels only, for comparison")
    _common(p)
    p.set_defaults(func=cmd_stage("baseline"))

    p = sub.add_parser("report", help="write report.md, plots and the summary table of a run folder")
    _common(p)
    p.set_defaults(func=cmd_stage("report"))

    p = sub.add_parser("predict", help="score images (files, folders or a CSV with a `path` column) with a saved model")
    p.add_argument("paths", nargs="+", help="image files, folders, or CSV files")
    p.add_argument("--model", required=True, help="a saved student or teacher folder, or an exported .onnx / TorchScript .pt file")
    p.add_argument("--output", help="write results to this .csv or .json (default: print CSV)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, help="input side in pixels (default: the model's image_size)")
    _flags(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a saved student to ONNX or TorchScript, verified against PyTorch")
    p.add_argument("checkpoint", help="a saved student folder (model.safetensors + config.json)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--dynamic-batch", action="store_true", help="let the batch axis vary (checked at batch 1 and 7)")
    p.add_argument("--batch-size", type=int, default=1, help="the fixed batch size without --dynamic-batch (default: 1)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: 17 legacy, 18 dynamo)")
    p.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy", help="torch ONNX exporter (default: legacy)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |exported - PyTorch| allowed (default: 1e-4)")
    p.add_argument("--out", help="output file (default: CHECKPOINT/model.onnx or CHECKPOINT/model.torchscript.pt)")
    _flags(p)
    p.set_defaults(func=cmd_export)

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
    p.set_defaults(func=cmd_convert)

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
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("eval", help="evaluate a saved model on each split (SRCC, KRCC, PLCC raw and fitted, RMSE)")
    _common(p)
    p.add_argument("--checkpoint", help="saved model folder (default: the run folder's teacher)")
    p.set_defaults(func=cmd_stage("eval"))

    data = sub.add_parser("data", help="datasets: summary, embedded mini dataset").add_subparsers(dest="data_cmd", required=True, metavar="ACTION")
    p = data.add_parser("info", help="count, MOS range and splits of the recipe's dataset")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_data_info)
    p = data.add_parser("make-mini", help="build the embedded mini dataset from scikit-image's photographs")
    _common(p, recipe=False)
    p.add_argument("--root", default="data/mini", help="output folder (default: data/mini)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--n-val", type=int, default=600)
    p.add_argument("--n-test", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_make_mini)

    p = sub.add_parser("info", help="list registered components, or describe one")
    _common(p, recipe=False)
    p.add_argument("what", choices=["teachers", "students", "datasets", "losses", "teacher"])
    p.add_argument("name", nargs="?", help="component name (for `info teacher`)")
    p.add_argument("--preset", help="architecture preset (e.g. tiny, sd15)")
    p.add_argument("--metric", help="for `info teacher pyiqa`: a pyiqa metric to describe (e.g. topiq_nr)")
    p.set_defaults(func=cmd_info)
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
    from kdiqa.console import setup_console

    setup_console(verbose=args.verbose)
    try:
        return int(args.func(args) or 0)
    except KdiqaError as exc:
        if args.debug:
            raise
        print(f"kdiqa: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if args.debug or exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        from kdiqa.io import os_reason

        where = f"{exc.filename}: " if exc.filename else ""
        print(f"kdiqa: error: {where}{os_reason(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("kdiqa: interrupted", file=sys.stderr)
        return 130


def _is_override(arg: str) -> bool:
    """``key=value``, or ``~key`` (remove a key), as left over after the options."""
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


if __name__ == "__main__":
    sys.exit(main())
