"""The recipe schema: every key a recipe may set, its type and its default.

The validation rule: a recipe value is validated once, here, by the ``check(at)`` method of its
section, which the loader calls with the key path ``at`` that reached it; so a bad value fails when the
recipe is loaded, before any stage runs, in one line naming its key (a rule that joins two sections:
``Recipe.check_across``, after every section passed its own). Code that receives a config
dataclass trusts it. OmegaConf checks types and unknown keys; ``check`` checks what types cannot
express (choices, ranges, keys that must agree). Options a recipe passes as a free dict to a registered
builder (``teacher.options``, ``student.options``, ``data.options``) are validated by that builder only.
Choice lists live here, the lowest layer, and the code that implements the choices imports them.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from kdiqa.errors import ConfigError

PROJECTOR_KINDS = ("official", "conv")  # distill.features[].kind, and student.options.projectors[].kind


def check_choice(path: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, choices))}")


def _positive(path: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{path}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass
class SplitConfig:
    policy: str = "auto"  # auto: the dataset's official split if it has one, else random
    ratios: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    seed: int = 0
    repeat: int = 0  # index of the repeated random split (the field reports the median over N)

    def check(self, at: str) -> None:
        check_choice(f"{at}.policy", self.policy, ("auto", "official", "random"))
        ratios = list(self.ratios)
        why = ("not three numbers" if len(ratios) != 3
               else "each must be finite and >= 0" if not all(math.isfinite(r) and r >= 0 for r in ratios)
               else f"they must sum to 1, not {sum(ratios):g}" if abs(sum(ratios) - 1) > 1e-6
               else "that gives nothing to train on" if ratios[0] == 0 else "")
        if why:
            raise ConfigError(f"{at}.ratios: need three non-negative train/val/test ratios summing to 1, got {ratios} ({why})")
        _positive(f"{at}.seed", self.seed, allow_zero=True)
        _positive(f"{at}.repeat", self.repeat, allow_zero=True)


@dataclass
class UnlabelledConfig:
    """An unlabelled image pool: the teacher labels it, the KD student trains on it (kdiqa/data/unlabelled.py).

    Give at most one source; none (the default) means no pool.
    """

    folder: str | None = None  # a folder of images, searched recursively (.jpg, .png, .webp, .tif, ...)
    csv: str | None = None  # a CSV file with a `path` column (other columns are ignored)
    root: str | None = None  # base folder of the CSV's relative paths (default: the CSV's folder)
    mini: int = 0  # data.name mini only: this many extra unlabelled images made from the training photographs

    @property
    def enabled(self) -> bool:
        return bool(self.folder or self.csv or self.mini)

    def check(self, at: str) -> None:
        given = [key for key in ("folder", "csv", "mini") if getattr(self, key)]
        if len(given) > 1:
            raise ConfigError(f"{at}: give one pool source, not {' and '.join(given)}")
        _positive(f"{at}.mini", self.mini, allow_zero=True)
        if self.root is not None and not self.csv:
            raise ConfigError(f"{at}.root: only used with {at}.csv (the base folder of its relative paths)")


@dataclass
class DataConfig:
    name: str = MISSING  # a registered dataset: `kdiqa info datasets`
    root: str | None = None  # the dataset's folder as the publisher ships it
    on_bad_row: str = "error"
    options: dict[str, Any] = field(default_factory=dict)  # passed to the dataset loader
    split: SplitConfig = field(default_factory=SplitConfig)
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int = 0
    shuffle: bool = True  # shuffle training samples each epoch (off: fixed order, e.g. to compare runs)
    unlabelled: UnlabelledConfig = field(default_factory=UnlabelledConfig)  # an extra pool for distillation only

    def check(self, at: str) -> None:
        check_choice(f"{at}.on_bad_row", self.on_bad_row, ("error", "skip"))
        if self.unlabelled.mini and self.name != "mini":
            raise ConfigError(f"{at}.unlabelled.mini: extra crops exist only for {at}.name: mini (got {self.name!r}); "
                              "give another dataset's pool as unlabelled.folder or unlabelled.csv")
        _positive(f"{at}.batch_size", self.batch_size)
        _positive(f"{at}.eval_batch_size", self.eval_batch_size)
        _positive(f"{at}.num_workers", self.num_workers, allow_zero=True)


@dataclass
class ViewConfig:
    """How an image becomes a model input; the cache replays exactly these views for the student."""

    size: int = 64  # square side in pixels after crop + resize
    train_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # crop area fraction range
    train_ratio: list[float] = field(default_factory=lambda: [1.0, 1.0])  # crop aspect range
    flip: bool = True  # random horizontal flip for training views

    def check(self, at: str) -> None:
        _positive(f"{at}.size", self.size)
        for key in ("train_scale", "train_ratio"):
            lo_hi = list(getattr(self, key))
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] < math.inf:
                raise ConfigError(f"{at}.{key}: need finite [low, high] with 0 < low <= high, got {lo_hi}")
        if self.train_scale[1] > 1:
            raise ConfigError(f"{at}.train_scale: the high end must be <= 1, got {self.train_scale[1]}")


@dataclass
class LossTerm:
    name: str = MISSING  # a registered loss: `kdiqa info losses`
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    # in fit.losses, the model output a term compares with its label: the score with the MOS, or the
    # score distribution with the dataset's (AVA vote histograms; NIMA's EMD). Not called `on`: YAML
    # reads that key as the boolean true.
    output: str = "score"

    def check(self, at: str) -> None:
        check_choice(f"{at}.output", self.output, ("score", "dist"))


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    scheduler: str = "none"
    milestones: list[int] = field(default_factory=list)  # epochs, for multistep
    gamma: float = 0.2  # multistep decay (official DP-IQA: 0.2)
    warmup_epochs: int = 0

    def check(self, at: str) -> None:
        check_choice(f"{at}.name", self.name, ("adam", "adamw", "sgd"))
        check_choice(f"{at}.scheduler", self.scheduler, ("none", "multistep", "cosine"))
        _positive(f"{at}.lr", self.lr)
        _positive(f"{at}.weight_decay", self.weight_decay, allow_zero=True)


# what Lightning's Trainer(precision=...) accepts (lightning_fabric.connector._PRECISION_INPUT), as text
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "16", "bf16", "64")


@dataclass
class TrainerConfig:
    """Passed to ``lightning.Trainer``: the Trainer owns loops, devices, precision and checkpoints."""

    max_epochs: int = 30
    max_steps: int = -1
    max_time: str | None = None  # "DD:HH:MM:SS", a wall-clock budget
    accelerator: str = "auto"
    devices: Any = "auto"  # per node; under SLURM, srun's --ntasks-per-node must equal it
    num_nodes: int = 1  # machines of a multi-node run (DDP over devices × num_nodes processes)
    strategy: str = "auto"
    precision: str = "32-true"  # "16-mixed" / "bf16-mixed" on a GPU
    check_val_every_n_epoch: int = 1
    val_check_interval: Any = None  # a fraction of an epoch (float) or a number of training steps (int)
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = None
    limit_train_batches: float | None = None
    limit_val_batches: float | None = None
    logger: str = "csv"
    progress_bar: bool = True
    deterministic: bool = False
    sync_batchnorm: bool = False  # under DDP, BatchNorm statistics over the global batch

    def check(self, at: str) -> None:
        check_choice(f"{at}.logger", self.logger, ("csv", "tensorboard", "none"))
        check_choice(f"{at}.precision", str(self.precision), PRECISIONS)  # else a Lightning traceback deep in the run
        _positive(f"{at}.log_every_n_steps", self.log_every_n_steps)
        _positive(f"{at}.num_nodes", self.num_nodes)


@dataclass
class FitConfig:
    """Training a model on MOS labels (a teacher, or a label-only student)."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    losses: list[LossTerm] = field(default_factory=lambda: [LossTerm(name="mse")])
    monitor: str = "val/srcc"  # the validation metric that picks the checkpoint (never test)
    batch_size: int | None = None  # training batch for this model (default: data.batch_size)
    trainer: dict[str, Any] = field(default_factory=dict)  # overrides of the top-level trainer section

    def check(self, at: str) -> None:
        check_choice(f"{at}.monitor", self.monitor, ("val/srcc", "val/plcc", "val/krcc", "val/loss"))
        if self.trainer:  # a stage's trainer overrides, checked at load like the trainer section itself
            valid = sorted(f.name for f in dataclasses.fields(TrainerConfig))
            unknown = [str(k) for k in self.trainer if k not in valid]
            if unknown:
                close = difflib.get_close_matches(unknown[0], valid, n=1)
                hint = f"; did you mean '{at}.trainer.{close[0]}'?" if close else ""
                raise ConfigError(f"unknown key '{at}.trainer.{unknown[0]}'{hint}")
            dataclasses.replace(TrainerConfig(), **dict(self.trainer)).check(f"{at}.trainer")


