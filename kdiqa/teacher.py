"""The contract between teachers, the feature cache and students.

A teacher maps a batch of image views to a :class:`TeacherOutput`. Feature names are the contract:
a recipe says which named teacher feature a student tap is matched to, and the cache stores features
under the same names.

Input convention for every teacher: float32 RGB in [0, 1], shape (B, 3, H, W), exactly what the view
sampler produces. Each teacher applies its own normalisation inside ``forward`` so that the cache,
the student and the teacher never disagree about pixel ranges.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class TeacherOutput:
    score: torch.Tensor  # (B,) predicted quality, normalised scale (higher = better)
    dist: torch.Tensor | None = None  # (B, K) score distribution, rows sum to 1
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, C, H, W) or (B, D)


class Teacher(nn.Module):
    """Base class for registered teachers.

    Subclasses set ``name`` (their registry name) and keep every constructor argument in
    ``self.config`` (JSON-serialisable), so that ``save_pretrained``/``load_teacher`` can rebuild the
    architecture without the recipe, as diffusers models do.
    """

    name: str = ""
    # False for a teacher trained elsewhere (a pyiqa metric, an ONNX model): ``fit_teacher`` saves it as
    # built, for the stages after it, instead of fitting it to the MOS
    needs_fitting: bool = True

    def __init__(self, **config: Any):
        super().__init__()
        self.config: dict[str, Any] = dict(config)

    def forward(self, images: torch.Tensor) -> TeacherOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def prepare(self, train_loader: Any) -> None:
        """Called once before fitting with the training loader.

        For what comes from data rather than gradients (e.g. latent statistics of a randomly
        initialised VAE); the default does nothing.
        """

    def feature_shapes(self, image_size: int | tuple[int, int]) -> dict[str, tuple[int, ...]]:
        """Shape (without batch) of each named feature at an input size; default: a dummy forward."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                device = next(self.parameters()).device
                out = self(torch.zeros(1, 3, h, w, device=device))
        finally:
            self.train(was_training)
        return {k: tuple(v.shape[1:]) for k, v in out.features.items()}


TEACHER_CONFIG = "config.json"
TEACHER_WEIGHTS = "model.safetensors"


def save_teacher(teacher: Teacher, folder: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors``: enough to rebuild the teacher without its recipe."""
    from kdiqa import __version__
    from kdiqa.io import save_weights, write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / TEACHER_WEIGHTS, teacher.state_dict(), what="the teacher's weights")
    # config last: a folder with a config always has its weights
    write_json(folder / TEACHER_CONFIG, {"teacher": teacher.name, "config": teacher.config, "kdiqa_version": __version__},
               what="the teacher's config")
    return folder


def load_teacher(folder: str | Path, map_location: str | torch.device = "cpu") -> Teacher:
    """Rebuild a saved teacher through the registry and load its weights (strictly).

    The teacher is first built on the meta device and takes the tensors read from the file as they
    are (``assign=True``), so a 4 GB teacher costs its size once, not a random initialisation plus a
    copy (:func:`kdiqa.io.read_safetensors` reads them into aligned memory: results stay bit for bit).
    A teacher that cannot be built weightless, or that keeps tensors the file does not hold
    (non-persistent buffers), is built normally and the weights are copied in.
    """
    from kdiqa.errors import CheckpointError
    from kdiqa.io import read_json, read_safetensors
    from kdiqa.registry import TEACHERS

    folder = Path(folder)
    meta = read_json(folder / TEACHER_CONFIG)
    if not isinstance(meta, dict) or "teacher" not in meta or "config" not in meta:
        raise CheckpointError(f"{folder / TEACHER_CONFIG}: not a kdiqa teacher config (needs 'teacher' and 'config')")
    TEACHERS.get(meta["teacher"])  # an unknown name is a one-line error before anything is read
    state = read_safetensors(folder / TEACHER_WEIGHTS)
    teacher = _weightless(TEACHERS, meta["teacher"], meta["config"])
    built = teacher is None
    if built:
        teacher = TEACHERS.build(meta["teacher"], **meta["config"])
    own = teacher.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or reshaped:
        raise CheckpointError(
            f"{folder / TEACHER_WEIGHTS}: weights do not match the {meta['teacher']!r} config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, of another shape {reshaped[:3]})"
        )
    if not built:
        # same dtypes as the module would have (a cast copies only the tensors that differ)
        state = {k: v.to(own[k].dtype) if v.is_floating_point() and v.dtype != own[k].dtype else v for k, v in state.items()}
        teacher.load_state_dict(state, strict=True, assign=True)
        if any(t.is_meta for t in (*teacher.parameters(), *teacher.buffers())):
            teacher, built = TEACHERS.build(meta["teacher"], **meta["config"]), True
    if built:
        teacher.load_state_dict(state, strict=True)
    return teacher.to(map_location)


def _weightless(registry: Any, name: str, config: dict[str, Any]) -> Teacher | None:
    """The teacher built on the meta device, or None when it cannot be (it then gets a normal build)."""
    try:
        with torch.device("meta"):
            return registry.build(name, **config)
    except Exception:  # e.g. a builder that reads a file into its modules; the normal build reports real errors
        return None
