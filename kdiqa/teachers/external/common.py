"""What the external teachers share: mapping a model's score onto kdiqa's scale, and named feature taps.

kdiqa's convention is one score per image, higher = better, on [0, 1] (the scale the datasets' MOS are
normalised to). An external model scores on its own scale, so each is mapped linearly:
``(raw - low) / (high - low)``, flipped (``1 - …``) when lower is better. The map is not clamped: where a
range is only nominal (pyiqa writes ``~0, ~1``), a model may step slightly outside it, and clamping
would erase the order of exactly those images; a linear map keeps order (SRCC) and linearity (PLCC).
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdiqa.errors import ConfigError

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^\s*(~?)\s*({_NUMBER})\s*,\s*(~?)\s*({_NUMBER})\s*$")


def parse_score_range(text: Any) -> tuple[float, float, bool] | None:
    """``"~0, ~1"`` → (0.0, 1.0, approximate=True); None when there is no numeric range to read.

    pyiqa's ``score_range`` is a string: two numbers, each marked ``~`` when only nominal; some metrics
    have none, an open end (``"~0, ~"``), or several ranges at once, which cannot be read as one.
    """
    if isinstance(text, (list, tuple)) and len(text) == 2:
        low, high = (float(v) for v in text)
        return (low, high, False) if math.isfinite(low) and math.isfinite(high) and high > low else None
    if not isinstance(text, str):
        return None
    match = _RANGE.match(text)
    if not match:
        return None
    low, high = float(match.group(2)), float(match.group(4))
    return (low, high, bool(match.group(1) or match.group(3))) if high > low else None


@dataclass(frozen=True)
class ScoreScale:
    """A model's score range and direction; :meth:`to_unit` maps onto kdiqa's [0, 1], higher = better."""

    low: float
    high: float
    lower_better: bool = False

    def to_unit(self, raw: torch.Tensor) -> torch.Tensor:
        unit = (raw - self.low) / (self.high - self.low)
        return 1 - unit if self.lower_better else unit

    def from_unit(self, score: torch.Tensor) -> torch.Tensor:
        unit = 1 - score if self.lower_better else score
        return self.low + unit * (self.high - self.low)

    def describe(self) -> str:
        flip = "1 - " if self.lower_better else ""
        return f"{flip}(raw - {self.low:g}) / ({self.high:g} - {self.low:g}), not clamped"


def check_range_option(at: str, value: Any) -> tuple[float, float] | None:
    """A ``score_range`` option: None, or [low, high] with low < high."""
    if value is None:
        return None
    parsed = parse_score_range(value if isinstance(value, str) else list(value) if hasattr(value, "__iter__") else None)
    if parsed is None:
        raise ConfigError(f"{at}: expected [low, high] with low < high, got {value!r}")
    return parsed[0], parsed[1]


def as_feature(name: str, value: Any, batch: int, where: str) -> torch.Tensor:
    """A tapped output as a feature kdiqa can store and match: (B, C, H, W) maps or (B, D) vectors.

    Tuples and lists give their first tensor (a module returning ``(out, attention)``); transformer
    tokens (B, N, D) become a (B, D, s, s) map when N (or N - 1, a class token first) is a square,
    else their mean (B, D).
    """
    if isinstance(value, (tuple, list)):
        value = next((v for v in value if isinstance(v, torch.Tensor)), None)
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"{where}: feature {name!r} is not a tensor (got {type(value).__name__})")
    if value.dim() == 0 or value.shape[0] != batch:
        raise ConfigError(
            f"{where}: feature {name!r} has shape {tuple(value.shape)} for a batch of {batch} (the module runs on crops "
            "or tiles of the images, or is not per image); tap a module whose output has one row per image"
        )
    if value.dim() in (2, 4):
        return value
    if value.dim() == 3:
        n = value.shape[1]
        for skip in (0, 1):
            side = math.isqrt(n - skip) if n > skip else 0
            if side and side * side == n - skip:
                return value[:, skip:].transpose(1, 2).reshape(batch, value.shape[2], side, side)
        return value.mean(1)
    raise ConfigError(f"{where}: feature {name!r} has shape {tuple(value.shape)}; kdiqa stores (B, C, H, W) maps or (B, D) vectors")


class FeatureTaps:
    """Forward hooks on named submodules of a wrapped model, collected per forward.

    Why hooks: third-party models return a score, not their intermediate maps, and their code is not
    ours to edit. Only the first call of a module in a forward is kept (a module called twice, e.g. on
    a reference image too, keeps the first).
    """

    def __init__(self, root: nn.Module, features: Mapping[str, str] | None, where: str):
        self.where = where
        self.paths = {str(k): str(v) for k, v in (features or {}).items()}
        self._seen: dict[str, Any] = {}
        self._handles = []
        names = [n for n, _ in root.named_modules() if n]
        for feature, path in self.paths.items():
            try:
                module = root.get_submodule(path)
            except AttributeError:
                close = difflib.get_close_matches(path, names, n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f" (top-level modules: {', '.join(_top(names)) or 'none'})"
                raise ConfigError(f"{where}.features.{feature}: the model has no module {path!r}{hint}") from None
            self._handles.append(module.register_forward_hook(self._hook(feature)))

    def _hook(self, feature: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self._seen.setdefault(feature, output)

        return hook

    def start(self) -> None:
        self._seen = {}

    def collect(self, batch: int) -> dict[str, torch.Tensor]:
        missing = [f for f in self.paths if f not in self._seen]
        if missing:
            raise ConfigError(f"{self.where}.features.{missing[0]}: module {self.paths[missing[0]]!r} did not run in the forward")
        out = {f: as_feature(f, self._seen[f], batch, self.where) for f in self.paths}
        self._seen = {}
        return out


def _top(names: Sequence[str]) -> list[str]:
    return sorted({n.split(".")[0] for n in names})[:12]
