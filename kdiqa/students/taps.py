"""Any timm model as a list of feature maps ("taps"), fed kdiqa's [0, 1] images.

The wrapper owns the backbone's input normalisation (timm's ``pretrained_cfg`` mean/std) so that a
student, like a teacher, takes the view sampler's [0, 1] tensors and nobody has to remember which
backbone wanted which statistics. Weights only ever come from a local file: the backbone is created
with ``pretrained=False`` and the hub is switched off.
"""
from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm imports huggingface_hub: never reach the hub

import timm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import kdiqa.students.small_cnn  # noqa: E402,F401  (registers kdiqa_cnn_* in timm before any name lookup)
from kdiqa.errors import CheckpointError, ConfigError  # noqa: E402
from kdiqa.io import load_weights  # noqa: E402

# Prefixes a backbone state dict may carry when it was saved from a wrapper rather than timm itself.
_WRAPPER_PREFIXES = ("module.", "taps.backbone.", "backbone.", "model.")


def create_backbone(name: str, out_indices: Sequence[int] | None = None, drop_path_rate: float = 0.0) -> nn.Module:
    """``timm.create_model(name, features_only=True, pretrained=False)``, with a one-line error for a bad name."""
    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown timm backbone {name!r}{hint} (timm.list_models() lists them)")
    os.environ["HF_HUB_OFFLINE"] = "1"
    kwargs: dict = {"features_only": True, "pretrained": False}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(int(i) for i in out_indices)
    if drop_path_rate:
        kwargs["drop_path_rate"] = float(drop_path_rate)
    try:
        return timm.create_model(name, **kwargs)
    except (AssertionError, IndexError) as exc:  # timm asserts on out-of-range feature indices
        raise ConfigError(f"backbone {name!r}: cannot build features for out_indices={out_indices} ({exc})") from None
    except RuntimeError as exc:
        if "features_only" in str(exc) or "feature" in str(exc):
            raise ConfigError(f"backbone {name!r} does not support features_only: {exc}") from None
        raise


class Taps(nn.Module):
    """Normalise [0, 1] images with the backbone's own statistics, return its feature maps (a list)."""

    def __init__(self, backbone: str, out_indices: Sequence[int] | None = None, drop_path_rate: float = 0.0):
        super().__init__()
        self.backbone_name = backbone
        self.backbone = create_backbone(backbone, out_indices, drop_path_rate)
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean = cfg.get("mean", (0.485, 0.456, 0.406))
        std = cfg.get("std", (0.229, 0.224, 0.225))
        # not persistent: they follow from the backbone name, so saved weights stay backbone-only
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        info = self.backbone.feature_info
        self.channels: list[int] = list(info.channels())
        self.reductions: list[int] = list(info.reduction())

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(self.normalize(images)))

    @torch.no_grad()
    def shapes(self, image_size: int | Sequence[int]) -> list[tuple[int, int, int]]:
        """(C, H, W) of every tap at an input size, by a dummy forward (exact, whatever the padding rules)."""
        h, w = _hw(image_size)
        was_training = self.training
        self.eval()
        try:
            device = self.mean.device
            taps = self(torch.zeros(1, 3, h, w, device=device))
        finally:
            self.train(was_training)
        return [tuple(int(s) for s in t.shape[1:]) for t in taps]  # type: ignore[misc]

    def load_pretrained(self, path: str | os.PathLike) -> dict[str, int]:
        """Load a local weights file into the backbone, tolerantly; returns the counts it warned about.

        Accepts a full timm classifier's state dict as well as one saved from a features-only
        backbone or a student: names are matched after dropping wrapper prefixes and treating ``_``
        and ``.`` alike (timm's feature wrappers rename ``stages.0`` to ``stages_0``).
        """
        path = Path(path)
        state = load_weights(path)
        own = self.backbone.state_dict()
        lookup = _canonical_lookup(own)
        matched: dict[str, torch.Tensor] = {}
        unexpected, wrong_shape = [], []
        for key, value in state.items():
            target = _match_key(key, own, lookup)
            if target is None or not isinstance(value, torch.Tensor):
                unexpected.append(key)
            elif tuple(value.shape) != tuple(own[target].shape):
                wrong_shape.append(key)
            else:
                matched[target] = value
        if not matched:
            raise CheckpointError(
                f"{path}: no tensor matches backbone {self.backbone_name!r} "
                f"(file has e.g. {list(state)[:2]}, backbone expects e.g. {list(own)[:2]})"
            )
        missing = [k for k in own if k not in matched]
        self.backbone.load_state_dict(matched, strict=False)
        counts = {"loaded": len(matched), "missing": len(missing), "unexpected": len(unexpected), "wrong_shape": len(wrong_shape)}
        problems = [
            f"{len(keys)} {what} (e.g. {keys[:2]})"
            for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (wrong_shape, "of another shape"))
            if keys
        ]
        if problems:
            warnings.warn(
                f"{path}: loaded {len(matched)} of {len(own)} tensors into backbone {self.backbone_name!r}; "
                + ", ".join(problems),
                stacklevel=3,
            )
        return counts


def _hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = (int(s) for s in image_size)
    return h, w


def _canonical(key: str) -> str:
    return key.replace("_", ".")


def _canonical_lookup(own: dict[str, torch.Tensor]) -> dict[str, str]:
    """Canonical name → backbone name; names that collide after canonicalisation are left out."""
    lookup: dict[str, str] = {}
    clashes: set[str] = set()
    for key in own:
        for variant in {key, key[len("model."):] if key.startswith("model.") else key}:
            canon = _canonical(variant)
            if canon in lookup and lookup[canon] != key:
                clashes.add(canon)
            lookup[canon] = key
    for canon in clashes:
        del lookup[canon]
    return lookup


def _match_key(key: str, own: dict[str, torch.Tensor], lookup: dict[str, str]) -> str | None:
    if key in own:
        return key
    candidates = [key]
    stripped = key
    for prefix in _WRAPPER_PREFIXES:
        if stripped.startswith(prefix):
            stripped = stripped[len(prefix):]
            candidates.append(stripped)
    for candidate in candidates:
        if candidate in own:
            return candidate
        hit = lookup.get(_canonical(candidate))
        if hit is not None:
            return hit
    return None
