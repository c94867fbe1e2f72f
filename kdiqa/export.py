"""Export a saved student to ONNX or TorchScript, and keep the file only if it scores like PyTorch.

What the exported graph is: ``images`` float32 (B, 3, H, W), RGB in [0, 1] → ``score`` (B,), plus
``dist`` (B, K) for a distribution head. Taps and projected features are left out: only the path the
head reads is traced (the backbone, and the projector an ``official_mlp`` head scores from).

Preprocessing: the *normalisation* (the backbone's timm mean/std) is inside the graph, because the
student applies it in its own forward. The *resize* is not: a caller must render the whole image,
uncropped, to the exported size (bilinear, as kdiqa's eval view does) and scale pixels to [0, 1]. That
input convention is written to a JSON sidecar ``<file>.json`` and embedded in the file itself (ONNX
metadata ``kdiqa``, TorchScript extra file ``kdiqa.json``), so ``kdiqa predict --model FILE`` needs
nothing else. Spatial size is fixed; the batch axis is fixed (``batch_size``) unless ``dynamic_batch``.

Why a parity check: exporters silently bake shapes or change op semantics. Before the file replaces
anything at ``out``, the exported model and the PyTorch student score random images and a few real
photographs (scikit-image's, resized as predict does); a max absolute difference above ``tolerance``
(1e-4, fp32) raises :class:`ExportError` and nothing is written. Without onnxruntime an ONNX export is
still written but not verified, with a warning saying so; TorchScript needs nothing extra.

ONNX exporters: ``legacy`` (default; torch's TorchScript-based exporter — deprecated by torch but fast
and needing only ``onnx``) or ``dynamo`` (torch.export-based; needs ``onnxscript``, slower to export).

Reduced precision (ONNX only): ``precision="int8"`` (static quantization, calibrated on the training
views a recipe names) or ``"fp16"`` (:mod:`kdiqa.quantize`, :mod:`kdiqa.calibration`). The float graph
is exported and parity-checked first, as above, so an exporter fault is never blamed on quantization;
then the converted file's *accuracy* is checked: SRCC/PLCC against MOS of the float student and of the
file on the recipe's held-out split, written to the sidecar (``accuracy``). A file whose SRCC moves by
more than ``max_srcc_drop`` is refused like a failed parity check — nothing is written, exit 2 — unless
``force``, which writes it with ``accuracy.passed: false``. Why refuse by default: exports run in
deploy pipelines, where a non-zero exit stops a bad model and a flag in a JSON file is easily shipped
unread; whoever accepts the loss says so with ``--force``, and the sidecar keeps the figures.
"""
from __future__ import annotations

import json
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdiqa import __version__
from kdiqa.calibration import (
    DEFAULT_CALIBRATION,
    MAX_SRCC_DROP,
    CalibrationViews,
    accuracy_check,
    find_export_data,
    heldout_images,
)
from kdiqa.data.views import ViewSampler
from kdiqa.errors import KdiqaError, first_line
from kdiqa.exported import INSTALL_HINT, METADATA_KEY, TORCHSCRIPT_METADATA, OnnxModel, TorchScriptModel, sidecar_path
from kdiqa.io import atomic_path, write_json
from kdiqa.quantize import convert_fp16, quantize_int8
from kdiqa.students.base import Student

FORMATS = ("onnx", "torchscript")
EXPORTERS = ("legacy", "dynamo")
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
REDUCED_NAMES = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
CALIBRATION_BATCH = 8  # views per calibration run of a dynamic-batch graph
DEFAULT_OPSET = {"legacy": 17, "dynamo": 18}
TOLERANCE = 1e-4
PARITY_BATCHES = (1, 7)  # dynamic-batch graphs are checked at both: one image, and an odd batch
REAL_IMAGES = ("astronaut", "camera", "coffee", "chelsea")  # shipped inside scikit-image's wheel


class ExportError(KdiqaError):
    """An export that cannot be made or does not reproduce the PyTorch student."""


class ScoreGraph(nn.Module):
    """The student's inference path only: backbone taps → (the projector its head reads) → head.

    Returns a tuple so exporters see plain tensors: ``(score,)`` or ``(score, dist)``.
    """

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student
        source = getattr(student.head, "source", None)  # the official head scores a projected feature
        specs = student.config.get("projectors") or []
        self.needed = [(i, spec["tap"], spec["target"]) for i, spec in enumerate(specs) if spec["target"] == source]
        self.has_dist = student.config.get("head") == "dist"

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        taps = self.student.taps(images)
        features = {target: self.student.projectors[i](taps[tap]) for i, tap, target in self.needed}
        out = self.student.head(taps[-1], features)
        return (out["score"], out["dist"]) if self.has_dist else (out["score"],)


