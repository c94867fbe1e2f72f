"""Any no-reference pyiqa metric as a kdiqa teacher, registered as ``pyiqa``.

pyiqa (IQA-PyTorch) runs 99 IQA metrics one call at a time and distils nothing; here its model is a
teacher like DP-IQA: scored in batches through ``kdiqa cache``, distilled from (cached or online),
evaluated, benchmarked. The metric is pyiqa's own (``pyiqa.create_metric``): its input handling (the
size it expects, whether it takes any size, its normalisation) stays pyiqa's, and kdiqa hands it views
as they are, float RGB in [0, 1].

Scores: pyiqa's raw score mapped onto kdiqa's [0, 1], higher = better (:mod:`teachers.external.common`),
with the metric's ``score_range`` and ``lower_better``. pyiqa marks most ranges nominal (``~0, ~1``);
the map is linear and unclamped. A metric without a numeric range (``None``, an open end like
``~0, ~``, several ranges) needs ``score_range: [low, high]``, e.g. the raw scores' span on the
training images; a one-line error says so.

Never downloads (:mod:`teachers.external.offline`): the metric's checkpoint comes from ``weights``
(handed to pyiqa as its ``pretrained_model_path``); any other file the construction fetches (a timm
backbone, a parameter file) must already be where pyiqa and torch look: ``<hub_dir>/pyiqa/<file>``,
``<hub_dir>/checkpoints/<file>`` (``hub_dir`` defaults to torch's hub folder, ``$TORCH_HOME/hub``),
or the Hugging Face cache. Otherwise the build stops before any network access, naming the file and
the option. Weights are read with ``torch.load(weights_only=True)`` whatever pyiqa asks for.

A saved pyiqa teacher (``kdiqa fit-teacher`` saves it as built: it arrives trained) keeps its options
and the net's tensors; reloading rebuilds the metric through pyiqa, which reads the same local files
again, then takes the saved tensors.
"""
from __future__ import annotations

import contextlib
import difflib
import pickle
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from kdiqa.errors import CheckpointError, ConfigError, KdiqaError, first_line
from kdiqa.registry import TEACHERS
from kdiqa.teachers.base import Teacher, TeacherOutput
from kdiqa.teachers.external.common import FeatureTaps, ScoreScale, check_range_option, parse_score_range
from kdiqa.teachers.external.offline import Guard, MissingFileError, no_downloads

LICENCE = "PolyForm Noncommercial 1.0.0"
INSTALL_HINT = f"pip install 'kdiqa[pyiqa]' (pyiqa is licensed {LICENCE}: non-commercial use only)"
AT = "teacher.options"


def require_pyiqa() -> Any:
    """The pyiqa module, or a one-line error saying what to install."""
    try:
        import pyiqa
    except ImportError as exc:
        if exc.name == "pyiqa":
            raise KdiqaError(f"the pyiqa teacher needs pyiqa, which is not installed: {INSTALL_HINT}") from None
        raise KdiqaError(f"pyiqa is installed but cannot be imported ({first_line(exc)}): {INSTALL_HINT}") from None
    return pyiqa


