"""What each ``kdiqa`` command does once its arguments are parsed (all but ``predict``).

Failures are reported by :func:`kdiqa.cli.outcome.run_reported` (one line, exit 2). ``kdiqa predict``
lives in :mod:`kdiqa.cli.predict`: this module imports the stages, hence Lightning, which scoring
does not need.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from kdiqa.bench import run_bench, write_bench
from kdiqa.cache import cache_info, format_cache_info, merge_shards
from kdiqa.cli.outcome import run_reported
from kdiqa.config import Recipe, load_recipe
from kdiqa.convert import convert
from kdiqa.data.datamodule import IQADataModule
from kdiqa.data.mini import make_mini
from kdiqa.errors import KdiqaError
from kdiqa.export import export_student
from kdiqa.registry import DATASETS, LOSSES, STUDENTS, TEACHERS
from kdiqa.run import prepare_run
from kdiqa.stages import STAGES, check_stages
from kdiqa.stages.side_by_side import run_side_by_side
from kdiqa.teachers.base import Teacher


def _recipe(args: argparse.Namespace, needs: tuple[str, ...] | None = None) -> Recipe:
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return load_recipe(args.recipe, overrides, needs=needs)


def _print_table(result: Any) -> None:
    """The metrics table of a stage that evaluated something (split → metrics); nothing otherwise."""
    if not isinstance(result, dict) or not any(isinstance(v, dict) and "srcc" in v for v in result.values()):
        return
    keys = ["srcc", "krcc", "plcc", "plcc_fitted", "rmse", "n"]
    print(f"{'split':<8}" + "".join(f"{k:>12}" for k in keys))
    for split, m in result.items():
        if isinstance(m, dict) and "srcc" in m:
            print(f"{split:<8}" + "".join(f"{m[k]:>12.4f}" if isinstance(m[k], float) else f"{m[k]:>12}" for k in keys))


def cmd_run(args: argparse.Namespace) -> int:
    recipe = _recipe(args)
    stages = list(args.stages.split(",")) if args.stages else list(recipe.stages)
    if not stages:
        raise KdiqaError(f"{args.recipe}: the recipe names no stages (set `stages: [...]` or pass --stages)")
    groups = check_stages(stages, recipe)
    run = prepare_run(recipe)
    for entry, names in zip(stages, groups, strict=True):
        print(f"== stage {entry} ({run.root})", flush=True)
        if len(names) == 1:
            _print_table(STAGES[entry](recipe, run))
            continue
        results = run_side_by_side({n: STAGES[n] for n in names}, recipe, run, args.verbose)
        for name, result in zip(names, results, strict=True):
            print(f"-- {name}")
            _print_table(result)
    print(f"run folder: {run.root}")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    """One stage on its own: ``kdiqa fit-teacher / distill / baseline / report / eval``."""
    recipe = _recipe(args)
    run = prepare_run(recipe)
    kwargs = {"checkpoint": args.checkpoint} if getattr(args, "checkpoint", None) else {}
    _print_table(STAGES[args.stage](recipe, run, **kwargs))
    print(f"run folder: {run.root}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """``kdiqa cache RECIPE [k=v ...]``, ``kdiqa cache info PATH``, ``kdiqa cache merge PATH``."""
    action, rest = args.target[0], args.target[1:]
    if action in ("info", "merge"):
        if len(rest) != 1:
            raise KdiqaError(f"cache {action}: expected one cache path, e.g. `kdiqa cache {action} runs/x/cache/teacher.h5`")
        if action == "merge":
            merge_shards(rest[0], force=args.force)
        print(format_cache_info(cache_info(rest[0])))
        return 0
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
    if not args.timeout > 0:
        raise KdiqaError(f"--timeout {args.timeout:g}: must be a positive number of seconds")
    summary = STAGES["cache"](recipe, prepare_run(recipe), shard=shard, force=args.force, wait=args.timeout)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _export_precision(args: argparse.Namespace) -> str:
    """``--quantize int8`` (calibrated integer arithmetic) or ``--precision fp32|fp16`` (a float type): one of them."""
    if args.quantize is not None and args.precision is not None:
        raise KdiqaError(f"export: give --quantize or --precision, not both (got --quantize {args.quantize} --precision {args.precision})")
    if args.quantize is not None:
        if args.quantize != "int8":
            raise KdiqaError(f"export --quantize: unknown value {args.quantize!r} (choose from int8)")
        return "int8"
    if args.precision is not None and args.precision not in ("fp32", "fp16"):
        hint = "; int8 is --quantize int8" if args.precision == "int8" else ""
        raise KdiqaError(f"export --precision: unknown value {args.precision!r} (choose from fp32, fp16{hint})")
    return args.precision or "fp32"


def cmd_export(args: argparse.Namespace) -> int:
    meta = export_student(
        args.checkpoint, args.format, out=args.out, dynamic_batch=args.dynamic_batch, batch_size=args.batch_size,
        opset=args.opset, exporter=args.exporter, tolerance=args.tolerance, precision=_export_precision(args),
        recipe=args.recipe, calibration=args.calibration, check_split=args.check_split,
        max_srcc_drop=args.max_srcc_drop, force=args.force,
    )
    parity = meta["parity"]
    checked = f"max |diff| {parity['max_abs_diff']:.2e} <= {parity['tolerance']:g}" if parity["checked"] else "parity NOT checked"
    if "accuracy" in meta:
        acc = meta["accuracy"]
        verdict = "passed" if acc["passed"] else "FAILED, kept because of --force"
        checked = (f"float graph {checked}; {acc['split']} SRCC {acc['float']['srcc']:.4f} float -> {acc['exported']['srcc']:.4f} "
                   f"{meta['precision']} over {acc['images']} images, |change| {abs(acc['delta_srcc']):.4f} <= {acc['max_srcc_drop']:g}: {verdict}")
    print(f"exported {meta['format']} {meta['precision']}: {meta['path']} (input {meta['input']['size']}, {checked})")
    print(f"input convention: {meta['path']}.json")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """``kdiqa convert dpiqa-official TEACHER.pth --prompt-embeddings E.pth -o DIR`` (or ``dpiqa-official-student``)."""
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
    if args.threads is not None:
        if args.threads < 1:
            raise KdiqaError(f"bench --threads: must be >= 1, got {args.threads}")
        args.overrides = [*args.overrides, f"threads={args.threads}"]  # prepare_run applies it (and each --distill run)
    recipe = _recipe(args)
    run = prepare_run(recipe)
    rows = run_bench(
        recipe, run, [s.strip() for s in args.students.split(",") if s.strip()], teacher=args.teacher,
        distill=args.distill, repeats=args.repeats, teacher_repeats=args.teacher_repeats, warmup=args.warmup,
        batch=args.batch, teacher_batch=args.teacher_batch,
    )
    print(write_bench(run, rows, recipe.name))
    print(f"wrote {run.bench_csv}, {run.bench_md}, {run.bench_plot}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
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
    csv = make_mini(args.root, size=args.size, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, seed=args.seed)
    print(f"mini dataset: {csv}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    registries = {"teachers": TEACHERS, "students": STUDENTS, "datasets": DATASETS, "losses": LOSSES}
    if args.what in registries:
        print("\n".join(registries[args.what].names()))
        return 0
    if args.what == "teacher":
        if not args.name:
            raise KdiqaError("info teacher: name a teacher, e.g. `kdiqa info teacher dpiqa --preset tiny`")
        builder = TEACHERS.get(args.name)
        if not (isinstance(builder, type) and issubclass(builder, Teacher)):  # a plugin's builder function
            raise KdiqaError(f"teacher {args.name!r} cannot describe itself without being built")
        describe = builder.describe  # Teacher.describe says the same when a teacher does not describe itself
        if args.metric:  # pyiqa: one of its metrics
            print(json.dumps(describe(metric=args.metric), indent=2, default=str))
            return 0
        print(json.dumps(describe(args.preset) if args.preset else describe(), indent=2))
        return 0
    raise KdiqaError(f"info: unknown topic {args.what!r}")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "stage": cmd_stage,
    "cache": cmd_cache,
    "export": cmd_export,
    "convert": cmd_convert,
    "bench": cmd_bench,
    "data info": cmd_data_info,
    "data make-mini": cmd_data_make_mini,
    "info": cmd_info,
}


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command (``args.command``, a key of COMMANDS); user errors become one line and exit 2."""
    return run_reported(COMMANDS[args.command], args)