def export_student(
    checkpoint: str | Path,
    fmt: str = "onnx",
    out: str | Path | None = None,
    dynamic_batch: bool = False,
    batch_size: int = 1,
    opset: int | None = None,
    exporter: str = "legacy",
    tolerance: float = TOLERANCE,
    precision: str = "fp32",
    recipe: str | Path | None = None,
    calibration: int = DEFAULT_CALIBRATION,
    check_split: str = "test",
    max_srcc_drop: float = MAX_SRCC_DROP,
    force: bool = False,
) -> dict[str, Any]:
    """Export the student saved in ``checkpoint``, verify it, write it and its JSON sidecar; returns the sidecar dict.

    ``precision`` ``fp16``/``int8`` (ONNX): see the module docstring; ``recipe`` (default: the student's run
    folder's) names the ``calibration`` training views (int8) and the held-out ``check_split``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"export: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if exporter not in EXPORTERS:
        raise ExportError(f"export: unknown ONNX exporter {exporter!r} (choose from {', '.join(EXPORTERS)})")
    if precision not in PRECISIONS:
        raise ExportError(f"export: unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision != "fp32" and fmt != "onnx":
        raise ExportError(f"export: {precision} needs --format onnx (TorchScript files are exported in float32)")
    if batch_size < 1:
        raise ExportError(f"export: batch size must be at least 1, got {batch_size}")
    if not tolerance >= 0:
        raise ExportError(f"export: tolerance must be a non-negative number, got {tolerance}")
    if not max_srcc_drop >= 0:
        raise ExportError(f"export: the largest SRCC change allowed must be a non-negative number, got {max_srcc_drop}")
    if fmt == "onnx":
        _require_onnx(exporter)
    if precision != "fp32":
        _require_onnxruntime(precision)
    student = Student.from_pretrained(checkpoint).float()
    out = Path(out) if out is not None else Path(checkpoint) / (REDUCED_NAMES.get(precision) or DEFAULT_NAMES[fmt])
    size = _hw(student.config["image_size"])
    graph = ScoreGraph(student).eval()
    outputs = ["score", "dist"] if graph.has_dist else ["score"]
    meta: dict[str, Any] = {
        "format": fmt,
        "precision": precision,
        "kdiqa_version": __version__,
        "torch_version": torch.__version__,
        "source": str(checkpoint),
        "student": {k: student.config.get(k) for k in ("backbone", "head", "image_size", "num_bins", "pool")},
        "input": {
            "name": "images",
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB",
            "range": [0.0, 1.0],
            "size": list(size),
            "batch": None if dynamic_batch else int(batch_size),
            "resize": "whole image, no crop, bilinear to size (kdiqa's eval view); done by the caller",
            "normalization": "inside the graph (the backbone's timm mean/std)",
            "mean": [round(v, 6) for v in student.taps.mean.flatten().tolist()],
            "std": [round(v, 6) for v in student.taps.std.flatten().tolist()],
        },
        "outputs": {name: (["batch"] if name == "score" else ["batch", int(student.config["num_bins"])]) for name in outputs},
    }
    if fmt == "onnx":
        meta["onnx"] = {"exporter": exporter, "opset": int(opset or DEFAULT_OPSET[exporter])}

    batches = parity_inputs(size, None if dynamic_batch else batch_size)
    if precision != "fp32":
        def write_float(path: Path) -> None:
            _export_onnx(graph, path, size, outputs, dynamic_batch, batch_size, meta, exporter)

        calibration_batch = (CALIBRATION_BATCH, False) if dynamic_batch else (batch_size, True)  # (size, padded)
        return _export_reduced(student, write_float, checkpoint, out, meta, batches, tolerance, calibration_batch,
                               recipe, calibration, check_split, max_srcc_drop, force)
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            _export_onnx(graph, tmp, size, outputs, dynamic_batch, batch_size, meta, exporter)
        else:
            _export_torchscript(graph, tmp, size, dynamic_batch, batch_size, meta)
        meta["parity"] = check_parity(student, tmp, fmt, batches, tolerance, out)
        _write_meta(tmp, fmt, meta)
    write_json(sidecar_path(out), meta)
    meta["path"] = str(out)
    return meta


def _export_reduced(student: Student, write_float: Callable[[Path], None], checkpoint: str | Path, out: Path,
                    meta: dict[str, Any], batches: list[tuple[str, torch.Tensor]], tolerance: float,
                    calibration_batch: tuple[int, bool], recipe: str | Path | None, calibration: int, check_split: str,
                    max_srcc_drop: float, force: bool) -> dict[str, Any]:
    """fp16 / int8: the float graph (parity-checked) → converted file → accuracy check → written, or refused."""
    precision = meta["precision"]
    size = tuple(meta["input"]["size"])
    why = "export --quantize int8" if precision == "int8" else f"export --precision {precision}"
    data = find_export_data(checkpoint, recipe, why)  # every input error before minutes of work
    heldout = heldout_images(data, size, check_split)
    views = CalibrationViews(data, size, calibration) if precision == "int8" else None
    with tempfile.TemporaryDirectory(prefix="kdiqa-export-") as work:
        float_graph = Path(work) / "float32.onnx"
        write_float(float_graph)
        meta["parity"] = dict(check_parity(student, float_graph, "onnx", batches, tolerance, out), graph="float32, before conversion")
        with atomic_path(out) as tmp:
            if views is not None:
                meta["conversion"] = quantize_int8(float_graph, tmp, views.batches(*calibration_batch))
                meta["conversion"]["calibration"] = views.source
            else:
                meta["conversion"] = convert_fp16(float_graph, tmp)
            model = OnnxModel(tmp, providers=["CPUExecutionProvider"])
            check = accuracy_check(student, model, heldout, max_srcc_drop)
            meta["accuracy"] = {"split": check_split, "recipe": data.source, **check, "forced": bool(force and not check["passed"])}
            if not check["passed"] and not force:
                raise ExportError(
                    f"{out}: accuracy check failed: {precision} {check_split} SRCC {check['exported']['srcc']:.4f} vs float "
                    f"{check['float']['srcc']:.4f} (|change| {abs(check['delta_srcc']):.4f} > {max_srcc_drop:g}); nothing was "
                    "written (pass --force to keep it, flagged in its sidecar)"
                )
            _write_meta(tmp, "onnx", meta)
    write_json(sidecar_path(out), meta)
    meta["path"] = str(out)
    return meta


def _require_onnxruntime(precision: str) -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ExportError(f"export {precision}: onnxruntime is needed to convert and check the model ({INSTALL_HINT})") from None


def _require_onnx(exporter: str) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError(f"ONNX export skipped: the onnx package is not installed ({INSTALL_HINT})") from None
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise ExportError(f"ONNX export with --exporter dynamo needs onnxscript ({INSTALL_HINT}), or use --exporter legacy") from None


def _hw(image_size: Any) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = (int(s) for s in image_size)
    return h, w


@contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence torch's deprecation and tracer warnings: the parity check, not a warning, decides."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)  # the legacy exporter's constant-folding notes
        yield


def _example(size: tuple[int, int], dynamic_batch: bool, batch_size: int) -> torch.Tensor:
    # a dynamic graph is traced at batch 2, so no size-1 broadcasting can be baked into it
    n = 2 if dynamic_batch else batch_size
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def _export_onnx(graph: nn.Module, path: Path, size: tuple[int, int], outputs: list[str], dynamic_batch: bool,
                 batch_size: int, meta: dict[str, Any], exporter: str) -> None:
    import onnx

    example = _example(size, dynamic_batch, batch_size)
    kwargs: dict[str, Any] = {"input_names": ["images"], "output_names": outputs, "opset_version": meta["onnx"]["opset"]}
    if exporter == "legacy":
        kwargs["dynamo"] = False
        if dynamic_batch:
            kwargs["dynamic_axes"] = {name: {0: "batch"} for name in ["images", *outputs]}
    else:
        kwargs.update(dynamo=True, external_data=False, verbose=False)
        if dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    try:
        with _quiet_exporters(), redirect_stdout(sys.stderr):  # the dynamo exporter prints progress; stdout is for results
            torch.onnx.export(graph, (example,), str(path), **kwargs)
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except KdiqaError:
        raise
    except Exception as exc:
        raise ExportError(f"{meta['source']}: ONNX export failed ({first_line(exc)})") from None


@torch.no_grad()
def _export_torchscript(graph: nn.Module, path: Path, size: tuple[int, int], dynamic_batch: bool, batch_size: int,
                        meta: dict[str, Any]) -> None:
    example = _example(size, dynamic_batch, batch_size)
    try:
        with _quiet_exporters():
            traced = torch.jit.trace(graph, example, check_trace=False)
            frozen = torch.jit.freeze(traced)  # folds batch norms and constants: a smaller, faster graph
            torch.jit.save(frozen, str(path))
    except Exception as exc:
        raise ExportError(f"{meta['source']}: TorchScript export failed ({first_line(exc)})") from None


def _write_meta(path: Path, fmt: str, meta: dict[str, Any]) -> None:
    """Embed the sidecar's content in the file, so the file alone is enough to predict with."""
    text = json.dumps(meta, sort_keys=True)
    if fmt == "onnx":
        import onnx

        model = onnx.load(str(path))
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, text
        onnx.save(model, str(path))
    else:
        with _quiet_exporters():
            module = torch.jit.load(str(path), map_location="cpu")
            torch.jit.save(module, str(path), _extra_files={TORCHSCRIPT_METADATA: text})


