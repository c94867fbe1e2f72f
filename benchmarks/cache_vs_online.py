"""Benchmark: a distillation epoch from the cache vs with the teacher online vs a label-only epoch.

    .venv/bin/python benchmarks/cache_vs_online.py [--images 256] [--views 2] [--rounds 4]
        [--student kdiqa_cnn_small] [--threads 1]

Setting: the quickstart recipe (embedded mini dataset at 64 px, tiny DP-IQA teacher with random weights:
speed does not depend on the weights' values, student ``--student`` with the recipe's head and
quality-map projector, batch 32, 0 loader workers). The mini dataset is generated into a temporary
folder with ``--images`` training images; ``kdiqa cache`` stores ``--views`` views per image. One epoch
is one pass over the training images (one view each) through the same Lightning training loop
``kdiqa distill`` / ``kdiqa baseline`` run, without validation:

- label-only: the training views of the data module, student + MOS losses (``kdiqa baseline``);
- cached:     the cache reader (views replayed from the stored parameters + teacher targets), KD losses;
- online:     the training views of the data module, the teacher run under no_grad on every batch, KD losses.

All three use the same view sampler and size and the same student initialisation. Modes are timed in
interleaved rounds (the order reversed every round), the first round is a warm-up; each figure is the
median epoch time, and each ratio is given both as the ratio of the medians and as the median of the
per-round ratios (modes timed in the same round saw the same load, so the latter is the steadier). Goals: cached/label-only <= 1.15; online/cached as large as the teacher makes it.

FLOP arithmetic: FlopCounterMode counts the teacher's forward and the student's forward per view, and a
training step is taken as 3 × the student's forward; if every FLOP cost the same time and data loading were free, online/cached would be
1 + teacher forward / student step. That is printed next to the measured ratio for the tiny teacher,
and for the true-size sd15 teacher at 512² (counted on the meta device, no weights in memory) against
several students at 512².
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdiqa.cache import CachedViews  # noqa: E402
from kdiqa.config import load_recipe  # noqa: E402
from kdiqa.console import setup_console  # noqa: E402
from kdiqa.data.datamodule import IQADataModule, make_sampler  # noqa: E402
from kdiqa.data.mini import make_mini  # noqa: E402
from kdiqa.distill.module import DistillModule  # noqa: E402
from kdiqa.fit import MOSFitModule  # noqa: E402
from kdiqa.measure import count_flops, count_parameters, machine_context  # noqa: E402
from kdiqa.registry import STUDENTS, TEACHERS  # noqa: E402
from kdiqa.run import prepare_run  # noqa: E402
from kdiqa.stages import stage_cache  # noqa: E402
from kdiqa.stages.distill import _WithTrainSet  # noqa: E402
from kdiqa.students.base import build_student  # noqa: E402

MODES = ("label-only", "cached", "online")
SD_STUDENTS = ("efficientnet_b7", "efficientnet_b0", "mobilenetv3_large_100", "kdiqa_cnn_small")


class EpochTimer(pl.Callback):
    """Wall time of each training epoch (loader, steps, optimiser; not the Trainer's start-up)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def one_epoch(module: pl.LightningModule, loader: torch.utils.data.DataLoader) -> float:
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds[0]


def train_step_flops(student: torch.nn.Module, size: int, device: str = "cpu") -> int:
    """FLOPs of one view's training step, as 3 × the forward's (the backward costs about twice the forward).

    Not counted under FlopCounterMode directly: in torch 2.14 its ``convolution_backward`` formula ignores
    ``groups``, so a depthwise convolution's backward counts as a dense one (an EfficientNet's training
    step came out at 50× its forward).
    """
    return 3 * count_flops(student.eval(), size, device)


def sd_arithmetic(size: int = 512) -> None:
    """Implied online/cached at SD-1.5 size: FLOPs only, on the meta device."""
    with torch.device("meta"):
        teacher = TEACHERS.build("dpiqa", preset="sd15").eval()
    teacher_params = count_parameters(teacher)
    teacher_flops = count_flops(teacher, size, device="meta")
    shapes = teacher.feature_shapes(size)
    print(f"\nSD-1.5 size by FLOP arithmetic ({size}² views; meta device, FlopCounterMode):")
    print(f"  teacher dpiqa sd15 ({teacher_params / 1e6:.0f} M params) forward: {teacher_flops / 1e9:8.1f} GFLOPs/view")
    print(f"  {'student (pooled-MLP head + conv projector to quality_map ' + 'x'.join(map(str, shapes['quality_map'])) + ')':<70}"
          f"{'step GFLOPs/view':>18}{'teacher fwd / student step':>28}{'implied online/cached':>23}")
    for name in SD_STUDENTS:
        with torch.device("meta"):
            student = STUDENTS.build(
                "timm", backbone=name, image_size=size,
                projectors=[{"tap": -1, "target": "quality_map", "shape": list(shapes["quality_map"]), "kind": "conv"}],
            )
        step = train_step_flops(student, size, device="meta")
        print(f"  {name:<70}{step / 1e9:>18.2f}{teacher_flops / step:>27.0f}x{1 + teacher_flops / step:>22.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384, help="training images (one view each per epoch)")
    parser.add_argument("--views", type=int, default=2, help="cached views per image")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the first is a warm-up")
    parser.add_argument("--student", default="kdiqa_cnn_small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-sd", action="store_true", help="skip the SD-1.5 FLOP arithmetic")
    args = parser.parse_args()
    setup_console()  # the stages' Lightning chatter stays out of the benchmark's output, as in `kdiqa`
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Lightning's advice about workers and logging intervals
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    print("# " + "; ".join(f"{k}: {v}" for k, v in machine_context().items()), flush=True)

    with tempfile.TemporaryDirectory(prefix="kdiqa-cache-vs-online-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        sizes = {"n_train": args.images, "n_val": 16, "n_test": 16}
        make_mini(folder / "mini", size=64, **sizes, progress=False)
        print(f"# mini dataset: {args.images} training images made in {time.perf_counter() - start:.0f} s", flush=True)
        recipe = load_recipe("quickstart", [
            f"data.root={folder / 'mini'}", "data.options={" + ", ".join(f"{k}: {v}" for k, v in sizes.items()) + "}", f"out={folder / 'run'}", "data.num_workers=0",
            f"cache.views_per_image={args.views}", f"student.options.backbone={args.student}",
            "trainer.progress_bar=false", "trainer.logger=none",
        ])
        run = prepare_run(recipe)
        torch.manual_seed(0)
        teacher = TEACHERS.build(recipe.teacher.name, **recipe.teacher.options).eval()
        teacher.save_pretrained(run.teacher)
        start = time.perf_counter()
        stage_cache(recipe, run)
        cache_seconds = time.perf_counter() - start

        dm = IQADataModule(recipe.data, recipe.views)
        dm.setup()
        cached_views = CachedViews(
            run.cache, dm.splits["train"], make_sampler(recipe.views, train=True),
            views=recipe.cache.epoch_views, features=sorted({p.target for p in recipe.distill.features}),
        )
        torch.manual_seed(0)
        initial = build_student(recipe.student, recipe.views.size, recipe.distill.features, cached_views.feature_shapes())
        loaders = {
            "label-only": dm.train_dataloader(),
            "cached": _WithTrainSet(dm, cached_views).train_dataloader(),
            "online": dm.train_dataloader(),
        }

        def module(mode: str) -> pl.LightningModule:
            student = copy.deepcopy(initial)
            if mode == "label-only":
                return MOSFitModule(student, recipe.distill.fit)
            return DistillModule(student, recipe.distill.fit, recipe.distill, teacher=teacher if mode == "online" else None,
                                 pool=recipe.cache.pool)

        times: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else reversed(MODES):
                seconds = one_epoch(module(mode), loaders[mode])
                if r > 0:
                    times[mode].append(seconds)
            print(f"# round {r + 1}/{args.rounds}{' (warm-up)' if r == 0 else ''} done", flush=True)

        size = recipe.views.size
        student_params = count_parameters(initial)
        teacher_params = count_parameters(teacher)
        t_flops = count_flops(teacher, size)
        s_step = train_step_flops(copy.deepcopy(initial), size)
        n = len(cached_views)
        med = {m: statistics.median(v) for m, v in times.items()}
        print(f"\nquickstart setting: {n} views/epoch of {size} px, batch {recipe.data.batch_size}, {args.threads} thread(s); "
              f"student {args.student} ({student_params / 1e6:.2f} M params, {s_step / 1e6:.1f} MFLOPs/view per training step), "
              f"teacher dpiqa tiny ({teacher_params / 1e6:.2f} M params, {t_flops / 1e6:.1f} MFLOPs/view forward)")
        print(f"cache build ({args.images} images x {args.views} views, teacher forward + HDF5): {cache_seconds:.1f} s")
        for m in MODES:
            spread = f"{min(times[m]):.2f}-{max(times[m]):.2f}"
            print(f"  epoch {m:<11} {med[m]:7.2f} s  (range {spread} over {len(times[m])} rounds; {1000 * med[m] / n:6.2f} ms/view)")
        def paired(a: str, b: str) -> str:
            per_round = statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
            return f"{med[a] / med[b]:6.3f} (ratio of medians), {per_round:6.3f} (median of per-round ratios)"

        print(f"  cached / label-only  {paired('cached', 'label-only')}   goal <= 1.15")
        print(f"  online / cached      {paired('online', 'cached')}")
        print(f"  online / label-only  {paired('online', 'label-only')}")
        print(f"  FLOP arithmetic predicts online/cached = 1 + teacher fwd / student step = 1 + {t_flops / s_step:.2f} "
              f"= {1 + t_flops / s_step:.2f}")
        print(f"  break-even: the cache ({cache_seconds:.1f} s) pays for itself after "
              f"{cache_seconds / max(med['online'] - med['cached'], 1e-9):.1f} epochs")
    if not args.skip_sd:
        sd_arithmetic()


if __name__ == "__main__":
    main()