def metric_config(pyiqa: Any, metric: str) -> dict[str, Any]:
    """pyiqa's default configuration of ``metric`` (mode, direction, range, architecture options)."""
    import importlib

    known = list(pyiqa.list_models())
    if metric not in known:
        close = difflib.get_close_matches(str(metric), known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else " (`kdiqa info teacher pyiqa` lists them)"
        raise ConfigError(f"{AT}.metric: pyiqa has no metric {metric!r}{hint}")
    return dict(importlib.import_module("pyiqa.default_model_configs").DEFAULT_CONFIGS[metric])


@contextlib.contextmanager
def safe_torch_load() -> Iterator[None]:
    """``torch.load`` with ``weights_only=True`` forced: pyiqa asks for full unpickling, kdiqa never allows it."""
    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def build_metric(metric: str, weights: str | None = None, metric_options: Mapping[str, Any] | None = None,
                 hub_dir: str | None = None) -> Any:
    """``pyiqa.create_metric`` on the CPU with downloads stopped and weights read safely (see the module docstring)."""
    pyiqa = require_pyiqa()
    cfg = metric_config(pyiqa, metric)
    if cfg.get("metric_mode") != "NR":
        raise ConfigError(f"{AT}.metric: pyiqa metric {metric!r} is {cfg.get('metric_mode')} (it compares with a reference image); a teacher must be no-reference (NR)")
    opts = dict(metric_options or {})
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{AT}.weights: {path}: file not found")
        if "pretrained_model_path" in opts:
            raise ConfigError(f"{AT}: give the checkpoint once, as weights or as metric_options.pretrained_model_path")
        opts["pretrained_model_path"] = str(path)
    hub = Path(hub_dir).expanduser() if hub_dir else Path(torch.hub.get_dir())
    guard = Guard(owner=f"pyiqa metric {metric!r}", hub_dir=hub, main_hint=None if weights else f"{AT}.weights")
    try:
        with no_downloads(guard), safe_torch_load(), contextlib.redirect_stdout(sys.stderr):
            return pyiqa.create_metric(metric, as_loss=False, device=torch.device("cpu"), **opts)
    except KdiqaError:
        raise
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{AT}.weights: {opts.get('pretrained_model_path')} holds more than tensors and kdiqa reads weights with "
            f"torch.load(weights_only=True) only ({first_line(exc)}); re-save its state dict"
        ) from None
    except TypeError as exc:
        if "argument" in str(exc):
            raise ConfigError(f"{AT}.metric_options: pyiqa metric {metric!r} does not take them ({first_line(exc)})") from None
        raise CheckpointError(f"pyiqa could not build metric {metric!r} ({first_line(exc)})") from None
    except Exception as exc:  # a third-party constructor raises anything; the user needs one line
        hint = ""
        if "hugging" in str(exc).lower() or "offline" in str(exc).lower():  # transformers, with the hub offline
            hint = "; kdiqa keeps the Hugging Face hub offline: the files it needs must be in the local Hugging Face cache"
        raise CheckpointError(f"pyiqa could not build metric {metric!r} ({first_line(exc)}){hint}") from None


@TEACHERS.register("pyiqa")
class PyIQATeacher(Teacher):
    """A pyiqa metric as a teacher. Options (``teacher.options``):

      metric          a pyiqa no-reference metric name (``kdiqa info teacher pyiqa`` lists them)
      weights         the metric's checkpoint, a local .pth (pyiqa's ``pretrained_model_path``)
      metric_options  more pyiqa architecture options, e.g. ``{backbone_pretrain: false}`` for TOPIQ
                      when ``weights`` holds the whole network
      features        ``{name: module path in the metric's net}``: intermediate outputs tapped by
                      forward hooks, stored and matched like DP-IQA's ``quality_map``
      hub_dir         where pyiqa/torch look for other files (default: torch's hub folder)
      score_range     ``[low, high]`` of the raw score, when pyiqa's is missing or to override it
      lower_better    override pyiqa's direction
    """

    name = "pyiqa"
    needs_fitting = False

    def __init__(
        self,
        metric: str = "",
        weights: str | None = None,
        metric_options: dict[str, Any] | None = None,
        features: dict[str, str] | None = None,
        hub_dir: str | None = None,
        score_range: list[float] | None = None,
        lower_better: bool | None = None,
    ):
        if torch.empty(0).device.type == "meta":
            # from_pretrained tries a weightless build first; this builder reads files, so it needs a real one
            raise RuntimeError("a pyiqa teacher is built on a real device")
        if not metric:
            raise ConfigError(f"{AT}.metric: name a pyiqa metric, e.g. topiq_nr (`kdiqa info teacher pyiqa` lists them)")
        rng = check_range_option(f"{AT}.score_range", score_range)
        super().__init__(
            metric=str(metric), weights=str(weights) if weights else None, metric_options=dict(metric_options or {}),
            features={str(k): str(v) for k, v in (features or {}).items()}, hub_dir=str(hub_dir) if hub_dir else None,
            score_range=list(rng) if rng else None, lower_better=lower_better,
        )
        self.metric = build_metric(metric, weights, metric_options, hub_dir)
        self.metric.requires_grad_(False)
        self.metric.eval()
        direction = bool(self.metric.lower_better) if lower_better is None else bool(lower_better)
        if rng is None:
            parsed = parse_score_range(getattr(self.metric, "score_range", None))
            if parsed is None:
                raise ConfigError(
                    f"{AT}.score_range: pyiqa metric {metric!r} gives no numeric score range "
                    f"({getattr(self.metric, 'score_range', None)!r}); set [low, high] of its raw scores, e.g. their span on the training images"
                )
            rng = parsed[:2]
        self.scale = ScoreScale(float(rng[0]), float(rng[1]), direction)
        self.taps = FeatureTaps(self.metric.net, features, AT)

    def train(self, mode: bool = True) -> PyIQATeacher:
        super().train(mode)
        self.metric.eval()  # a ready-made model: dropout and batch statistics stay in inference mode
        return self

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        batch = images.shape[0]
        x = images.float().clamp(0, 1)  # pyiqa refuses values outside [0, 1]; resampling may overshoot by an ulp
        self.taps.start()
        raw = self.metric(x)
        if isinstance(raw, (tuple, list)):
            raw = raw[0]
        raw = torch.as_tensor(raw, device=images.device).float()
        if raw.numel() != batch:
            raise KdiqaError(f"pyiqa metric {self.config['metric']!r} returned {tuple(raw.shape)} scores for {batch} images")
        return TeacherOutput(score=self.scale.to_unit(raw.reshape(batch)), features=self.taps.collect(batch))

    def raw_score(self, score: torch.Tensor) -> torch.Tensor:
        """kdiqa's [0, 1] score back on the metric's own scale."""
        return self.scale.from_unit(score)

    @staticmethod
    def describe(metric: str | None = None) -> dict[str, Any]:
        """For ``kdiqa info teacher pyiqa [--metric NAME]``: the NR metrics, or one metric's facts."""
        return describe(metric)