def parity_inputs(size: tuple[int, int], batch: int | None, n_random: int = 8) -> list[tuple[str, torch.Tensor]]:
    """Named input batches: random images and real photographs; batch sizes 1 and 7 when ``batch`` is None."""
    gen = torch.Generator().manual_seed(1234)
    batches: list[tuple[str, torch.Tensor]] = []
    if batch is None:
        for n in PARITY_BATCHES:
            batches.append((f"random batch of {n}", torch.rand(n, 3, *size, generator=gen)))
    else:
        for _ in range(-(-n_random // batch)):  # at least n_random random images
            batches.append((f"random batch of {batch}", torch.rand(batch, 3, *size, generator=gen)))
    real = real_images(size)
    if real is not None:
        if batch is None:
            batches.append((f"{len(real)} real photographs", real))
        else:
            reps = np.resize(np.arange(len(real)), -(-len(real) // batch) * batch)  # pad by cycling through them
            for start in range(0, len(reps), batch):
                batches.append(("real photographs", real[torch.from_numpy(reps[start : start + batch])]))
    return batches


def real_images(size: tuple[int, int]) -> torch.Tensor | None:
    """scikit-image's bundled photographs as the predict path renders them (whole image, bilinear, [0, 1])."""
    try:
        import skimage.data
        from PIL import Image
    except ImportError:
        return None
    sampler = ViewSampler(size, train=False)
    views = []
    for name in REAL_IMAGES:
        try:
            image = Image.fromarray(np.asarray(getattr(skimage.data, name)()))
        except Exception:  # a stripped-down scikit-image install: random images still run
            continue
        views.append(sampler.apply(image, sampler.eval_params()))
    return torch.stack(views) if views else None


@torch.no_grad()
def check_parity(student: nn.Module, path: Path, fmt: str, batches: list[tuple[str, torch.Tensor]], tolerance: float,
                 named: Path) -> dict[str, Any]:
    """Max |exported − PyTorch| over every output and batch; raises ExportError above ``tolerance``."""
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print(f"kdiqa: warning: {named}: parity check skipped: onnxruntime is not installed ({INSTALL_HINT})", file=sys.stderr)
            return {"checked": False, "reason": "onnxruntime not installed"}
        model = OnnxModel(path, providers=["CPUExecutionProvider"])  # fp32 CPU: the tolerance is for fp32
    else:
        model = TorchScriptModel(path)
    worst, where = 0.0, ""
    for name, x in batches:
        ref = student(x)
        got = model.run(x.numpy())
        pairs = [(ref["score"], got[0])] + ([(ref["dist"], got[1])] if ref.get("dist") is not None else [])
        for expected, actual in pairs:
            actual = np.asarray(actual).reshape(tuple(expected.shape))
            diff = float(np.max(np.abs(expected.numpy() - actual))) if actual.size else 0.0
            if not np.isfinite(diff):
                diff = float("inf")
            if not where or diff > worst:
                worst, where = diff, name
    if not worst <= tolerance:
        raise ExportError(
            f"{named}: parity check failed: max |exported - PyTorch| = {worst:.3g} > {tolerance:g} on {where}; nothing was written"
        )
    return {
        "checked": True,
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "batches": [name for name, _ in batches],
    }