@dataclass
class TeacherConfig:
    name: str = "dpiqa"  # a registered teacher: `kdiqa info teachers`
    options: dict[str, Any] = field(default_factory=dict)  # passed to the teacher's builder
    checkpoint: str | None = None  # a saved kdiqa teacher folder; given → no fitting needed
    fit: FitConfig = field(default_factory=FitConfig)
    # torch CPU threads while the teacher scores (eval and cache stages; null: the recipe's `threads`). A
    # teacher's forward pass uses every core, while a small student trains faster on one thread with loader
    # workers on the others; CPU convolutions give the same results on any number of threads.
    threads: int | None = None

    def check(self, at: str) -> None:
        if self.threads is not None:
            _positive(f"{at}.threads", self.threads)


# cache.dtype: how feature maps are stored (int8: one byte per value plus a scale and zero point per view and
# channel, kdiqa/cache/quantize.py); cache.precision: the teacher's forward pass when caching (autocast)
CACHE_DTYPES = ("float16", "float32", "int8")
CACHE_PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class CacheConfig:
    """Teacher outputs precomputed per (image, view) into HDF5; see kdiqa/cache."""

    path: str | None = None  # default: <run folder>/cache/teacher.h5
    views_per_image: int = 4
    first_view_eval: bool = True  # view 0 is the plain evaluation view
    features: list[str] = field(default_factory=lambda: ["quality_map"])
    pool: dict[str, int] = field(default_factory=dict)  # adaptive average pooling per feature: size (or [height, width])
    dtype: str = "float16"  # of the stored feature maps: float16, float32 or int8 (scores stay float32)
    compression: str = "none"
    precision: str = "fp32"  # the teacher's forward when caching: fp32, or bf16/fp16 autocast (other targets)
    batch_size: int = 64
    epoch_views: str = "random"  # per epoch: one random cached view per image, or "all" of them

    def check(self, at: str) -> None:
        _positive(f"{at}.views_per_image", self.views_per_image)
        for name, size in self.pool.items():  # which names it may hold is the cache's to say (kdiqa.cache.spec)
            pair = list(size) if isinstance(size, (list, tuple)) else [size, size]
            if len(pair) != 2 or not all(type(v) is int and v > 0 for v in pair):
                raise ConfigError(f"{at}.pool.{name}: need a positive int or [height, width], got {size!r}")
        check_choice(f"{at}.dtype", self.dtype, CACHE_DTYPES)
        check_choice(f"{at}.precision", self.precision, CACHE_PRECISIONS)
        check_choice(f"{at}.compression", self.compression, ("none", "lzf", "gzip"))
        check_choice(f"{at}.epoch_views", self.epoch_views, ("random", "all"))
        _positive(f"{at}.batch_size", self.batch_size)