def describe(metric: str | None = None) -> dict[str, Any]:
    """pyiqa's no-reference metrics; with ``metric``, its direction, range, kdiqa's mapping, files and modules.

    The metric is built as pyiqa configures it by default, under the same no-download guard as a
    teacher: ``offline_build`` says whether that works on this machine, or names the missing file.
    """
    pyiqa = require_pyiqa()
    if metric is None:
        return {"teacher": "pyiqa", "pyiqa_version": getattr(pyiqa, "__version__", "?"), "licence": LICENCE,
                "no_reference_metrics": sorted(pyiqa.list_models(metric_mode="NR")),
                "options": ["metric", "weights", "metric_options", "features", "hub_dir", "score_range", "lower_better"]}
    cfg = metric_config(pyiqa, metric)
    parsed = parse_score_range(cfg.get("score_range"))
    lower = bool(cfg.get("lower_better", False))
    info: dict[str, Any] = {
        "metric": metric,
        "mode": cfg.get("metric_mode"),
        "lower_better": lower,
        "score_range": cfg.get("score_range"),
        "kdiqa_score": ScoreScale(parsed[0], parsed[1], lower).describe() if parsed else "unknown range: set teacher.options.score_range",
        "architecture_options": dict(cfg.get("metric_opts", {})),
        "usable_as_teacher": cfg.get("metric_mode") == "NR",
    }
    try:
        built = build_metric(metric) if info["usable_as_teacher"] else None
    except MissingFileError as exc:
        info["offline_build"] = f"needs a file: {exc}"
    except KdiqaError as exc:
        info["offline_build"] = f"fails: {exc}"
    else:
        if built is not None:
            info["offline_build"] = "ok (files found locally)"
            info["parameters"] = sum(p.numel() for p in built.net.parameters())
            info["modules"] = {n: type(m).__name__ for n, m in built.net.named_children()}
    arch = sys.modules.get(_arch_module(cfg))
    urls = getattr(arch, "default_model_urls", None) if arch is not None else None
    if isinstance(urls, dict):
        info["released_checkpoints"] = {str(k): str(v).rsplit("/", 1)[-1] for k, v in urls.items()}
    return info


def _arch_module(cfg: Mapping[str, Any]) -> str:
    """The module pyiqa registered the metric's architecture from (after a build attempt imported it)."""
    arch_type = cfg.get("metric_opts", {}).get("type", "")
    registry = getattr(sys.modules.get("pyiqa.utils.registry"), "ARCH_REGISTRY", None)
    try:
        return registry.get(arch_type).__module__ if registry is not None else ""
    except Exception:  # noqa: BLE001 - only for the description
        return ""
