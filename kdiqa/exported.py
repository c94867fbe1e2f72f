"""Run an exported student (ONNX through onnxruntime, or TorchScript) behind the interface predict uses.

Why a wrapper: :func:`kdiqa.predict.predict_paths` only needs ``model.eval().to(device)``,
``model.config["image_size"]`` and ``model(images) -> {"score": (B,), "dist": (B, K) | None}``. Giving
the exported files that interface keeps one prediction path (same image decoding, same resize, same
CSV/JSON output) for PyTorch and exported models.

The input convention comes from the metadata :mod:`kdiqa.export` embeds in the file (ONNX
``metadata_props["kdiqa"]``, TorchScript extra file ``kdiqa.json``), else from the JSON sidecar
``<file>.json``, else (ONNX only) from the graph's static input shape. Exported models take float32
RGB in [0, 1], NCHW, at the recorded size; normalisation is inside the graph.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdiqa.errors import CheckpointError, KdiqaError, first_line
from kdiqa.io import read_json

ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
METADATA_KEY = "kdiqa"  # ONNX metadata_props key
TORCHSCRIPT_METADATA = "kdiqa.json"  # TorchScript extra file
INSTALL_HINT = "pip install 'kdiqa[export]'"


def exported_format(path: str | Path) -> str | None:
    """``"onnx"`` / ``"torchscript"`` for a file with an exported-model suffix, None otherwise (e.g. a folder)."""
    path = Path(path)
    if path.is_dir():
        return None
    if path.suffix.lower() in ONNX_SUFFIXES:
        return "onnx"
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        return "torchscript"
    return None


def sidecar_path(path: str | Path) -> Path:
    """``model.onnx`` → ``model.onnx.json``: unambiguous when ONNX and TorchScript files share a folder."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise KdiqaError(f"onnxruntime is not installed; it is needed to run ONNX models ({INSTALL_HINT})") from None
    return onnxruntime


class ExportedModel:
    """An exported student: ``model(images)`` → ``{"score": (B,), "dist": (B, K) or None}`` on the CPU.

    ``batch`` is the graph's fixed batch size (None when dynamic); fixed-batch graphs are fed in chunks
    of exactly that size, the last one padded by repeating its final image and the padding dropped.
    """

    format = ""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = path
        self.meta = meta
        size = meta.get("input", {}).get("size")
        self.config: dict[str, Any] = {} if size is None else {"image_size": list(size)}
        self.batch: int | None = meta.get("input", {}).get("batch")

    def eval(self) -> ExportedModel:
        return self

    def to(self, device: Any) -> ExportedModel:  # exported models run where their runtime puts them
        return self

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        self._check_input(x)
        if self.batch is None or x.shape[0] == self.batch:
            outputs = self.run(x)
        else:
            chunks = []
            for start in range(0, x.shape[0], self.batch):
                chunk = x[start : start + self.batch]
                n = chunk.shape[0]
                if n < self.batch:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - n, axis=0)])
                chunks.append([o[:n] for o in self.run(chunk)])
            outputs = [np.concatenate(parts) for parts in zip(*chunks, strict=True)]
        score = torch.from_numpy(np.asarray(outputs[0], dtype=np.float32)).reshape(-1)
        dist = torch.from_numpy(np.asarray(outputs[1], dtype=np.float32)) if len(outputs) > 1 else None
        return {"score": score, "dist": dist}

    def _check_input(self, x: np.ndarray) -> None:
        size = self.config.get("image_size")
        if x.ndim != 4 or x.shape[1] != 3:
            raise KdiqaError(f"{self.path}: expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if size is not None and tuple(x.shape[2:]) != tuple(size):
            raise KdiqaError(
                f"{self.path}: this model was exported for {size[0]}x{size[1]} inputs, got {x.shape[2]}x{x.shape[3]} "
                "(leave --size unset to use the exported size)"
            )


class OnnxModel(ExportedModel):
    format = "onnx"

    def __init__(self, path: Path, providers: list[str] | None = None, threads: int | None = None):
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's warnings are not the user's to act on
        if threads:
            options.intra_op_num_threads = int(threads)
        available = ort.get_available_providers()
        chosen = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as exc:  # corrupt/foreign files raise several onnxruntime exception types
            raise CheckpointError(f"{path}: onnxruntime cannot load this model ({first_line(exc)})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = _onnx_metadata(self.session, path)
        super().__init__(path, meta)

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        try:
            return self.session.run(self.output_names, {self.input_name: images})
        except Exception as exc:
            raise KdiqaError(f"{self.path}: onnxruntime failed on input {tuple(images.shape)} ({first_line(exc)})") from None


class TorchScriptModel(ExportedModel):
    format = "torchscript"

    def __init__(self, path: Path):
        extra = {TORCHSCRIPT_METADATA: ""}
        try:
            # A TorchScript archive holds TorchScript code and tensors; loading it does not unpickle
            # arbitrary Python objects, but it does run the model's code: load only files you trust.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript; it still runs
                self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:
            raise CheckpointError(
                f"{path}: not a TorchScript model ({first_line(exc)}); to predict with a saved student, pass its folder"
            ) from None
        self.module.eval()
        meta = _parse_meta(extra[TORCHSCRIPT_METADATA], path) if extra[TORCHSCRIPT_METADATA] else _sidecar(path)
        super().__init__(path, meta)

    @torch.no_grad()
    def run(self, images: np.ndarray) -> list[np.ndarray]:
        try:
            out = self.module(torch.from_numpy(images))
        except Exception as exc:
            raise KdiqaError(f"{self.path}: TorchScript model failed on input {tuple(images.shape)} ({first_line(exc)})") from None
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.numpy() for o in outputs]


def load_exported(path: str | Path) -> ExportedModel:
    """Open an exported ``.onnx`` (onnxruntime) or TorchScript ``.pt``/``.ts`` file for scoring."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: exported model file not found")
    fmt = exported_format(path)
    if fmt == "onnx":
        return OnnxModel(path)
    if fmt == "torchscript":
        return TorchScriptModel(path)
    raise CheckpointError(f"{path}: not an exported model (expected a {', '.join(ONNX_SUFFIXES + TORCHSCRIPT_SUFFIXES)} file)")


def _parse_meta(text: str | bytes, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: its embedded kdiqa metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its embedded kdiqa metadata is not a JSON object")
    return meta


def _sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    meta = read_json(side)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{side}: not a kdiqa export description (expected a JSON object)")
    return meta


def _onnx_metadata(session: Any, path: Path) -> dict[str, Any]:
    """Embedded metadata, else the sidecar, else what the graph's static input shape says."""
    embedded = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if embedded:
        return _parse_meta(embedded, path)
    meta = _sidecar(path)
    if meta:
        return meta
    shape = session.get_inputs()[0].shape  # ints for static axes, strings or None for dynamic ones
    static = [d if isinstance(d, int) else None for d in shape]
    guessed: dict[str, Any] = {}
    if len(static) == 4 and static[2] and static[3]:
        guessed["size"] = [static[2], static[3]]
    if len(static) == 4 and static[0]:
        guessed["batch"] = static[0]
    return {"input": guessed}