@dataclass
class StudentConfig:
    name: str = "timm"  # a registered student: `kdiqa info students`
    options: dict[str, Any] = field(default_factory=lambda: {"backbone": "resnet18"})  # backbone, head, pretrained, ...


@dataclass
class FeaturePair:
    """One feature-matching term: student tap → projector → teacher feature, compared by a loss."""

    target: str = MISSING  # the teacher feature name, e.g. quality_map or unet.up_blocks.2
    tap: int = -1  # which student feature map (index into its taps)
    kind: str = "conv"  # projector: "official" (DP-IQA ConvTranspose) or "conv"
    loss: str = "mse"
    weight: float = 1.0

    def check(self, at: str) -> None:
        check_choice(f"{at}.kind", self.kind, PROJECTOR_KINDS)
        _positive(f"{at}.weight", self.weight, allow_zero=True)


@dataclass
class DistillConfig:
    source: str = "cache"  # teacher targets from the cache, or from the teacher run online (no_grad)
    teacher_score: list[LossTerm] = field(default_factory=lambda: [LossTerm(name="mse")])  # student ↔ teacher score
    features: list[FeaturePair] = field(default_factory=list)
    dist: list[LossTerm] = field(default_factory=list)  # student ↔ teacher score distribution
    fit: FitConfig = field(default_factory=FitConfig)  # label losses, optimiser, monitor, trainer overrides (KD and baseline)
    # with data.unlabelled: the share of every KD training batch drawn from the pool (null: the pool and the
    # labelled training set are shuffled together, so each batch holds them in their natural proportion)
    unlabelled_fraction: float | None = None

    def check(self, at: str) -> None:
        check_choice(f"{at}.source", self.source, ("cache", "online"))
        if self.unlabelled_fraction is not None and not 0 <= self.unlabelled_fraction <= 1:
            raise ConfigError(f"{at}.unlabelled_fraction: must be in [0, 1] (or null), got {self.unlabelled_fraction!r}")
        for i, term in enumerate(self.fit.losses):
            if term.output != "score":  # cached views carry the label score only; KD and baseline must agree
                raise ConfigError(
                    f"{at}.fit.losses[{i}].output: only 'score' labels are used in distillation "
                    f"(got {term.output!r}); compare distributions with the teacher's through {at}.dist"
                )
        for key in ("teacher_score", "dist"):
            for i, term in enumerate(getattr(self, key)):
                if term.output != "score":
                    raise ConfigError(f"{at}.{key}[{i}].output: has no meaning here (it is for fit.losses); remove it")


@dataclass
class Recipe:
    base: list[str] = field(default_factory=list)  # recipes merged first, in order
    name: str = "run"
    seed: int = 0
    # torch intra-op CPU threads (null: torch's default, one per core). Small models on few cores run
    # faster with 1 thread and DataLoader workers on the other cores (measured 2-4x here).
    threads: int | None = None
    out: str = "runs/${name}"
    stages: list[str] = field(default_factory=list)  # what `kdiqa run` chains
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def check_across(self) -> None:
        """Rules that join two sections (run after every section's own check)."""
        if self.distill.unlabelled_fraction is not None and not self.data.unlabelled.enabled:
            raise ConfigError("distill.unlabelled_fraction: set, but the recipe has no unlabelled pool (data.unlabelled)")
